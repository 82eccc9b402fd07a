"""-c/--config (a Python file as gunicorn.conf.py is, or TOML), its place
in the precedence (flags > environment > config file > defaults),
--log-config and --error-log.

Parsing is tested through parse_command_line with a controlled
environment; serving through `python -m yimmo` children (bounded waits).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from helpers import APPS_DIR, ServerProcess, get, run_cli, subprocess_env
from yimmo._options import DEFAULTS, parse_command_line

WAIT = 15

needs_tomllib = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="TOML needs tomllib (Python 3.11+); "
    "test_toml_without_tomllib_is_a_clear_error covers older versions")


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def wait_file_contains(path, text, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < deadline, "%r not in %s: %r" % (
            text, path, content)
        time.sleep(0.05)


def parse(argv, environ=None):
    return parse_command_line(argv, environ or {})


def parse_error(capsys, argv, environ=None):
    """The one stderr line of a usage error (exit status 2)."""
    with pytest.raises(SystemExit) as info:
        parse(argv, environ)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("yimmo: error: ")
    return lines[0]


GUNICORN_CONF = """\
    # A gunicorn.conf.py as people write them.
    import multiprocessing
    import os
    from os import path as ospath

    PORT = int(os.environ.get("PORT_FOR_TEST", "8123"))
    _scratch = 1

    bind = ["127.0.0.1:%d" % PORT, "unix:/tmp/yimmo-config-test.sock"]
    workers = 3
    backlog = 64
    keepalive = 7
    graceful_timeout = 11
    limit_request_line = 2048
    limit_request_fields = 50
    limit_request_field_size = 4000
    accesslog = "-"
    loglevel = "warning"
    access_log_format = '%(h)s "%(r)s" %(s)s %(D)s'
    wsgi_app = "hello:app"

    class Helper:
        pass

    def when_ready(server):
        server.log.info("ready")

    def post_fork(server, worker):
        pass
