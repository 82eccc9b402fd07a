"""`python -m yimmo`: version and help, the APP forms, options from flags
and YIMMO_* variables, the access log, signals, and one-line errors.

Every child process runs with a timeout and is killed in a finally (the
ServerProcess context manager, or subprocess.run's timeout).
"""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

import yimmo
from helpers import (APPS_DIR, REPO_ROOT, TESTS_DIR, ServerProcess,
                     connect, get, request, run_cli, subprocess_env)

WAIT = 15
ANY_PORT = ["--bind", "127.0.0.1:0"]


def start(*args, cwd=APPS_DIR, env=None):
    return ServerProcess([sys.executable, "-m", "yimmo"] + list(args),
                         cwd=cwd, env=env)


def serve_and_get(*args, cwd=APPS_DIR, env=None, target="/"):
    """Start the CLI, GET target, stop it with SIGTERM; the response body
    and the process (exited 0)."""
    with start(*args, cwd=cwd, env=env) as proc:
        addr = proc.wait_listening()
        resp = get(addr, target)
        assert resp.status == 200, resp
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return resp.body, proc


def assert_one_error_line(result, status):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("yimmo: error:"), lines[0]
    if isinstance(status, int):
        status = (status,)
    assert result.returncode in status, (result.returncode, result.stderr)


# -- version and help --------------------------------------------------------


def test_version():
    result = run_cli(["--version"])
    assert result.returncode == 0
    assert (result.stdout + result.stderr).strip() == \
        "yimmo %s" % yimmo.__version__


def test_help_lists_the_options():
    result = run_cli(["--help"])
    assert result.returncode == 0
    assert "usage:" in result.stdout.lower()
    for flag in ("--bind", "-b", "--workers", "-w", "--backlog",
                 "--limit-request-line", "--limit-request-fields",
                 "--limit-request-field-size", "--limit-request-head-size",
                 "--max-body-size", "--header-timeout",
                 "--keepalive-timeout", "--body-timeout", "--write-timeout",
                 "--graceful-timeout", "--timeout", "--client-timeout",
                 "--access-log",
                 "--log-level", "--version"):
        assert re.search(r"(^|[\s,])%s\b" % re.escape(flag), result.stdout), \
            flag


# -- serving -----------------------------------------------------------------


def test_serves_app_and_exits_0_on_sigterm():
    with start("--bind", "127.0.0.1:0", "--workers", "2", "hello:app") as p:
        addr = p.wait_listening()
        assert addr[0] == "127.0.0.1"
        assert "(2 workers)" in p.wait_for_line(r"Listening at").string
        with connect(addr) as sock:
            assert request(sock, "GET", "/x").body == b"hello from /x"
            assert request(sock, "GET", "/y").body == b"hello from /y"
        p.signal(signal.SIGTERM)
        assert p.wait(WAIT) == 0
    assert "Traceback" not in p.stderr


def test_exits_0_on_sigint():
    with start(*ANY_PORT, "hello:app") as proc:
        addr = proc.wait_listening()
        assert get(addr).status == 200
        proc.signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
    assert "Traceback" not in proc.stderr
    assert "KeyboardInterrupt" not in proc.stderr


def test_dotted_module_name_from_current_directory():
    body, _ = serve_and_get(*ANY_PORT, "apps.hello:app", cwd=TESTS_DIR,
                            target="/dotted")
    assert body == b"hello from /dotted"


def test_bare_module_name_prefers_application():
    body, _ = serve_and_get(*ANY_PORT, "both")
    assert body == b"application"


def test_bare_module_name_falls_back_to_app():
    body, _ = serve_and_get(*ANY_PORT, "hello")
    assert body == b"hello from /"


def test_nested_attribute():
    body, _ = serve_and_get(*ANY_PORT, "hello:holder.app")
    assert body == b"nested app"


def test_factory_with_literal_argument():
    body, _ = serve_and_get(*ANY_PORT, "apps.factory:create_app('hi')",
                            cwd=TESTS_DIR)
    assert body == b"hi"


def test_factory_with_keyword_argument():
    body, _ = serve_and_get(
        *ANY_PORT, "apps.factory:create_app('hi', shout=True)", cwd=TESTS_DIR)
    assert body == b"HI"


def test_factory_without_arguments():
    body, _ = serve_and_get(*ANY_PORT, "apps.factory:create_app()",
                            cwd=TESTS_DIR)
    assert body == b"hello"


def test_example_hello_serves_from_repo_root():
    body, _ = serve_and_get(*ANY_PORT, "examples.hello:app", cwd=REPO_ROOT)
    assert body == b"Hello, World!\n"


