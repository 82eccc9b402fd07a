"""The documentation (docs/) stays true: every command it shows is run or
checked here, its code examples run, its gunicorn tables name only flags
that exist, and Sphinx builds it with no warning.

Commands are the ``$ `` lines of ``.. code-block:: console`` blocks. Each
one must be listed in COMMANDS with what is done with it; a command that
is not listed fails the test, so a new command cannot slip in unchecked.
A command that serves is started for real and gets one HTTP request, then
SIGTERM, and must exit 0. Its addresses are made local first (TCP
addresses become 127.0.0.1 with port 0, unix socket paths a file in the
test's directory, and the placeholder apps ``myproject.wsgi`` examples.hello,
the app the repository ships); nothing else of the command changes.
"""

import html
import importlib.util
import json
import os
import pathlib
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from helpers import ACTIVATE, LISTENING_RE, ServerProcess, connect, read_response, \
    subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HELLO = b"Hello, World!\n"

# Where the placeholder apps of the docs point when a command is run.
APP_SUBSTITUTES = {
    "myproject.wsgi": "examples.hello:app",
    "myproject.wsgi:application": "examples.hello:app",
}


# -- reading the docs ---------------------------------------------------------


def rst_files():
    return sorted(DOCS.glob("*.rst"))


DIRECTIVE_RE = re.compile(r"^(?P<indent> *)\.\. code-block:: *(?P<lang>\S*)\s*$")


def code_blocks():
    """(path, line number, language, options, content lines) for every
    code-block directive of the docs, content dedented."""
    blocks = []
    for path in rst_files():
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = DIRECTIVE_RE.match(lines[i])
            if not m:
                i += 1
                continue
            indent = len(m.group("indent"))
            start = i + 1
            i += 1
            options = {}
            while i < len(lines) and re.match(r"^ {%d,}:(\w[\w-]*):" % (indent + 1),
                                              lines[i]):
                key, _, value = lines[i].strip()[1:].partition(":")
                options[key] = value.strip()
                i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip())
                                      > indent):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            while body and not body[0].strip():
                body.pop(0)
            margin = min((len(l) - len(l.lstrip()) for l in body if l.strip()),
                         default=0)
            blocks.append((path.name, start, m.group("lang"), options,
                           [l[margin:] for l in body]))
    return blocks


def console_commands():
    """(file, line, command) for each "$ " line of the console blocks, with
    continuation lines (a trailing backslash) joined."""
    commands = []
    for name, line, lang, _, body in code_blocks():
        if lang != "console":
            continue
        pending = None
        for text in body:
            if pending is not None:
                pending += " " + text.strip()
            elif text.startswith("$ "):
                pending = text[2:].strip()
            else:
                continue  # output shown after a command
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            commands.append((name, line, pending))
            pending = None
        assert pending is None, "%s:%d: a command ends with \\" % (name, line)
    return commands


def named_block(name):
    for _, _, lang, options, body in code_blocks():
        if options.get("name") == name:
            return lang, "\n".join(body) + "\n"
    raise AssertionError("no code block named %r in docs/" % name)


# -- what is done with each command -------------------------------------------
#
# kind: "serve" (started, one request, stopped), "run" (runs to completion,
# exit 0), "pip-install" (its target is this checkout and its extras exist
# in pyproject.toml; .ci/wheel installs the sdist into a fresh venv for
# real), "apt-install" (the packages are among those .ci/run installs),
# "sphinx" (the build test below runs it), "example" (runs a code block of
# the docs), "socket-activate", or "not-run" with the reason.

