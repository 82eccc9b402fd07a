"""Smoke test for an installed yimmo (a wheel or an sdist install): import
it, serve real requests on 127.0.0.1 (a GET and a POST with a body, through
a Server in a background thread, and a GET to `python -m yimmo` in a child
process), and say which libev the process loaded.

    python wheel_smoke.py [--bundled-libev]

--bundled-libev fails unless the libev mapped into the process is the copy
auditwheel put next to the package (yimmo.libs/), not the system's.
Run it from outside a source checkout, so `import yimmo` finds the
installed package. Exits 0 and prints "wheel smoke: ok" on success.
"""

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request

TIMEOUT = 30  # generous: cibuildwheel runs this under QEMU for aarch64


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        body = environ["wsgi.input"].read()
    else:
        body = b"hello from an installed yimmo\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def loaded_libev():
    """Paths of the libev files mapped into this process."""
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps
                       if re.search(r"/libev[-.][^/]*$", line.strip())})


def serve_in_thread(yimmo):
    with yimmo.Server(app, bind="127.0.0.1:0", workers=2) as server:
        with urllib.request.urlopen(server.url + "/", timeout=TIMEOUT) as r:
            assert r.status == 200, r.status
            assert r.read() == b"hello from an installed yimmo\n"
        payload = b"x" * 100000
        req = urllib.request.Request(server.url + "/echo", data=payload,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            assert r.read() == payload
    assert server.stopped


def serve_in_child():
    """`python -m yimmo` in a child process, with an app file of its own."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "smoke_app.py"), "w") as f:
            f.write("def app(environ, start_response):\n"
                    "    start_response('200 OK', [('Content-Length', '3')])\n"
                    "    return [b'cli']\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "yimmo", "--bind", "127.0.0.1:0",
             "smoke_app:app"],
            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            url = None
            lines = []
            while url is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                m = re.search(r"Listening at (http://\S+)", line)
                if m:
                    url = m.group(1)
            assert url, "python -m yimmo did not listen: %r" % lines
            with urllib.request.urlopen(url + "/", timeout=TIMEOUT) as r:
                assert r.read() == b"cli"
        finally:
            proc.terminate()
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(TIMEOUT)
    assert proc.returncode == 0, proc.returncode


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundled-libev", action="store_true")
    args = parser.parse_args()

    import yimmo

    print("yimmo %s from %s" % (yimmo.__version__,
                                os.path.dirname(yimmo.__file__)))
    libev = loaded_libev()
    print("libev loaded from: %s" % ", ".join(libev))
    assert libev, "no libev mapped into the process"
    if args.bundled_libev:
        libs = os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(yimmo.__file__))), "yimmo.libs")
        assert all(os.path.dirname(p) == libs for p in libev), \
            "libev is not the wheel's own copy (%s): %s" % (libs, libev)
    serve_in_thread(yimmo)
    serve_in_child()
    print("wheel smoke: ok")


if __name__ == "__main__":
    main()
