"""Config files (-c/--config): a Python file whose module-level names are
option names, as gunicorn.conf.py is, or a TOML file.

load_config() returns the app spec the file names (wsgi_app or app, else
None) and the options it sets, checked against the option table; the
command line layers the environment and its flags over them. Anything
wrong ends as one ConfigError line naming the file.

A Python file is run as gunicorn runs it, so an existing gunicorn.conf.py
works for the options yimmo shares with gunicorn (bind, backlog, workers,
graceful_timeout, limit_request_*, access_log_format, ...) and for the
gunicorn spellings of a few (keepalive, accesslog, errorlog, loglevel,
logconfig, logconfig_dict, wsgi_app). Modules, functions, classes and
names starting with "_" are helpers and ignored, as are names with an
upper-case letter (PORT = 8000); any other name must be an option. A
gunicorn setting yimmo does not have is an error that says so, unless its
value turns it off (None, False, 0, empty) or the file lists it in
yimmo_ignore (gunicorn ignores that name).

This module imports only yimmo._options.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Dict, Mapping, Optional, Tuple

from ._options import BY_NAME, Option, _unknown

# gunicorn's spelling -> yimmo's option, where they differ. A target that
# is not (yet) an option makes the name an unsupported gunicorn setting.
GUNICORN_SPELLINGS = {
    "keepalive": "keepalive_timeout",
    "accesslog": "access_log",
    "errorlog": "error_log",
    "loglevel": "log_level",
    "logconfig": "log_config",
    "logconfig_dict": "log_config",
    "preload_app": "preload",
}

# Names that give the application instead of an option.
APP_NAMES = ("wsgi_app", "app")

# gunicorn's settings (gunicorn 23), to tell "a gunicorn setting yimmo does
# not have" from a typo.
GUNICORN_SETTINGS = frozenset("""
    config wsgi_app bind backlog workers worker_class threads
    worker_connections max_requests max_requests_jitter timeout
    graceful_timeout keepalive limit_request_line limit_request_fields
    limit_request_field_size reload reload_engine reload_extra_files spew
    check_config print_config preload_app sendfile reuse_port chdir daemon
    raw_env pidfile worker_tmp_dir user group umask initgroups
    tmp_upload_dir secure_scheme_headers forwarded_allow_ips accesslog
    disable_redirect_access_to_syslog access_log_format errorlog loglevel
    capture_output logger_class logconfig logconfig_dict logconfig_json
    syslog_addr syslog syslog_prefix syslog_facility enable_stdio_inheritance
    statsd_host dogstatsd_tags statsd_prefix proc_name default_proc_name
    pythonpath paste on_starting on_reload when_ready pre_fork post_fork
    post_worker_init worker_int worker_abort pre_exec pre_request
    post_request child_exit worker_exit nworkers_changed on_exit
    ssl_context proxy_protocol proxy_allow_ips keyfile certfile ssl_version
    cert_reqs ca_certs suppress_ragged_eofs do_handshake_on_connect ciphers
    raw_paste_global_conf permit_obsolete_folding strip_header_spaces
    permit_unconventional_http_method permit_unconventional_http_version
    casefold_http_method forwarder_headers header_map
    tolerate_dangerous_framing
