"""HTTP/1.1 protocol edges over raw sockets: malformed or ambiguous requests
are refused with the right status and the connection closed, without the
application ever being called; valid but unusual requests are served;
pipelining, keep-alive, Expect: 100-continue and timeouts.
"""

import email.utils
import json
import re
import threading
import time
from wsgiref.validate import validator

import pytest

from helpers import (assert_closed, build_request, chunked, connect, get,
                     parse_response, parse_responses, raw_request,
                     read_response, read_until_close, request, wait_readable)

WAIT = 10


class Recorder:
    """A WSGI app that reads the whole body, records each call and answers
    with what it saw as JSON."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            self.calls.append(environ.get("RAW_URI"))
        inp = environ["wsgi.input"]
        body = b""
        while True:
            piece = inp.read(65536)
            if not piece:
                break
            body += piece
        seen = {k: v for k, v in environ.items()
                if isinstance(v, str) and k.isupper()}
        seen["body"] = body.decode("latin-1")
        out = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(out)))])
        return [out]


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def server(yimmo_server, recorder):
    return yimmo_server(validator(recorder), workers=2)


def seen(resp):
    assert resp.status == 200, resp
    return json.loads(resp.body)


def assert_rejected(server, recorder, data, statuses, app_may_run=False):
    """data gets exactly one response with a status in statuses, marked
    Connection: close, and the server closes the connection. Unless
    app_may_run (errors found in a body the app is already reading), the
    app is not called. The server then still serves."""
    if isinstance(statuses, int):
        statuses = (statuses,)
    before = len(recorder.calls)
    resp = parse_response(raw_request(server.address, data))
    assert resp.status in statuses, resp
    assert resp.headers.get("Connection", "").lower() == "close"
    if not app_may_run:
        assert recorder.calls[before:] == []
    resp2 = get(server.address, "/still-serving")
    assert resp2.status == 200
    return resp


def req(*header_lines, request_line=b"GET / HTTP/1.1", body=b""):
    return b"\r\n".join((request_line,) + header_lines) + b"\r\n\r\n" + body


HOST = b"Host: x"

BAD_HEADS = {
    "bare-lf-line-endings": b"GET / HTTP/1.1\nHost: x\n\n",
    "bare-lf-in-one-header-line": req(HOST + b"\nX-A: b"),
    "bare-cr-in-header-value": req(HOST, b"X-A: a\rb"),
    "obs-fold": req(HOST, b"X-A: a", b" b"),
    "obs-fold-with-tab": req(HOST, b"X-A: a", b"\tb"),
    "space-before-colon": req(HOST, b"X-A : b"),
    "whitespace-before-first-header": req(b" " + HOST),
    "content-length-with-transfer-encoding": req(
        HOST, b"Content-Length: 5", b"Transfer-Encoding: chunked",
        request_line=b"POST / HTTP/1.1", body=b"0\r\n\r\n"),
    "two-different-content-lengths": req(
        HOST, b"Content-Length: 5", b"Content-Length: 6",
        request_line=b"POST / HTTP/1.1", body=b"hello!"),
    "content-length-plus-sign": req(
        HOST, b"Content-Length: +10", request_line=b"POST / HTTP/1.1",
        body=b"0123456789"),
    "content-length-list": req(
        HOST, b"Content-Length: 1, 1", request_line=b"POST / HTTP/1.1",
        body=b"x"),
    "content-length-negative": req(
        HOST, b"Content-Length: -1", request_line=b"POST / HTTP/1.1"),
    "content-length-hex": req(
        HOST, b"Content-Length: 0x10", request_line=b"POST / HTTP/1.1"),
    "content-length-empty": req(
        HOST, b"Content-Length: ", request_line=b"POST / HTTP/1.1"),
    "transfer-encoding-in-http10": req(
        b"Transfer-Encoding: chunked", request_line=b"POST / HTTP/1.0",
        body=b"0\r\n\r\n"),
    "control-char-in-header-value": req(HOST, b"X-A: a\x01b"),
    "nul-in-header-value": req(HOST, b"X-A: a\x00b"),
    "del-in-header-value": req(HOST, b"X-A: a\x7fb"),
    "nbsp-after-header-name": req(HOST, b"X-A\xa0: b"),
    "bad-char-in-header-name": req(HOST, b"X(A): b"),
    "empty-header-name": req(HOST, b": b"),
    "missing-host-in-http11": req(),
    "duplicate-host": req(b"Host: a", b"Host: b"),
    "bad-char-in-method": req(HOST, request_line=b"G(T / HTTP/1.1"),
    "two-spaces-in-request-line": req(HOST,
                                      request_line=b"GET  / HTTP/1.1"),
    "space-in-target": req(HOST, request_line=b"GET /a b HTTP/1.1"),
    "lowercase-http-version": req(HOST, request_line=b"GET / http/1.1"),
}


@pytest.mark.parametrize("data", BAD_HEADS.values(), ids=BAD_HEADS.keys())
def test_malformed_request_gets_400_and_close(server, recorder, data):
    assert_rejected(server, recorder, data, 400)


BAD_BODIES = {
    "chunk-size-not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "missing-crlf-after-chunk-data": b"3\r\nabcX\r\n0\r\n\r\n",
    "chunk-size-overflows": b"10000000000000000\r\nabc\r\n0\r\n\r\n",
    "chunk-size-empty": b"\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_chunked_body_gets_400_and_close(server, recorder, body):
    # The app may already be running (bodies stream), but it must not get
    # to answer: its read fails and the client gets 400.
    data = req(HOST, b"Transfer-Encoding: chunked",
               request_line=b"POST / HTTP/1.1", body=body)
    assert_rejected(server, recorder, data, 400, app_may_run=True)


def test_unknown_transfer_coding_gets_501(server, recorder):
    data = req(HOST, b"Transfer-Encoding: gzip, chunked",
               request_line=b"POST / HTTP/1.1", body=b"0\r\n\r\n")
    assert_rejected(server, recorder, data, 501)


@pytest.mark.parametrize("coding", [b"chunked, gzip", b"gzip",
                                    b"chunked, chunked"])
def test_transfer_coding_not_ending_in_single_chunked_is_refused(
        server, recorder, coding):
    data = req(HOST, b"Transfer-Encoding: " + coding,
               request_line=b"POST / HTTP/1.1", body=b"0\r\n\r\n")
    assert_rejected(server, recorder, data, (400, 501))


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9"])
def test_unsupported_http_version_gets_505(server, recorder, version):
    assert_rejected(server, recorder,
                    req(HOST, request_line=b"GET / " + version), 505)


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/1.9"])
def test_higher_http_1_minor_version_is_served_as_http_11(server, version):
    # RFC 9110 2.5: a higher minor version of a major version we implement
    # is handled as the highest we know, HTTP/1.1: answered as 1.1 and
    # persistent without a Connection header.
    with connect(server.address) as sock:
        sock.sendall(req(HOST, request_line=b"GET /first " + version))
        resp = read_response(sock)
        assert resp.version == "HTTP/1.1"
        env = seen(resp)
        assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert resp.headers.get("Connection", "").lower() != "close"
        sock.sendall(req(HOST, request_line=b"GET /second " + version))
        assert seen(read_response(sock))["PATH_INFO"] == "/second"


def test_long_request_line_gets_414(server, recorder):
    line = b"GET /" + b"a" * 4986 + b" HTTP/1.1"
    assert len(line) == 5000
    assert_rejected(server, recorder, req(HOST, request_line=line), 414)


def test_too_many_header_fields_gets_431(server, recorder):
    fields = [b"X-H%d: v" % i for i in range(100)]
    assert_rejected(server, recorder, req(HOST, *fields), 431)


def test_long_header_field_gets_431(server, recorder):
    field = b"X-Long: " + b"v" * (9000 - 8)
    assert len(field) == 9000
    assert_rejected(server, recorder, req(HOST, field), 431)


def test_unknown_expectation_gets_417(server, recorder):
    assert_rejected(server, recorder, req(HOST, b"Expect: the-unexpected"),
                    417)


def test_body_over_max_body_size_gets_413_before_body_is_sent(
        yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2, max_body_size=100)
    # Only the head goes out: the server must answer without the body.
    head = req(HOST, b"Content-Length: 1000",
               request_line=b"POST / HTTP/1.1")
    assert_rejected(server, recorder, head, 413)


HEAD_ERRORS = {     # status, fields, body, target
    "431-too-many-fields": (
        431, [b"X-H%d: v" % i for i in range(100)], b"", b"/"),
    "417-unknown-expect": (417, [b"Expect: the-unexpected"], b"", b"/"),
    "413-body-over-max": (413, [b"Content-Length: 1000"], b"", b"/"),
    "400-bad-field": (400, [b"X-A : b"], b"", b"/"),
    "400-bad-chunk-in-a-buffered-body": (
        400, [b"Transfer-Encoding: chunked"], b"zz\r\n", b"/"),
    "414-long-target": (414, [], b"", b"/" + b"a" * 5000),
}


@pytest.mark.parametrize("method", ["HEAD", "GET"])
@pytest.mark.parametrize("case", HEAD_ERRORS.values(), ids=HEAD_ERRORS.keys())
def test_error_responses_to_head_have_no_body(yimmo_server, recorder,
                                              method, case):
    """RFC 9110 9.3.2: a response to HEAD has no content, the loop's own
    error responses included (they carried their text: a client reading
    the next response took it for a status line; hostile review s20)."""
    status, fields, body, target = case
    server = yimmo_server(validator(recorder), workers=2, max_body_size=100)
    data = raw_request(server.address, req(
        HOST, *fields, request_line=method.encode() + b" " + target +
        b" HTTP/1.1", body=body))
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), data
    if method == "HEAD":
        assert rest == b"", data
    else:
        assert rest != b"", data


def test_body_at_max_body_size_is_accepted(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2, max_body_size=100)
    with connect(server.address) as sock:
        resp = request(sock, "POST", "/", body=b"x" * 100)
    assert seen(resp)["body"] == "x" * 100


def test_chunked_body_over_max_body_size_gets_413(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2, max_body_size=100)
    data = build_request("POST", "/", body=b"x" * 1000, chunk_size=64)
    assert_rejected(server, recorder, data, 413, app_may_run=True)


def test_configured_limit_request_line(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2,
                          limit_request_line=100)
    ok_line = b"GET /" + b"a" * 80 + b" HTTP/1.1"
    with connect(server.address) as sock:
        sock.sendall(req(HOST, request_line=ok_line))
        assert read_response(sock).status == 200
    long_line = b"GET /" + b"a" * 190 + b" HTTP/1.1"
    assert_rejected(server, recorder, req(HOST, request_line=long_line),
                    414)


def test_configured_limit_request_fields(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2,
                          limit_request_fields=5)
    with connect(server.address) as sock:
        sock.sendall(req(HOST, *[b"X-H%d: v" % i for i in range(4)]))
        assert read_response(sock).status == 200
    assert_rejected(server, recorder,
                    req(HOST, *[b"X-H%d: v" % i for i in range(5)]), 431)


def test_configured_limit_request_field_size(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2,
                          limit_request_field_size=100)
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"X-L: " + b"v" * 80))
        assert read_response(sock).status == 200
    assert_rejected(server, recorder, req(HOST, b"X-L: " + b"v" * 150), 431)


def test_head_larger_than_limit_request_head_size_gets_431(yimmo_server,
                                                           recorder):
    server = yimmo_server(validator(recorder), workers=2,
                          limit_request_head_size=1000)
    fields = [b"X-H%d: %s" % (i, b"v" * 80) for i in range(20)]
    assert_rejected(server, recorder, req(HOST, *fields), 431)


def test_error_response_says_connection_close_even_on_keepalive(
        server, recorder):
    data = req(HOST, b"Connection: keep-alive", b"X-A : b")
    resp = assert_rejected(server, recorder, data, 400)
    assert resp.headers["Connection"].lower() == "close"


IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                         r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         r"\d{4} \d\d:\d\d:\d\d GMT\Z")


def assert_date_header_is_now(resp):
    """RFC 9110 6.6.1: an origin server with a clock sends Date, as an
    IMF-fixdate, on every response it makes, its own errors included."""
    dates = resp.headers.get_all("Date")
    assert len(dates) == 1, resp.raw_head
    assert IMF_FIXDATE.match(dates[0]), dates[0]
    when = email.utils.parsedate_to_datetime(dates[0]).timestamp()
    assert abs(when - time.time()) < 5, dates[0]


ERRORS_BY_STATUS = {
    400: req(HOST, b"X-A : b"),
    414: req(HOST, request_line=b"GET /" + b"a" * 5000 + b" HTTP/1.1"),
    417: req(HOST, b"Expect: the-unexpected"),
    431: req(HOST, *[b"X-H%d: v" % i for i in range(100)]),
    501: req(HOST, b"Transfer-Encoding: gzip, chunked",
             request_line=b"POST / HTTP/1.1", body=b"0\r\n\r\n"),
    505: req(HOST, request_line=b"GET / HTTP/2.0"),
}


@pytest.mark.parametrize("status", ERRORS_BY_STATUS.keys())
def test_error_response_from_parser_carries_date(server, recorder, status):
    resp = assert_rejected(server, recorder, ERRORS_BY_STATUS[status],
                           status)
    assert_date_header_is_now(resp)


def test_header_timeout_408_carries_date(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2, header_timeout=0.5)
    with connect(server.address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        resp = parse_response(read_until_close(sock, timeout=WAIT))
    assert resp.status == 408
    assert_date_header_is_now(resp)


def test_413_for_oversized_body_carries_date(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2, max_body_size=100)
    resp = assert_rejected(server, recorder,
                           req(HOST, b"Content-Length: 1000",
                               request_line=b"POST / HTTP/1.1"), 413)
    assert_date_header_is_now(resp)


def test_500_for_app_error_before_headers_carries_date(yimmo_server):
    def app(environ, start_response):
        raise RuntimeError("boom before start_response")

    server = yimmo_server(app, workers=1)
    resp = parse_response(raw_request(server.address, req(HOST)))
    assert resp.status == 500
    assert_date_header_is_now(resp)


# -- valid edges -------------------------------------------------------------


def test_absolute_form_target_is_accepted(server):
    with connect(server.address) as sock:
        sock.sendall(req(b"Host: example.com",
                         request_line=b"GET http://example.com/p/q?x=1 "
                                      b"HTTP/1.1"))
        env = seen(read_response(sock))
    assert env["PATH_INFO"] == "/p/q"
    assert env["QUERY_STRING"] == "x=1"
    assert env["HTTP_HOST"] == "example.com"


@pytest.mark.parametrize("target, host", [
    (b"http://example.com/abs", "example.com"),
    (b"HTTP://a.example:8080/abs?q=1", "a.example:8080"),
    (b"https://[::1]:81", "[::1]:81"),
])
def test_absolute_form_authority_replaces_host_header(server, target, host):
    # RFC 9112 3.2.2: with an absolute-form target the Host field is
    # ignored and the target's authority is the host.
    with connect(server.address) as sock:
        sock.sendall(req(b"Host: x", request_line=b"GET " + target
                         + b" HTTP/1.1"))
        env = seen(read_response(sock))
    assert env["HTTP_HOST"] == host


def test_absolute_form_sets_host_for_http10_without_host_header(server):
    with connect(server.address) as sock:
        sock.sendall(req(request_line=b"GET http://h.example/x HTTP/1.0"))
        env = seen(read_response(sock))
    assert env["HTTP_HOST"] == "h.example"
    assert env["PATH_INFO"] == "/x"


def test_options_asterisk_is_accepted(yimmo_server, recorder):
    # PATH_INFO for "*" is not a path: validator() would object to it.
    server = yimmo_server(recorder, workers=2)
    with connect(server.address) as sock:
        sock.sendall(req(HOST, request_line=b"OPTIONS * HTTP/1.1"))
        env = seen(read_response(sock))
    assert env["REQUEST_METHOD"] == "OPTIONS"
    assert env["RAW_URI"] == "*"


def test_leading_empty_line_before_request_line_is_ignored(server):
    with connect(server.address) as sock:
        sock.sendall(b"\r\n" + req(HOST, request_line=b"GET /x HTTP/1.1"))
        assert seen(read_response(sock))["PATH_INFO"] == "/x"


def test_tab_inside_header_value_is_kept(server):
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"X-Tab: a\tb"))
        assert seen(read_response(sock))["HTTP_X_TAB"] == "a\tb"


def test_whitespace_around_header_value_is_trimmed(server):
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"X-Pad: \t padded \t"))
        assert seen(read_response(sock))["HTTP_X_PAD"] == "padded"


def test_obs_text_in_header_value_is_passed_as_latin1(server):
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"X-Text: caf\xc3\xa9"))
        assert seen(read_response(sock))["HTTP_X_TEXT"] == "caf\xc3\xa9"


def test_chunked_body_with_extensions_and_trailers(server):
    body = chunked(b"hello world", chunk_size=[5, 6],
                   extensions=b";name=value;flag",
                   trailers=b"X-Trailer: t\r\nX-Other: u\r\n")
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Transfer-Encoding: chunked",
                         request_line=b"POST /c HTTP/1.1", body=body))
        assert seen(read_response(sock))["body"] == "hello world"
        # the trailer section was consumed: the connection goes on
        assert seen(request(sock, "GET", "/after"))["PATH_INFO"] == "/after"


def test_http10_keepalive_with_connection_header(server):
    with connect(server.address) as sock:
        port = sock.getsockname()[1]
        for path in ("/one", "/two"):
            sock.sendall(build_request("GET", path,
                                       [("Connection", "keep-alive")],
                                       version="HTTP/1.0"))
            resp = read_response(sock)
            env = seen(resp)
            assert resp.headers.get("Connection", "").lower() == "keep-alive"
            assert env["PATH_INFO"] == path
            assert env["REMOTE_PORT"] == str(port)


def test_http10_without_keepalive_closes_after_response(server):
    data = raw_request(server.address, build_request("GET", "/",
                                                     version="HTTP/1.0"))
    assert parse_response(data).status == 200


def test_connection_close_from_client_closes_after_response(server):
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/", [("Connection", "close")]))
        resp = read_response(sock)
        assert resp.status == 200
        assert resp.headers.get("Connection", "").lower() == "close"
        assert_closed(sock)


def test_three_pipelined_requests_answered_in_order(server, recorder):
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/1")
                     + build_request("POST", "/2", body=b"two")
                     + build_request("GET", "/3"))
        envs = [seen(read_response(sock)) for _ in range(3)]
    assert [e["PATH_INFO"] for e in envs] == ["/1", "/2", "/3"]
    assert envs[1]["body"] == "two"
    assert recorder.calls == ["/1", "/2", "/3"]


def test_pipelined_responses_keep_order_when_first_is_slow(yimmo_server):
    entered = threading.Event()
    release = threading.Event()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/slow":
            entered.set()
            release.wait(WAIT)
        body = path.encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    server = yimmo_server(validator(app), workers=2)
    try:
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/slow")
                         + build_request("GET", "/fast"))
            assert entered.wait(WAIT)
            release.set()
            assert read_response(sock).body == b"/slow"
            assert read_response(sock).body == b"/fast"
    finally:
        release.set()


def test_error_in_second_of_three_pipelined_requests(server, recorder):
    data = (build_request("GET", "/1")
            + req(HOST, b"X-A: a", b" folded", request_line=b"GET /2 HTTP/1.1")
            + build_request("GET", "/3"))
    responses = parse_responses(raw_request(server.address, data))
    assert [r.status for r in responses] == [200, 400]
    assert seen(responses[0])["PATH_INFO"] == "/1"
    assert responses[1].headers.get("Connection", "").lower() == "close"
    assert recorder.calls == ["/1"]


# -- fields that cannot repeat, trailer fields, empty list elements ----------

# RFC 9110 5.3: a field that is not a list must not be repeated. These are
# the ones where a proxy taking the first line and an app seeing them joined
# (or taking the last) would act on different values; see SINGLETONS in
# ext/http_parser.c for the reasons. Even identical repeats are refused.
REPEATED_SINGLETONS = {
    "host-same-value": (b"Host: x", b"host: x"),
    "content-type": (b"Content-Type: text/plain",
                     b"Content-Type: application/json"),
    "content-type-same-value": (b"Content-Type: text/plain",
                                b"content-type: text/plain"),
    "content-range": (b"Content-Range: bytes 0-0/2",
                      b"Content-Range: bytes 1-1/2"),
    "authorization": (b"Authorization: Basic YTpi",
                      b"Authorization: Bearer token"),
    "proxy-authorization": (b"Proxy-Authorization: Basic YTpi",
                            b"PROXY-AUTHORIZATION: Basic Yzpk"),
    "origin": (b"Origin: https://a.example", b"Origin: https://b.example"),
    "referer": (b"Referer: https://a.example/",
                b"Referer: https://b.example/"),
    "range": (b"Range: bytes=0-1", b"Range: bytes=5-6"),
    "if-range": (b'If-Range: "a"', b'If-Range: "b"'),
    "if-modified-since": (b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
                          b"If-Modified-Since: Mon, 07 Nov 1994 08:49:37 GMT"),
    "if-unmodified-since": (
        b"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
        b"If-Unmodified-Since: Mon, 07 Nov 1994 08:49:37 GMT"),
    "max-forwards": (b"Max-Forwards: 1", b"Max-Forwards: 0"),
}


@pytest.mark.parametrize("lines", REPEATED_SINGLETONS.values(),
                         ids=REPEATED_SINGLETONS.keys())
def test_repeated_singleton_field_gets_400_and_close(server, recorder,
                                                     lines):
    host = () if lines[0].lower().startswith(b"host:") else (HOST,)
    data = req(*host, lines[0], b"X-Between: 1", lines[1],
               request_line=b"POST / HTTP/1.1")
    assert_rejected(server, recorder, data, 400)


def test_identical_content_length_lines_are_one(server):
    # RFC 9110 8.6 lets a recipient take identical Content-Length lines as
    # one; a list in one line ("5, 5") or differing values stay refused.
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Content-Length: 5", b"content-length: 5",
                         request_line=b"POST / HTTP/1.1", body=b"hello"))
        env = seen(read_response(sock))
        assert env["CONTENT_LENGTH"] == "5"
        assert env["body"] == "hello"
        assert seen(request(sock, "GET", "/after"))["PATH_INFO"] == "/after"


def test_repeated_list_and_harmless_fields_are_joined(server):
    # Lists (Accept, Cache-Control, ...) join with ","; User-Agent is not a
    # list but is left out of the refused set on purpose: clients do send
    # it twice, and nothing a proxy decides hangs on it.
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Accept: text/html", b"User-Agent: a/1",
                         b"Accept: */*", b"User-Agent: b/2",
                         b"Cache-Control: no-cache",
                         b"Cache-Control: max-age=0"))
        env = seen(read_response(sock))
    assert env["HTTP_ACCEPT"] == "text/html,*/*"
    assert env["HTTP_USER_AGENT"] == "a/1,b/2"
    assert env["HTTP_CACHE_CONTROL"] == "no-cache,max-age=0"


# RFC 9110 6.5.1: fields that must be known before the content is processed
# (framing, routing, request modifiers, authentication, content format) or
# that manage the connection cannot be trailer fields. One of them in a
# trailer section is a 400 and the connection is closed: nothing after it
# is read as a request. See NO_TRAILER in ext/http_parser.c.
FORBIDDEN_TRAILERS = [
    b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Trailer: X-A",
    b"Host: other.example", b"Expect: 100-continue", b"Range: bytes=0-1",
    b"If-Match: *", b"If-None-Match: *",
    b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
    b"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
    b'If-Range: "a"', b"Max-Forwards: 0", b"TE: trailers",
    b"Cache-Control: no-cache", b"Authorization: Basic YTpi",
    b"Proxy-Authorization: Basic YTpi", b"Cookie: a=b",
    b"Content-Type: text/plain", b"Content-Encoding: gzip",
    b"Content-Range: bytes 0-0/1", b"Connection: close",
    b"Keep-Alive: timeout=5", b"Proxy-Connection: close",
    b"Upgrade: websocket", b"content-LENGTH: 0",
]


@pytest.mark.parametrize("field", FORBIDDEN_TRAILERS,
                         ids=[f.split(b":")[0].decode()
                              for f in FORBIDDEN_TRAILERS])
def test_forbidden_trailer_field_gets_400_and_close(server, recorder, field):
    # The app reads the body, so it is running when the trailer comes: its
    # read fails and the client gets the 400. What follows the trailer
    # section is never taken for a request.
    body = chunked(b"hello", trailers=b"X-Ok: 1\r\n" + field + b"\r\n")
    data = req(HOST, b"Transfer-Encoding: chunked",
               request_line=b"POST / HTTP/1.1", body=body)
    data += build_request("GET", "/smuggled")
    assert_rejected(server, recorder, data, 400, app_may_run=True)
    assert "/smuggled" not in recorder.calls


def test_permitted_trailer_fields_are_read_and_dropped(server):
    body = chunked(b"hello", trailers=b"X-Checksum: abc\r\n"
                   b"Server-Timing: db;dur=5\r\nContent-Language: en\r\n")
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Transfer-Encoding: chunked",
                         request_line=b"POST / HTTP/1.1", body=body))
        env = seen(read_response(sock))
        assert env["body"] == "hello"
        assert "HTTP_X_CHECKSUM" not in env
        assert "HTTP_SERVER_TIMING" not in env
        assert "HTTP_CONTENT_LANGUAGE" not in env
        assert seen(request(sock, "GET", "/after"))["PATH_INFO"] == "/after"


# RFC 9110 5.6.1: a recipient ignores empty list elements.
EMPTY_TE_ELEMENTS = [b", chunked", b"chunked,", b" , ,chunked , ,",
                     b",,chunked"]


@pytest.mark.parametrize("coding", EMPTY_TE_ELEMENTS)
def test_empty_transfer_coding_elements_are_ignored(server, coding):
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Transfer-Encoding: " + coding,
                         request_line=b"POST / HTTP/1.1",
                         body=chunked(b"hello world", chunk_size=4)))
        env = seen(read_response(sock))
        assert env["body"] == "hello world"
        assert seen(request(sock, "GET", "/after"))["PATH_INFO"] == "/after"


@pytest.mark.parametrize("lines", [
    (b"Transfer-Encoding: ,",),
    (b"Transfer-Encoding: , ,",),
    (b"Transfer-Encoding: ,", b"Transfer-Encoding: chunked"),
    (b"Transfer-Encoding: chunked", b"Transfer-Encoding: ,"),
], ids=["only-comma", "only-commas", "comma-line-then-chunked",
        "chunked-then-comma-line"])
def test_transfer_encoding_line_without_a_coding_is_refused(server, recorder,
                                                            lines):
    # A line that names no coding could be read as "no Transfer-Encoding"
    # by a recipient that looks at it alone: refused, even beside chunked.
    data = req(HOST, *lines, request_line=b"POST / HTTP/1.1",
               body=b"0\r\n\r\n")
    assert_rejected(server, recorder, data, 400)


@pytest.mark.parametrize("value", [b"100-continue,", b", 100-continue",
                                   b"100-continue, ,100-Continue"])
def test_empty_expect_elements_are_ignored(server, value):
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Expect: " + value, b"Content-Length: 5",
                         request_line=b"POST / HTTP/1.1"))
        interim = read_response(sock)
        assert interim.status == 100
        sock.sendall(b"hello")
        assert seen(read_response(sock))["body"] == "hello"


@pytest.mark.parametrize("value", [b"", b",", b" , "])
def test_expect_without_expectations_is_no_expectation(server, value):
    # Expect = #expectation: an empty list expects nothing, so no 100.
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Expect: " + value, b"Content-Length: 5",
                         request_line=b"POST / HTTP/1.1", body=b"hello"))
        resp = read_response(sock)
        assert resp.status == 200
        assert seen(resp)["body"] == "hello"


@pytest.mark.parametrize("value", [b", close", b"close,", b" ,, close ,"])
def test_empty_connection_elements_are_ignored(server, value):
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Connection: " + value))
        resp = read_response(sock)
        assert resp.status == 200
        assert resp.headers.get("Connection", "").lower() == "close"
        assert_closed(sock)


@pytest.mark.parametrize("target, host", [
    (b"/", b"example.com:"),
    (b"/", b"[::1]:"),
    (b"http://abs.example:/p", b"abs.example:"),
], ids=["host-field", "ipv6-host-field", "absolute-form"])
def test_empty_port_in_host_is_accepted(server, target, host):
    # RFC 3986 3.2.3: port = *DIGIT, so "name:" is a valid authority that
    # means the scheme's default port. HTTP_HOST is the authority as sent.
    with connect(server.address) as sock:
        sock.sendall(req(b"Host: " + host if target == b"/" else HOST,
                         request_line=b"GET " + target + b" HTTP/1.1"))
        env = seen(read_response(sock))
    assert env["HTTP_HOST"] == host.decode()


@pytest.mark.parametrize("tail", [
    b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    b"",
], ids=["tunnel-bytes-look-like-a-request", "nothing-after"])
def test_connect_gets_501_and_what_follows_is_never_served(server, recorder,
                                                           tail):
    """A WSGI app cannot open a tunnel. Served as a request, a 2xx to
    CONNECT made a proxy in front tunnel the bytes after it unread, and
    yimmo served them as requests behind the proxy's back (wire review
    s18)."""
    with_body = req(b"Host: internal.example:443", b"Content-Length: 5",
                    request_line=b"CONNECT internal.example:443 HTTP/1.1",
                    body=b"hello" + tail)
    plain = req(b"Host: internal.example:443",
                request_line=b"CONNECT internal.example:443 HTTP/1.1") + tail
    for data in (plain, with_body):
        before = len(recorder.calls)
        received = raw_request(server.address, data)
        assert received.count(b"HTTP/1.1 ") == 1, received
        resp = parse_response(received)
        assert resp.status == 501
        assert resp.headers.get("Connection", "").lower() == "close"
        assert recorder.calls[before:] == []
    assert get(server.address, "/still-serving").status == 200


def test_connect_with_empty_port_is_still_refused(server, recorder):
    # CONNECT names a port to open a tunnel to: there is no default.
    assert_rejected(server, recorder,
                    req(HOST, request_line=b"CONNECT example.com: HTTP/1.1"),
                    400)


# -- Expect: 100-continue ----------------------------------------------------


def test_100_continue_sent_when_app_reads_body(yimmo_server):
    entered = threading.Event()
    go = threading.Event()

    def app(environ, start_response):
        entered.set()
        go.wait(WAIT)
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    # Streamed (buffer_body=0): the app decides when the body is wanted.
    server = yimmo_server(validator(app), workers=2, buffer_body=0)
    try:
        with connect(server.address) as sock:
            sock.sendall(req(HOST, b"Expect: 100-continue",
                             b"Content-Length: 5",
                             request_line=b"POST / HTTP/1.1"))
            assert entered.wait(WAIT)
            # the app has not read yet: nothing may have been sent
            assert not wait_readable(sock, 0.5), \
                "server answered before the app read the body"
            go.set()
            interim = read_response(sock)
            assert interim.status == 100
            assert interim.body == b""
            sock.sendall(b"hello")
            final = read_response(sock)
            assert final.status == 200
            assert final.body == b"hello"
    finally:
        go.set()


def test_no_100_continue_when_app_answers_without_reading(yimmo_server):
    def app(environ, start_response):
        body = b"too large"
        start_response("413 Content Too Large",
                       [("Content-Type", "text/plain"),
                        ("Content-Length", str(len(body)))])
        return [body]

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Expect: 100-continue",
                         b"Content-Length: 100000",
                         request_line=b"POST / HTTP/1.1"))
        resp = read_response(sock)
    assert resp.status == 413
    assert resp.body == b"too large"


def test_100_continue_for_a_buffered_body_comes_from_the_loop(yimmo_server):
    """A body small enough to buffer is asked for by the loop at once and
    read whole before the app runs: Expect is no way around buffering (a
    client trickling it cannot hold a worker)."""
    calls = []

    def app(environ, start_response):
        calls.append(time.monotonic())
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Expect: 100-continue",
                         b"Content-Length: 5",
                         request_line=b"POST / HTTP/1.1"))
        assert read_response(sock).status == 100
        assert calls == []
        sock.sendall(b"he")
        time.sleep(0.3)
        assert calls == []          # not before the body is in
        sock.sendall(b"llo")
        assert read_response(sock).body == b"hello"


def test_expect_100_continue_ignored_for_http10(server):
    with connect(server.address) as sock:
        sock.sendall(req(b"Expect: 100-continue", b"Content-Length: 5",
                         request_line=b"POST / HTTP/1.0", body=b"hello"))
        resp = read_response(sock)
    assert resp.status == 200
    assert seen(resp)["body"] == "hello"


# -- timeouts ----------------------------------------------------------------


def test_header_timeout_closes_connection_with_incomplete_head(
        yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2, header_timeout=0.5)
    with connect(server.address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        data = read_until_close(sock, timeout=WAIT)
    if data:
        assert parse_response(data).status == 408
    assert recorder.calls == []


def test_keepalive_timeout_closes_idle_connection(yimmo_server, recorder):
    server = yimmo_server(validator(recorder), workers=2,
                          keepalive_timeout=0.5)
    with connect(server.address) as sock:
        assert request(sock, "GET", "/").status == 200
        assert_closed(sock, timeout=WAIT)


def test_body_timeout_closes_stalled_upload_and_fails_the_read(
        yimmo_server):
    outcome = []
    done = threading.Event()

    def app(environ, start_response):
        try:
            data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            outcome.append(data)
        except Exception as exc:
            outcome.append(exc)
        finally:
            done.set()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", "4")])
        return [b"done"]

    server = yimmo_server(validator(app), workers=2, body_timeout=0.5,
                          buffer_body=0)
    with connect(server.address) as sock:
        sock.sendall(req(HOST, b"Content-Length: 10",
                         request_line=b"POST / HTTP/1.1", body=b"ab"))
        assert done.wait(WAIT), "read() still blocked after body_timeout"
        read_until_close(sock, timeout=WAIT)
    # A body cut short must not look like a whole one to the app.
    assert isinstance(outcome[0], Exception), outcome


@pytest.mark.parametrize("proxy", [False, True])
def test_error_response_to_a_head_after_a_split_empty_line(yimmo_server,
                                                          recorder, proxy):
    """The empty line the parser skips before a request may stay at the
    front of the buffer (its CR and LF in two reads, or behind a PROXY
    header): the loop still reads the method past it (review s20)."""
    server = yimmo_server(validator(recorder), workers=2, max_body_size=10,
                          proxy_protocol=proxy)
    sock = connect(server.address, WAIT)
    if proxy:
        sock.sendall(b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n\r")
    else:
        sock.sendall(b"\r")
    time.sleep(0.1)
    sock.sendall(b"\n" + req(HOST, b"Content-Length: 100",
                             request_line=b"HEAD / HTTP/1.1"))
    data = read_until_close(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), data
    assert rest == b"", data
