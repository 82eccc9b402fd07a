"""A minimal WSGI application to try yimmo with.

From the repository root (the current directory is put on sys.path):

    python -m yimmo examples.hello:app
    python -m yimmo --bind 127.0.0.1:8000 --workers 4 examples.hello:app

then open http://127.0.0.1:8000/. Or from Python:

    import yimmo
    from examples.hello import app
    yimmo.serve(app, bind="127.0.0.1:8000")
"""


def app(environ, start_response):
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