COMMANDS = {
    # index.rst
    "python -m pip install -e '.[docs]'": ("pip-install", None),
    "sphinx-build -W -b html docs docs/_build": ("sphinx", None),
    # quickstart.rst
    "apt-get install -y libev-dev gcc python3-dev python3-venv":
        ("apt-install", None),
    "python -m pip install .": ("pip-install", None),
    "python -m pip install -e '.[test]'": ("pip-install", None),
    "python -m pytest": ("not-run", "the test suite itself, which this file "
                         "is part of; .ci/run runs it"),
    "python -m yimmo examples.hello:app": ("serve", None),
    "python -m yimmo --bind 127.0.0.1:8000 --workers 4 examples.hello:app":
        ("serve", None),
    "YIMMO_WORKERS=4 python -m yimmo examples.hello:app": ("serve", None),
    "python -m yimmo --help": ("run", "usage: python -m yimmo"),
    "python -m yimmo --version": ("run", "yimmo "),
    "python -m pytest test_hello.py": ("example", "example-fixture"),
    # options.rst
    "python -m yimmo --workers 4 --timeout 60 examples.hello:app":
        ("serve", None),
    "YIMMO_WORKERS=4 YIMMO_TIMEOUT=60 python -m yimmo examples.hello:app":
        ("serve", None),
    "python -m yimmo -c yimmo.toml examples.hello:app":
        ("serve", "example-config-toml"),
    "python -m yimmo._options": ("run", "options-rst"),
    # deployment.rst
    "systemctl daemon-reload": ("not-run", "needs systemd as PID 1; the "
                                "unit's ExecStart is run by "
                                "test_systemd_unit_command_serves"),
    "systemctl enable --now myapp.socket": ("not-run", "needs systemd as "
                                            "PID 1"),
    "systemctl reload myapp": ("not-run", "needs systemd as PID 1; the "
                               "SIGHUP it sends is sent by "
                               "test_systemd_unit_command_serves"),
    "systemctl restart myapp": ("not-run", "needs systemd as PID 1"),
    "systemd-socket-activate -l 127.0.0.1:8000 python -m yimmo "
    "examples.hello:app": ("socket-activate", None),
    "python -m yimmo --bind unix:/run/yimmo.sock --unix-socket-mode 660 "
    "myproject.wsgi": ("serve", None),
    "python -m yimmo --bind 0.0.0.0:8000 --forwarded-allow-ips 10.0.0.0/8 "
    "myproject.wsgi": ("serve", None),
    "python -m yimmo --bind unix:/run/yimmo.sock --proxy-protocol "
    "myproject.wsgi": ("serve", None),
    "docker build -t myapp .": ("not-run", "no Docker daemon or registry on "
                                "the test machine; the Dockerfile's CMD is "
                                "run by test_dockerfile_command_serves"),
    "docker run --init --rm -p 8000:8000 myapp": ("not-run", "no Docker "
                                                  "daemon on the test "
                                                  "machine"),
    "python -m yimmo --processes auto --workers 16 --preload "
    "examples.hello:app": ("serve", None),
    "python3.13t -m venv venv-ft": ("not-run", "needs a free-threaded "
                                    "CPython; .ci/free-threaded builds one "
                                    "and runs the suite on it"),
    "venv-ft/bin/pip install .": ("not-run", "needs the free-threaded venv "
                                  "above"),
    "venv-ft/bin/python -m yimmo --workers 4 examples.hello:app":
        ("not-run", "needs the free-threaded venv above; the same command "
         "with this Python is run (test_free_threaded_command_serves_here)"),
    # gunicorn.rst
    "gunicorn --workers 4 --threads 8 --bind 0.0.0.0:8000 "
    "myproject.wsgi:application": ("not-run", "gunicorn's own command, "
                                   "shown for comparison (gunicorn is not "
                                   "a dependency)"),
    "python -m yimmo --processes 4 --workers 8 --bind 0.0.0.0:8000 "
    "myproject.wsgi:application": ("serve", None),
}

# The free-threaded section's serve command, run with this interpreter:
# the options are the same on both builds.
FREE_THREADED_COMMAND = \
    "venv-ft/bin/python -m yimmo --workers 4 examples.hello:app"

# Python blocks: each has a :name: and is run here.
PYTHON_BLOCKS = {
    "example-serve": "serve",
    "example-server": "run",
    "example-fixture": "pytest",
}