""".split())


class ConfigError(ValueError):
    """A config file that cannot be used; str() is one line."""


def load_config(path: str) -> Tuple[Optional[str], Dict[str, object]]:
    """(app_spec or None, {option: value}) from the config file at path:
    .toml is TOML, anything else Python. Values are checked (a string is
    parsed as the environment variable's text would be). Raises
    ConfigError."""
    if os.path.splitext(path)[1].lower() == ".toml":
        names = _read_toml(path)
        is_python = False
    else:
        names = _run_python(path)
        is_python = True
    return _to_options(path, names, is_python)


def _read_toml(path: str) -> Dict[str, object]:
    # The reading under the version test, which type checkers understand
    # (for Python 3.10 and older they skip the block: no tomllib there).
    if sys.version_info >= (3, 11):
        try:
            import tomllib
        except ImportError:  # hidden (the tests play an older Python)
            pass
        else:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except OSError as exc:
                raise ConfigError("config file %s: %s"
                                  % (path, exc.strerror or exc)) from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError("config file %s: %s"
                                  % (path, exc)) from None
            # TOML keys are often written with dashes, as the flags are.
            return {key.replace("-", "_"): value
                    for key, value in data.items()}
    raise ConfigError("config file %s: TOML needs Python 3.11 or later "
                      "(tomllib); use a Python config file" % path)


def _run_python(path: str) -> Dict[str, object]:
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise ConfigError("config file %s: %s" % (path, exc.strerror or exc)) \
            from None
    if b"\0" in source:
        # Checked here: compile() names no line for it ("line None"), and
        # older Pythons raise ValueError for it instead of SyntaxError.
        raise ConfigError("config file %s, line %d: a null byte (is it "
                          "Python source?)"
                          % (path, source.count(b"\n", 0,
                                                source.index(b"\0")) + 1))
    namespace: Dict[str, object] = {"__file__": os.path.abspath(path),
                                    "__name__": "__config__"}
    try:
        code = compile(source, path, "exec")
        exec(code, namespace)
    except SyntaxError as exc:
        raise ConfigError("config file %s, line %s: %s"
                          % (path, exc.lineno, exc.msg)) from None
    except Exception as exc:
        # One line, whatever the exception's message holds.
        message = " ".join(str(exc).split())
        raise ConfigError("config file %s%s: %s: %s"
                          % (path, _error_line(exc, path),
                             type(exc).__name__, message)) from None
    except SystemExit as exc:
        # A guard such as sys.exit("set DATABASE_URL"): the server is not
        # started, so it is an error like any other, said in one line. Left
        # to escape, the message was lost (exit 2 and nothing on stderr),
        # and sys.exit(0) exited 0 as if the server had run.
        raise ConfigError("config file %s%s: SystemExit(%s)"
                          % (path, _error_line(exc, path),
                             " ".join(repr(exc.code).split()))) from None
    return namespace


def _error_line(exc: BaseException, path: str) -> str:
    """", line N" of the innermost frame in the config file itself."""
    tb = exc.__traceback__
    line = ""
    abspath = os.path.abspath(path)
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == abspath:
            line = ", line %d" % tb.tb_lineno
        tb = tb.tb_next
    return line


def _is_helper(name: str, value: object) -> bool:
    return (name.startswith("_") or name != name.lower()
            or isinstance(value, (types.ModuleType, type, types.FunctionType,
                                  types.BuiltinFunctionType)))


def _to_options(
    path: str, names: Mapping[str, object], is_python: bool,
) -> Tuple[Optional[str], Dict[str, object]]:
    where = "config file %s" % path
    listed = names.get("yimmo_ignore", ())
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, (list, tuple, set, frozenset)) or \
            not all(isinstance(n, str) for n in listed):
        raise ConfigError("%s: yimmo_ignore must be a list of names" % where)
    ignore = set(listed)
    app_spec = None
    options: Dict[str, object] = {}
    set_by: Dict[str, str] = {}
    unsupported = []
    for name, value in names.items():
        if name == "yimmo_ignore" or name in ignore:
            continue
        if is_python and _is_helper(name, value):
            continue
        if name in APP_NAMES:
            if not isinstance(value, str) or not value:
                raise ConfigError("%s: %s must be an app spec such as "
                                  "'myproject.wsgi:application'"
                                  % (where, name))
            app_spec = value
            continue
        target = name
        if name not in BY_NAME and name in GUNICORN_SPELLINGS:
            target = GUNICORN_SPELLINGS[name]
        opt = BY_NAME.get(target)
        if opt is None:
            if name in GUNICORN_SETTINGS:
                # None, False, 0 or empty turn a setting off: nothing
                # yimmo would have to do (pidfile = None, daemon = False).
                if value or value is True:
                    unsupported.append(name)
                continue
            raise ConfigError("%s: %s" % (where, _unknown(name)))
        if target == "config" or (name == "logconfig_dict" and not value):
            continue  # the file being read; gunicorn's default, {}
        if target in options:
            raise ConfigError("%s: %s and %s both set %s"
                              % (where, set_by[target], name, target))
        set_by[target] = name
        try:
            options[target] = _check(opt, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError("%s: %s: %s" % (where, name, exc)) from None
    if unsupported:
        hint = ""
        if "threads" in unsupported:
            hint = "; yimmo's workers are threads"
        raise ConfigError(
            "%s: gunicorn settings that yimmo does not have: %s (list them "
            "in yimmo_ignore = [...] in the file to ignore them%s)"
            % (where, ", ".join(sorted(unsupported)), hint))
    return app_spec, options


def _check(opt: Option, value: object) -> object:
    """A config value checked as a keyword argument would be; a string
    for a number (workers = "4", as gunicorn accepts) is parsed."""
    try:
        return opt.kind.check(value)
    except TypeError:
        if isinstance(value, str):
            return opt.kind.parse(value)
        raise
