"""The yimmo pytest plugin (registered through the pytest11 entry point).

Fixture ``yimmo_server``: a factory that serves a WSGI app on 127.0.0.1
with an ephemeral port for the duration of a test::

    def test_hello(yimmo_server):
        server = yimmo_server(app, workers=2)
        urllib.request.urlopen(server.url + "/")

Every server it started is stopped at teardown, and the teardown checks
that it stopped cleanly (workers exited).
"""

import pytest


@pytest.fixture
def yimmo_server():
    from ._server import Server

    servers = []

    def factory(app, **options):
        options.setdefault("bind", "127.0.0.1:0")
        server = Server(app, **options)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.stop(timeout=5)
    for server in servers:
        assert server.stopped, "a yimmo server did not stop cleanly"
