"""No memory leaks per request: a server in a subprocess answers many
requests of every kind (plain, bodies both ways, chunked, errors, app
exceptions, refused requests) and its RSS stays flat after a warm-up."""

import http.client
import re
import signal
import socket
import sys
import textwrap


from helpers import ServerProcess, skip_under_asan

APP = textwrap.dedent('''
    import yimmo

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/boom":
            raise RuntimeError("boom")
        if path == "/echo":
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/big":
            # Items big enough to be sent by reference (not copied).
            start_response("200 OK", [])
            return [b"b" * 65536, b"c" * 20000]
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (b"x" * 1000 for _ in range(5))
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("X-Env", str(len(environ)))])
        return [b"hello"]

    import logging
    logging.getLogger("yimmo.error").disabled = True
    yimmo.serve(app, bind="127.0.0.1:0", workers=2)
''')


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def start_server(tmp_path):
    script = tmp_path / "leakapp.py"
    script.write_text(APP)
    return ServerProcess([sys.executable, str(script)])


def one_round(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(20):
        conn.request("GET", "/hello?x=1", headers={"X-A": "b"})
        assert conn.getresponse().read() == b"hello"
    conn.request("POST", "/echo", body=b"y" * 5000)
    assert len(conn.getresponse().read()) == 5000
    conn.request("POST", "/echo", body=iter([b"a" * 300, b"b" * 300]),
                 headers={"Transfer-Encoding": "chunked"},
                 encode_chunked=True)
    assert conn.getresponse().read() == b"a" * 300 + b"b" * 300
    conn.request("GET", "/stream")
    assert len(conn.getresponse().read()) == 5000
    conn.request("GET", "/big")
    assert len(conn.getresponse().read()) == 85536
    conn.request("GET", "/boom")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 500
    conn.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")


@skip_under_asan
def test_rss_is_flat_over_many_requests(tmp_path):
    with start_server(tmp_path) as proc:
        port = proc.wait_listening()[1]
        for _ in range(150):
            one_round(port)
        before = rss_kb(proc.proc.pid)
        for _ in range(600):
            one_round(port)
        after = rss_kb(proc.proc.pid)
        # 600 rounds are ~15,000 requests: a leak of 300 bytes per request
        # would add over 4 MB.
        assert after - before < 4096, (before, after)
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