# The languages code blocks may have, and where each is checked.
LANGUAGES = {
    "console": "COMMANDS",
    "python": "PYTHON_BLOCKS",
    "toml": "the -c yimmo.toml command",
    "docker": "test_dockerfile_command_serves",
}


def test_every_command_in_the_docs_is_listed():
    commands = console_commands()
    assert len(commands) >= 20, commands  # the parsing found them
    unlisted = ["%s:%d: %s" % c for c in commands if c[2] not in COMMANDS]
    assert not unlisted, ("commands in docs/ that tests/test_docs.py does "
                          "not run or classify:\n" + "\n".join(unlisted))
    shown = {c[2] for c in commands}
    stale = sorted(set(COMMANDS) - shown)
    assert not stale, "COMMANDS lists commands the docs no longer show: %r" \
        % stale
    assert FREE_THREADED_COMMAND in shown


def test_code_blocks_are_known_kinds():
    names = set()
    for name, line, lang, options, body in code_blocks():
        assert lang in LANGUAGES, "%s:%d: code-block %r: add it to LANGUAGES " \
            "with a check" % (name, line, lang)
        if lang == "python":
            assert options.get("name") in PYTHON_BLOCKS, \
                "%s:%d: a python block needs a :name: listed in " \
                "PYTHON_BLOCKS" % (name, line)
            names.add(options["name"])
            compile("\n".join(body), "%s:%d" % (name, line), "exec")
    assert names == set(PYTHON_BLOCKS)


def test_no_commands_hide_in_other_blocks():
    """A "$ " line in a literal block that is not a console code-block
    would escape the checks above."""
    for path in rst_files():
        lines = path.read_text().splitlines()
        for number, text in enumerate(lines, 1):
            if text.strip().startswith("$ "):
                # Walk up to the directive that holds this line.
                indent = len(text) - len(text.lstrip())
                for above in reversed(lines[:number - 1]):
                    if above.strip() and \
                            len(above) - len(above.lstrip()) < indent:
                        assert DIRECTIVE_RE.match(above) and \
                            above.strip().endswith("console"), \
                            "%s:%d: a command outside a console block" \
                            % (path.name, number)
                        break


# -- running and checking commands --------------------------------------------


def localize(command, tmp_path):
    """(argv, env, how to connect) for a documented command, with its
    addresses made local (see the module docstring)."""
    words = shlex.split(command)
    env = subprocess_env()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "python", command
    argv = [sys.executable] + [APP_SUBSTITUTES.get(w, w) for w in words[1:]]
    target = None
    for i, word in enumerate(argv):
        if word in ("-b", "--bind"):
            if argv[i + 1].startswith("unix:"):
                path = str(tmp_path / "yimmo.sock")
                argv[i + 1] = "unix:" + path
                target = path
            else:
                argv[i + 1] = "127.0.0.1:0"
    if not any(w in ("-b", "--bind") for w in argv):
        # The default (or a config file's) 127.0.0.1:8000: flags are not
        # added, the environment's YIMMO_BIND wins over the config file.
        env["YIMMO_BIND"] = "127.0.0.1:0"
    return argv, env, target


def proxy_v1_header():
    return b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8000\r\n"


def one_request(address, proxy_protocol=False, timeout=5.0):
    with connect(address, timeout) as sock:
        if proxy_protocol:
            sock.sendall(proxy_v1_header())
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n"
                     b"Connection: close\r\n\r\n")
        return read_response(sock)


def serve_and_check(argv, env, unix_path=None, cwd=ROOT, while_serving=None):
    """Start a server process, send one request, call while_serving() if
    given, stop it with SIGTERM and check it exits 0. Returns the process
    (its output) for more checks."""
    proc = ServerProcess(argv, cwd=str(cwd), env=env)
    try:
        if unix_path is not None:
            proc.wait_for_line(r"Listening at unix:", timeout=20)
            address = unix_path
        else:
            address = proc.wait_listening(timeout=20)
        response = one_request(address,
                               proxy_protocol="--proxy-protocol" in argv)
        assert response.status == 200, (response, proc.stderr)
        assert response.body == HELLO
        if while_serving is not None:
            while_serving()
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, proc.stderr
        return proc
    finally:
        proc.kill()


