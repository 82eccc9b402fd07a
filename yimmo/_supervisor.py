"""The supervisor (processes >= 2): binds or inherits the listeners, forks
the server processes, and keeps them running.

It is one thread (so it may fork at any time) running a select() loop over
a signal wakeup pipe and one pipe per server process. A process tells it,
through its pipe: "B" once its app is imported and its Server built, "R"
once it is ready to accept (its worker threads running too:
ProcessSlot.ready), "E<line>\\n" when it failed to start (the one-line
error),
"r" when it wants to be replaced (written by the loop thread in C, see
ymo_server_request_recycle). Its heartbeat is a 64-byte anonymous shared
mapping per process (layout: ext/heartbeat.h) whose loop thread stamps it.

Replacing a process ("recycling": max_requests, max_rss, max_lifetime, a
request from the process, SIGHUP) always starts the successor first and
sends SIGTERM to the old process only once the successor has been ready
for RAPID seconds, so the listeners are never without a process
accepting, and a successor that dies right after it became ready finds
its predecessor still serving. A process that dies is replaced at once;
processes that die before they are ready (or successors that die within
RAPID seconds of it) are restarted with back-off, and after
MAX_START_FAILURES in a row the supervisor gives up, with the process's
own error line (or, while others serve, waits for the next try).

The supervisor never imports the application unless preload is set.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import select
import signal
import struct
import sys
import threading
import time
import traceback
from types import FrameType
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from . import _logging, _options, _signals, _sockets
from ._options import ServerOptions

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from ._server import SignalHandler

# --reload: (list file, config file) for _reload.report_modules().
ReloadReport = Tuple[str, Optional[str]]

log = logging.getLogger("yimmo")

# ext/heartbeat.h: beat_ns, requests, recycle, reason, conns, accepting.
HEARTBEAT = struct.Struct("=QQIIII")
HEARTBEAT_SIZE = 64
# Processes alive at once, at most: twice --processes' limit, so that a
# reload of the most processes starts every successor at once.
SLOTS = 2 * _options.MAX_PROCESSES
RECYCLE_REASONS = {1: "it served its max-requests",
                   2: "it asked to be recycled"}

MAX_START_FAILURES = 5
BACKOFF_FIRST = 0.1        # seconds; doubles with each failure in a row
BACKOFF_MAX = 5.0
CRASH_BACKOFF_MAX = 1.0    # for processes that were ready, then crashed
RETRY_FIRST = 5.0          # seconds: after giving up on new processes while
RETRY_MAX = 60.0           # others serve, the next try (doubling)
RAPID = 1.0                # a process that dies this soon after it became
                           # ready counts as failing at start
TICK = 0.1                 # the loop's timers: lifetimes, heartbeats
RSS_EVERY = 2.0            # seconds between two checks of max_rss
SPAWN_RETRY = 1.0          # seconds after a failed pipe() or fork()
KILL_SLACK = 5.0           # past graceful_timeout, a draining process is
                           # killed
BEAT_FRESH = 0.6           # seconds: a loop that beat this recently runs
                           # (it beats every 0.25 s)

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD)


class ProcessSlot:
    """What a server process's Server gets from the supervisor."""

    def __init__(self, heartbeat: mmap.mmap, slot: int, notify_fd: int,
                 max_requests: int) -> None:
        self.heartbeat = heartbeat      # the table of every process's slot
        self.slot = slot                # this process's index in it
        self.notify_fd = notify_fd
        self.max_requests = max_requests
        self.readied = False            # "R" written: it serves

    def ready(self) -> None:
        """Tell the supervisor the process serves: its worker threads run
        (the Server calls it just before its "Listening at" line). Until
        then a failure counts as one at start."""
        self.readied = True
        try:
            os.write(self.notify_fd, b"R")
        except OSError:
            pass    # the supervisor is gone; its death signal follows


class Child:
    def __init__(self, pid: int, table: mmap.mmap, slot: int, pipe: int,
                 lifetime_end: Optional[float], seq: int) -> None:
        self.pid = pid
        self.table = table
        self.slot = slot
        self.pipe: Optional[int] = pipe  # read end; None once closed
        self.started = time.monotonic()
        self.seq = seq             # the how-manieth process started
        self.loaded_at: Optional[float] = None  # "B": app and Server made
        self.ready_at: Optional[float] = None
        # why it is to be replaced, once it is
        self.retire: Optional[str] = None
        self.draining_since: Optional[float] = None
        self.killed_for: Optional[str] = None  # why we sent SIGKILL
        self.error_line: Optional[str] = None
        self.lifetime_end = lifetime_end
        # Why it was to be replaced when its replacement was given up on
        # (new processes failed at start, Supervisor.retry_at): it serves
        # on, no recycling trigger (its slot's flag stays set, its
        # lifetime, its memory) starts a successor meanwhile, and at the
        # next try its replacement is tried again.
        self.cancelled_retire: Optional[str] = None
        # A good start: ready for RAPID seconds (its loop beating since),
        # or it served its max-requests.
        self.proven = False
        # Started while a process waited for its successor (a reload, a
        # recycle): its death right after it became ready, while such a
        # process still serves, counts towards giving the replacement up.
        self.successor = False
        self.buffer = b""

    def heartbeat(self) -> Tuple[int, ...]:
        return HEARTBEAT.unpack_from(self.table, self.slot * HEARTBEAT_SIZE)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "was killed by %s" % name
    return "exited with status %d" % os.waitstatus_to_exitcode(status)


