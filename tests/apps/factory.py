"""An application factory for the CLI's "module:create_app(...)" form."""


def create_app(greeting="hello", shout=False):
    text = greeting.upper() if shout else greeting
    body = text.encode("utf-8")

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return app
