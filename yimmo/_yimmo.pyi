# The types of yimmo._yimmo, the C extension (ext/module.c and the files it
# gathers types from). Module attributes: Core, FileWrapper and the two
# exceptions. Argument names and kinds are those the C parses
# (PyArg_ParseTupleAndKeywords keyword lists, METH_NOARGS, METH_O).
# tests/test_typing.py checks this file against the built module.
#
# Not here, because the module does not export them: the per-request types
# (Input, the wsgi.input stream; StartResponse, the start_response
# callable) which an app only meets through environ and its arguments, and
# _fault_injection(), which exists only in fault-injection builds
# (YIMMO_FAULT_INJECTION=1) and which only tests call.

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Optional, Protocol, final

from _typeshed import WriteableBuffer
from _typeshed.wsgi import ErrorStream, WSGIApplication, WSGIEnvironment

# (fd, is_unix, server_name, server_port) of one bound listening socket.
_Listener = tuple[int, bool, str, str]

# The exc_info log_error gets with an application's exception (its
# traceback may be missing), or None for an expected event (INFO).
_LogExcInfo = Optional[
    tuple[type[BaseException], BaseException, Optional[TracebackType]]
]

class _LogAccess(Protocol):
    # Called on a worker thread after each response: environ, the status
    # line as the app gave it (or the code, "503" for the watchdog's),
    # body bytes sent, seconds, the response headers as the app gave them
    # (a tuple, the core's checked copy of its list; None when it never
    # called start_response).
    def __call__(
        self,
        environ: WSGIEnvironment,
        status: str,
        length: int,
        seconds: float,
        headers: Optional[tuple[tuple[str, str], ...]],
        /,
    ) -> object: ...

class _Readable(Protocol):
    # What wsgi.file_wrapper needs of its file: read(blksize); close() and
    # fileno() are used when present.
    def read(self, size: int, /) -> bytes: ...

class ClientDisconnected(OSError):
    """The client went away before its request body was complete."""

class RequestTimeout(BaseException):
    """Raised asynchronously in a worker thread whose request ran longer
    than the server's timeout."""

@final
class Core:
    def __new__(
        cls,
        app: WSGIApplication,
        listeners: list[_Listener],
        log_error: Callable[[str, _LogExcInfo], object],
        errors: ErrorStream,
        *,
        workers: int = 8,
        limit_request_line: int = 4094,
        limit_request_fields: int = 100,
        limit_request_field_size: int = 8190,
        limit_request_head_size: int = 65536,
        max_body_size: int = 0,
        header_timeout: Optional[float] = None,
        keepalive_timeout: Optional[float] = None,
        body_timeout: Optional[float] = None,
        write_timeout: Optional[float] = None,
        log_access: Optional[_LogAccess] = None,
        multiprocess: bool = False,
        buffer_body: int = 65536,
        min_body_rate: Optional[float] = None,
        max_pending: int = -1,
        queue_timeout: Optional[float] = None,
        forwarded_allow_ips: Optional[list[str] | tuple[str, ...]] = None,
        proxy_protocol: bool = False,
        timeout: Optional[float] = None,
        log_warning: Optional[Callable[[str], object]] = None,
        heartbeat: Optional[WriteableBuffer] = None,
        notify_fd: int = -1,
        max_requests: int = 0,
        shared_listener: bool = False,
        heartbeat_slot: int = 0,
        proxy_headers: Optional[list[str] | tuple[str, ...]] = None,
        log_answer: Optional[
            Callable[[bytes, str, int, int, int, float], object]] = None,
    ) -> Core: ...
    def run(self, wakeup_fd: int = -1) -> bool: ...
    def stop(self, grace: float = 30.0) -> None: ...
    def start_workers(self) -> None: ...
    def request_recycle(self) -> None: ...
    def is_worker_thread(self) -> bool: ...
    @property
    def recycle_requested(self) -> bool: ...
    @property
    def abandoned_workers(self) -> int: ...
    @property
    def answers_unlogged(self) -> int: ...
    @property
    def gil_handovers(self) -> tuple[int, int]: ...
    @property
    def app_blocks(self) -> bool: ...
    @property
    def finished(self) -> bool: ...

@final
class FileWrapper:
    def __new__(cls, filelike: _Readable, blksize: int = 8192) -> FileWrapper: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...
    def close(self) -> None: ...
