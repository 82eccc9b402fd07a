"""The typed public API: `mypy --strict` passes on the package, the stub
yimmo/_yimmo.pyi says what the C extension really exports (names, bases,
methods, properties, and argument names and kinds as the C parses them),
and the option TypedDicts name exactly the option table's options.

The mypy tests need mypy (the `typing` extra has it; README's test
command installs it) and skip without it;
the others need only the package (and, for the C argument lists, the
ext/ sources next to the tests).
"""

import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import sysconfig

import pytest

import yimmo
import yimmo._yimmo as runtime
from yimmo import _options

PKG_DIR = os.path.dirname(os.path.abspath(yimmo.__file__))
STUB = os.path.join(PKG_DIR, "_yimmo.pyi")
EXT_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "ext")
MYPY_TIMEOUT = 600  # a cold run (no cache) takes seconds; far more under ASan

needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed")


# Installed (the sdist's test run): mypy runs elsewhere and finds the
# package through its py.typed (run in site-packages, it would take the
# modules there for the user's own). From a checkout: `python -m mypy
# --strict yimmo` at its top.
INSTALLED = os.path.realpath(os.path.dirname(PKG_DIR)) in {
    os.path.realpath(sysconfig.get_paths()[key])
    for key in ("purelib", "platlib")}


def _run(module, args, tmp_path):
    cwd = str(tmp_path) if INSTALLED else os.path.dirname(PKG_DIR)
    return subprocess.run(
        [sys.executable, "-m", module] + args, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=MYPY_TIMEOUT)


@needs_mypy
def test_mypy_strict_passes_on_the_package(tmp_path):
    target = ["-p", "yimmo"] if INSTALLED else ["yimmo"]
    r = _run("mypy", ["--strict", "--cache-dir", str(tmp_path / "cache")]
             + target, tmp_path)
    assert r.returncode == 0, r.stdout
    # Every module of the package, and the stub.
    files = [f for f in os.listdir(PKG_DIR) if f.endswith((".py", ".pyi"))]
    assert "Success: no issues found in %d source files" % len(files) \
        in r.stdout, r.stdout


@needs_mypy
def test_mypy_strict_refuses_wrong_calls(tmp_path):
    # The annotations say something: a misspelled option, an option of the
    # wrong type, an app that is not callable and a wrong use of a result
    # are each an error; the correct calls are not.
    user = tmp_path / "user.py"
    user.write_text(
        "from typing import Any, Callable, Dict, List\n"
        "import yimmo\n"
        "def app(environ: Dict[str, Any],\n"
        "        start_response: Callable[..., Any]) -> List[bytes]:\n"
        "    return [b'']\n"
        "yimmo.serve(app, workerz=4)\n"
        "yimmo.serve(app, workers='4')\n"
        "yimmo.serve(42)\n"
        "s: yimmo.Server = yimmo.Server(app, bind='127.0.0.1:0')\n"
        "n: int = s.url\n"
        "yimmo.serve(app, bind=['127.0.0.1:0'], workers=2, timeout=1,\n"
        "            access_log=None, processes='auto')\n")
    r = _run("mypy", ["--strict", "--cache-dir", str(tmp_path / "cache"),
                      "--no-error-summary", str(user)], tmp_path)
    assert r.returncode == 1, r.stdout
    errors = {int(m.group(1)) for m in
              re.finditer(r"^\S*user\.py:(\d+): error:", r.stdout, re.M)}
    assert errors == {6, 7, 8, 10}, r.stdout


@needs_mypy
def test_stubtest_finds_the_stub_and_module_agree(tmp_path):
    # mypy's stubtest imports yimmo._yimmo and compares it with the stub:
    # every name in one is in the other, with matching kinds. Its cache
    # goes to tmp_path (a config file is its only way to say so).
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\ncache_dir = %s\n" % (tmp_path / "cache"))
    r = _run("mypy.stubtest", ["--mypy-config-file", str(config),
                               "yimmo._yimmo"], tmp_path)
    assert r.returncode == 0, r.stdout
    assert "Success" in r.stdout, r.stdout


# -- the stub against the module, by introspection ----------------------------


