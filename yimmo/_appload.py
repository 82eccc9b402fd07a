"""Turn an APP spec from the command line into the WSGI callable.

Accepted forms:

    module:name            an attribute of the module
    module:name.sub        an attribute of an attribute
    module                 'application', else 'app'
    module:factory(...)    call a factory; arguments must be Python literals

Factory arguments are read with ast.literal_eval: nothing from the command
line is ever executed. Every failure raises AppLoadError with a one-line
message; the original exception, if any, is its __cause__.

The caller puts the current directory on sys.path; this module does not
touch it. It imports nothing from the rest of yimmo.
"""

from __future__ import annotations

import ast
import importlib
import traceback
from types import ModuleType
from typing import (
    TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, cast,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

# A factory's literal arguments: (args, kwargs).
Arguments = Tuple[List[object], Dict[str, object]]

DEFAULT_NAMES = ("application", "app")


class AppLoadError(Exception):
    """The application could not be loaded; str() is a one-line reason."""


def load_app(spec: str) -> WSGIApplication:
    """Import and return the WSGI application named by spec."""
    module_name, sep, expr = (part.strip() for part in spec.partition(":"))
    _check_module_name(spec, module_name)
    if sep and not expr:
        raise _invalid(spec, "nothing after ':'")
    target = _parse_target(spec, expr) if sep else None
    module = _import(module_name)
    if target is None:
        return _default_app(module, module_name)
    path, call = target
    obj = _resolve(module, module_name, path)
    label = "%s:%s" % (module_name, ".".join(path))
    if call is None:
        return _check_callable(obj, "%r is not callable" % label)
    if not callable(obj):
        raise AppLoadError("%r is not callable, so it cannot be used as a "
                           "factory (%s object)" % (label, type(obj).__name__))
    app = _call_factory(obj, call, "%s:%s" % (module_name, expr))
    return _check_callable(app, "%r did not return a WSGI callable"
                           % ("%s:%s" % (module_name, expr)))


# -- parsing ------------------------------------------------------------------


def _invalid(spec: str, why: str, forms: bool = True) -> AppLoadError:
    message = "invalid application %r: %s" % (spec, why)
    if forms:
        message += " (expected MODULE:NAME, MODULE or MODULE:FACTORY(ARGS))"
    return AppLoadError(message)


def _check_module_name(spec: str, name: str) -> None:
    if not name:
        raise _invalid(spec, "no module name")
    if name.endswith(".py") or "/" in name or "\\" in name:
        raise _invalid(spec, "%r is a file name; give the module name and "
                             "run from its directory" % name, forms=False)
    if not all(part.isidentifier() for part in name.split(".")):
        raise _invalid(spec, "%r is not a module name" % name)


def _parse_target(
    spec: str, expr: str,
) -> Tuple[List[str], Optional[Arguments]]:
    """Split "a.b" / "f(1, x='y')" into (['a', 'b'], None) / (['f'],
    ([1], {'x': 'y'}))."""
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise _invalid(spec, "%r is not a name or a call" % expr) from None
    call: Optional[Arguments] = None
    if isinstance(node, ast.Call):
        call = _literal_arguments(spec, node)
        node = node.func
    path = _dotted_name(node)
    if path is None:
        raise _invalid(spec, "%r is not a name or a call" % expr)
    return path, call


def _dotted_name(node: ast.expr) -> Optional[List[str]]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _literal_arguments(spec: str, call: ast.Call) -> Arguments:
    try:
        args: List[object] = []
        for arg in call.args:
            if isinstance(arg, ast.Starred):
                raise ValueError
            args.append(ast.literal_eval(arg))
        kwargs: Dict[str, object] = {}
        for kw in call.keywords:
            if kw.arg is None:  # **mapping
                raise ValueError
            kwargs[kw.arg] = ast.literal_eval(kw.value)
    except ValueError:
        raise _invalid(spec, "factory arguments must be Python literals "
                             "(strings, numbers, True/False/None, tuples, "
                             "lists, dicts)", forms=False) from None
    return args, kwargs


# -- importing and resolving --------------------------------------------------


def _where(exc: BaseException, verb: str = "raised") -> str:
    """' (raised at file:line)' for the innermost frame of exc, or ''."""
    # The innermost frames of an import error are importlib's own.
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen ")]
    if not frames:
        return ""
    return " (%s at %s:%s)" % (verb, frames[-1].filename, frames[-1].lineno)


def _one_line(exc: BaseException) -> str:
    """str(exc) on one line, whatever the message holds (the error is one
    "yimmo: error:" line, as the config loader's are)."""
    return " ".join(str(exc).split())


def _what(exc: BaseException) -> str:
    """exc as "Type: message" on one line."""
    if isinstance(exc, SystemExit):
        # str() would be just the code ("0"), which says nothing.
        return "SystemExit(%r)" % (exc.code,)
    message = _one_line(exc)
    return "%s: %s" % (type(exc).__name__, message) if message \
        else type(exc).__name__


def _is_the_module(exc: ModuleNotFoundError, name: str) -> bool:
    """True if ModuleNotFoundError exc is about name (or a package of it)
    rather than about something name imports."""
    missing = exc.name
    return missing is not None and (
        missing == name or name.startswith(missing + "."))


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if _is_the_module(exc, name):
            raise AppLoadError("cannot import module %r: %s"
                               % (name, _one_line(exc))) from exc
        # The module exists; something it imports does not.
        raise AppLoadError(
            "module %r needs a module that is not installed: %s%s"
            % (name, _one_line(exc), _where(exc, "imported"))) from exc
    except SyntaxError as exc:
        # str() of a SyntaxError already names the file and line.
        raise AppLoadError("module %r was found but importing it failed: "
                           "%s" % (name, _what(exc))) from exc
    except (Exception, SystemExit) as exc:
        # SystemExit too: an app that calls sys.exit() at import (even
        # sys.exit(0)) has not started, and a process that serves nothing
        # must neither exit 0 in silence nor print a traceback in each
        # server process a supervisor starts.
        raise AppLoadError(
            "module %r was found but importing it failed: %s%s"
            % (name, _what(exc), _where(exc))) from exc


def _lookup(obj: object, attr: str, label: str) -> object:
    """getattr(obj, attr), which can run the app's code (a module
    __getattr__, a property): AttributeError passes through (the
    attribute is missing), anything else is an AppLoadError naming
    label, the spec up to attr."""
    try:
        return getattr(obj, attr)
    except AttributeError as exc:
        # Missing, unless the app's code behind it (a property, a module
        # __getattr__) failed on another name: that is its error to show,
        # not "has no attribute" (review s20). (name: 3.10 and later.)
        if getattr(exc, "name", None) in (None, attr):
            raise
        raise AppLoadError("getting %r failed: %s%s"
                           % (label, _what(exc), _where(exc))) from exc
    except (Exception, SystemExit) as exc:
        raise AppLoadError("getting %r failed: %s%s"
                           % (label, _what(exc), _where(exc))) from exc


def _default_app(module: ModuleType, module_name: str) -> WSGIApplication:
    for attr in DEFAULT_NAMES:
        label = "%s:%s" % (module_name, attr)
        try:
            app = _lookup(module, attr, label)
        except AttributeError:
            continue
        return _check_callable(app, "%r is not callable" % label)
    raise AppLoadError(
        "module %r has no attribute %s; name the application, e.g. '%s:NAME'"
        % (module_name, " or ".join(repr(n) for n in DEFAULT_NAMES),
           module_name))


def _resolve(module: ModuleType, module_name: str,
             path: Sequence[str]) -> object:
    obj: object = module
    for i, attr in enumerate(path):
        try:
            obj = _lookup(obj, attr,
                          "%s:%s" % (module_name, ".".join(path[:i + 1])))
        except AttributeError:
            if i == 0:
                raise AppLoadError("module %r has no attribute %r"
                                   % (module_name, attr)) from None
            owner = "%s:%s" % (module_name, ".".join(path[:i]))
            raise AppLoadError("%r has no attribute %r"
                               % (owner, attr)) from None
    return obj


def _call_factory(factory: Callable[..., object], call: Arguments,
                  label: str) -> object:
    args, kwargs = call
    try:
        return factory(*args, **kwargs)
    except (Exception, SystemExit) as exc:
        raise AppLoadError("calling %r failed: %s%s"
                           % (label, _what(exc), _where(exc))) from exc


def _check_callable(obj: object, message: str) -> WSGIApplication:
    """obj, if callable: the application (AppLoadError otherwise)."""
    if not callable(obj):
        raise AppLoadError("%s (%s object)" % (message, type(obj).__name__))
    # Callable is all that can be checked before a request arrives; that
    # it takes (environ, start_response) is the application's word.
    return cast("WSGIApplication", obj)
