"""yimmo: a WSGI server written in C.

    import yimmo
    yimmo.serve(app, bind="127.0.0.1:8000", workers=8)

or ``python -m yimmo module:app``. One libev I/O thread per process does
all socket work without the GIL; worker threads run the app.
"""

from ._server import Server, serve
from ._yimmo import ClientDisconnected, RequestTimeout

__version__ = "0.1.0"
__all__ = ["ClientDisconnected", "RequestTimeout", "Server", "serve", "__version__"]
