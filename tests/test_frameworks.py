"""Real Flask and Django applications served by yimmo, checked with
requests: routing with path parameters, JSON bodies, streamed responses."""

import pytest

requests = pytest.importorskip("requests")

TIMEOUT = 10


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


# -- Flask -------------------------------------------------------------------


def make_flask_app():
    flask = pytest.importorskip("flask")
    app = flask.Flask("yimmo_flask_test")

    @app.get("/hello/<name>")
    def hello(name):
        return "hello %s" % name

    @app.post("/echo")
    def echo():
        data = flask.request.get_json()
        return flask.jsonify(received=data,
                             length=flask.request.content_length)

    @app.get("/stream")
    def stream():
        count = int(flask.request.args.get("n", "5"))

        @flask.stream_with_context
        def generate():
            # the request context is still there while streaming
            prefix = flask.request.args.get("prefix", "line")
            for i in range(count):
                yield "%s %d\n" % (prefix, i)
        return flask.Response(generate(), mimetype="text/plain")

    @app.get("/big")
    def big():
        def generate():
            for _ in range(64):
                yield b"z" * 65536
        return flask.Response(generate(), mimetype="application/octet-stream")

    return app


@pytest.fixture
def flask_server(yimmo_server):
    return yimmo_server(make_flask_app(), workers=2)


def test_flask_route_with_path_parameter(flask_server, session):
    resp = session.get(flask_server.url + "/hello/world", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.text == "hello world"
    assert resp.headers["Content-Type"].startswith("text/html")


def test_flask_utf8_path_parameter(flask_server, session):
    resp = session.get(flask_server.url + "/hello/caf%C3%A9", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.content.decode("utf-8") == "hello caf\u00e9"


def test_flask_json_post_echo(flask_server, session):
    payload = {"a": 1, "b": [1, 2, 3], "text": "\u00e9t\u00e9"}
    resp = session.post(flask_server.url + "/echo", json=payload,
                        timeout=TIMEOUT)
    assert resp.status_code == 200
    body = resp.json()
    assert body["received"] == payload
    assert body["length"] == len(resp.request.body)


def test_flask_streamed_response_with_request_context(flask_server, session):
    resp = session.get(flask_server.url + "/stream?n=4&prefix=row",
                       timeout=TIMEOUT, stream=True)
    try:
        assert resp.status_code == 200
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert resp.text == "row 0\nrow 1\nrow 2\nrow 3\n"
    finally:
        resp.close()


def test_flask_large_streamed_response(flask_server, session):
    resp = session.get(flask_server.url + "/big", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.content == b"z" * (64 * 65536)


def test_flask_not_found(flask_server, session):
    resp = session.get(flask_server.url + "/nope", timeout=TIMEOUT)
    assert resp.status_code == 404


def test_flask_keepalive_across_requests(flask_server, session):
    for i in range(5):
        resp = session.get(flask_server.url + "/hello/%d" % i,
                           timeout=TIMEOUT)
        assert resp.text == "hello %d" % i


# -- Django ------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_app():
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ROOT_URLCONF="apps.django_app",
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="yimmo-tests-not-secret",
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={},
            USE_TZ=True,
        )
        django.setup()
    elif settings.ROOT_URLCONF != "apps.django_app":
        pytest.skip("Django is already configured for something else")
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


@pytest.fixture
def django_server(yimmo_server, django_app):
    return yimmo_server(django_app, workers=2)


def test_django_http_response(django_server, session):
    resp = session.get(django_server.url + "/hello/django/", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.text == "hello django"
    assert resp.headers["Content-Type"].startswith("text/plain")


def test_django_json_response_from_post_body(django_server, session):
    payload = {"numbers": [1, 2, 3], "name": "yimmo"}
    resp = session.post(django_server.url + "/json/", json=payload,
                        timeout=TIMEOUT)
    assert resp.status_code == 200
    body = resp.json()
    assert body["received"] == payload
    assert body["method"] == "POST"
    assert body["length"] == len(resp.request.body)


def test_django_streaming_response(django_server, session):
    resp = session.get(django_server.url + "/stream/?n=3", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.text == "line 0\nline 1\nline 2\n"


def test_django_request_meta(django_server, session):
    resp = session.get(django_server.url + "/meta/?a=b", timeout=TIMEOUT)
    assert resp.status_code == 200
    meta = resp.json()
    assert meta["SERVER_PORT"] == str(django_server.address[1])
    assert meta["REMOTE_ADDR"] == "127.0.0.1"
    assert meta["PATH_INFO"] == "/meta/"
    assert meta["QUERY_STRING"] == "a=b"
    assert meta["wsgi.url_scheme"] == "http"


def test_django_not_found(django_server, session):
    resp = session.get(django_server.url + "/missing/", timeout=TIMEOUT)
    assert resp.status_code == 404