def _stub():
    with open(STUB, encoding="utf-8") as f:
        return ast.parse(f.read(), STUB)


def _public(names):
    return {n for n in names if not n.startswith("_")}


def _stub_classes():
    return {node.name: node for node in _stub().body
            if isinstance(node, ast.ClassDef)}


def _stub_top_level_names():
    names = set()
    for node in _stub().body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets
                         if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and \
                isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _members(cls_node):
    """{name: FunctionDef} of a stub class, and the names that are
    properties."""
    funcs, props = {}, set()
    for node in cls_node.body:
        if isinstance(node, ast.FunctionDef):
            funcs[node.name] = node
            if any(isinstance(d, ast.Name) and d.id == "property"
                   for d in node.decorator_list):
                props.add(node.name)
    return funcs, props


def test_module_and_stub_have_the_same_public_names():
    runtime_names = _public(dir(runtime))
    stub_names = _public(_stub_top_level_names())
    assert runtime_names == stub_names
    # The check sees something: the four names the package relies on.
    assert {"Core", "FileWrapper", "ClientDisconnected",
            "RequestTimeout"} <= runtime_names


def test_stub_classes_match_the_runtime_types():
    Py_TPFLAGS_BASETYPE = 1 << 10
    classes = _stub_classes()
    for name in _public(dir(runtime)):
        tp = getattr(runtime, name)
        node = classes[name]
        # Bases, by name (OSError, BaseException; object when none).
        stub_bases = [b.id for b in node.bases] or ["object"]
        assert [b.__name__ for b in tp.__bases__] == stub_bases, name
        # @final exactly where the type cannot be subclassed.
        final = any(isinstance(d, ast.Name) and d.id == "final"
                    for d in node.decorator_list)
        assert final == (not tp.__flags__ & Py_TPFLAGS_BASETYPE), name
        funcs, props = _members(node)
        own = _public(vars(tp))
        assert own == _public(funcs), name
        for attr in own:
            value = vars(tp)[attr]
            is_prop = inspect.isdatadescriptor(value) and \
                not callable(value)
            assert is_prop == (attr in props), (name, attr)
            sig = getattr(value, "__text_signature__", None)
            if sig is not None:
                # Where the C says its signature, the stub's names match.
                params = list(inspect.signature(value).parameters)
                stub_params = [a.arg for a in funcs[attr].args.posonlyargs
                               + funcs[attr].args.args
                               + funcs[attr].args.kwonlyargs]
                assert params == stub_params, (name, attr)
        # Iterable types say so in the stub too.
        for dunder in ("__iter__", "__next__", "__call__"):
            assert (getattr(tp, dunder, None) is not None and
                    dunder in vars(tp)) == (dunder in funcs), (name, dunder)


# -- argument names and kinds, from the C sources -----------------------------


needs_ext = pytest.mark.skipif(not os.path.isdir(EXT_DIR),
                               reason="no ext/ sources next to the tests")


def _c_sources():
    for name in sorted(os.listdir(EXT_DIR)):
        if name.endswith(".c"):
            with open(os.path.join(EXT_DIR, name), encoding="utf-8") as f:
                yield name, f.read()


def _format_kinds(fmt):
    """PyArg_ParseTupleAndKeywords format -> one of "required",
    "optional", "kwonly" per argument."""
    fmt = fmt.split(":")[0].split(";")[0]
    assert "(" not in fmt, "nested formats are not handled: %s" % fmt
    kinds, state = [], "required"
    for ch in fmt:
        if ch == "|":
            state = "optional"
        elif ch == "$":
            state = "kwonly"
        elif ch in "#*!&":
            continue    # modifiers of the unit before
        else:
            kinds.append(state)
    return kinds


def _c_keyword_functions():
    """{C function name: [(name, kind)]} for every function that parses
    keywords with a kwlist."""
    found = {}
    for filename, text in _c_sources():
        for m in re.finditer(
                r"^(\w+)\([^)]*\)\n\{(.*?)^\}", text, re.M | re.S):
            func, body = m.group(1), m.group(2)
            kw = re.search(r"kwlist\[\]\s*=\s*\{(.*?)\};", body, re.S)
            if kw is None:
                continue
            names = re.findall(r'"(\w+)"', kw.group(1))
            call = re.search(r"PyArg_ParseTupleAndKeywords\(\s*\w+,\s*\w+,"
                             r"\s*((?:\"[^\"]*\"\s*)+),", body)
            assert call is not None, func
            fmt = "".join(re.findall(r'"([^"]*)"', call.group(1)))
            kinds = _format_kinds(fmt)
            assert len(kinds) == len(names), (func, fmt, names)
            found[func] = list(zip(names, kinds))
    return found


