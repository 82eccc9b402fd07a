"""The yimmo pytest plugin (registered through the pytest11 entry point).

Fixture ``yimmo_server``: a factory that serves a WSGI app on 127.0.0.1
with an ephemeral port for the duration of a test::

    def test_hello(yimmo_server):
        server = yimmo_server(app, workers=2)
        urllib.request.urlopen(server.url + "/")

Every server it started is stopped at teardown, and the teardown checks
that it stopped cleanly (workers exited). Its type, for annotated tests,
is ``yimmo.testing.ServerFactory``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, List, Protocol

import pytest

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from typing_extensions import Unpack

    # For the annotations only: the fixture imports Server when it runs.
    from ._options import Options
    from ._server import Server


class ServerFactory(Protocol):
    """The yimmo_server fixture: serves app with these options (bind
    defaults to 127.0.0.1:0) in a background thread and returns the
    Server, started."""

    def __call__(self, app: WSGIApplication,
                 **options: Unpack[Options]) -> Server: ...


@pytest.fixture
def yimmo_server() -> Iterator[ServerFactory]:
    from ._server import Server

    servers: List[Server] = []

    def factory(app: WSGIApplication, **options: Unpack[Options]) -> Server:
        options.setdefault("bind", "127.0.0.1:0")
        server = Server(app, **options)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.stop(timeout=5)
    for server in servers:
        assert server.stopped, "a yimmo server did not stop cleanly"