SERVE = sorted(c for c, (kind, _) in COMMANDS.items() if kind == "serve")


@pytest.mark.parametrize("command", SERVE)
def test_serve_command(command, tmp_path):
    argv, env, unix_path = localize(command, tmp_path)
    cwd = ROOT
    block = COMMANDS[command][1]
    if block is not None:
        # The command reads a file the docs show: write it where it runs.
        lang, text = named_block(block)
        assert lang == "toml"
        if sys.version_info < (3, 11):
            pytest.skip("a TOML config needs Python 3.11 (tomllib)")
        (tmp_path / "yimmo.toml").write_text(text)
        cwd = tmp_path
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env["PYTHONPATH"]])
    check = None
    if "--unix-socket-mode" in argv:
        mode = int(argv[argv.index("--unix-socket-mode") + 1], 8)

        def check():
            assert stat.S_IMODE(os.stat(unix_path).st_mode) == mode
    proc = serve_and_check(argv, env, unix_path, cwd, check)
    if block == "example-config-toml":
        # Its access-log = "-" took effect: one access line on stderr.
        assert '"GET / HTTP/1.1" 200' in proc.stderr, proc.stderr
    if unix_path is not None:
        assert not os.path.exists(unix_path)  # removed at exit


def test_free_threaded_command_serves_here(tmp_path):
    command = FREE_THREADED_COMMAND.replace("venv-ft/bin/python", "python")
    argv, env, _ = localize(command, tmp_path)
    serve_and_check(argv, env)


