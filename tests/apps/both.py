"""Defines both `application` and `app`: the bare module name must pick
`application`."""


def _make(body):
    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return wsgi


application = _make(b"application")
app = _make(b"app")
