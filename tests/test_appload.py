"""Tests for yimmo._appload: every APP spec form and every error message.

Each test writes small modules into tmp_path and puts it first on
sys.path; the modules get unique names so the import cache of one test
never answers for another.
"""

import itertools
import sys
import textwrap

import pytest

from yimmo._appload import AppLoadError, load_app

_counter = itertools.count()

APP_SOURCE = """
def app(environ, start_response):
    start_response("200 OK", [])
    return [b"app"]

def application(environ, start_response):
    start_response("200 OK", [])
    return [b"application"]

class Namespace:
    pass

ns = Namespace()
ns.inner = Namespace()
ns.inner.wsgi = app
not_callable = 42

def create_app(name="default", debug=False, extra=None):
    if name == "explode":
        raise RuntimeError("factory exploded")
    if name == "none":
        return None
    def made(environ, start_response):
        return [repr((name, debug, extra)).encode()]
    made.args = (name, debug, extra)
    return made
"""


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write modules to tmp_path: make(source, **files) -> module name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def make(source, name=None):
        name = name or "yimmo_test_app_%d" % next(_counter)
        (tmp_path / (name + ".py")).write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


def error_of(spec):
    with pytest.raises(AppLoadError) as info:
        load_app(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the accepted forms -------------------------------------------------------


def test_module_colon_name(modules):
    name = modules(APP_SOURCE)
    assert load_app(name + ":app").__name__ == "app"


def test_dotted_attribute(modules):
    name = modules(APP_SOURCE)
    assert load_app(name + ":ns.inner.wsgi").__name__ == "app"


def test_bare_module_prefers_application(modules):
    name = modules(APP_SOURCE)
    assert load_app(name).__name__ == "application"


def test_bare_module_falls_back_to_app(modules):
    name = modules("def app(environ, start_response):\n    return []\n")
    assert load_app(name).__name__ == "app"


def test_factory_without_arguments(modules):
    name = modules(APP_SOURCE)
    assert load_app(name + ":create_app()").args == ("default", False, None)


def test_factory_with_literal_arguments(modules):
    name = modules(APP_SOURCE)
    app = load_app(name + ":create_app('x', debug=True, "
                          "extra={'k': [1, 2.5, None, (3,)]})")
    assert app.args == ("x", True, {"k": [1, 2.5, None, (3,)]})


def test_spaces_around_parts_are_ignored(modules):
    name = modules(APP_SOURCE)
    assert load_app(" %s : create_app( 'y' ) " % name).args[0] == "y"


def test_module_in_a_package(modules, tmp_path):
    package = tmp_path / "yimmo_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wsgi.py").write_text(textwrap.dedent(APP_SOURCE))
    try:
        assert load_app("yimmo_test_pkg.wsgi:app").__name__ == "app"
    finally:
        sys.modules.pop("yimmo_test_pkg.wsgi", None)
        sys.modules.pop("yimmo_test_pkg", None)


# -- module errors ------------------------------------------------------------


def test_missing_module():
    assert error_of("yimmo_no_such_module:app") == (
        "cannot import module 'yimmo_no_such_module': "
        "No module named 'yimmo_no_such_module'")


def test_missing_submodule_of_missing_package():
    message = error_of("yimmo_no_such_pkg.sub:app")
    assert message.startswith("cannot import module 'yimmo_no_such_pkg.sub'")


def test_missing_dependency_inside_the_module_is_not_a_missing_module(
        modules):
    name = modules("import yimmo_no_such_dependency\napp = None\n")
    message = error_of(name + ":app")
    assert message.startswith(
        "module %r needs a module that is not installed: No module named "
        "'yimmo_no_such_dependency' (imported at " % name)
    assert message.endswith("%s.py:1)" % name)


def test_import_error_inside_the_module(modules):
    name = modules("from os import yimmo_no_such_name\n")
    message = error_of(name)
    assert message.startswith("module %r was found but importing it failed: "
                              "ImportError: cannot import name" % name)


def test_exception_inside_the_module_names_type_and_line(modules):
    name = modules("x = 1\nraise ValueError('bad config')\n")
    message = error_of(name + ":app")
    assert message.startswith("module %r was found but importing it failed: "
                              "ValueError: bad config (raised at " % name)
    assert message.endswith("%s.py:2)" % name)


def test_syntax_error_in_the_module(modules):
    name = modules("def broken(:\n")
    message = error_of(name)
    assert "SyntaxError" in message
    assert "line 1" in message


def test_a_message_with_newlines_is_one_line(modules):
    name = modules("raise RuntimeError('first\\n  second')\n")
    assert error_of(name).startswith(
        "module %r was found but importing it failed: RuntimeError: "
        "first second (raised at " % name)


@pytest.mark.parametrize("call, shown", [
    ("sys.exit(0)", "SystemExit(0)"),
    ("sys.exit()", "SystemExit(None)"),
    ("sys.exit('set DATABASE_URL')", "SystemExit('set DATABASE_URL')"),
])
def test_sys_exit_at_import_is_a_load_error(modules, call, shown):
    # Not a SystemExit escaping: the CLI exited with its code (0: silently,
    # as if it had served) and a supervisor's processes printed tracebacks.
    name = modules("import sys\n%s\n" % call)
    message = error_of(name + ":app")
    assert message.startswith("module %r was found but importing it "
                              "failed: %s (raised at " % (name, shown))
    assert message.endswith("%s.py:2)" % name)


def test_cause_is_kept_for_debugging():
    with pytest.raises(AppLoadError) as info:
        load_app("yimmo_no_such_module")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