def test_run_commands():
    for command, (kind, expect) in COMMANDS.items():
        if kind != "run":
            continue
        argv = [sys.executable] + shlex.split(command)[1:]
        done = subprocess.run(argv, cwd=str(ROOT), env=subprocess_env(),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        if expect == "options-rst":
            from yimmo._options import options_rst
            assert done.stdout == options_rst()
        else:
            # (argparse prints --version on stderr on Python < 3.10.)
            assert expect in done.stdout + done.stderr, (command, done)


def pyproject_extras():
    """The extras of pyproject.toml (read without tomllib, which 3.9 and
    3.10 lack)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1]
    section = section.split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*=", section, re.M))


def test_pip_install_commands_install_this_checkout():
    extras = pyproject_extras()
    assert {"test", "docs"} <= extras, extras
    assert 'name = "yimmo"' in (ROOT / "pyproject.toml").read_text()
    for command, (kind, _) in COMMANDS.items():
        if kind != "pip-install":
            continue
        words = shlex.split(command)
        assert words[:4] == ["python", "-m", "pip", "install"], command
        target = [w for w in words[4:] if not w.startswith("-")]
        assert len(target) == 1, command
        m = re.fullmatch(r"\.(?:\[([a-z,]+)\])?", target[0])
        assert m, "%s: installs something else than this checkout" % command
        for extra in filter(None, (m.group(1) or "").split(",")):
            assert extra in extras, "%s: no extra %r in pyproject.toml" \
                % (command, extra)


def test_apt_commands_match_ci():
    ci_line = next(line for line in (ROOT / ".ci" / "run").read_text()
                   .splitlines() if line.startswith("apt-get update &&"))
    ci_packages = set(re.search(r"apt-get install -y ([^&]+)&&", ci_line)
                      .group(1).split())
    for command, (kind, _) in COMMANDS.items():
        if kind != "apt-install":
            continue
        words = command.split()
        assert words[:3] == ["apt-get", "install", "-y"], command
        assert set(words[3:]) <= ci_packages, (command, ci_packages)


def test_not_run_commands_say_why():
    for command, (kind, reason) in COMMANDS.items():
        if kind == "not-run":
            assert reason and len(reason) > 10, command


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What .ci/sanitize sets for every process it starts.
SANITIZER_ENV = ("LD_PRELOAD", "PYTHONMALLOC", "ASAN_OPTIONS",
                 "UBSAN_OPTIONS")


def test_socket_activate_command(tmp_path):
    tool = "systemd-socket-activate"
    from shutil import which
    if which(tool) is None:
        pytest.skip("%s is not installed (Debian's systemd package)" % tool)
    (command,) = [c for c, (k, _) in COMMANDS.items()
                  if k == "socket-activate"]
    words = shlex.split(command)
    assert words[:3] == [tool, "-l", "127.0.0.1:8000"], command
    assert words[3] == "python"
    # Port 8000 may be taken here (and the tool does not take port 0):
    # a free port, tried again if another process took it meanwhile.
    for attempt in range(3):
        port = free_port()
        # The tool hands the service only the variables named by -E: the
        # sanitizer run's (libasan preloaded) must reach the server too.
        keep = [w for name in SANITIZER_ENV if name in os.environ
                for w in ("-E", name)]
        argv = [tool, "-l", "127.0.0.1:%d" % port] + keep + \
            [sys.executable] + words[4:]
        proc = ServerProcess(argv, cwd=str(ROOT), env=subprocess_env())
        try:
            # As systemd does, the tool starts the service on the first
            # connection, which waits in the socket's backlog meanwhile.
            try:
                proc.wait_for_line(r"Listening on 127\.0\.0\.1:%d" % port,
                                   timeout=20)
            except AssertionError:
                if "Address already in use" in proc.stderr and attempt < 2:
                    continue
                raise
            response = one_request(("127.0.0.1", port), timeout=30)
            assert response.status == 200 and response.body == HELLO
            # The server logs before it serves, but the reader thread that
            # collects its stderr may not have seen the line yet: wait for it.
            proc.wait_for_line(r"socket activation", timeout=20)
            m = proc.wait_for_line(LISTENING_RE, timeout=20)
            assert int(m.group("port")) == port
            proc.signal(signal.SIGTERM)
            assert proc.wait(timeout=40) == 0, proc.stderr
            return
        finally:
            proc.kill()


# -- code examples ------------------------------------------------------------


def test_example_serve(tmp_path):
    _, text = named_block("example-serve")
    assert 'bind="127.0.0.1:8000"' in text
    script = tmp_path / "serve_example.py"
    script.write_text(text.replace('bind="127.0.0.1:8000"',
                                   'bind="127.0.0.1:0"'))
    serve_and_check([sys.executable, str(script)], subprocess_env(
        PYTHONPATH=os.pathsep.join([str(ROOT), subprocess_env()["PYTHONPATH"]])))


def test_example_server(tmp_path):
    _, text = named_block("example-server")
    script = tmp_path / "server_example.py"
    script.write_text(text)
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path),
                          env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"serving on http://127\.0\.0\.1:\d+\n"
                     r"200 b'Hello, World!\\n'\n$", done.stdout), done.stdout


def yimmo_plugin_registered():
    from importlib import metadata
    eps = metadata.entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") \
        else eps.get("pytest11", [])
    return any(ep.value == "yimmo.testing" for ep in group)


def test_example_fixture(tmp_path):
    _, text = named_block("example-fixture")
    assert text.startswith("# test_hello.py\n")
    (tmp_path / "test_hello.py").write_text(text)
    command = [c for c, (k, v) in COMMANDS.items()
               if (k, v) == ("example", "example-fixture")]
    assert command == ["python -m pytest test_hello.py"]
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "test_hello.py"]
    if not yimmo_plugin_registered():
        # yimmo is imported from a build, not installed: load the plugin
        # that an install registers through its entry point.
        argv[3:3] = ["-p", "yimmo.testing"]
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env["PYTHONPATH"]])
    done = subprocess.run(argv, cwd=str(tmp_path), env=env,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_dockerfile_command_serves(tmp_path):
    """The Dockerfile's CMD, in exec form (so SIGTERM reaches Python), run
    here with its bind address made local."""
    lang, text = named_block("example-dockerfile")
    assert lang == "docker"
    (cmd,) = [l for l in text.splitlines() if l.startswith("CMD ")]
    argv = json.loads(cmd[len("CMD "):])  # exec form: a JSON list
    assert argv[:3] == ["python", "-m", "yimmo"]
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:8000"
    argv, env, _ = localize(shlex.join(argv), tmp_path)
    proc = serve_and_check(argv, env)
    assert "Supervisor listening" in proc.stderr  # --processes auto


# -- the systemd unit (README's, included in the docs) ------------------------


def test_docs_include_the_readme_units():
    """deployment.rst shows the unit files by including README's text (the
    build fails if the markers are gone); no unit is written out twice."""
    text = (DOCS / "deployment.rst").read_text()
    assert text.count(".. literalinclude:: ../README.rst") >= 4
    for path in rst_files():
        assert "[Service]" not in path.read_text(), path.name


def readme_exec_start():
    readme = (ROOT / "README.rst").read_text()
    m = re.search(r"^    ExecStart=((?:.*\\\n)*.*)$", readme, re.M)
    assert m, "no ExecStart= in README's unit"
    return " ".join(part.strip().rstrip("\\").strip()
                    for part in m.group(1).splitlines())


def test_systemd_unit_command_serves(tmp_path):
    """README's ExecStart under socket activation (as the .socket unit
    would start it), a reload (ExecReload's SIGHUP), then the stop
    (KillMode=mixed: SIGTERM to the main process only)."""
    command = readme_exec_start()
    words = shlex.split(command)
    assert words[0].endswith("/bin/python"), command
    words = [sys.executable] + [APP_SUBSTITUTES.get(w, w) for w in words[1:]]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    fd = listener.fileno()
    env = subprocess_env(TEST_FD=str(fd))
    proc = ServerProcess([sys.executable, "-c", ACTIVATE] + words[1:],
                         cwd=str(ROOT), env=env, pass_fds=[fd])
    try:
        listener.close()  # the server holds it now
        port = proc.wait_listening(timeout=30)[1]
        ready = lambda: proc.stderr.count("is ready")  # noqa: E731
        deadline = time.monotonic() + 30
        while ready() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        response = one_request(("127.0.0.1", port))
        assert response.status == 200 and response.body == HELLO
        before = ready()
        proc.signal(signal.SIGHUP)
        proc.wait_for_line(r"Received SIGHUP: reloading", timeout=20)
        deadline = time.monotonic() + 30
        while ready() < 2 * before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready() >= 2 * before, proc.stderr
        response = one_request(("127.0.0.1", port))
        assert response.status == 200 and response.body == HELLO
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=45) == 0, proc.stderr
    finally:
        proc.kill()


# -- the gunicorn page --------------------------------------------------------

FLAG_RE = re.compile(r"``(-{1,2}[a-z][a-z0-9_-]*)``")


def list_table(name, page="gunicorn.rst"):
    """The rows of the list-table with :name: name, as lists of cell text."""
    text = (DOCS / page).read_text()
    m = re.search(r"^\.\. list-table::\n(?:   :.*\n)*?   :name: %s\n"
                  r"(?:   :.*\n)*\n((?:   .*\n|\n)+)" % re.escape(name),
                  text, re.M)
    assert m, "no list-table named %s" % name
    rows = []
    for line in m.group(1).splitlines():
        if line.startswith("   * - "):
            rows.append([line[7:]])
        elif line.startswith("     - "):
            rows[-1].append(line[7:])
        elif line.strip() and rows:
            rows[-1][-1] += " " + line.strip()
    return rows[1:]  # without the header row


def yimmo_flags():
    from yimmo._options import build_parser
    return set(build_parser()._option_string_actions)


def test_gunicorn_tables_name_yimmo_flags_that_exist():
    flags = yimmo_flags()
    named = 0
    for table in ("gunicorn-same", "gunicorn-different"):
        for row in list_table(table):
            # The yimmo column, and the notes, which name only yimmo's.
            for flag in FLAG_RE.findall(row[1] + row[2]):
                assert flag in flags, "%s: yimmo has no %s" % (table, flag)
                named += 1
            if table == "gunicorn-same":
                assert FLAG_RE.findall(row[0]) == FLAG_RE.findall(row[1]), row
    for row in list_table("gunicorn-missing"):
        for flag in FLAG_RE.findall(row[0]):
            assert flag not in flags, "listed as missing, but yimmo has %s" \
                % flag
        for flag in FLAG_RE.findall(row[1]):
            assert flag in flags, "gunicorn-missing: yimmo has no %s" % flag
    assert named > 20


def test_gunicorn_tables_name_gunicorn_flags_that_exist():
    if importlib.util.find_spec("gunicorn") is None:
        pytest.skip("gunicorn is not installed (the bench extra has it)")
    from gunicorn.config import KNOWN_SETTINGS
    flags = {f for s in KNOWN_SETTINGS for f in (s.cli or [])}
    for table in ("gunicorn-same", "gunicorn-different", "gunicorn-missing"):
        for row in list_table(table):
            for flag in FLAG_RE.findall(row[0]):
                assert flag in flags, "gunicorn has no %s" % flag


def test_gunicorn_signal_table_matches_the_supervisor():
    from yimmo._supervisor import HANDLED
    handled = {s.name[3:] for s in HANDLED}
    rows = list_table("gunicorn-signals")
    assert len(rows) >= 8
    for row in rows:
        for name in row[0].replace(",", " ").split():
            missing = row[2].startswith("**Missing:**")
            assert (name not in handled) == missing, row


def test_security_limits_table_gives_the_real_defaults():
    from yimmo._options import BY_NAME
    rows = list_table("security-limits", "security.rst")
    assert len(rows) >= 10
    for row in rows:
        names = [f[2:].replace("-", "_") for f in FLAG_RE.findall(row[0])]
        assert names and all(n in BY_NAME for n in names), row
        shown = [float(x) for x in re.findall(r"\d+(?:\.\d+)?",
                                              row[1].replace("::1", ""))]
        real = []
        for name in names:
            opt = BY_NAME[name]
            if isinstance(opt.default, (int, float)) and \
                    not isinstance(opt.default, bool) and opt.default:
                real.append(float(opt.default))
            real += [float(x) for x in
                     re.findall(r"\d+", opt.default_text or "")]
            if not opt.default:
                assert re.search(r"off|no limit", row[1]), row
        if "forwarded_allow_ips" in names:
            assert row[1] == "``%s``" % ",".join(
                BY_NAME["forwarded_allow_ips"].default)
            continue
        assert shown == real, (row, real)


# -- the build -----------------------------------------------------------------


def test_sphinx_build_has_no_warning(tmp_path):
    """The build CI runs (sphinx-build -W -b html docs docs/_build), into a
    directory of the test's own; any warning fails it."""
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip("Sphinx is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-b", "html",
                           "docs", str(out)], cwd=str(ROOT), env=env,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
    # The options page holds every option of the table, and the deployment
    # page README's unit.
    from yimmo._options import OPTIONS
    options_html = (out / "options.html").read_text()
    for opt in OPTIONS:
        for flag in opt.flags:
            assert flag in options_html, flag
        assert opt.env in options_html
    deployment = html.unescape(re.sub(r"<[^>]+>", "",
                                      (out / "deployment.html").read_text()))
    assert "ExecStart=" in deployment and "KillMode=mixed" in deployment
    assert "proxy_protocol on;" in deployment
    # CI runs the same command as the docs show.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "sphinx-build -W -b html docs docs/_build" in ci