"""


def test_a_gunicorn_conf_py_gives_the_shared_options(tmp_path):
    conf = write(tmp_path / "gunicorn.conf.py", GUNICORN_CONF)
    app, options, cli = parse(["-c", conf])
    assert app == "hello:app"
    assert options["bind"] == ["127.0.0.1:8123",
                               "unix:/tmp/yimmo-config-test.sock"]
    assert options["workers"] == 3
    assert options["backlog"] == 64
    assert options["keepalive_timeout"] == 7.0
    assert options["graceful_timeout"] == 11.0
    assert options["limit_request_line"] == 2048
    assert options["limit_request_fields"] == 50
    assert options["limit_request_field_size"] == 4000
    assert options["access_log"] == "-"
    assert options["log_level"] == "warning"
    assert options["access_log_format"] == '%(h)s "%(r)s" %(s)s %(D)s'
    assert cli == {"config": conf, "reload": False}
    # Everything else keeps its default.
    assert options["header_timeout"] == DEFAULTS["header_timeout"]


def test_precedence_flags_then_environment_then_file_then_defaults(tmp_path):
    conf = write(tmp_path / "c.py", """\
        workers = 2
        backlog = 100
        graceful_timeout = 3
        bind = "127.0.0.1:1"
    """)
    environ = {"YIMMO_BACKLOG": "200", "YIMMO_GRACEFUL_TIMEOUT": "4"}
    _, options, _ = parse(["-c", conf, "--graceful-timeout", "5", "app"],
                          environ)
    assert options["workers"] == 2               # file
    assert options["backlog"] == 200             # environment over file
    assert options["graceful_timeout"] == 5.0    # flag over both
    assert options["bind"] == ["127.0.0.1:1"]
    assert options["max_body_size"] == DEFAULTS["max_body_size"]
    # The bind flag replaces the file's list.
    _, options, _ = parse(["-c", conf, "-b", "127.0.0.1:2", "app"])
    assert options["bind"] == ["127.0.0.1:2"]


def test_config_file_from_the_environment(tmp_path):
    conf = write(tmp_path / "c.py", "workers = 6\n")
    _, options, cli = parse(["app"], {"YIMMO_CONFIG": conf})
    assert options["workers"] == 6
    assert cli["config"] == conf


def test_app_on_the_command_line_wins_over_the_file(tmp_path):
    conf = write(tmp_path / "c.py", "wsgi_app = 'a:b'\n")
    assert parse(["-c", conf, "x:y"])[0] == "x:y"
    assert parse(["-c", conf])[0] == "a:b"
    conf = write(tmp_path / "d.py", "app = 'm:n'\n")
    assert parse(["-c", conf])[0] == "m:n"


def test_no_app_anywhere_is_a_usage_error(capsys, tmp_path):
    conf = write(tmp_path / "c.py", "workers = 2\n")
    line = parse_error(capsys, ["-c", conf])
    assert "APP" in line


def test_strings_for_numbers_are_parsed(tmp_path):
    conf = write(tmp_path / "c.py", """\
        workers = "4"
        graceful_timeout = "2.5"
    """)
    _, options, _ = parse(["-c", conf, "app"])
    assert options["workers"] == 4
    assert options["graceful_timeout"] == 2.5


def test_the_client_timeout_alias_works_from_a_file(tmp_path):
    conf = write(tmp_path / "c.py",
                 "client_timeout = 9\nheader_timeout = 2\n")
    _, options, _ = parse(["-c", conf, "app"])
    assert options["header_timeout"] == 2.0
    assert options["body_timeout"] == 9.0
    assert options["timeout"] == 30.0


def test_gunicorns_timeout_means_the_request_timeout(tmp_path):
    # gunicorn.conf.py's `timeout` is the longest a request may run: the
    # watchdog's option, with the same name and meaning.
    conf = write(tmp_path / "c.py", "timeout = 9\n")
    _, options, _ = parse(["-c", conf, "app"])
    assert options["timeout"] == 9.0
    assert options["header_timeout"] == 10.0


def test_reload_from_a_file_is_a_command_line_option(tmp_path):
    conf = write(tmp_path / "c.py", "reload = True\n")
    _, options, cli = parse(["-c", conf, "app"])
    assert cli["reload"] is True
    assert "reload" not in options
    _, _, cli = parse(["-c", conf, "app"], {"YIMMO_RELOAD": "0"})
    assert cli["reload"] is False


@pytest.mark.parametrize("text, expected", [
    ("wrkers = 4\n", "config file {}: unknown option 'wrkers' "
                     "(did you mean 'workers'?)"),
    ("workers = 0\n", "config file {}: workers: must be an int from 1 to 4096, got 0"),
    ("workers = 2.5\n", "config file {}: workers: must be an int, not "
                        "float"),
    ("bind = 8000\n", "config file {}: bind: must be a str or a list of "
                      "str, not int"),
    ("access_log_format = '%(x)s'\n", "unknown atom %(x)s"),
    ("x = 1\nworkers = = 2\n", "config file {}, line 2: invalid syntax"),
    ("import os\n\nworkers = int(os.environ['NO_SUCH_VAR_X'])\n",
     "config file {}, line 3: KeyError: 'NO_SUCH_VAR_X'"),
    ("keepalive = 2\nkeepalive_timeout = 3\n",
     "config file {}: keepalive and keepalive_timeout both set "
     "keepalive_timeout"),
    ("wsgi_app = 3\n", "config file {}: wsgi_app must be an app spec"),
    ("workers = 10 ** 100\n", "config file {}: workers: must be an int "
                              "from 1 to 4096, got 1000"),
])
def test_a_bad_python_file_is_one_line(capsys, tmp_path, text, expected):
    conf = write(tmp_path / "c.py", text)
    line = parse_error(capsys, ["-c", conf, "app"])
    assert expected.format(conf) in line, line


@pytest.mark.parametrize("call, shown", [
    ("sys.exit('set DATABASE_URL')", "SystemExit('set DATABASE_URL')"),
    ("sys.exit(0)", "SystemExit(0)"),
    ("sys.exit()", "SystemExit(None)"),
    ("raise SystemExit(3)", "SystemExit(3)"),
])
def test_sys_exit_in_a_python_file_is_one_line(capsys, tmp_path, call,
                                                shown):
    # The message was lost (exit 2, nothing said) and sys.exit(0) exited
    # 0 without serving.
    conf = write(tmp_path / "c.py", "import sys\n\n%s\n" % call)
    line = parse_error(capsys, ["-c", conf, "app"])
    assert line == "yimmo: error: config file %s, line 3: %s" % (conf, shown)


def test_sys_exit_0_in_a_config_file_is_not_a_clean_exit(tmp_path):
    conf = write(tmp_path / "c.py", "import sys\nsys.exit(0)\n")
    result = run_cli(["-c", conf, "hello:app"], cwd=APPS_DIR)
    assert result.returncode == 2
    assert result.stderr == ("yimmo: error: config file %s, line 2: "
                             "SystemExit(0)\n" % conf)


def test_a_nul_byte_in_a_python_file_names_its_line(capsys, tmp_path):
    # compile() gives no line number for it: "line None".
    conf = str(tmp_path / "c.py")
    with open(conf, "wb") as f:
        f.write(b"bind = '127.0.0.1:0'\nworkers = 2\0\n")
    line = parse_error(capsys, ["-c", conf, "app"])
    assert line == ("yimmo: error: config file %s, line 2: a null byte "
                    "(is it Python source?)" % conf)


def test_a_missing_file_is_one_line(capsys, tmp_path):
    line = parse_error(capsys, ["-c", str(tmp_path / "nope.py"), "app"])
    assert line == "yimmo: error: config file %s: No such file or " \
                   "directory" % (tmp_path / "nope.py")


def test_gunicorn_settings_yimmo_lacks_are_named(capsys, tmp_path):
    conf = write(tmp_path / "c.py", """\
        workers = 2
        threads = 4
        worker_class = "gthread"
        certfile = "/etc/cert.pem"
    """)
    line = parse_error(capsys, ["-c", conf, "app"])
    assert "gunicorn settings that yimmo does not have: certfile, " \
           "threads, worker_class" in line
    assert "yimmo_ignore" in line
    assert "yimmo's workers are threads" in line


def test_gunicorn_settings_turned_off_are_no_error(tmp_path):
    conf = write(tmp_path / "c.py", """\
        workers = 2
        pidfile = None
        daemon = False
        raw_env = []
        umask = 0
    """)
    _, options, _ = parse(["-c", conf, "app"])
    assert options["workers"] == 2


def test_yimmo_ignore_lets_them_through(tmp_path):
    conf = write(tmp_path / "c.py", """\
        workers = 2
        threads = 4
        worker_class = "gthread"
        yimmo_ignore = ["threads", "worker_class"]
    """)
    _, options, _ = parse(["-c", conf, "app"])
    assert options["workers"] == 2


@needs_tomllib
def test_toml_file(tmp_path):
    conf = write(tmp_path / "yimmo.toml", """\
        bind = ["127.0.0.1:0", "unix:/tmp/x.sock"]
        workers = 5
        graceful-timeout = 2
        access_log = "-"
        log_level = "DEBUG"
        wsgi_app = "hello:app"

        [log_config]
        version = 1
        [log_config.loggers.other]
        level = "INFO"
    """)
    app, options, _ = parse(["-c", conf])
    assert app == "hello:app"
    assert options["bind"] == ["127.0.0.1:0", "unix:/tmp/x.sock"]
    assert options["workers"] == 5
    assert options["graceful_timeout"] == 2.0
    assert options["log_level"] == "debug"
    assert options["log_config"]["loggers"] == {"other": {"level": "INFO"}}


@pytest.mark.parametrize("text, expected", [
    ("workers = 3\nbogus = 1\n", "unknown option 'bogus'"),
    ("workers = \n", "config file {}: Invalid value"),
    ("workers = true\n", "workers: must be an int, not bool"),
    # TOML reads 660 as a decimal number (0o1224): the line says so.
    ("unix_socket_mode = 660\n", "got 660, a decimal number: write 0o660"),
])
@needs_tomllib
def test_a_bad_toml_file_is_one_line(capsys, tmp_path, text, expected):
    conf = write(tmp_path / "c.toml", text)
    line = parse_error(capsys, ["-c", conf, "app"])
    assert expected.format(conf) in line, line


def test_toml_without_tomllib_is_a_clear_error(capsys, tmp_path,
                                              monkeypatch):
    # As on Python 3.9 and 3.10: "import tomllib" fails.
    monkeypatch.setitem(sys.modules, "tomllib", None)
    conf = write(tmp_path / "c.toml", "workers = 2\n")
    line = parse_error(capsys, ["-c", conf, "app"])
    assert line == ("yimmo: error: config file %s: TOML needs Python 3.11 "
                    "or later (tomllib); use a Python config file" % conf)


def test_gunicorn_logconfig_dict(tmp_path):
    conf = write(tmp_path / "c.py", """\
        logconfig_dict = {"version": 1, "loggers": {"x": {"level": "INFO"}}}
    """)
    _, options, _ = parse(["-c", conf, "app"])
    assert options["log_config"]["loggers"] == {"x": {"level": "INFO"}}
    # gunicorn's default, {}, means none.
    conf = write(tmp_path / "d.py", "logconfig_dict = {}\n")
    assert parse(["-c", conf, "app"])[1]["log_config"] is None


# -- serving from a config file ------------------------------------------------


def test_serving_from_a_gunicorn_conf_py(tmp_path):
    conf = write(tmp_path / "gunicorn.conf.py", """\
        import os
        bind = "127.0.0.1:0"
        workers = 2
        accesslog = "-"
        access_log_format = "ACCESS %(m)s %(U)s %(s)s"
        wsgi_app = "hello:app"
        def on_starting(server):
            pass
    """)
    env = subprocess_env(YIMMO_WORKERS="3")
    with ServerProcess([sys.executable, "-m", "yimmo", "-c", conf],
                       cwd=APPS_DIR, env=env) as proc:
        proc.wait_for_line(r"Listening at .* \(3 workers\)")
        addr = proc.wait_listening()
        resp = get(addr, "/from-conf")
        assert resp.status == 200 and resp.body == b"hello from /from-conf"
        proc.wait_for_line(r"^ACCESS GET /from-conf 200$")
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_a_bad_config_file_exits_2_with_one_line(tmp_path):
    conf = write(tmp_path / "c.py", "worker = 2\n")
    result = run_cli(["-c", conf, "hello:app"], cwd=APPS_DIR)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "yimmo: error: config file %s: unknown option 'worker' (did you "
        "mean 'workers'?)" % conf)


# -- --log-config and --error-log ----------------------------------------------


def test_log_config_json_dict(tmp_path):
    log_file = tmp_path / "access-json.log"
    conf = write(tmp_path / "logging.json", json.dumps({
        "version": 1,
        "formatters": {"tagged": {"format": "JSONCFG %(message)s"}},
        "handlers": {"file": {
            "class": "yimmo._logging.AppendFileHandler",
            "filename": str(log_file), "formatter": "tagged"}},
        "loggers": {"yimmo.access": {"handlers": ["file"],
                                     "propagate": False}},
    }))
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--access-log", "-", "--log-config", conf,
                        "hello:app"], cwd=APPS_DIR) as proc:
        addr = proc.wait_listening()  # the error log is still yimmo's
        assert get(addr, "/j").status == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("JSONCFG 127.0.0.1 - - [")
    # The access lines went only where the config sent them.
    assert '"GET /j HTTP/1.1"' not in proc.stderr


def test_log_config_ini_file(tmp_path):
    log_file = tmp_path / "server.log"
    conf = write(tmp_path / "logging.ini", """\
        [loggers]
        keys = root, yimmo

        [handlers]
        keys = file

        [formatters]
        keys = plain

        [logger_root]
        level = WARNING
        handlers =

        [logger_yimmo]
        level = INFO
        handlers = file
        qualname = yimmo
        propagate = 0

        [handler_file]
        class = FileHandler
        args = (%r, "a")
        formatter = plain

        [formatter_plain]
        format = INI %%(levelname)s %%(message)s
    """ % str(log_file))
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--access-log", "-", "--log-config", conf,
                        "hello:app"], cwd=APPS_DIR) as proc:
        text = wait_file_contains(log_file, "Listening at")
        m = re.search(r"INI INFO Listening at http://127\.0\.0\.1:(\d+)",
                      text)
        assert m, text
        assert get(("127.0.0.1", int(m.group(1))), "/ini").status == 200
        # The access log keeps yimmo's set-up: stderr.
        proc.wait_for_line(r'"GET /ini HTTP/1\.1" 200')
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert "Listening at" not in proc.stderr


@pytest.mark.parametrize("name, text, expected", [
    ("bad.json", "{not json", "log config {}: Expecting property name"),
    ("list.json", "[1, 2]", "log config {}: must hold a dict"),
    ("bad.ini", "[loggers]\nkeys = nope\n", "log config {}: "),
    ("handler.json", json.dumps({"version": 1, "handlers": {
        "h": {"class": "no.such.Handler"}}}), "log config {}: Unable to "
                                              "configure handler 'h'"),
])
def test_a_bad_log_config_is_one_line_exit_2(tmp_path, name, text, expected):
    conf = write(tmp_path / name, text)
    result = run_cli(["--log-config", conf, "hello:app"], cwd=APPS_DIR)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("yimmo: error: " + expected.format(conf)), \
        lines[0]


INI_LOG_CONFIG = ("[loggers]\nkeys = root\n[handlers]\nkeys =\n"
                  "[formatters]\nkeys =\n[logger_root]\nhandlers =\n")


def test_a_log_config_directory_is_said_to_be_one(tmp_path):
    # It said "No such file or directory".
    result = run_cli(["--log-config", str(tmp_path), "hello:app"],
                     cwd=APPS_DIR)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "yimmo: error: log config %s: Is a directory\n" \
        % tmp_path


def test_an_unreadable_ini_log_config_is_said_to_be_one():
    # configparser skips a file it cannot open: the error was a section
    # fileConfig then missed, "log config F: 'formatters'".
    as_user = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: every file is readable")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534",
                   "--clear-groups"]
        # (The other user must reach this interpreter and yimmo: not so
        # for a venv made under a private temporary directory, as the CI
        # makes for the wheels.)
        probe = subprocess.run(
            as_user + [sys.executable, "-c", "import yimmo"],
            cwd=APPS_DIR, env=subprocess_env(), stdin=subprocess.DEVNULL,
            capture_output=True, timeout=30)
        if probe.returncode != 0:
            pytest.skip("the unprivileged user cannot import yimmo here")
    # Not under tmp_path: the other user must reach the file.
    where = tempfile.mkdtemp()
    try:
        os.chmod(where, 0o755)
        conf = os.path.join(where, "log.ini")
        with open(conf, "w") as f:
            f.write(INI_LOG_CONFIG)
        os.chmod(conf, 0)
        result = subprocess.run(
            as_user + [sys.executable, "-m", "yimmo", "--log-config", conf,
                       "-b", "127.0.0.1:0", "hello:app"],
            cwd=APPS_DIR, env=subprocess_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(where)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("yimmo: error: log config %s: Permission "
                             "denied\n" % conf)


def test_error_log_file(tmp_path):
    path = tmp_path / "errors.log"
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--error-log", str(path), "hello:app"],
                       cwd=APPS_DIR) as proc:
        wait_file_contains(path, "Listening at")
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    text = path.read_text()
    assert re.search(r"^\[[^\]]+\] \[\d+\] \[INFO\] Listening at ", text,
                     re.M), text
    assert "shutting down" in text
    assert proc.stderr == ""
