"""A hello-world WSGI app for the CLI tests, in the forms APP can name."""

import types


def app(environ, start_response):
    body = b"hello from " + environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _nested(environ, start_response):
    body = b"nested app"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


# "hello:holder.app"
holder = types.SimpleNamespace(app=_nested)

# "hello:not_callable"
not_callable = 42
