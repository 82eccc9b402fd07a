"""Server: binds the listening sockets and runs the C core (yimmo._yimmo)
in the calling thread or in a background thread; serve() on top of it.

The C core never touches Python on its I/O thread; what stays here is what
needs no speed: parsing bind addresses, binding, signals and shutdown.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
import weakref
from types import FrameType, TracebackType
from typing import (
    TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple,
    Type, Union,
)

from . import _logging, _options, _signals, _sockets, _yimmo

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

    from ._supervisor import ProcessSlot

    # What signal.signal() takes and returns.
    SignalHandler = Union[Callable[[int, Optional[FrameType]], object],
                          int, None]

log = logging.getLogger("yimmo")
error_log = logging.getLogger("yimmo.error")
access_log = logging.getLogger("yimmo.access")

# Servers running in background threads, stopped at interpreter exit so no
# worker thread is left running Python during finalisation. Lock: servers
# start and end on any thread (several at once without the GIL, on a
# free-threaded build), so every access holds _running_lock.
_running: weakref.WeakSet[Server] = weakref.WeakSet()
_running_lock = threading.Lock()


class _SignalState:
    """What serve_forever's signal set-up replaced, recorded step by step
    (so that a signal landing in the middle leaves a record of exactly
    what to give back)."""

    def __init__(self) -> None:
        self.wakeup_r: Optional[socket.socket] = None
        self.wakeup_w: Optional[socket.socket] = None
        self.wakeup_set = False
        self.old_wakeup = -1
        self.old: Dict[int, SignalHandler] = {}
        self.restored = False   # _restore_signals has done every step


# Set by _stop_all (at exit) under _running_lock: a server that would
# register after it has taken its list (a daemon thread's start(), another
# exit hook's) would run while Python finalizes (C review s21: a crash on
# 3.13t).
_exiting = False


def _running_add(server: Server) -> None:
    with _running_lock:
        if _exiting:
            raise RuntimeError("cannot start a server while Python exits")
        _running.add(server)


def _running_discard(server: Server) -> None:
    with _running_lock:
        _running.discard(server)


# The server whose serve_forever installed its signal handlers, while it
# serves (written on the main thread; read by _after_fork_in_child).
_signal_owner: Optional[Server] = None


def _after_fork_in_child() -> None:
    # A process the app forks (os.fork, multiprocessing) runs on the
    # forking thread alone: locks other threads held stay held, and the
    # serving process's signal handlers and wakeup fd are not its own.
    global _running_lock
    _running_lock = threading.Lock()
    owner = _signal_owner
    if owner is not None:
        owner._give_back_signals()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# weakref.finalize registers its own exit hook when the first finalizer is
# made; made here, before _stop_all's, it runs after it (atexit runs the
# last registered first). The other way round, a server running at exit
# had its socket file finalizer run while it still listened, which left
# the file (review s20).
class _Anchor:
    pass


_anchor = _Anchor()
_finalize_after_stop_all = weakref.finalize(_anchor, lambda: None)


@atexit.register
def _stop_all() -> None:
    global _exiting
    with _running_lock:
        _exiting = True
        servers = list(_running)
    for server in servers:
        server.stop(timeout=0)


def _log_error(
    message: str,
    exc_info: Optional[Tuple[Type[BaseException], BaseException,
                             Optional[TracebackType]]],
) -> None:
    # exc_info None: an expected event (a client that went away), INFO.
    if exc_info is None:
        log.info("%s", message)
    else:
        error_log.error("%s", message, exc_info=exc_info)


def _log_warning(message: str) -> None:
    # The request watchdog: an overrun, or a stuck worker.
    error_log.warning("%s", message)


def _access_logger(fmt: Optional[str]) -> Callable[
        [WSGIEnvironment, str, int, float,
         Optional[Tuple[Tuple[str, str], ...]]], None]:
    """The core's log_access callback for an --access-log-format (None:
    Combined). It is called on a worker thread after each response with
    the response headers as the app gave them (a tuple: the core's
    checked copy)."""
    format_line = _logging.compile_access_format(fmt)

    def log_access(environ: WSGIEnvironment, status: str, length: int,
                   seconds: float,
                   headers: Optional[Tuple[Tuple[str, str], ...]]) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(format_line(environ, status, length, seconds,
                                        headers))
    return log_access


def _answer_logger(log_access: Callable[
        [WSGIEnvironment, str, int, float,
         Optional[Tuple[Tuple[str, str], ...]]], None]) -> Callable[
        [bytes, str, int, int, int, float], None]:
    """The core's log_answer callback: the access-log line of a request
    the server answered itself, without the app (a malformed head's 400,
    a 408, 413, 414, 431 or 501, a 503 for a connection that waited too
    long for room), through the same format as the app's requests; its
    %(t)s is when it was answered, its request time 0."""

    def log_answer(head: bytes, remote_addr: str, remote_port: int,
                   status: int, length: int, answered_at: float) -> None:
        environ = _logging.answer_environ(head, remote_addr, remote_port,
                                          answered_at)
        log_access(environ, _logging.status_line(status), length, 0.0, None)
    return log_answer


class Server:
    """A WSGI server bound to its addresses (binding happens here, so a
    port in use raises OSError at construction). Once constructed, the C
    core owns the listening sockets: it closes them as soon as a stop
    begins, so new clients are refused during the grace period.

    start() serves in a background thread, stop() stops gracefully;
    serve_forever() serves in the calling thread. Usable as a context
    manager: ``with Server(app, bind="127.0.0.1:0") as s: ... s.url``.
    """

    def __init__(self, app: WSGIApplication,
                 _listeners: Optional[Sequence[_sockets.Listener]] = None,
                 _process: Optional[ProcessSlot] = None,
                 _logging_done: bool = False,
                 **options: Unpack[_options.Options]) -> None:
        # _listeners, _process: a server process under the supervisor
        # (yimmo._supervisor): sockets it bound or inherited (ours to use,
        # not to unlink), and its slot (heartbeat, notify_fd,
        # max_requests). _logging_done: serve() has set up logging.
        if not callable(app):
            raise TypeError("app must be callable, not %s"
                            % type(app).__name__)
        self.app = app
        self.options = opts = _options.validate(options)
        if opts["processes"] > 1 and _process is None:
            raise ValueError("option 'processes': Server is one process; "
                             "use serve() or the command line for "
                             "processes >= 2")
        if not _logging_done and _process is None:
            # access_log, error_log, log_level, log_config work here as
            # in serve(); the loggers stay set up after the server stops.
            _logging.configure_for_server(
                options, opts["log_level"], opts["access_log"],
                opts["error_log"], opts["log_config"])
        self._process = _process
        # The handlers serve_forever's signal handlers replaced (see
        # _forked).
        self._signal_old: Dict[int, SignalHandler] = {}
        # What the signal handlers have to log (and, for SIGUSR1, do
        # after): serve_forever's loop does it (_log_from_handlers), never
        # the handler itself.
        self._handler_logs: List[Tuple[int, str, Tuple[Any, ...],
                                       Optional[Callable[[], None]]]] = []
        self._old_wakeup = -1
        if _process is None:
            recycling = (("max_requests", opts["max_requests"]),
                         ("max_lifetime", opts["max_lifetime"]),
                         ("max_rss", opts["max_rss"]))
            unused = ["--" + name.replace("_", "-")
                      for name, value in recycling if value]
            if unused:
                # A warning, not an error: one configuration may serve
                # deployments with and without a supervisor.
                log.warning("%s: recycling needs a supervisor (--processes "
                            "2 or more); ignored with one process",
                            ", ".join(unused))
        self._sockets: List[socket.socket] = []
        # (absolute path, st_dev, st_ino) of each socket file we created;
        # removed when the server is done, or collected unstarted.
        self._unix_files: List[_sockets.UnixFile] = []
        # Which process removes them: the one that serves them (start()
        # and serve_forever() record it), or, never served, the creator
        # if it has not forked since (a child may be serving them: README
        # lets an unstarted server be forked and served in the child).
        # A launcher that forked its server to a child and exited, or a
        # helper child of a serving process that ended with sys.exit(),
        # removed the file the server listened at (operations review
        # s20). And never while a process still listens at the path (two
        # children serving one server: the first to stop removed the
        # file the other served). See _UnixOwner.
        self._unix_owner = _UnixOwner()
        self._remove_unix_files = weakref.finalize(
            self, _sockets.unlink_unix_files, self._unix_files,
            self._unix_owner.may_remove)
        self.addresses: List[_sockets.Address] = []
        # Lock: _thread, _serving, _serving_thread and _stopped_unstarted
        # are written under
        # self._lock (start/serve_forever may race with stop() on another
        # thread, truly at once on a free-threaded build), and stop()
        # reads them under it too. The core (self._core) has its own
        # lock for its state: its run() and stop() are thread-safe.
        self._thread: Optional[threading.Thread] = None
        # Set by the server thread once it is done (its sockets closed):
        # stop() waits for this too, not Thread.join alone. On 3.11/3.12
        # a handler that raises inside join (Ctrl-C) marks the thread
        # stopped while it still runs, and every later stop() then
        # returned at once, the server still running (C review s28).
        self._thread_done = threading.Event()
        self._serving = False
        self._serving_thread: Optional[threading.Thread] = None
        # stop() came before any start(): the listeners are closed, so a
        # later start() or serve_forever() raises rather than pretending.
        self._stopped_unstarted = False
        # serve_forever has returned. A flag that stop() polls, not an
        # Event: a handler that raised inside Event.set() (at a function's
        # entry there) left it unset and a stop() on another thread
        # waiting for good, and one inside Event.wait could leave its lock
        # held by the waiter (hostile review s28). A store cannot be cut.
        self._serve_done = False
        # The threads waiting in stop() for the server to end (idents). A
        # signal handler's stop() on one of them returns without waiting:
        # waiting inside the wait it interrupted hung for good when it
        # landed between Thread.join's acquire and release of the thread's
        # lock, which is not reentrant (likewise Event.wait's lock).
        self._stop_waiters: Set[int] = set()
        # An RLock only so that a signal handler on the thread that holds
        # it (inside start(), serve_forever()'s set-up or stop()) can tell
        # (_lock_is_mine) and not wait for it: that was for good (hostile
        # review s23). Never taken twice by one thread. Its own C-level
        # `with` leaves no point between the acquire and the release where
        # a handler that raises could leave it held (a Python context
        # manager did, C review s23): on CPython 3.10 and later, and
        # without a Python trace function (3.9 checks for signals at the
        # `with`'s exit too: hostile review s28, left as it is).
        self._lock = threading.RLock()
        # The process the server was started in, -1 before: a process
        # forked from it (by the app) has none of its threads, and this
        # object's locks may be held for ever there (see _forked, stop).
        self._serve_pid = -1
        self._closed = False
        listeners: List[Tuple[int, bool, str, str]] = []
        try:
            if _listeners is None:
                _listeners = _sockets.bind_all(opts)
            for listener in _listeners:
                sock, address = listener.sock, listener.address
                self._sockets.append(sock)
                self.addresses.append(address)
                if listener.unix_file is not None:
                    self._unix_files.append(listener.unix_file)
                if isinstance(address, str):    # unix: its path
                    listeners.append((sock.fileno(), True, address, ""))
                else:
                    listeners.append((sock.fileno(), False, address[0],
                                      str(address[1])))
            # A server process's slot under the supervisor; else the
            # core's defaults (no heartbeat, one process).
            heartbeat = None
            heartbeat_slot, notify_fd, max_requests = 0, -1, 0
            shared_listener = multiprocess = False
            if _process is not None:
                heartbeat = _process.heartbeat
                heartbeat_slot = _process.slot
                notify_fd = _process.notify_fd
                max_requests = _process.max_requests
                shared_listener = not opts["reuse_port"]
                multiprocess = True
            log_access = (_access_logger(opts["access_log_format"])
                          if opts["access_log"] is not None else None)
            self._core = _yimmo.Core(
                app, listeners, _log_error, sys.stderr,
                workers=opts["workers"],
                limit_request_line=opts["limit_request_line"] or 65536,
                limit_request_fields=opts["limit_request_fields"],
                limit_request_field_size=opts["limit_request_field_size"],
                limit_request_head_size=opts["limit_request_head_size"],
                max_body_size=opts["max_body_size"],
                header_timeout=opts["header_timeout"],
                keepalive_timeout=opts["keepalive_timeout"],
                body_timeout=opts["body_timeout"],
                write_timeout=opts["write_timeout"],
                buffer_body=opts["buffer_body"],
                min_body_rate=float(opts["min_body_rate"]),
                max_pending=(-1 if opts["max_pending"] is None
                             else opts["max_pending"]),
                queue_timeout=opts["queue_timeout"],
                forwarded_allow_ips=opts["forwarded_allow_ips"],
                proxy_headers=opts["proxy_headers"],
                proxy_protocol=opts["proxy_protocol"],
                timeout=opts["timeout"],
                log_warning=_log_warning,
                log_access=log_access,
                log_answer=(_answer_logger(log_access)
                            if log_access is not None else None),
                heartbeat=heartbeat,
                heartbeat_slot=heartbeat_slot,
                notify_fd=notify_fd,
                max_requests=max_requests,
                shared_listener=shared_listener,
                multiprocess=multiprocess,
            )
        except BaseException:
            self._close_sockets()
            raise
        self._unix_owner.core = self._core
        # The core owns the descriptors now (until here, a failure left
        # them to us): the socket objects must not close them too.
        for sock in self._sockets:
            sock.detach()
        self._sockets = []

    def _close_sockets(self) -> None:
        """Close the sockets the core has not taken over (construction
        failed) and remove the unix socket files, once. The core closes
        the descriptors it owns itself. May run on two threads at once
        (a stop() of a never-served server and a serving thread's end):
        _sockets is already empty once the core owns the descriptors,
        and the weakref.finalize that removes the files runs only once."""
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        self._remove_unix_files()

    # -- addresses --

    @property
    def address(self) -> _sockets.Address:
        """The first listener's address: (host, port) or a unix path."""
        return self.addresses[0]

    @property
    def url(self) -> str:
        """http://HOST:PORT of the first TCP listener ("unix:PATH" when
        there is none)."""
        for address in self.addresses:
            if isinstance(address, tuple):
                host, port = address
                if ":" in host:
                    host = "[%s]" % host
                return "http://%s:%d" % (host, port)
        return "unix:%s" % (self.addresses[0],)

    # -- running --

    def serve_forever(self) -> None:
        """Serve in the calling thread until stopped. On the main thread,
        SIGTERM stops gracefully (and this returns) and SIGINT stops
        gracefully and raises KeyboardInterrupt; handlers the app installed
        keep working."""
        serving = False
        try:
            # In the try: a signal that raises where a call returns here
            # must not leave the Core unstopped or _serve_done unset
            # (stop() on another thread waits for it).
            self._refuse_if_lock_is_mine()
            with self._lock:
                self._check_startable()
                self._serving = serving = True
                self._serving_thread = threading.current_thread()
                self._serve_pid = self._unix_owner.served = os.getpid()
            self._serve_forever()
        finally:
            if serving:
                try:
                    if not self._core.finished:
                        # Before _serve_forever's own try: stopped now,
                        # as it would have. (Inline, as in its finally,
                        # not a method: a method's entry is a point where
                        # a pending handler raises.)
                        try:
                            self._core.stop(0)
                        finally:
                            self._core.run()
                finally:
                    self._serve_done = True

    def _serve_forever(self) -> None:
        # A signal whose Python handler raises (Ctrl-C, an app's SIGTERM
        # that calls sys.exit) is raised where a call returns, at a loop's
        # backward jump or at a function's entry: between almost any two
        # statements. Whenever it lands, the Core must end finished, its
        # listener closed, and the process's signal state given back; and
        # the first such exception is the one that propagates (C reviews
        # of this function after 76de913).
        on_main = threading.current_thread() is threading.main_thread()
        grace = self.options["graceful_timeout"]
        # What the set-up replaced, recorded as it goes.
        state = _SignalState()
        first: Optional[BaseException] = None
        returned = False
        try:
            if on_main:
                self._install_signals(state)
            _running_add(self)
            # Before the line that says it listens: a server whose
            # workers cannot start says only that (the finally stops it).
            self._core.start_workers()
            if self._process is not None:
                self._process.ready()
            log.info("Listening at %s (%d workers)",
                     ", ".join(self._describe(a) for a in self.addresses),
                     self.options["workers"])
            # What the handlers took over from a StandIn had to say.
            self._log_from_handlers()
            fd = state.wakeup_r.fileno() if state.wakeup_r is not None \
                else -1
            try:
                while not self._core.run(wakeup_fd=fd):
                    self._log_from_handlers()
            except BaseException as exc:
                # KeyboardInterrupt, or a signal handler that raised: let
                # in-flight requests finish, then let it propagate. Asked
                # again meanwhile (a second Ctrl-C, or a handler that
                # raised again, even inside the "Shutting down" line's
                # handlers): no grace, but still drain. The calls are in
                # the try; one that escapes at the loop's jump ends in
                # the finally's drain.
                first = exc
                grace_now, logged = grace, False
                while True:
                    try:
                        self._core.stop(grace_now)
                        if not logged:
                            logged = True
                            log.info("Shutting down")
                        self._log_from_handlers()
                        if self._core.run(wakeup_fd=fd):
                            break
                    except BaseException:
                        grace_now = 0
                raise
            returned = True
        except BaseException as exc:
            # (One that landed before the run: the set-up, its log line.)
            if first is None:
                first = exc
            raise
        finally:
            # Each step in the finally of the one before: an exception
            # raised in one (a handler that raises, tripped with others)
            # cuts that step short, not the ones after it.
            late: Optional[BaseException] = None
            try:
                try:
                    if not self._core.finished:
                        # Stopped by nothing above (a signal landed
                        # before the run, or escaped the drain): no grace
                        # left, and a drain no handler can interrupt (no
                        # wakeup fd; the handlers run once it returns).
                        try:
                            self._core.stop(0)
                        finally:
                            self._core.run()
                finally:
                    # The last lines (what handlers had to say, the
                    # workers left behind) while the server's handlers
                    # are still in place, so a signal that lands meanwhile
                    # is still the server's (its line is logged below); an
                    # exception from them waits until the state is back.
                    try:
                        self._log_from_handlers()
                        self._report_abandoned()
                    except BaseException as exc:
                        late = exc
            finally:
                try:
                    _running_discard(self)
                finally:
                    cut: Optional[BaseException] = None
                    try:
                        # Until every step is done: an exception (a
                        # handler that raised at _restore_signals' entry
                        # or after a step) waits until the rest is given
                        # back. (A second one at this loop's jump, outside
                        # the try, escapes it.)
                        while on_main and not state.restored:
                            try:
                                self._restore_signals(state)
                            except BaseException as exc:
                                if cut is None:
                                    cut = exc
                    finally:
                        # Each kept as the loop's are: a Ctrl-C at the
                        # entry of one skipped the other, and propagated
                        # instead of the first exception (review s29, S3).
                        try:
                            self._close_sockets()
                        except BaseException as exc:
                            cut = cut or exc
                            try:
                                self._close_sockets()   # (once: it is)
                            except BaseException:
                                pass
                        try:
                            # What a handler that ran in this finally,
                            # before the handlers were given back, had
                            # to say.
                            self._log_from_handlers()
                        except BaseException as exc:
                            cut = cut or exc
                        if returned and late is not None:
                            raise late
                        if returned and cut is not None:
                            raise cut
                        if first is not None:
                            # The first is the one that propagates (it
                            # may be on its way already; without a call
                            # to ask: one more point where a handler
                            # raises).
                            raise first from None

    def _install_signals(self, state: "_SignalState") -> None:
        """serve_forever's signal set-up on the main thread: the wakeup fd
        (Python's C signal handler writes to it; the loop wakes, run()
        returns, and the interpreter runs the Python handlers), SIGTERM
        where the app left it at its default, and the lifecycle handlers.
        Each replacement is recorded in state as it is made."""
        global _signal_owner
        try:
            state.wakeup_r, state.wakeup_w = socket.socketpair()
        except OSError as exc:
            # Out of descriptors: say which limit (hostile review s23).
            raise OSError(exc.errno, "cannot set up signal handling: %s"
                          % _sockets.explain(exc)) from None
        state.wakeup_r.setblocking(False)
        state.wakeup_w.setblocking(False)
        state.wakeup_set = True     # before: a signal may land after it
        state.old_wakeup = signal.set_wakeup_fd(state.wakeup_w.fileno(),
                                                warn_on_full_buffer=False)
        self._old_wakeup = state.old_wakeup
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            state.old[signal.SIGTERM] = signal.SIG_DFL
            signal.signal(signal.SIGTERM, self._on_sigterm)
        self._install_lifecycle_handlers(state.old)
        self._signal_old = dict(state.old)
        _signal_owner = self

    def _restore_signals(self, state: "_SignalState") -> None:
        """Give back what _install_signals replaced (whatever it got to).
        Resumable: each step is struck off state once done, so a call
        again after a handler raised (at this function's entry, inside
        signal.signal, which is Python code, or after a step) does the
        rest; doing a step twice gives back the same thing. A step's own
        failure (an Exception: a handler raises KeyboardInterrupt or
        SystemExit) strikes it off too, and raises once the rest is done
        (hostile review s28, 2: a Ctrl-C at the entry left the dead
        server's handlers and wakeup fd in place)."""
        global _signal_owner
        failed: Optional[Exception] = None
        if _signal_owner is self:
            _signal_owner = None
        if state.wakeup_set:
            try:
                signal.set_wakeup_fd(state.old_wakeup)
            except Exception as exc:
                # The app closed its own (or made it blocking) meanwhile:
                # none, rather than the server's socket about to close,
                # whose number the next open() takes (review s29, S4).
                failed = exc
                signal.set_wakeup_fd(-1)
            state.wakeup_set = False
        for signum, handler in list(state.old.items()):
            try:
                if handler is not None:
                    signal.signal(signum, handler)
            except Exception as exc:
                failed = failed or exc
            del state.old[signum]
        for sock in (state.wakeup_r, state.wakeup_w):
            if sock is not None:
                sock.close()
        state.restored = True
        if failed is not None:
            raise failed

    def _report_abandoned(self) -> None:
        busy = self._core.abandoned_workers
        if busy:
            # A worker logging the server's own answers (the access log's
            # handlers are the app's code) counts as running the app.
            unlogged = self._core.answers_unlogged
            log.warning("%d worker thread(s) still running the app after "
                        "the graceful timeout; not waiting for them%s",
                        busy, "" if not unlogged else
                        "; %d log line(s) about requests the server "
                        "answered itself or cut short, which they were "
                        "logging or had yet to log, may never be written"
                        % unlogged)

    def _install_lifecycle_handlers(self,
                                    old: Dict[int, SignalHandler]) -> None:
        """SIGHUP, SIGUSR1, SIGTTIN, SIGTTOU, where the app left them at
        their defaults (which would kill or stop the process). Each
        previous handler goes into old, to restore, before it is
        replaced."""
        handlers: Dict[int, SignalHandler] = {
            signal.SIGUSR1: self._on_sigusr1}
        if self._process is None:
            handlers[signal.SIGHUP] = self._on_sighup
            handlers[signal.SIGTTIN] = self._on_needs_supervisor
            handlers[signal.SIGTTOU] = self._on_needs_supervisor
        else:
            # Under a supervisor these are the supervisor's business (a
            # terminal sends them to the whole process group).
            for terminal in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                handlers[terminal] = signal.SIG_IGN
        for signum, handler in handlers.items():
            previous = signal.getsignal(signum)
            if _signals.is_default(previous):
                # (None: not set from Python; its default is the nearest
                # thing to give back. A StandIn of python -m yimmo's was
                # the default until now.)
                old[signum] = signal.SIG_DFL
                signal.signal(signum, handler)
                if _signals.take_over(signum, previous) and \
                        callable(handler):
                    handler(signum, None)
        if self._process is not None:
            # yimmo's own signal (the supervisor died): always ours.
            from ._supervisor import ORPHAN_SIGNAL
            previous = signal.getsignal(ORPHAN_SIGNAL)
            old[ORPHAN_SIGNAL] = signal.SIG_DFL if previous is None \
                else previous
            signal.signal(ORPHAN_SIGNAL, self._on_orphaned)

    def _give_back_signals(self) -> None:
        """In a process forked from the one serving (on its one thread,
        its main thread now): the handlers and wakeup fd serve_forever
        replaced, so that a signal does what it did before yimmo (SIGTERM
        ends a child stuck in C code too, which no Python handler could)."""
        global _signal_owner
        _signal_owner = None
        try:
            signal.set_wakeup_fd(self._old_wakeup)
            for signum, old in self._signal_old.items():
                signal.signal(signum,
                              old if old is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass    # then the handlers' own check (_forked) applies

    def _forked(self, signum: int) -> bool:
        """True when the signal reached a process the app forked from this
        one (it inherits the handlers, and runs them on its one thread): the
        signal then does what it did before yimmo's handler (by default
        SIGTERM ends the process, as multiprocessing's terminate() expects),
        and the parent's server is left alone."""
        if os.getpid() == self._serve_pid:
            return False
        old = self._signal_old.get(signum)
        signal.signal(signum, old if old is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return True

    def _log_later(self, level: int, msg: str, *args: Any,
                   then: Optional[Callable[[], None]] = None) -> None:
        """Log from a signal handler: serve_forever's loop does, once the
        handler has returned. The handler runs on the main thread between
        two bytecodes, maybe in the middle of a logging call there, and
        CPython (3.13.4 on) drops a record logged on a thread that is
        already inside Logger.handle. The signal also wrote to the wakeup
        fd, so run() returns at once, even if the handler ran before it
        was called. then: what to do once the line is logged."""
        self._handler_logs.append((level, msg, args, then))

    def _log_from_handlers(self) -> None:
        # pop(0) one at a time: a signal whose handler runs during one of
        # these calls appends its line, logged in this same pass.
        while self._handler_logs:
            level, msg, args, then = self._handler_logs.pop(0)
            try:
                log.log(level, msg, *args)
            finally:
                # Even if a second signal's handler raised while the line
                # was logged: the entry is popped, nothing else runs it.
                if then is not None:
                    then()

    def _on_orphaned(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._forked(signum):
            return
        self._log_later(logging.WARNING, "The supervisor is gone; stopping")
        self._core.stop(self.options["graceful_timeout"])

    def _on_sighup(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._forked(signum):
            return
        self._log_later(logging.WARNING,
                        "Received SIGHUP: a reload needs --processes 2 or "
                        "more (a supervisor); this single process keeps "
                        "serving the code it has")

    def _on_needs_supervisor(self, signum: int,
                             frame: Optional[FrameType]) -> None:
        if self._forked(signum):
            return
        self._log_later(logging.WARNING,
                        "Received %s: changing the number of processes "
                        "needs --processes 2 or more; ignored",
                        signal.Signals(signum).name)

    def _on_sigusr1(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._forked(signum):
            return
        # The line goes to the files as they were before the reopening (the
        # rotated ones), as in the processes of a supervisor.
        self._log_later(logging.INFO, "Received SIGUSR1, reopening log files",
                        then=_logging.reopen_log_files)

    def _on_sigterm(self, signum: int, frame: Optional[FrameType]) -> None:
        # Every SIGTERM asks for the same graceful stop: a repeated one does
        # not cut the grace (a second SIGINT does). A service manager may
        # send it to every process of the service while a supervisor or
        # the --reload parent passes its own on too (systemd's default
        # KillMode): cutting on the second would drop in-flight requests
        # at every stop (review of 40e31cc, which did).
        if self._forked(signum):
            return
        self._log_later(logging.INFO, "Received SIGTERM, shutting down")
        self._core.stop(self.options["graceful_timeout"])

    _describe = staticmethod(_sockets.describe)

    def start(self) -> Server:
        """Serve in a background thread. Returns as soon as the worker
        threads run (the sockets are already listening, so clients may
        connect right away); OSError if the system will not give the
        threads (too many workers for ulimit -u or -v), RuntimeError if
        Python is shutting down."""
        self._refuse_if_lock_is_mine()
        with self._lock:
            self._check_startable()
            self._serve_pid = self._unix_owner.served = os.getpid()
            # The server thread waits for start()'s verdict before it
            # touches the Core: True, it serves; False, start() failed
            # and drains the Core itself. Whether the thread exists when a
            # signal lands inside Thread.start() cannot be told from the
            # Thread object (C review s21), so only one of the two ever
            # runs the loop.
            # The thread polls verdict, not an Event: a handler that raised
            # inside go.set() (at Condition.__exit__'s entry) left the
            # Event's lock held, and start()'s error path, setting it
            # again, waited for itself for good (hostile review s28).
            verdict: List[bool] = []
            thread: Optional[threading.Thread] = None
            try:
                # Registered first: an interpreter exit meanwhile (start()
                # on a daemon thread) stops it, waiting on self._lock,
                # before Python finalizes under threads still making their
                # states (C review s21: a crash on 3.13t). In the try:
                # refused at exit, it still closes its sockets and removes
                # its socket file (hostile review s21).
                _running_add(self)
                # Here, not in the thread: a server whose workers cannot
                # start raises to the caller instead of returning as if
                # it served (and logging the failure on its thread).
                self._core.start_workers()
                thread = threading.Thread(target=self._run_in_thread,
                                          args=(verdict,),
                                          name="yimmo-server", daemon=True)
                # Started before _thread is published: a stop() on another
                # thread that finds _thread joins it, and joining a thread
                # not started yet raises RuntimeError. (The new thread
                # never takes self._lock, so starting it under the lock is
                # safe.)
                try:
                    thread.start()
                except RuntimeError as exc:
                    # "can't start new thread": the workers took what
                    # the limits left (hostile review s23). Not another
                    # RuntimeError: a Ctrl-C inside Thread.start's wait
                    # came out of Condition.wait as "release unlocked
                    # lock" (hostile review s28).
                    if "start new thread" not in str(exc):
                        raise
                    raise OSError(
                        errno.EAGAIN, "could not start the server's thread "
                        "(%s): a higher limit on threads or memory (ulimit "
                        "-u, -v), or fewer --workers" % exc) from None
                verdict.append(True)
            except BaseException:
                if verdict:
                    # Raised after the verdict: the thread serves (and has
                    # started); stop it as stop() does.
                    self._thread = thread
                    self._core.stop(0)
                    assert thread is not None
                    self._join_server_thread(thread)
                else:
                    # A signal raised as a wait returned, or no thread:
                    # the workers may run; stop them rather than leave
                    # them and the listener with no loop (C review s21).
                    verdict.append(False)
                    self._abandon_start()
                raise
            self._thread = thread
        return self

    def _lock_is_mine(self) -> bool:
        return bool(getattr(self._lock, "_is_owned")())

    def _refuse_if_lock_is_mine(self) -> None:
        if self._lock_is_mine():
            # A signal handler that interrupted this thread's own start(),
            # serve_forever() or stop() (hostile review s23).
            raise RuntimeError("the server is being started or stopped by "
                               "the code this signal handler interrupted")

    def _abandon_start(self) -> None:
        # Under self._lock, from start()'s failure; no other thread runs
        # the Core.
        try:
            try:
                self._core.stop(0)
            finally:
                if not self._core.finished:
                    self._core.run()
        finally:
            # After the drain: `stopped` says the workers have exited.
            self._stopped_unstarted = True
            _running_discard(self)
            self._close_sockets()

    def _check_startable(self) -> None:
        # Under self._lock.
        if self._thread is not None or self._serving:
            raise RuntimeError("the server was already started")
        if self._stopped_unstarted:
            raise RuntimeError("the server was stopped before it started")

    def _run_in_thread(self, verdict: List[bool]) -> None:
        try:
            while not verdict:
                time.sleep(0.0005)
            if not verdict[0]:
                return              # start() failed and drains the Core
            try:
                while not self._core.run():
                    pass
            except BaseException:
                log.exception("the server thread failed")
            finally:
                self._report_abandoned()
                _running_discard(self)
                self._close_sockets()
        finally:
            self._thread_done.set()

    def _wait_served(self) -> None:
        while not self._serve_done:
            time.sleep(0.005)

    def _join_server_thread(self, thread: threading.Thread) -> None:
        thread.join()
        # Returned at once after a join a Ctrl-C cut (3.11/3.12: see
        # _thread_done). Polled, not Event.wait: a Ctrl-C at a function's
        # entry inside Condition.wait left its lock released under the
        # `with`, which then raised RuntimeError (and every point of
        # Thread.join is safe).
        while not self._thread_done.is_set():
            time.sleep(0.005)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop accepting, give in-flight requests `timeout` seconds
        (default: the graceful_timeout option), and wait until done.

        The first stop fixes the deadline; a later one may bring it
        forward but never postpones it. A negative timeout counts as 0;
        NaN raises ValueError.

        Called from inside a request handler (one of this server's worker
        threads), it only begins the graceful stop and returns at once:
        waiting would mean waiting for itself. The request that called it
        still gets its response. So does a signal handler that runs while
        its thread is inside start() and holds the server's lock (earlier
        in start(), start() then raises RuntimeError: stopped before it
        started): the server stops once started; and
        one that runs while its thread waits in stop(): the wait it
        interrupted goes on until the server has stopped."""
        grace = self.options["graceful_timeout"] if timeout is None \
            else timeout
        self._core.stop(grace)
        if self._serve_pid not in (-1, os.getpid()):
            # A process forked from the one serving (by the app): the
            # server is the parent's (Core.stop did nothing) and there is
            # nothing here to wait for; at exit, yimmo's atexit hook
            # must not hang the child.
            return
        if self._core.is_worker_thread():
            return
        if self._lock_is_mine():
            # A signal handler on a thread inside start(), serve_forever's
            # set-up or stop(), which holds self._lock: the stop is asked
            # for, and the server ends as soon as it has started.
            return
        with self._lock:
            thread = self._thread
            serving = self._serving
            serving_thread = self._serving_thread
            if thread is None and not serving:
                self._stopped_unstarted = True
        me = threading.get_ident()
        if (thread is not None or serving) and me in self._stop_waiters:
            # A signal handler on a thread waiting below: the stop is
            # asked for (perhaps sooner), and the wait it interrupted ends
            # when the server has.
            return
        if thread is not None and thread is not threading.current_thread():
            self._wait_in_stop(me,
                               lambda: self._join_server_thread(thread))
        elif serving:
            # serve_forever on another thread: wait until it has returned.
            if serving_thread is not threading.current_thread():
                self._wait_in_stop(me, self._wait_served)
        elif thread is None:
            # Never served: the core has closed the listeners; nothing
            # else will remove the socket files. (serve_forever removes
            # them itself once it has stopped.)
            self._close_sockets()

    def _wait_in_stop(self, me: int, wait: Callable[[], object]) -> None:
        # Added in the try: a handler that raises where add() returns
        # leaves nothing behind (discard is a C call: no handler runs
        # before it does its work; on 3.10+, without a trace function).
        try:
            self._stop_waiters.add(me)
            wait()
        finally:
            self._stop_waiters.discard(me)

    @property
    def stopped(self) -> bool:
        """True once the server has stopped and its workers have exited."""
        # Not under self._lock: a bool read, and the lock may be held for
        # ever in a process forked from this one.
        return self._core.finished or self._stopped_unstarted

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Forks of this process (counted in the parent; a child's count is its
# parent's at the fork, and its pid another).
_forks = [0]


def _count_fork() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_parent=_count_fork)


class _UnixOwner:
    """Whether this process may remove a server's unix socket files (see
    Server.__init__). Plain values, read by the finalizer, which must not
    hold the server."""

    def __init__(self) -> None:
        self.creator = os.getpid()
        self.forks = _forks[0]
        self.served = -1           # the pid that serves (or served) it
        # The server's core, once made: never served here, its copy of
        # the listener is let go before looking whether anyone listens.
        self.core: Optional[_yimmo.Core] = None

    def may_remove(self) -> int:
        """0: not this process's; 1: yes; 2: if nobody listens there any
        more (another process may be serving the same listener)."""
        pid = os.getpid()
        if self.served != -1:
            return 2 if self.served == pid else 0
        if self.creator != pid:
            return 0
        # Never served here. Not forked since: nobody else has the
        # listener (and this process may still hold it open: the server
        # is being collected).
        if self.forks == _forks[0]:
            return 1
        if self.core is not None:
            self.core.stop(0)      # closes a never-run core's listeners
        return 2


def serve(app: WSGIApplication, **options: Unpack[_options.Options]) -> None:
    """Serve app until SIGTERM (returns) or SIGINT (raises
    KeyboardInterrupt), after in-flight requests have finished.

    Logging goes to stderr (logger "yimmo") unless the application has set
    up logging itself; the access log to access_log unless the
    "yimmo.access" logger already has a handler; log_config is applied
    last."""
    opts = _options.validate(options)
    if opts["processes"] > 1 and \
            threading.current_thread() is not threading.main_thread():
        # The supervisor lives on signals (SIGCHLD, SIGHUP, SIGTERM...),
        # which only the main thread can handle in Python.
        raise RuntimeError("serve(processes=%d) must be called from the "
                           "main thread: the supervisor handles signals"
                           % opts["processes"])
    if not logging.getLogger().handlers and \
            not logging.getLogger("yimmo").handlers:
        _logging.configure_logging(opts["log_level"], opts["access_log"],
                                   opts["error_log"], opts["log_config"])
    else:
        # An error log file asked for by name is always set up; stderr
        # only when nothing else logs (above).
        if opts["error_log"] not in (None, "-"):
            _logging.configure_error_log(opts["log_level"],
                                         opts["error_log"])
        # The access logger is set up here only if nothing (the command
        # line, a --log-config, the app) has given it a handler.
        if opts["access_log"] is not None and \
                not logging.getLogger("yimmo.access").handlers:
            _logging.configure_access_log(opts["access_log"])
        if opts["log_config"] is not None:
            _logging.apply_log_config(opts["log_config"])
    if opts["processes"] > 1:
        # The app is imported already: the processes share it (preload).
        from . import _supervisor
        supervisor = _supervisor.Supervisor(None, app, opts)
        status = supervisor.run()
        if supervisor.interrupted:
            # As in one process: the caller tells Ctrl-C from SIGTERM.
            raise KeyboardInterrupt
        if status:
            raise RuntimeError("the server processes failed to start")
        return
    if threading.current_thread() is not threading.main_thread():
        # Python runs signal handlers on the main thread only, so
        # serve_forever() installs none here: SIGTERM ends the process at
        # once, cutting the requests in flight, where README promises a
        # graceful stop. Said, not refused (Server.start() serves off the
        # main thread by design, quietly: its caller stops it). Logged
        # here, once logging is set up.
        log.warning("serve() runs on thread %r, not the main thread: "
                    "signals are not handled (SIGTERM ends the process "
                    "at once, without a graceful stop); call serve() on "
                    "the main thread, or use Server(...).start() and "
                    "stop()",
                    threading.current_thread().name)
    Server(app, _logging_done=True, **options).serve_forever()