def _c_method_tables():
    """{type name: {method name: flags}} from the PyMethodDef tables."""
    tables = {}
    for filename, text in _c_sources():
        for m in re.finditer(r"PyMethodDef (\w+?)_methods\[\]\s*=\s*\{(.*?)"
                             r"\n\};", text, re.S):
            entries = re.findall(r'\{"(\w+)",[^,]*,\s*([A-Z_ |\n]+),',
                                 m.group(2))
            tables[m.group(1)] = {
                name: {f.strip() for f in flags.split("|")}
                for name, flags in entries}
    return tables


def _stub_params(func):
    a = func.args
    params = [(p.arg, "required") for p in a.posonlyargs + a.args]
    # Defaults belong to the last positional parameters.
    for i in range(len(a.defaults)):
        name, _ = params[len(params) - len(a.defaults) + i]
        params[len(params) - len(a.defaults) + i] = (name, "optional")
    params += [(p.arg, "kwonly") for p in a.kwonlyargs]
    return params[1:], [p.arg for p in a.posonlyargs]  # without self/cls


@needs_ext
def test_stub_arguments_are_those_the_c_parses():
    classes = _stub_classes()
    functions = _c_keyword_functions()
    checked = 0
    for func, c_params in functions.items():
        tp_name, _, method = func.partition("_")
        if tp_name not in classes:
            continue    # a type the module does not export (Input)
        stub_name = "__new__" if method == "new" else method
        funcs, _ = _members(classes[tp_name])
        assert stub_name in funcs, "%s: %s.%s missing from the stub" % (
            func, tp_name, stub_name)
        params, posonly = _stub_params(funcs[stub_name])
        assert params == c_params, func
        assert not posonly, func    # the C takes every one by keyword
        checked += 1
    assert checked >= 4     # Core.__new__, run, stop, FileWrapper.__new__
    for tp_name, methods in _c_method_tables().items():
        if tp_name not in classes:
            continue
        funcs, _ = _members(classes[tp_name])
        for name, flags in methods.items():
            assert name in funcs, "%s.%s missing from the stub" % (
                tp_name, name)
            params, posonly = _stub_params(funcs[name])
            if "METH_NOARGS" in flags:
                assert params == [], (tp_name, name)
            elif "METH_O" in flags:
                assert len(params) == 1 and posonly, (tp_name, name)
            elif "METH_KEYWORDS" not in flags:
                # METH_VARARGS or METH_FASTCALL alone: positional only.
                assert len(posonly) == len(params), (tp_name, name)


@needs_ext
def test_the_c_argument_check_can_fail():
    # The parsing above sees Core's real keyword list, in order.
    params = dict(_c_keyword_functions())["Core_new"]
    assert params[:5] == [("app", "required"), ("listeners", "required"),
                          ("log_error", "required"), ("errors", "required"),
                          ("workers", "kwonly")]
    assert ("heartbeat_slot", "kwonly") in params


# -- the option TypedDicts against the table ----------------------------------


def test_option_typeddicts_name_the_table_options():
    keywords = {o.name for o in _options.OPTIONS if not o.cli_only}
    assert set(_options.Options.__annotations__) == keywords
    assert not _options.Options.__required_keys__
    assert set(_options.ServerOptions.__annotations__) == \
        set(_options.DEFAULTS)
    assert set(_options.ServerOptions.__required_keys__) == \
        set(_options.DEFAULTS)
    assert set(_options.CliOptions.__annotations__) == \
        set(_options.CLI_DEFAULTS)


def test_py_typed_marker_and_stub_ship_with_the_package():
    assert os.path.isfile(os.path.join(PKG_DIR, "py.typed"))
    assert os.path.isfile(STUB)
