"""A Sphinx extension for yimmo's docs: the ``yimmo-options`` directive.

``.. yimmo-options::`` renders the option table of yimmo/_options.py with
the same function that renders README's options block
(``yimmo._options.options_rst()``, also ``python -m yimmo._options``), at
build time: the options page cannot drift from the code, and there is no
generated file to keep in step.
"""

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class OptionsDirective(SphinxDirective):
    has_content = False

    def run(self):
        from yimmo import _options

        # Rebuild this page when the table changes.
        self.env.note_dependency(_options.__file__)
        source = _options.__file__
        lines = StringList()
        for number, line in enumerate(_options.options_rst().splitlines()):
            lines.append(line, source, number)
        container = nodes.container(classes=["yimmo-options"])
        self.state.nested_parse(lines, self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("yimmo-options", OptionsDirective)
    return {"version": "1", "parallel_read_safe": True,
            "parallel_write_safe": True}