# -- attribute errors ---------------------------------------------------------


def test_missing_attribute(modules):
    name = modules(APP_SOURCE)
    assert error_of(name + ":nope") == (
        "module %r has no attribute 'nope'" % name)


def test_missing_nested_attribute(modules):
    name = modules(APP_SOURCE)
    assert error_of(name + ":ns.inner.nope") == (
        "'%s:ns.inner' has no attribute 'nope'" % name)


LAZY_SOURCE = """
def __getattr__(name):
    raise ImportError("lazy import of %s failed" % name)
"""


def test_module_getattr_that_raises_names_the_spec(modules):
    # hasattr()/getattr() let anything but AttributeError escape as a
    # traceback.
    name = modules(LAZY_SOURCE)
    message = error_of(name + ":app")
    assert message.startswith(
        "getting '%s:app' failed: ImportError: lazy import of app failed "
        "(raised at " % name)
    assert message.endswith("%s.py:3)" % name)


def test_module_getattr_that_raises_for_the_default_name(modules):
    name = modules(LAZY_SOURCE)
    assert error_of(name).startswith(
        "getting '%s:application' failed: ImportError: lazy import of "
        "application failed (raised at " % name)


def test_module_getattr_raising_attribute_error_is_a_missing_name(modules):
    name = modules("def __getattr__(name):\n"
                   "    raise AttributeError(name)\n"
                   "app = lambda environ, start_response: []\n")
    assert load_app(name) is sys.modules[name].app


def test_property_that_raises_names_the_spec(modules):
    name = modules("""
        class Holder:
            @property
            def wsgi(self):
                raise RuntimeError("settings not configured")
        holder = Holder()
    """)
    message = error_of(name + ":holder.wsgi")
    assert message.startswith(
        "getting '%s:holder.wsgi' failed: RuntimeError: settings not "
        "configured (raised at " % name)


@pytest.mark.skipif(sys.version_info < (3, 10),
                    reason="AttributeError.name is 3.10's")
def test_property_failing_on_another_name_is_not_a_missing_attribute(
        modules):
    """The property's own AttributeError (a name inside it missing) was
    reported as the property itself missing (review s20)."""
    name = modules("""
        class Holder:
            @property
            def wsgi(self):
                return self.missing_thing
        holder = Holder()
    """)
    message = error_of(name + ":holder.wsgi")
    assert message.startswith(
        "getting '%s:holder.wsgi' failed: AttributeError: " % name), message
    assert "missing_thing" in message and "raised at" in message, message


def test_bare_module_without_app(modules):
    name = modules("x = 1\n")
    assert error_of(name) == (
        "module %r has no attribute 'application' or 'app'; name the "
        "application, e.g. '%s:NAME'" % (name, name))


def test_not_callable(modules):
    name = modules(APP_SOURCE)
    assert error_of(name + ":not_callable") == (
        "'%s:not_callable' is not callable (int object)" % name)


def test_bare_module_default_not_callable(modules):
    name = modules("application = 'text'\n")
    assert error_of(name) == (
        "'%s:application' is not callable (str object)" % name)


# -- factory errors -----------------------------------------------------------


def test_factory_that_raises(modules):
    name = modules(APP_SOURCE)
    message = error_of(name + ":create_app('explode')")
    assert message.startswith(
        "calling \"%s:create_app('explode')\" failed: RuntimeError: "
        "factory exploded (raised at " % name)


def test_factory_that_calls_sys_exit(modules):
    name = modules("import sys\ndef make():\n    sys.exit(3)\n")
    assert error_of(name + ":make()").startswith(
        "calling '%s:make()' failed: SystemExit(3) (raised at " % name)


def test_factory_returning_non_callable(modules):
    name = modules(APP_SOURCE)
    assert error_of(name + ":create_app('none')") == (
        "\"%s:create_app('none')\" did not return a WSGI callable "
        "(NoneType object)" % name)


def test_calling_a_non_callable(modules):
    name = modules(APP_SOURCE)
    assert error_of(name + ":not_callable()").startswith(
        "'%s:not_callable' is not callable" % name)


@pytest.mark.parametrize("args", [
    "os.getcwd()", "x", "*items", "**options", "name=open('f')",
    "__import__('os').system('false')", "1 + 2",
])
def test_factory_arguments_must_be_literals(modules, args):
    name = modules(APP_SOURCE)
    message = error_of("%s:create_app(%s)" % (name, args))
    assert "factory arguments must be Python literals" in message


def test_factory_arguments_are_never_evaluated(modules, tmp_path):
    name = modules(APP_SOURCE)
    marker = tmp_path / "ran"
    with pytest.raises(AppLoadError):
        load_app("%s:create_app(open(%r, 'w'))" % (name, str(marker)))
    assert not marker.exists()


# -- malformed specs ----------------------------------------------------------


@pytest.mark.parametrize("spec, reason", [
    ("", "no module name"),
    (":app", "no module name"),
    ("mod:", "nothing after ':'"),
    ("my-app:app", "'my-app' is not a module name"),
    ("mod..sub:app", "'mod..sub' is not a module name"),
    ("app.py", "'app.py' is a file name"),
    ("src/app:app", "'src/app' is a file name"),
    ("mod:1 + 2", "'1 + 2' is not a name or a call"),
    ("mod:app[0]", "'app[0]' is not a name or a call"),
    ("mod:create_app()()", "is not a name or a call"),
    ("mod:create_app(", "is not a name or a call"),
])
def test_malformed_spec(spec, reason):
    message = error_of(spec)
    assert message.startswith("invalid application %r: " % spec)
    assert reason in message
