"""The command line: python -m yimmo [options] APP (also the `yimmo` script).

Parses options (yimmo._options), sets up logging, imports the application
and serves it. Every expected failure ends as one "yimmo: error: ..." line
on stderr: exit status 2 for bad usage or option values, 1 for an
application that cannot be loaded or an address that cannot be bound.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING, List, Optional, Sequence

import yimmo
from yimmo import _reload, _signals, _sockets
from yimmo._appload import AppLoadError, load_app
from yimmo._logging import LogConfigError, configure_logging
from yimmo._options import parse_command_line

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the server; return the process exit status."""
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        # SIGINT: serve() has already stopped gracefully; Ctrl-C during
        # start-up (a slow import) is just as deliberate.
        return EXIT_OK


def _run(argv: Sequence[str]) -> int:
    # From the start (a config file runs, a --reload parent may pass a
    # SIGUSR1 on at once) until the app is imported.
    starting = _SignalsWhileImporting()
    with starting:
        return _run_started(argv, starting)


def _run_started(argv: Sequence[str],
                 starting: "_SignalsWhileImporting") -> int:
    reload_child = os.environ.get(_reload.CHILD_ENV)
    if reload_child:
        # From the first import on (a config file can import too).
        _reload.note_loads()
    try:
        app_spec, options, cli = parse_command_line(argv)
    except SystemExit as exc:
        # argparse has printed --help, --version or the one-line error.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    if reload_child:
        cli["reload"] = False  # the --reload parent runs this process
    try:
        if cli["reload"]:
            # The watching parent logs only on the error log.
            configure_logging(options["log_level"], None,
                              options["error_log"])
        else:
            configure_logging(options["log_level"], options["access_log"],
                              options["error_log"], options["log_config"])
    except OSError as exc:
        return _fail("cannot open log file: %s" % _describe(exc),
                     EXIT_FAILURE)
    except LogConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if cli["reload"]:
        # The parent installs handlers of its own, for these two: it is no
        # server, and SIGTTIN/SIGTTOU are job control's again.
        starting.end(hand_over=("SIGHUP", "SIGUSR1"))
        return _reload.run_parent(argv, options, cli)

    # Like `python -m`, find the application relative to where we run.
    try:
        cwd: Optional[str] = os.getcwd()
    except FileNotFoundError:
        # The directory was removed under us (a deploy replaced the
        # release directory a shell was still in). `python -m` then puts
        # no directory on sys.path and goes on; so do we, since an app
        # installed on sys.path still imports. Said, as an import that
        # fails next would otherwise not say why.
        cwd = None
        logging.getLogger("yimmo").warning(
            "The working directory no longer exists: the application is "
            "looked for on sys.path only")
    if cwd is not None and cwd not in sys.path:
        sys.path.insert(0, cwd)
    supervised = options["processes"] > 1
    app: Optional[WSGIApplication] = None
    # A supervisor imports the app only with --preload: each server
    # process imports it after the fork (so SIGHUP reloads the code).
    if not supervised or options["preload"]:
        try:
            app = load_app(app_spec)
        except AppLoadError as exc:
            if options["log_level"] == "debug" and \
                    exc.__cause__ is not None:
                traceback.print_exception(type(exc.__cause__), exc.__cause__,
                                          exc.__cause__.__traceback__)
            if reload_child:
                # The --reload parent watches what was imported so far and
                # the files the failure points at: fixing one restarts.
                _reload.report_modules(reload_child, cli["config"],
                                       _reload.failure_files(exc))
            return _fail(str(exc), EXIT_FAILURE)
    # Under a supervisor the server processes report (the supervisor
    # imports no app and must not run a thread while it forks).
    if reload_child and not supervised:
        _reload.report_modules(reload_child, cli["config"])

    starting.end()
    # Logging is set up: serve() only adds what is missing.
    options["log_config"] = None
    try:
        if supervised:
            from yimmo import _supervisor
            return _supervisor.run(
                app_spec, app, options,
                reload_report=(reload_child, cli["config"])
                if reload_child else None)
        assert app is not None  # loaded above: not supervised
        yimmo.serve(app, **options)
    except (TypeError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(_describe(exc), EXIT_FAILURE)
    return EXIT_OK


class _SignalsWhileImporting:
    """SIGHUP, SIGUSR1, SIGTTIN and SIGTTOU while the process starts and
    imports the app (which can take seconds): their default actions would
    kill or stop the process, and a `systemctl reload` just after a start,
    or logrotate's SIGUSR1 during a restart, sends them then (hostile
    review of processes, s18). Where the process has them at their
    defaults, a StandIn (yimmo._signals) notes them. end(), once the app
    is imported, acts on those noted as the server would (SIGUSR1 reopens
    the log files, the others are logged as ignored) and leaves the
    StandIn in place: the server or supervisor that installs its handlers
    next takes over what it notes from then on, so there is no moment
    between the two where the default action applies. On the way out, the
    signals still the StandIn's get their defaults back. Main thread only
    (where signal handlers can be set)."""

    def __init__(self) -> None:
        self.stand_in = _signals.StandIn()
        self.ours: List[int] = []
        self.ended = False

    def __enter__(self) -> "_SignalsWhileImporting":
        for name in _signals.NAMES:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                if signal.getsignal(sig) == signal.SIG_DFL:
                    signal.signal(sig, self.stand_in)
                    self.ours.append(sig)
            except ValueError:      # not the main thread
                return self
        if os.environ.get(_reload.CHILD_ENV):
            # The --reload parent starts its child with SIGUSR1 blocked
            # (_reload._in_child): one it passed on early is noted now.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()
        for sig in self.ours:
            if signal.getsignal(sig) is self.stand_in:  # nobody took it
                signal.signal(sig, signal.SIG_DFL)
        self.ours = []

    def end(self, hand_over: Optional[Sequence[str]] = None) -> None:
        """The import is done: act (once) on the signals noted so far.
        hand_over: the names of the signals whose handlers come next
        (every one by default); the others get their defaults back now."""
        if self.ended:
            return
        self.ended = True
        log = logging.getLogger("yimmo")
        if hand_over is not None:
            for sig in list(self.ours):
                if signal.Signals(sig).name not in hand_over:
                    self.ours.remove(sig)
                    if signal.getsignal(sig) is self.stand_in:
                        signal.signal(sig, signal.SIG_DFL)
        for sig in self.ours:
            if not self.stand_in.take(sig):
                continue
            name = signal.Signals(sig).name
            if sig == signal.SIGUSR1:
                from yimmo import _logging
                log.info("Received SIGUSR1 while importing the application: "
                         "reopening log files")
                _logging.reopen_log_files()
            else:
                log.warning("Received %s while importing the application: "
                            "ignored", name)


def _describe(exc: OSError) -> str:
    """An OSError as one line without the "[Errno 98]" prefix."""
    if exc.strerror and exc.filename is not None:
        return "%s: %s" % (exc.filename, _sockets.explain(exc))
    return _sockets.explain(exc)


def _fail(message: str, status: int) -> int:
    print("yimmo: error: %s" % message, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
