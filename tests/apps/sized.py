"""A response of the size the path names: GET /65536 answers 65,536
bytes of "y" (with Content-Length); GET / answers "hello"."""


def app(environ, start_response):
    path = environ["PATH_INFO"].strip("/")
    body = b"y" * int(path) if path.isdigit() else b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