# Sent to a server process when its supervisor dies (Linux's parent-death
# signal). A real-time signal of yimmo's own rather than SIGTERM, whose
# handler may be the app's: a supervisor killed with SIGKILL must leave no
# server behind, whatever the app did with SIGTERM. The server stops
# gracefully on it; until it installs its handler (while it imports the
# app) the default action ends the process.
ORPHAN_SIGNAL = signal.SIGRTMIN + 2


def _flush_std_streams() -> None:
    """Flush what Python buffered for stdout and stderr (before a fork, so
    that it is not written twice, and before a child exits). Either may
    be None (the process started with that descriptor closed: nohup-style
    launchers, `>&-`) or lead to a closed pipe; neither stops serving."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _set_pdeathsig() -> None:
    """Linux: this process gets ORPHAN_SIGNAL when the supervisor dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(ORPHAN_SIGNAL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Supervisor:
    """Run `processes` server processes of app (or of app_spec, imported
    in each process) until SIGTERM/SIGINT. run() returns the exit
    status."""

    def __init__(self, app_spec: Optional[str],
                 app: Optional[WSGIApplication], options: ServerOptions,
                 reload_report: Optional[ReloadReport] = None) -> None:
        self.app_spec = app_spec
        # --reload: (list file, config file) the server processes report
        # their modules to, after importing the app (_reload).
        self.reload_report = reload_report
        self.app = app
        self.options = options
        self.target = options["processes"]
        self.children: Dict[int, Child] = {}  # pid -> Child
        self.listeners: List[_sockets.Listener] = []
        self.pending_signals: List[int] = []
        self.stopping = False
        # A SIGINT came (to stop, or during the stop): serve() raises
        # KeyboardInterrupt once the processes are gone, as a single
        # server does.
        self.interrupted = False
        self.stop_deadline: Optional[float] = None
        self.failures = 0          # processes in a row that died at start
        self.last_failed_seq = 0   # Child.seq of the last of those
        # New processes failed at start MAX_START_FAILURES times in a row
        # while others served: until retry_at (None: no such wait) none is
        # started, unless none serves any more, and none recycled. The
        # wait doubles with each such give-up in a row (give_ups), until a
        # process started after the last one (spawned > gave_up_seq) has
        # been ready for RAPID seconds, or SIGHUP.
        self.retry_at: Optional[float] = None
        self.give_ups = 0
        self.gave_up_seq: Optional[int] = None
        self.spawned = 0           # processes started so far
        self.crashes = 0           # ready processes in a row that died soon
        # Successors in a row that died soon after they became ready while
        # a proven process waited for them (no successor proven since).
        self.successor_crashes = 0
        # Child.seq of the fresh process a run of failures waits for
        # (_exited): only that one, so a run of them that never prove
        # themselves (killed, drained) cannot hold it off for good.
        self.held_for: Optional[int] = None
        self.warned_rss = False    # said once that max_rss is too low
        # (describe, error line)
        self.last_failure: Optional[Tuple[str, Optional[str]]] = None
        self.next_spawn = 0.0      # back-off: no spawn before this
        self.crash_spawn_at = 0.0  # a crash's back-off, kept by a try
        self.next_rss = 0.0
        self.exit_status = 0
        self.last_check = time.monotonic()

    # -- the supervisor's side ------------------------------------------------

    def run(self) -> int:
        opts = self.options
        self.pid = os.getpid()
        self.listeners = _sockets.bind_all(
            opts, reserve_reuse_port=opts["reuse_port"])
        try:
            if self.app is None and opts["preload"]:
                from ._appload import load_app
                assert self.app_spec is not None, "no app and no app spec"
                self.app = load_app(self.app_spec)
            self._warn_threads()
            return self._run()
        finally:
            _sockets.close_all(self.listeners)

    def _warn_threads(self) -> None:
        """A preloaded app that started threads at import: they do not
        exist in the forked server processes, and any lock one of them
        held stays held there for good (requests that need it hang)."""
        others = [t.name for t in threading.enumerate()
                  if t is not threading.current_thread()]
        if others:
            log.warning("The app started %d thread(s) at import (%s); "
                        "with --preload they are not in the server "
                        "processes and a lock they held stays held there: "
                        "start them on the first request, or do not "
                        "preload", len(others), ", ".join(others))

    def _run(self) -> int:
        # Every process's heartbeat slot, in one shared mapping made
        # before the first fork (MAP_SHARED | MAP_ANONYMOUS): each
        # process writes its own and reads its siblings' connection
        # counts (ext/heartbeat.h).
        self.table = mmap.mmap(-1, SLOTS * HEARTBEAT_SIZE)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r, self.wake_w = wake_r, wake_w
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        old_handlers: Dict[int, SignalHandler] = {}
        for handled in HANDLED:
            previous = signal.signal(handled, self._on_signal)
            # python -m yimmo's StandIn (yimmo._signals) is the default,
            # and what it noted since the import is ours to act on.
            old_handlers[handled] = signal.SIG_DFL \
                if _signals.is_default(previous) else previous
            if _signals.take_over(handled, previous):
                self.pending_signals.append(handled)
        # What the server processes start with again: the defaults, or
        # the handlers a preloaded app installed (they are the app's).
        self.app_handlers = old_handlers
        # A log reader that stopped reading must not freeze the
        # supervisor: its lines for stderr wait in a backlog instead.
        _logging.hold_stderr_lines(True)
        log.info("Supervisor listening at %s: %d processes x %d workers",
                 ", ".join(_sockets.describe(l.address)
                           for l in self.listeners),
                 self.target, opts_workers(self.options))
        try:
            self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            try:
                if self.children:
                    # Only after a failure of the loop itself: the
                    # processes drain as on SIGTERM (their requests
                    # finish), and only those still there after the
                    # graceful timeout are killed.
                    self._stop_children()
            finally:
                # The last lines get a second to go out.
                _logging.flush_stderr(1.0)
                _logging.hold_stderr_lines(False)
        return self.exit_status

    def _stop_children(self) -> None:
        deadline = time.monotonic() + self.options["graceful_timeout"] + \
            KILL_SLACK
        for child in self.children.values():
            child.draining_since = None
            self._drain(child, "the supervisor is exiting")
        while self.children and time.monotonic() < deadline:
            self._reap()
            if self.children:
                time.sleep(TICK)
        for child in list(self.children.values()):
            self._kill(child, "the supervisor is exiting")
        self._reap(block=True)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.pending_signals.append(signum)

    def _loop(self) -> None:
        while True:
            self._handle_signals()
            self._reap()
            if self.stopping:
                if not self.children:
                    log.info("All server processes have exited")
                    return
                self._enforce_stop_deadline()
            else:
                if self.exit_status:
                    return
                if self.retry_at is not None and (
                        time.monotonic() >= self.retry_at
                        or not self._someone_serves()):
                    self._try_again()
                self._check_children()
                self._fill()
                self._retire_replaced()
            self._wait()

    def _wait(self) -> None:
        _logging.flush_stderr()
        fds = [self.wake_r] + [c.pipe for c in self.children.values()
                               if c.pipe is not None]
        try:
            readable, _, _ = select.select(fds, [], [], TICK)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self.wake_r:
                try:
                    while os.read(fd, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            child = next((c for c in self.children.values()
                          if c.pipe == fd), None)
            if child is not None:
                self._read_child(child)

    def _read_child(self, child: Child) -> bool:
        """Read what the process wrote; False when nothing was there."""
        pipe = child.pipe
        if pipe is None:    # callers check; closed
            return False
        try:
            data = os.read(pipe, 4096)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            os.close(pipe)
            child.pipe = None
            return False
        child.buffer += data
        while child.buffer:
            kind = child.buffer[:1]
            if kind == b"E":
                line, sep, rest = child.buffer[1:].partition(b"\n")
                if not sep:
                    return True
                child.error_line = line.decode("utf-8", "replace")
                child.buffer = rest
                continue
            child.buffer = child.buffer[1:]
            if kind == b"B" and child.loaded_at is None:
                child.loaded_at = time.monotonic()
            elif kind == b"R" and child.ready_at is None:
                child.ready_at = time.monotonic()
                log.info("Server process %d is ready", child.pid)
            elif kind == b"r":
                pass  # the slot's flag says it; _check_children acts
        return True

    # -- signals --

    def _handle_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            if signum == signal.SIGINT:
                self.interrupted = True
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop("Received " + signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGTTIN:
                if self.stopping:
                    pass
                elif self.target >= _options.MAX_PROCESSES:
                    log.warning("Received SIGTTIN: already %d processes, "
                                "the most there can be", self.target)
                else:
                    self.target += 1
                    log.info("Received SIGTTIN: now %d processes",
                             self.target)
            elif signum == signal.SIGTTOU:
                self._remove_one()
            elif signum == signal.SIGUSR1:
                log.info("Received SIGUSR1: reopening log files")
                _logging.reopen_log_files()
                for child in self.children.values():
                    self._signal(child, signal.SIGUSR1)

    def _begin_stop(self, why: str) -> None:
        if self.stopping:
            return
        grace = self.options["graceful_timeout"]
        if self.children:
            log.info("%s: stopping %d server process(es), %g s to finish",
                     why, len(self.children), grace)
        else:
            log.info("%s: stopping", why)
        self.stopping = True
        self.stop_deadline = time.monotonic() + grace + KILL_SLACK
        # Our copies of the listeners close now, as a single server's do:
        # once every process has closed its own, new clients are refused
        # at once instead of waiting in a backlog nobody accepts from.
        for listener in self.listeners:
            listener.sock.close()
        for child in self.children.values():
            self._drain(child)

    def _enforce_stop_deadline(self) -> None:
        assert self.stop_deadline is not None, "set by _begin_stop"
        if time.monotonic() >= self.stop_deadline:
            for child in self.children.values():
                if child.killed_for is None:
                    self._kill(child, "the graceful timeout ran out")

    def _reload(self) -> None:
        if self.stopping:
            return
        active = [c for c in self.children.values()
                  if c.draining_since is None and c.retire is None]
        log.info("Received SIGHUP: reloading; starting %d new process(es), "
                 "then the old ones drain", self.target)
        self.failures = 0
        self.successor_crashes = 0
        self.held_for = None
        self.next_spawn = 0.0
        self.retry_at = None
        self.give_ups = 0
        self.gave_up_seq = None
        for child in self.children.values():
            child.cancelled_retire = None
        for child in active:
            child.retire = "reload"

    def _remove_one(self) -> None:
        if self.stopping:
            return
        if self.target <= 1:
            log.warning("Received SIGTTOU: already at 1 process; ignored")
            return
        self.target -= 1
        log.info("Received SIGTTOU: now %d processes", self.target)
        # The excess goes in _retire_replaced: the oldest drains.

    # -- keeping the count ----------------------------------------------------

    def _serving(self) -> List[Child]:
        """Processes that count towards the target: not draining, not to
        be replaced."""
        return [c for c in self.children.values()
                if c.draining_since is None and c.retire is None]

    def _fill(self) -> None:
        now = time.monotonic()
        missing = self.target - len(self._serving())
        while missing > 0 and now >= self.next_spawn:
            if self._spawn() is None:
                break
            missing -= 1

    def _retire_replaced(self) -> None:
        serving = self._serving()
        ready_new = [c for c in serving if c.ready_at is not None]
        # Processes past the target (SIGTTOU): the oldest drains, and
        # before it one whose replacement waits for the next try.
        excess = len(ready_new) - self.target
        for child in sorted(ready_new, key=lambda c: (
                c.cancelled_retire is None, c.started))[:max(0, excess)]:
            if child.cancelled_retire is not None:
                log.info("Server process %d: draining (one process too "
                         "many; it was to be replaced, as %s)", child.pid,
                         child.cancelled_retire)
            else:
                log.info("Server process %d: draining (fewer processes)",
                         child.pid)
            self._drain(child)
        ready_new = [c for c in ready_new if c.draining_since is None]
        retiring = sorted((c for c in self.children.values()
                           if c.retire is not None
                           and c.draining_since is None),
                          key=lambda c: c.started)
        if not retiring:
            return
        # Never fewer processes accepting than the target, and a process
        # that may be the last good code goes only once as many proven
        # processes are there in its place: new code that dies right after
        # it became ready (a reload of a broken app, and a second reload
        # before the first one's processes proved themselves) finds the
        # old processes still serving. Trusted: proven, or not started as
        # anyone's successor (an old process that has not served a second
        # yet). A successor that has not proven itself and is replaced in
        # turn (only a later reload does that: its own recycling waits
        # until it has proven itself, _check_children) goes first, as soon
        # as enough others accept.
        def trusted(c: Child) -> bool:
            return c.proven or not c.successor

        accepting = len(ready_new) + sum(1 for c in retiring
                                         if c.ready_at is not None)
        good = sum(1 for c in ready_new if c.proven) + sum(
            1 for c in retiring if c.ready_at is not None and trusted(c))
        for child in sorted(retiring, key=lambda c: (trusted(c), c.started)):
            if child.ready_at is None:
                # Never served: nothing to hand over.
                self._drain(child, "replaced (%s) before it was ready"
                            % child.retire)
            elif not trusted(child):
                if accepting > self.target:
                    accepting -= 1
                    self._drain(child, "replaced (%s) before it proved "
                                "itself" % child.retire)
            elif good > self.target and accepting > self.target:
                accepting -= 1
                good -= 1
                self._drain(child, "replaced (%s); its successor serves"
                            % child.retire)

    def _check_children(self) -> None:
        now = time.monotonic()
        opts = self.options
        check_rss = opts["max_rss"] > 0 and now >= self.next_rss
        if check_rss:
            self.next_rss = now + RSS_EVERY
        stale_after = opts["heartbeat_timeout"]
        # If the supervisor itself was not running for a while (stopped,
        # starved of CPU, a suspended machine), every heartbeat looks old
        # at once: judge them from the next round on.
        suspended = now - self.last_check > max(1.0, stale_after / 2)
        if suspended:
            stale_after = 0
        self.last_check = now
        for child in list(self.children.values()):
            if child.draining_since is not None or child.killed_for:
                if child.draining_since is not None and child.killed_for \
                        is None and now > child.draining_since + \
                        opts["graceful_timeout"] + KILL_SLACK:
                    self._kill(child, "it did not finish draining in time")
                continue
            if child.ready_at is None:
                # The import of the app, then (timed afresh) the start of
                # its worker threads: thousands take seconds, which a
                # timeout meant for a hung import did not count before
                # they came before "ready" (hostile review s22).
                start_timeout = opts["start_timeout"]
                loaded = child.loaded_at
                since = child.started if loaded is None else loaded
                if start_timeout > 0 and not suspended and \
                        now - since > start_timeout:
                    if loaded is None:
                        child.error_line = (
                            "server process not ready %g s after it "
                            "started (--start-timeout)" % start_timeout)
                        why = "it was not ready %.1f s after it started"
                    else:
                        child.error_line = (
                            "server process did not start its %d worker "
                            "threads within %g s (--start-timeout; each "
                            "takes the GIL once: fewer --workers, or app "
                            "threads that hold the GIL less, start sooner)"
                            % (opts["workers"], start_timeout))
                        why = ("its worker threads had not started %.1f s "
                               "after its app was loaded")
                    self._kill(child, why % (now - since))
                continue
            beat_ns, requests, recycle, reason, _, _ = child.heartbeat()
            # Proven: ready for RAPID seconds with its loop beating now
            # (one stopped or stuck since is not), or it served its
            # max-requests.
            if not child.proven and (
                    now - child.ready_at >= RAPID
                    and now - beat_ns / 1e9 < BEAT_FRESH
                    or recycle and reason == 1):
                self._proven(child)
            if stale_after > 0:
                last = beat_ns / 1e9 if beat_ns else child.ready_at
                if now - last > stale_after:
                    self._kill(child, "its event loop made no progress for "
                               "%.1f s (no heartbeat)" % (now - last))
                    continue
            if child.retire is not None or \
                    child.cancelled_retire is not None:
                continue
            if not child.proven:
                # Its own triggers (a request to be recycled, its lifetime,
                # its memory) wait until it has proven itself: replaced at
                # once, it would be replaced by one that does the same, a
                # process started every few milliseconds, each living for
                # its proof (review s19). Its max-requests proved it.
                continue
            if recycle:
                child.retire = RECYCLE_REASONS.get(
                    reason, "it asked to be recycled")
                if reason == 1:
                    child.retire += " (%d requests)" % requests
            elif child.lifetime_end is not None and now >= \
                    child.lifetime_end:
                child.retire = "it reached its max-lifetime"
            elif check_rss:
                rss = _rss_mb(child.pid)
                if rss is not None and rss > opts["max_rss"]:
                    child.retire = ("its resident memory, %d MB, passed "
                                    "max-rss" % rss)
                    if child.ready_at is not None and \
                            now - child.ready_at < 2 * RSS_EVERY and \
                            not self.warned_rss:
                        # Recycled as soon as it is looked at: the limit
                        # is below what a fresh process needs.
                        self.warned_rss = True
                        log.warning("--max-rss %d MB is below what a fresh "
                                    "server process uses (%d MB): every "
                                    "process will be replaced every few "
                                    "seconds", opts["max_rss"], rss)
            if child.retire is not None and self.retry_at is not None:
                # Its successor would fail at start like the last ones.
                log.warning("Server process %d: not replaced yet although "
                            "%s: new processes fail at start; trying again "
                            "in %.0f s", child.pid, child.retire,
                            max(0.0, self.retry_at - now))
                child.cancelled_retire, child.retire = child.retire, None
            elif child.retire is not None:
                log.info("Server process %d: starting its successor, as %s",
                         child.pid, child.retire)

    def _proven(self, child: Child) -> None:
        """A start that worked ends a run of failures at start (failures
        far apart never add up to giving up) if it came after them: an
        older process says nothing of the app as it is now."""
        child.proven = True
        if self.gave_up_seq is not None and child.seq > self.gave_up_seq:
            log.info("Server process %d started and serves: new processes "
                     "start again", child.pid)
            self.give_ups = 0
            self.gave_up_seq = None
        if child.seq > self.last_failed_seq:
            self.failures = 0
            self.held_for = None
        self.crashes = 0   # it did not die soon
        if child.successor:
            self.successor_crashes = 0

    def _someone_serves(self, proven: bool = False) -> bool:
        """A process serves (proven: and has for RAPID seconds) that is
        not on its way out."""
        return any(c.ready_at is not None and c.draining_since is None
                   and c.killed_for is None and (c.proven or not proven)
                   for c in self.children.values())

    def _replacing(self, proven: bool = False) -> bool:
        """A process that serves (proven: and has proven itself) waits for
        its successor (a reload, a recycle)."""
        return any(c.retire is not None and c.ready_at is not None
                   and c.draining_since is None and c.killed_for is None
                   and (c.proven or not proven)
                   for c in self.children.values())

    def _successor_failed(self, child: Child) -> bool:
        """Count the death of a successor that had not proven itself while
        a proven process waits for it; True when that makes
        MAX_START_FAILURES in a row: the replacement is to be given up
        on."""
        if not (child.successor and self._replacing(proven=True)):
            return False
        self.successor_crashes += 1
        if self.successor_crashes < MAX_START_FAILURES:
            return False
        self.successor_crashes = 0
        return True

    def _give_up_while_serving(self, how: str,
                               error_line: Optional[str]) -> None:
        """New processes fail at start while others serve (a reload or a
        recycle with broken code, a replacement): those keep serving, and
        none is started or recycled until the next try."""
        now = time.monotonic()
        self.give_ups += 1
        self.gave_up_seq = self.spawned
        self.held_for = None
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self.give_ups - 1))
        self.retry_at = now + delay
        self.next_spawn = self.retry_at
        log.error("Server processes fail at start (%s)%s; the running "
                  "processes keep serving; trying again in %.0f s (or on "
                  "SIGHUP)", how, ": " + error_line if error_line else "",
                  delay)
        for c in self.children.values():
            if c.ready_at is None or c.successor and not c.proven:
                # A sibling of the failures, ready or not: serving on, it
                # would take the place of one of the processes that work.
                self._drain(c)
            elif c.retire is not None and c.draining_since is None:
                c.cancelled_retire, c.retire = c.retire, None

    def _try_again(self) -> None:
        """The wait after a give-up is over, or no process serves any
        more: the replacements given up on and the missing processes are
        started again. One more failure at start gives up again (with a
        longer wait, or for good if none serves)."""
        self.retry_at = None
        # A crash's back-off still holds (a process that crashes right
        # after it started, again and again, while others fail to).
        self.next_spawn = self.crash_spawn_at
        for c in self.children.values():
            why, c.cancelled_retire = c.cancelled_retire, None
            if why is not None and c.draining_since is None and \
                    c.killed_for is None:
                c.retire = why
                log.info("Server process %d: starting its successor again, "
                         "as %s", c.pid, why)
        if self.target > len(self._serving()):
            # One more failure at start, or successor dying right after it
            # became ready, gives up again.
            self.failures = MAX_START_FAILURES - 1
            self.successor_crashes = MAX_START_FAILURES - 1
        else:
            # Nothing to start (SIGTTOU): the wait is simply over.
            log.info("A try at new processes, with nothing to start: the "
                     "wait after the start failures is over")
            self.failures = 0
            self.give_ups = 0
            self.gave_up_seq = None

    # -- process control --

    def _signal(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def _drain(self, child: Child, why: Optional[str] = None) -> None:
        if child.draining_since is not None:
            return
        if why:
            log.info("Server process %d: %s; draining it", child.pid, why)
        child.draining_since = time.monotonic()
        self._signal(child, signal.SIGTERM)

    def _kill(self, child: Child, why: str) -> None:
        log.warning("Server process %d: killing it (SIGKILL), as %s",
                    child.pid, why)
        child.killed_for = why
        self._signal(child, signal.SIGKILL)

    def _reap(self, block: bool = False) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            # Gone: its siblings must not wait for it to accept.
            struct.pack_into("=I", self.table,
                             child.slot * HEARTBEAT_SIZE + 28, 0)
            # What it wrote before it exited (its error line).
            while child.pipe is not None and self._read_child(child):
                pass
            if child.pipe is not None:
                os.close(child.pipe)
                child.pipe = None
            self._exited(child, status)

    def _exited(self, child: Child, status: int) -> None:
        how = _describe_status(status)
        if self.stopping or child.draining_since is not None:
            # Asked to go: nothing to replace (its successor, if any, is
            # there already).
            level = logging.INFO if status == 0 else logging.WARNING
            log.log(level, "Server process %d %s", child.pid, how)
            return
        now = time.monotonic()
        rapid = child.ready_at is None or now - child.ready_at < RAPID
        if child.killed_for and child.ready_at is not None:
            if not child.proven and self._successor_failed(child):
                # (A successor whose loop stopped before it proved
                # itself: it failed like one that died.)
                self._give_up_while_serving(
                    "killed, as %s, before it proved itself"
                    % child.killed_for, child.error_line)
                return
            log.warning("Server process %d %s (%s); %s", child.pid, how,
                        child.killed_for, self._next_one())
            return
        if not rapid:
            # (A run of failures at start goes on: only a process started
            # after it ends it, by serving.)
            self.crashes = 0
            log.warning("Server process %d %s; %s", child.pid, how,
                        self._next_one())
            return
        if child.ready_at is not None:
            # It started and served: a crash soon after (a request that
            # kills the process, sent again and again) is restarted with
            # back-off for as long as it takes. Only processes that cannot
            # start make the supervisor give up. But successors that die
            # right after they became ready, MAX_START_FAILURES in a row
            # while the proven processes they were to replace still serve
            # (a reload or a recycle to code that crashes soon after it
            # starts), give the replacement up as successors that cannot
            # start do: those serve on until the next try.
            self.crashes += 1
            delay = min(CRASH_BACKOFF_MAX,
                        BACKOFF_FIRST * 2 ** (self.crashes - 1))
            self.crash_spawn_at = now + delay
            self.next_spawn = max(self.next_spawn or 0.0, now + delay)
            if self._successor_failed(child):
                self._give_up_while_serving(
                    how + " right after it became ready", child.error_line)
                return
            log.warning("Server process %d %s right after it started; %s",
                        child.pid, how, self._next_one(delay))
            return
        self.failures += 1
        self.last_failed_seq = child.seq
        self.last_failure = (how, child.error_line)
        if self.failures >= MAX_START_FAILURES:
            if self._someone_serves(proven=True):
                # A reload (or a recycle, a replacement) whose new
                # processes cannot start: the old ones keep serving. (Not
                # one that just started: it may crash like the others
                # fail, and the tries would go on for good.)
                self._give_up_while_serving(how, child.error_line)
                return
            fresh = [(c.ready_at, c.seq) for c in self.children.values()
                     if c.ready_at is not None and not c.proven
                     and c.draining_since is None and c.killed_for is None
                     and self.held_for in (None, c.seq)]
            if fresh and self.crashes == 0:
                ready_at, self.held_for = min(fresh)
                # One that started with these serves, for less than RAPID
                # seconds yet: the next failure decides, once it has (or
                # has crashed: then, as when one of those crashed before,
                # the app does not run).
                self.failures = MAX_START_FAILURES - 1
                self.next_spawn = max(self.next_spawn, ready_at + RAPID)
                log.warning("Server process %d %s before it was ready; %s",
                            child.pid, how,
                            self._next_one(self.next_spawn - now))
                return
            log.error("Server processes fail at start, %d times in a row; "
                      "giving up", self.failures)
            line = child.error_line or "server process %s at start" % how
            _logging.write_stderr("yimmo: error: %s\n" % line)
            self.exit_status = 1
            self._begin_stop("Giving up")
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
        self.next_spawn = max(self.next_spawn, now + delay)
        log.warning("Server process %d %s %s; %s", child.pid, how,
                    "before it was ready" if child.ready_at is None
                    else "right after it started", self._next_one(delay))

    def _next_one(self, delay: Optional[float] = None) -> str:
        """When the replacement of a process that exited starts."""
        if self.retry_at is not None and self._someone_serves():
            return "a new one at the next try, in %.0f s" % max(
                0.0, self.retry_at - time.monotonic())
        if delay is None:
            return "starting a new one"
        return "starting a new one in %.1f s" % delay

    def _spawn(self) -> Optional[int]:
        opts = self.options
        used = {c.slot for c in self.children.values()}
        slot = next((i for i in range(SLOTS) if i not in used), None)
        if slot is None:
            log.warning("%d server processes already; not starting another "
                        "until one has exited", SLOTS)
            self.next_spawn = time.monotonic() + 1.0
            return None
        # A fresh slot: no beat, no recycle, not accepting.
        start = slot * HEARTBEAT_SIZE
        self.table[start:start + HEARTBEAT_SIZE] = bytes(HEARTBEAT_SIZE)
        lifetime_end = None
        if opts["max_lifetime"] > 0:
            lifetime_end = time.monotonic() + opts["max_lifetime"] + \
                random.uniform(0, opts["max_lifetime_jitter"])
        _flush_std_streams()
        read_end: Optional[int] = None
        write_end: Optional[int] = None
        # The handled signals are blocked across fork(): until the child
        # has reset their handlers, a signal sent to it (a SIGTERM from a
        # reload that follows at once) would run the supervisor's handler
        # there and be lost. The child unblocks them once reset, so one
        # sent meanwhile is delivered then, with its default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            read_end, write_end = os.pipe()
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            # Out of descriptors, processes or memory: the processes
            # that run go on serving; try again later.
            for fd in (read_end, write_end):
                if fd is not None:
                    os.close(fd)
            log.error("Cannot start a server process: %s; trying again "
                      "in %.0f s", _sockets.explain(exc), SPAWN_RETRY)
            self.next_spawn = time.monotonic() + SPAWN_RETRY
            return None
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        if pid == 0:
            status = 1
            try:
                os.close(read_end)
                status = self._child_main(slot, write_end)
            except BaseException:
                try:
                    traceback.print_exc()
                finally:
                    status = 1
            finally:
                try:
                    logging.shutdown()
                    _flush_std_streams()
                finally:
                    os._exit(status)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self.spawned += 1
        new = Child(pid, self.table, slot, read_end, lifetime_end,
                    self.spawned)
        new.successor = self._replacing()
        self.children[pid] = new
        log.info("Started server process %d", pid)
        return pid

    # -- the server process's side --------------------------------------------

    def _child_main(self, slot: int, notify_fd: int) -> int:
        """In the forked server process: returns its exit status."""
        # The supervisor's lines waiting for stderr are its own; this
        # process writes (and blocks) as a single server does.
        _logging.hold_stderr_lines(False)
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            handler = self.app_handlers.get(sig)
            signal.signal(sig, signal.SIG_DFL if handler is None
                          else handler)
        # Until the server installs its own handler, SIGUSR1 (reopen the
        # log files, forwarded to every process) must not kill a process
        # still importing the app: a StandIn notes it, the files are
        # reopened after the import (they are the supervisor's, inherited,
        # until then), and the server takes over what it notes after that.
        # (Not reopened in a handler of our own: one that runs inside
        # another, SIGUSR1s close together, deadlocked the process.)
        stand_in = _signals.StandIn()
        if signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:
            signal.signal(signal.SIGUSR1, stand_in)
        # Nor may a terminal's SIGHUP, SIGTTIN or SIGTTOU to the process
        # group (the supervisor's business: the server ignores them too).
        for terminal in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            if signal.getsignal(terminal) == signal.SIG_DFL:
                signal.signal(terminal, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        _set_pdeathsig()
        if os.getppid() != self.pid:
            return 1   # the supervisor died while we were forking
        os.close(self.wake_r)
        os.close(self.wake_w)
        for other in self.children.values():
            if other.pipe is not None:
                os.close(other.pipe)
        self.children = {}
        os.set_blocking(notify_fd, False)
        opts = self.options

        def fail(line: str) -> int:
            os.set_blocking(notify_fd, True)
            try:
                os.write(notify_fd, b"E" + line.replace("\n", " ").encode(
                    "utf-8", "replace") + b"\n")
            except OSError:
                pass    # the supervisor is gone (hostile review s22)
            return 1

        listeners: List[_sockets.Listener] = []
        try:
            for listener in self.listeners:
                if listener.reuse_port:
                    # Bound now, listening once the app is loaded: a
                    # listening socket joins the kernel's group at once,
                    # and took its share of the new connections while the
                    # process imported the app (seconds), or failed to
                    # (they were reset) (hostile review s23).
                    listeners.append(_sockets.reuse_port_listener(
                        listener, opts["backlog"], listen=False))
                    # The supervisor's reservation, not ours to hold.
                    listener.sock.close()
                else:
                    # Ours to use, the supervisor's to unlink.
                    listeners.append(listener._replace(unix_file=None))
        except OSError as exc:
            return fail(_sockets.explain(exc))
        app = self.app
        if app is None:
            from ._appload import AppLoadError, load_app
            assert self.app_spec is not None, "no app and no app spec"
            try:
                app = load_app(self.app_spec)
            except AppLoadError as exc:
                if opts["log_level"] == "debug" and \
                        exc.__cause__ is not None:
                    traceback.print_exception(
                        type(exc.__cause__), exc.__cause__,
                        exc.__cause__.__traceback__)
                if self.reload_report is not None:
                    # As python -m yimmo does for one process: the
                    # --reload parent watches what was imported and the
                    # files the failure points at, so fixing one restarts
                    # (it had nothing to watch, and waited for good).
                    from ._reload import failure_files, report_modules
                    report_modules(*self.reload_report,
                                   extra_files=failure_files(exc))
                return fail(str(exc))
        if self.reload_report is not None:
            from ._reload import report_modules
            report_modules(*self.reload_report)
        if stand_in.take(signal.SIGUSR1):
            log.info("Received SIGUSR1 while importing the application: "
                     "reopening log files")
            _logging.reopen_log_files()
        try:
            for listener, shared in zip(listeners, self.listeners):
                if shared.reuse_port:
                    listener.sock.listen(opts["backlog"])
        except OSError as exc:
            return fail(_sockets.explain(exc))
        max_requests = opts["max_requests"]
        if max_requests and opts["max_requests_jitter"]:
            # random reseeds itself in a forked child.
            max_requests += random.randint(0, opts["max_requests_jitter"])
        from ._server import Server
        process = ProcessSlot(self.table, slot, notify_fd, max_requests)
        try:
            server = Server(app, _listeners=listeners, _process=process,
                            **opts)
        except (OSError, TypeError, ValueError) as exc:
            return fail(str(exc))
        try:
            os.write(notify_fd, b"B")
        except OSError:
            pass    # the supervisor is gone; its death signal follows
        try:
            server.serve_forever()      # says "R" once its workers run
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            if process.readied:
                raise
            # Its worker threads could not start (ulimit -u, -v): a
            # failure at start, told as one, so that the supervisor gives
            # up after a few with this line rather than restarting a
            # process that crashed right after it was ready, for good
            # (hostile review s21).
            return fail(_sockets.explain(exc))
        return 0


def opts_workers(options: ServerOptions) -> int:
    return options["workers"]


def _rss_mb(pid: int) -> Optional[int]:
    """Resident memory of pid in MB (from /proc), None if gone."""
    try:
        with open("/proc/%d/statm" % pid, "rb") as f:
            resident = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * mmap.PAGESIZE // (1024 * 1024)


def run(app_spec: Optional[str], app: Optional[WSGIApplication],
        options: ServerOptions,
        reload_report: Optional[ReloadReport] = None) -> int:
    """Supervise; returns the exit status."""
    return Supervisor(app_spec, app, options, reload_report).run()
