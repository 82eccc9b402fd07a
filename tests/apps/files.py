"""Files through wsgi.file_wrapper for the CLI tests: /f/NAME sends the
file NAME of the directory $YIMMO_TEST_FILES (with its Content-Length,
or chunked when the query is "chunked"; read into one bytes object when
it is "memory"); any other path says hello."""

import os


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if not path.startswith("/f/"):
        body = b"hello from " + path.encode("latin-1")
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    name = os.path.join(os.environ["YIMMO_TEST_FILES"], path[3:])
    if environ.get("QUERY_STRING") == "memory":
        with open(name, "rb") as f:
            data = f.read()
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]
    f = open(name, "rb")
    headers = [("Content-Type", "application/octet-stream")]
    if environ.get("QUERY_STRING") != "chunked":
        headers.append(("Content-Length", str(os.fstat(f.fileno()).st_size)))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f)
