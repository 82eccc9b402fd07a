"""Apps with threads of their own, and streams in both directions at once:
a thread still reading wsgi.input or blocked in write() when the response
is done, full-duplex streaming with one and several writers, HEAD of an
endless stream, and signals reaching the processes an app starts.

A server that could hang on a regression runs in a subprocess, so that a
hang is a bounded failure rather than a stuck test run."""

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from helpers import (ServerProcess, build_request, chunked, connect, get,
                     read_response, reader_for)

WAIT = 10


def serve_app(tmp_path, source, **options):
    """A subprocess serving the WSGI app `app` defined by source; returns
    (process, (host, port))."""
    opts = "".join(", %s=%r" % kv for kv in options.items())
    script = tmp_path / "threadapp.py"
    script.write_text(textwrap.dedent(source) + textwrap.dedent('''
        import yimmo
        yimmo.serve(app, bind="127.0.0.1:0"%s)
    ''' % opts))
    proc = ServerProcess([sys.executable, str(script)])
    return proc, proc.wait_listening()


def stop(proc):
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0, proc.stderr


def text(start_response, body):
    body = body.encode() if isinstance(body, str) else body
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


# -- a thread of the app still reading the body when the response is done --

BACKGROUND_READER = '''
    import threading, time
    results = []
    done = threading.Event()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/upload":
            # "202 Accepted": the upload is processed in the background.
            inp = environ["wsgi.input"]
            later = environ["QUERY_STRING"] == "later"
            def work():
                if later:
                    time.sleep(0.5)     # starts after the response is out
                got = []
                try:
                    while True:
                        piece = inp.read(65536)
                        if not piece:
                            break
                        got.append(piece)
                    results.append(["eof", b"".join(got).decode()])
                except OSError as exc:
                    results.append(["raised", b"".join(got).decode(),
                                    str(exc)])
                done.set()
            threading.Thread(target=work, daemon=True).start()
            if not later:
                time.sleep(0.3)         # the reader is waiting for more
            start_response("202 Accepted", [("Content-Length", "0")])
            return []
        if path == "/result":
            finished = done.wait(5)
            body = json.dumps([finished, results]).encode()
        else:
            body = b"ok"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    import json
'''


@pytest.mark.parametrize("when", ["pending", "later"])
def test_background_reader_after_response_does_not_freeze_loop(tmp_path,
                                                                when):
    # Streamed, so that the app runs before its body is complete.
    proc, addr = serve_app(tmp_path, BACKGROUND_READER, workers=2,
                           buffer_body=0)
    with proc:
        with connect(addr, WAIT) as sock:
            # Content-Length 10, only 3 bytes: the reader waits for more.
            sock.sendall(b"POST /upload?%s HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 10\r\n\r\nabc" % when.encode())
            assert read_response(sock).status == 202
            # The loop still serves others while that client stays.
            status, _, body = get(addr, "/", timeout=WAIT)
            assert (status, body) == (200, b"ok")
            status, _, body = get(addr, "/result", timeout=WAIT)
            assert status == 200
            finished, results = json.loads(body)
        # The reader got what was received, then an error: promptly.
        assert finished, proc.stderr
        assert results[0][:2] == ["raised", "abc"], results
        assert "response is complete" in results[0][2]
        stop(proc)


BACKGROUND_WRITER = '''
    import threading, time, json
    results = []
    done = threading.Event()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/stream":
            write = start_response("200 OK", [("Content-Type",
                                               "text/plain")])
            wrote = threading.Event()
            def work():
                n = 0
                try:
                    for _ in range(150):        # 10 MB: blocks on the client
                        write(b"w" * 65536)
                        n += 1
                        wrote.set()
                    results.append(["finished", n])
                except Exception as exc:
                    results.append([type(exc).__name__, n])
                wrote.set()
                if len(results) == 3:
                    done.set()
            # Three writers: all of them must be woken when it ends.
            for _ in range(3):
                threading.Thread(target=work, daemon=True).start()
            wrote.wait(5)
            time.sleep(0.5)     # the writer is blocked on the slow client
            return []
        if path == "/result":
            finished = done.wait(5)
            body = json.dumps([finished, results]).encode()
        else:
            body = b"ok"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
'''


def test_background_writer_blocked_when_response_ends(tmp_path):
    proc, addr = serve_app(tmp_path, BACKGROUND_WRITER, workers=2)
    with proc:
        with connect(addr, 30) as sock:
            sock.sendall(build_request("GET", "/stream"))
            # Read nothing for a while: the writer thread blocks, the app
            # returns, the exchange ends under it.
            time.sleep(1.5)
            resp = read_response(sock)
        assert resp.status == 200
        assert set(resp.body) <= {ord("w")}
        assert len(resp.body) % 65536 == 0 and len(resp.body) > 0
        status, _, body = get(addr, "/result", timeout=WAIT)
        finished, results = json.loads(body)
        assert finished, proc.stderr
        # The blocked write()s returned, and the next ones raised.
        assert [r[0] for r in results] == ["RuntimeError"] * 3, results
        assert sum(r[1] for r in results) * 65536 <= len(resp.body)
        assert get(addr, "/", timeout=WAIT)[2] == b"ok"
        stop(proc)