def test_options_from_environment_variables():
    env = subprocess_env(YIMMO_BIND="127.0.0.1:0", YIMMO_WORKERS="3")
    with start("hello:app", env=env) as proc:
        proc.wait_listening()
        assert "(3 workers)" in proc.wait_for_line("Listening at").string
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_flag_overrides_environment_variable():
    env = subprocess_env(YIMMO_BIND="127.0.0.1:0", YIMMO_WORKERS="3")
    with start("-w", "2", "hello:app", env=env) as proc:
        proc.wait_listening()
        assert "(2 workers)" in proc.wait_for_line("Listening at").string
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_access_log_to_stderr_in_combined_format():
    with start(*ANY_PORT, "--access-log", "-", "hello:app") as proc:
        addr = proc.wait_listening()
        resp = get(addr, "/logged?x=1", headers=[
            ("User-Agent", "cli-test/1"), ("Referer", "http://ref/")])
        assert resp.status == 200
        line = proc.wait_for_line(r'"GET /logged\?x=1 HTTP/1\.1"').string
        assert re.search(
            r'127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} '
            r'[+-]\d{4}\] "GET /logged\?x=1 HTTP/1\.1" 200 %d '
            r'"http://ref/" "cli-test/1"$' % len(resp.body), line), line
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


# -- errors: one line, no traceback ------------------------------------------


@pytest.mark.parametrize("args, status", [
    (["no_such_module_xyz:app"], 1),
    (["broken:app"], 1),
    (["hello:no_such_attribute"], 1),
    (["hello:not_callable"], 1),
    (["--workers", "0", "hello:app"], 2),
    (["--workers", "abc", "hello:app"], 2),
    (["--log-level", "loud", "hello:app"], 2),
    (["--no-such-flag", "hello:app"], 2),
    ([], 2),
], ids=["unimportable-module", "module-raises-on-import",
        "missing-attribute", "not-callable", "workers-zero",
        "workers-not-a-number", "bad-log-level", "unknown-flag",
        "missing-app"])
def test_error_is_one_line_without_traceback(args, status):
    result = run_cli(ANY_PORT + args, cwd=APPS_DIR)
    assert_one_error_line(result, status)


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize("source", [
    "import sys\nsys.exit(0)\n",
    "def __getattr__(name):\n    raise ImportError('lazy ' + name)\n",
], ids=["sys-exit-0", "getattr-raises"])
def test_an_app_that_fails_to_resolve_is_one_line(tmp_path, source,
                                                   processes):
    """sys.exit(0) at import exited 0 in silence (one process) and a
    module __getattr__ raising escaped as a traceback; under a supervisor
    each server process printed one, and the last line was not the
    process's error."""
    (tmp_path / "failing.py").write_text(source)
    result = run_cli(ANY_PORT + ["-p", processes, "failing:app"],
                     cwd=str(tmp_path), timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("yimmo: error:")]
    assert len(errors) == 1, result.stderr
    assert "failing" in errors[0] and (
        "SystemExit(0)" in errors[0] or "ImportError: lazy app" in errors[0])
    if processes == "1":
        assert_one_error_line(result, 1)


def in_removed_directory(tmp_path, *args):
    """The command line to run `python -m yimmo ARGS` from a working
    directory that no longer exists."""
    gone = tmp_path / "gone"
    gone.mkdir()
    return ["sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(gone),
            sys.executable, "-m", "yimmo"] + list(args)


def test_a_removed_working_directory_serves_an_app_on_sys_path(tmp_path):
    # os.getcwd() raised FileNotFoundError: a traceback. `python -m` goes
    # on without the directory on sys.path; so does yimmo.
    env = subprocess_env()
    env["PYTHONPATH"] += os.pathsep + APPS_DIR
    with ServerProcess(in_removed_directory(tmp_path, *ANY_PORT,
                                            "hello:app"), env=env) as proc:
        addr = proc.wait_listening()
        assert get(addr).status == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "working directory no longer exists" in proc.stderr


def test_a_removed_working_directory_and_no_app_is_one_error(tmp_path):
    result = subprocess.run(
        in_removed_directory(tmp_path, *ANY_PORT, "yimmo_no_such_app:app"),
        env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "yimmo: error: cannot import module 'yimmo_no_such_app': No module "
        "named 'yimmo_no_such_app'")


def test_bad_bind_address_is_one_line():
    result = run_cli(["--bind", "127.0.0.1:notaport", "hello:app"],
                     cwd=APPS_DIR)
    assert_one_error_line(result, (1, 2))


def test_factory_arguments_are_not_evaluated():
    spec = "apps.factory:create_app(print('EVALUATED'))"
    result = run_cli(ANY_PORT + [spec], cwd=TESTS_DIR)
    assert "EVALUATED" not in result.stdout
    assert_one_error_line(result, 1)


def test_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(["--bind", "127.0.0.1:%d" % port, "hello:app"],
                         cwd=APPS_DIR)
    assert_one_error_line(result, 1)