# -- full duplex: the app writes while it reads ----------------------------

DUPLEX = '''
    import threading

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type",
                                           "application/octet-stream")])
        writers = int(environ["QUERY_STRING"] or 1)
        pieces = 200 // writers
        def work():
            for _ in range(pieces):
                write(b"P" * 65536)
        threads = [threading.Thread(target=work) for _ in range(writers)]
        for t in threads:
            t.start()
        total = 0
        inp = environ["wsgi.input"]
        while environ["REQUEST_METHOD"] == "POST":
            data = inp.read(65536)
            if not data:
                break
            total += len(data)
        for t in threads:
            t.join()
        return [b"END %d" % total]
'''


@pytest.mark.parametrize("writers,upload", [(1, True), (5, False),
                                             (5, True)])
def test_full_duplex_streaming_with_threads(tmp_path, writers, upload):
    proc, addr = serve_app(tmp_path, DUPLEX, workers=2)
    body = b"u" * (100 * 65536) if upload else b""
    if upload:
        request = build_request("POST", "/?%d" % writers, body=body,
                                chunk_size=65536)
    else:
        request = build_request("GET", "/?%d" % writers)
    with proc:
        with connect(addr, 30) as sock:
            errors = []

            def send():
                # Paced, so that the app's reader often waits for the body
                # while its writers wait for the client.
                try:
                    for pos in range(0, len(request), 65536):
                        sock.sendall(request[pos:pos + 65536])
                        time.sleep(0.002)
                except OSError as exc:
                    errors.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            reader = reader_for(sock)
            head = reader.read_head()
            assert head["status"] == 200
            assert head["headers"]["Transfer-Encoding"] == "chunked"
            data = bytearray()
            while True:
                line = reader.readline()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    reader.readline()
                    break
                data += reader.read(size)
                reader.read(2)
                if len(data) % (1 << 20) < size:
                    time.sleep(0.01)        # a client that reads slowly
            sender.join(30)
        assert not errors
        expected = (200 // writers) * writers * 65536
        assert len(data) == expected + len(b"END %d" % len(body))
        assert bytes(data) == b"P" * expected + b"END %d" % len(body)
        stop(proc)


# -- HEAD of an endless stream ----------------------------------------------

ENDLESS = '''
    import threading, time
    closed = []

    class Events:
        """Server-sent events: an iterable that never ends by itself."""
        def __iter__(self):
            while True:
                yield b"data: tick\\n\\n"
                time.sleep(0.01)

        def close(self):
            closed.append("events")

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/events":
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return Events()
        if path == "/lazy":
            # start_response inside the generator, as streaming helpers do
            def gen():
                start_response("200 OK", [("Content-Type",
                                           "text/event-stream")])
                try:
                    while True:
                        yield b"data: tick\\n\\n"
                        time.sleep(0.01)
                finally:
                    closed.append("lazy")
            return gen()
        body = ",".join(closed).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
'''


def test_head_of_endless_stream_answers_and_closes_iterable(tmp_path):
    proc, addr = serve_app(tmp_path, ENDLESS, workers=4)
    with proc:
        socks = []
        try:
            # As many HEADs as workers: none may keep its worker.
            for i in range(4):
                sock = connect(addr, 5)
                socks.append(sock)
                path = "/events" if i % 2 == 0 else "/lazy"
                sock.sendall(build_request("HEAD", path))
                head = read_response(sock, method="HEAD")
                assert head.status == 200
                assert head.headers["Content-Type"] == "text/event-stream"
                assert head.body == b""
            # The connection stays usable, and close() was called.
            socks[-1].sendall(build_request("GET", "/closed"))
            resp = read_response(socks[-1])
            assert sorted(resp.body.split(b",")) == \
                [b"events", b"events", b"lazy", b"lazy"]
            assert get(addr, "/", timeout=5)[0] == 200
        finally:
            for sock in socks:
                sock.close()
        stop(proc)


# -- signals reach what the app starts ----------------------------------------


def test_children_of_the_app_get_signals(yimmo_server):
    def app(environ, start_response):
        child = subprocess.Popen([sys.executable, "-c",
                                  "import time; time.sleep(30)"])
        try:
            with open("/proc/%d/status" % child.pid) as f:
                blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)",
                                        f.read()).group(1), 16)
            child.terminate()
            try:
                rc = child.wait(5)
            except subprocess.TimeoutExpired:
                rc = "still running"
        finally:
            child.kill()
            child.wait()
        return text(start_response, json.dumps({"blocked": blocked,
                                                "rc": rc}))

    server = yimmo_server(app, workers=2)
    status, _, body = get(server.address, "/", timeout=WAIT)
    assert status == 200
    result = json.loads(body)
    assert result["rc"] == -signal.SIGTERM
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert not result["blocked"] & (1 << (sig - 1)), result
