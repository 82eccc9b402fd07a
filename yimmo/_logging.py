"""Logging set-up for the server and the access-log line format.

Two loggers: "yimmo" for the server's own messages (to stderr or a file, as
"[2026-11-25 18:00:00 +0000] [PID] [INFO] message") and "yimmo.access" for
one line per request (Combined Log Format unless --access-log-format says
otherwise), to stderr or a file. configure_logging() sets up both (the
command line, serve()); configure_for_server() what a Server's own
logging keywords ask for; configure_access_log() only the access log;
apply_log_config() layers a logging.config file on top. format_access()
builds a Combined line, compile_access_format() a formatter for gunicorn's
atoms. reopen_log_files() reopens the files (SIGUSR1, logrotate).

Each record is written with one write(2) (files are opened O_APPEND), so
lines from several processes sharing a file never interleave inside a line.

This module imports nothing from the rest of yimmo.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import select
import socket
import stat
import sys
import threading
import time
import weakref
from http import HTTPStatus
from urllib.parse import unquote_to_bytes
from typing import (
    TYPE_CHECKING, Any, Callable, Collection, Dict, List, Optional, TextIO,
    Tuple, Union,
)

if TYPE_CHECKING:
    from _typeshed import StrPath
    from _typeshed.wsgi import WSGIEnvironment

    # The response headers as the app gave them (None: it never called
    # start_response), as the C core passes them to its log_access: a
    # tuple, the core's checked copy of the app's list.
    Headers = Optional[Tuple[Tuple[str, str], ...]]
    # (environ, status, length, seconds, headers) -> the access log line.
    AccessLine = Callable[[WSGIEnvironment, str, int, float, Headers], str]
    # The same arguments -> the value of one %(atom) of a format.
    Atom = Callable[[WSGIEnvironment, str, int, float, Headers],
                    Union[str, int]]

ERROR_LOGGER = "yimmo"
ACCESS_LOGGER = "yimmo.access"

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

# Marks the handlers configure_logging() installed, so calling it again
# (serve() after the CLI did) replaces them instead of doubling every line,
# and leaves handlers that the application added alone.
_OURS = "_yimmo_handler"


def configure_logging(
    log_level: str = "info",
    access_log: Optional[StrPath] = None,
    error_log: Optional[StrPath] = "-",
    log_config: Union[StrPath, Dict[str, Any], None] = None,
) -> None:
    """Set up both loggers, as the command line and serve() want them, then
    apply log_config (a file path or a dictConfig dict) if given."""
    configure_error_log(log_level, error_log)
    configure_access_log(access_log)
    if log_config is not None:
        apply_log_config(log_config)


def configure_error_log(log_level: str = "info",
                        error_log: Optional[StrPath] = "-") -> None:
    """Send the "yimmo" logger to error_log ("-" or None: stderr, else a
    file path, appended to) at log_level. Raises OSError if the file cannot
    be opened.

    It stops propagating to the root logger, so an application that
    configures root logging does not print server lines twice.
    """
    error_log_ = logging.getLogger(ERROR_LOGGER)
    handler: logging.Handler
    if error_log is None or error_log == "-":
        handler = _stream_handler(ERROR_FORMAT, DATE_FORMAT)
    else:
        handler = AppendFileHandler(error_log)
        handler.setFormatter(logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
    _replace_handler(error_log_, handler)
    error_log_.setLevel(log_level.upper())
    error_log_.propagate = False


def configure_access_log(access_log: Optional[StrPath]) -> None:
    """Send "yimmo.access" to access_log: "-" for stderr, a file path
    (appended to), or None for off. Raises OSError if the file cannot be
    opened. Access lines never propagate (the error log is not the place
    for them).
    """
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.setLevel(logging.INFO)
    if access_log is None:
        _replace_handler(access, None)
    elif access_log == "-":
        _replace_handler(access, _stream_handler("%(message)s"))
    else:
        handler = AppendFileHandler(access_log)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _replace_handler(access, handler)


def configure_for_server(
    given: Collection[str],
    log_level: str = "info",
    access_log: Optional[StrPath] = None,
    error_log: Optional[StrPath] = "-",
    log_config: Union[StrPath, Dict[str, Any], None] = None,
) -> None:
    """What a Server constructed directly (not by serve() or the command
    line) sets up for the logging keywords it was given (the names in
    given), so that Server(access_log=PATH) writes PATH as serve() would:

    - access_log: "yimmo.access" to that file or stderr, unless the
      logger already has a handler (the application's, or a --log-config);
    - error_log: "yimmo" to that file; "-" (stderr) only if nothing logs
      yet (neither "yimmo" nor the root logger has a handler);
    - log_level: the level of "yimmo" (with error_log's handler, or a
      stderr one if nothing logs yet);
    - log_config: applied last.

    Raises OSError if a file cannot be opened, LogConfigError for a bad
    log_config.
    """
    error_log_ = logging.getLogger(ERROR_LOGGER)
    if "error_log" in given and error_log is not None and \
            error_log != "-":
        path = os.path.abspath(error_log)
        if not any(isinstance(h, AppendFileHandler) and
                   h.baseFilename == path for h in error_log_.handlers):
            configure_error_log(log_level, error_log)
        else:
            error_log_.setLevel(log_level.upper())
    elif "error_log" in given or "log_level" in given:
        if error_log is not None and not error_log_.handlers and \
                not logging.getLogger().handlers:
            configure_error_log(log_level, "-")
        else:
            error_log_.setLevel(log_level.upper())
    if access_log is not None and \
            not logging.getLogger(ACCESS_LOGGER).handlers:
        configure_access_log(access_log)
    if "log_config" in given and log_config is not None:
        apply_log_config(log_config)


class LogConfigError(ValueError):
    """A --log-config file that cannot be read or applied (one line)."""


def apply_log_config(log_config: Union[StrPath, Dict[str, Any]]) -> None:
    """Apply a logging configuration on top of what configure_logging()
    set up: a dict (logging.config.dictConfig), or a file path chosen by
    its extension: .json and .toml hold a dictConfig dict, anything else
    is an INI file for logging.config.fileConfig.

    Existing loggers stay enabled unless the configuration says
    otherwise (disable_existing_loggers defaults to False here, as in
    gunicorn): the stdlib default would silence "yimmo.access". A logger
    the configuration names loses the handlers yimmo gave it. Raises
    LogConfigError with a one-line message.
    """
    config: object
    if isinstance(log_config, dict):
        source = "log config"
        config = log_config
    else:
        source = "log config %s" % (log_config,)
        ext = os.path.splitext(log_config)[1].lower()
        try:
            if ext == ".json":
                import json
                with open(log_config, encoding="utf-8") as f:
                    config = json.load(f)
            elif ext == ".toml":
                config = _load_toml(log_config)
            else:
                config = None
                # Opened here, not only checked: fileConfig's configparser
                # skips a file it cannot open (no permission, a
                # directory) without a word, and the error was then a
                # section it missed ("'formatters'"), or "No such file"
                # for a directory.
                open(log_config, "rb").close()
        except OSError as exc:
            raise LogConfigError("%s: %s" % (source, exc.strerror or exc)) \
                from None
        except ValueError as exc:  # JSONDecodeError, TOMLDecodeError
            raise LogConfigError("%s: %s" % (source, exc)) from None
        if config is None:
            try:
                logging.config.fileConfig(log_config,
                                          disable_existing_loggers=False)
            except Exception as exc:
                raise LogConfigError("%s: %s" % (source, _one_line(exc))) \
                    from None
            return
    if not isinstance(config, dict):
        raise LogConfigError("%s: must hold a dict (dictConfig)" % source)
    settings: Dict[str, Any] = dict(config)
    settings.setdefault("version", 1)
    settings.setdefault("disable_existing_loggers", False)
    try:
        logging.config.dictConfig(settings)
    except Exception as exc:
        raise LogConfigError("%s: %s" % (source, _one_line(exc))) from None


def _load_toml(path: StrPath) -> Dict[str, Any]:
    # Under the version test, which type checkers understand (no tomllib
    # before Python 3.11).
    if sys.version_info >= (3, 11):
        try:
            import tomllib
        except ImportError:  # hidden (as the tests play an older Python)
            pass
        else:
            with open(path, "rb") as f:
                return tomllib.load(f)
    raise ValueError("TOML needs Python 3.11 or later (tomllib); "
                     "use a .json file")


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if exc.__cause__ is not None:
        text += ": %s" % (exc.__cause__,)
    return " ".join(text.split())


def _write_all(fd: int, data: bytes) -> None:
    """Write data with as few write(2) calls as the kernel allows: one for
    a regular file (O_APPEND makes it land whole at the end, even with
    other processes appending). A partial write only happens when the disk
    is full or a signal interrupts; the rest then follows."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class AppendFileHandler(logging.Handler):
    """Logs to a file opened with O_APPEND, one os.write() per record.

    logging.FileHandler goes through a buffered text stream, which may
    split a long record into several writes; two processes sharing the
    file could then interleave inside a line. reopen() opens the path
    again (after logrotate renamed the file). Usable in a --log-config
    file as class yimmo._logging.AppendFileHandler, args (filename,).
    """

    def __init__(self, filename: StrPath, encoding: str = "utf-8") -> None:
        super().__init__()
        self.baseFilename = os.path.abspath(os.fspath(filename))
        self.encoding = encoding
        self._fd = self._open()
        with _file_handlers_lock:
            _file_handlers.add(self)

    def _open(self) -> int:
        return os.open(self.baseFilename,
                       os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                       0o644)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode(self.encoding,
                                                       "backslashreplace")
            # handle() holds self.lock: reopen() cannot swap the fd
            # under us.
            if self._fd >= 0:
                _write_all(self._fd, data)
        except Exception:
            self.handleError(record)

    def reopen(self) -> None:
        """Open the path again (a new file if it was renamed); the old
        descriptor is closed once no record is being written to it."""
        fd = self._open()
        self.acquire()
        try:
            old, self._fd = self._fd, fd
        finally:
            self.release()
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        self.acquire()
        try:
            fd, self._fd = self._fd, -1
        finally:
            self.release()
        if fd >= 0:
            os.close(fd)
        with _file_handlers_lock:
            _file_handlers.discard(self)
        super().close()


# Every AppendFileHandler alive: reopen_log_files() reopens them all.
# Lock: handlers are made and closed on any thread (truly at once on a
# free-threaded build) while a SIGUSR1 handler may be listing them, so
# every access holds _file_handlers_lock (never while reopening).
_file_handlers: weakref.WeakSet[AppendFileHandler] = weakref.WeakSet()
_file_handlers_lock = threading.Lock()


def reopen_log_files() -> None:
    """Reopen every log file: yimmo's own handlers, and the
    logging.FileHandler instances a --log-config set up (as gunicorn does
    on SIGUSR1). Errors are logged, not raised: a signal handler must not
    bring the server down because a directory vanished."""
    with _file_handlers_lock:
        handlers = list(_file_handlers)
    for ours in handlers:
        try:
            ours.reopen()
        except OSError as exc:
            _reopen_failed(ours, exc)
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.Logger.manager.loggerDict.values())
        if isinstance(lg, logging.Logger)]
    seen: set[int] = set()
    for logger in loggers:
        for handler in list(logger.handlers):
            if not isinstance(handler, logging.FileHandler) or \
                    id(handler) in seen:
                continue
            seen.add(id(handler))
            handler.acquire()
            try:
                if handler.stream is not None:
                    # The new file first: if it cannot be opened (its
                    # directory is gone) the handler keeps the old stream
                    # instead of a closed one that fails on every record.
                    new = handler._open()
                    old, handler.stream = handler.stream, new
                    old.close()
            except OSError as exc:
                _reopen_failed(handler, exc)
            finally:
                handler.release()


def _reopen_failed(handler: Union[AppendFileHandler, logging.FileHandler],
                   exc: OSError) -> None:
    """Report a log file that could not be reopened: on the error log, and
    on stderr too unless the error log goes there already, since the error
    log may be the very file that could not be reopened (the operator
    would never see the line)."""
    message = "cannot reopen log file %s: %s" % (handler.baseFilename,
                                                 exc.strerror or exc)
    error_log = logging.getLogger(ERROR_LOGGER)
    error_log.error("%s", message)
    if not any(isinstance(h, _StderrHandler) for h in error_log.handlers):
        try:
            sys.stderr.write("yimmo: %s\n" % message)
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass


def _stream_handler(fmt: str,
                    datefmt: Optional[str] = None) -> _StderrHandler:
    # Not bound to the sys.stderr object of today: tests and daemons swap
    # sys.stderr, and logging's StreamHandler keeps the object it got.
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    return handler


# StreamHandler is generic in typeshed (the type of its stream) but cannot
# be subscripted at run time before Python 3.11.
if TYPE_CHECKING:
    _TextStreamHandler = logging.StreamHandler[TextIO]
else:
    _TextStreamHandler = logging.StreamHandler


class _StderrHandler(_TextStreamHandler):
    """A StreamHandler that always writes to the current sys.stderr, each
    record with one write(2) when sys.stderr has a descriptor (so
    processes sharing it do not interleave inside a line; through a pipe
    that holds up to PIPE_BUF bytes, 4096 on Linux)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return super().emit(record)
        try:
            data = (self.format(record) + "\n").encode(
                getattr(stream, "encoding", None) or "utf-8",
                "backslashreplace")
            stream.flush()
            if _backlog is not None and fd == _backlog.fd:
                _backlog.write(data)
            else:
                _write_all(fd, data)
        except Exception:
            self.handleError(record)


class _StderrBacklog:
    """stderr written without ever blocking, for the supervisor: a log
    reader that stopped reading (a stuck journald or log shipper, a
    terminal held with Ctrl-S) must not freeze the process that restarts
    server processes and answers SIGTERM.

    Its own open file description of what fd 2 is (a pipe, FIFO or
    terminal, opened again through /proc with O_NONBLOCK, so no other
    process sharing the descriptor is affected), or MSG_DONTWAIT sends (a
    socket). Lines the reader does not take yet wait here, at most LIMIT
    bytes (later lines are dropped, and counted in a line written once the
    reader takes them again); flush() writes them. A regular file never
    blocks for long: it stays as it is. Supervisor's main thread only."""

    LIMIT = 1 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd                 # the one it stands for (2)
        self.own = -1                # its own non-blocking descriptor
        self.sock: Optional[socket.socket] = None
        self.lines: List[bytes] = []
        self.size = 0
        self.dropped = 0
        mode = os.fstat(fd).st_mode
        if stat.S_ISSOCK(mode):
            self.sock = socket.socket(fileno=os.dup(fd))
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            self.own = os.open("/proc/self/fd/%d" % fd,
                               os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                               | os.O_NOCTTY)
        else:
            raise OSError("not a pipe, terminal or socket")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.own >= 0:
            os.close(self.own)
            self.own = -1
        self.lines = []
        self.size = 0

    def _send(self, data: bytes) -> int:
        """Bytes written, 0 when the reader takes nothing now."""
        try:
            if self.sock is not None:
                return self.sock.send(data, socket.MSG_DONTWAIT)
            return os.write(self.own, data)
        except BlockingIOError:
            return 0

    def write(self, data: bytes) -> None:
        if not self.lines:
            data = data[self._send(data):]
            if not data:
                return
        if self.size + len(data) > self.LIMIT:
            self.dropped += 1
            return
        self.lines.append(data)
        self.size += len(data)

    def flush(self, timeout: float = 0.0) -> bool:
        """Write what waits (for up to timeout seconds); True once nothing
        does."""
        deadline = time.monotonic() + timeout
        while self.lines or self.dropped:
            if not self.lines:
                self.lines.append(("yimmo: %d log line(s) dropped: stderr "
                                   "was not being read\n"
                                   % self.dropped).encode())
                self.size += len(self.lines[0])
                self.dropped = 0
            first = self.lines[0]
            n = self._send(first)
            self.size -= n
            if n == len(first):
                self.lines.pop(0)
                continue
            self.lines[0] = first[n:]
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            target = self.sock if self.sock is not None else self.own
            try:
                select.select([], [target], [], left)
            except InterruptedError:
                pass
        return True


# The supervisor's stderr, written without blocking (hold_stderr_lines).
_backlog: Optional[_StderrBacklog] = None


def hold_stderr_lines(on: bool) -> None:
    """on: this process's records for stderr never block it; they wait in
    a bounded backlog while the reader takes nothing (the supervisor,
    which flush_stderr()s each turn of its loop). off: back to blocking
    writes, and what waits is dropped (in a forked server process, where
    the lines are the supervisor's)."""
    global _backlog
    old, _backlog = _backlog, None
    if old is not None:
        old.close()
    if on:
        try:
            _backlog = _StderrBacklog(2)
        except OSError:
            pass    # a regular file, no /proc: written as before


def flush_stderr(timeout: float = 0.0) -> bool:
    """Write what the stderr backlog holds (for up to timeout seconds);
    True once nothing waits."""
    return _backlog is None or _backlog.flush(timeout)


def write_stderr(text: str) -> None:
    """One line on stderr, through the backlog when there is one."""
    if _backlog is not None:
        _backlog.write(text.encode("utf-8", "backslashreplace"))
        return
    print(text.rstrip("\n"), file=sys.stderr, flush=True)


def _replace_handler(logger: logging.Logger,
                     handler: Optional[logging.Handler]) -> None:
    for old in list(logger.handlers):
        if getattr(old, _OURS, False):
            logger.removeHandler(old)
            old.close()
    if handler is not None:
        setattr(handler, _OURS, True)
        logger.addHandler(handler)


# -- access log lines ---------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# (second, formatted) of the last timestamp: most lines in a busy second
# share it. Replaced as a whole tuple, so threads never see a torn pair
# (with or without the GIL: one reference is stored or loaded, atomically
# on a free-threaded build too); two threads may both format the same
# second, which costs nothing but the work.
_last_time: Tuple[Optional[int], str] = (None, "")


def _format_time(when: float) -> str:
    global _last_time
    second = int(when)
    cached = _last_time
    if cached[0] == second:
        return cached[1]
    t = time.localtime(second)
    offset = t.tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    offset = abs(offset)
    # Month names by hand: strftime's %b follows the locale, and CLF is
    # always English.
    text = "%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min,
        t.tm_sec, sign, offset // 60, offset % 60)
    _last_time = (second, text)
    return text


def _escape(value: str) -> str:
    """Make a request-supplied string safe for one quoted log field.

    Quotes, backslashes and control or non-ASCII characters are written as
    \\" \\\\ and \\xHH (as Apache does), so a client cannot forge log lines.
    WSGI environ strings are latin-1, one character per byte, so \\xHH is
    the byte received. A character past U+00FF (in a value the app or a
    middleware set, REMOTE_USER or a PATH_INFO decoded as UTF-8) is
    written as the \\xHH of its UTF-8 bytes.
    """
    if value.isprintable() and value.isascii() and '"' not in value \
            and "\\" not in value:
        return value
    out = []
    for ch in value:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ch <= "\xff":
            out.append("\\x%02x" % ord(ch))
        else:
            out.extend("\\x%02x" % byte
                       for byte in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _text(value: object) -> str:
    """An environ value as text for the log: the app or a middleware may
    have put anything there (REMOTE_USER = 42); the request still gets
    its line."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        return "?"


def _env_text(environ: WSGIEnvironment, key: str, default: str = "") -> str:
    value = environ.get(key)
    return default if value is None else _text(value)


def _field(environ: WSGIEnvironment, key: str) -> str:
    # Empty or not is decided on the text: the value's own truth test
    # may raise (an array, a lazy proxy) and cost the line.
    value = environ.get(key)
    text = _text(value) if value is not None else ""
    return _escape(text) if text else "-"


def _request_line(environ: WSGIEnvironment) -> str:
    uri = _env_text(environ, "RAW_URI") or _env_text(environ, "REQUEST_URI")
    if not uri:
        uri = _env_text(environ, "SCRIPT_NAME") + \
            _env_text(environ, "PATH_INFO")
        query = _env_text(environ, "QUERY_STRING")
        if query:
            uri += "?" + query
    return "%s %s %s" % (_env_text(environ, "REQUEST_METHOD", "-"),
                         uri or "-",
                         _env_text(environ, "SERVER_PROTOCOL", "-"))


_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)(.*)",
                            re.S)


class _AnswerEnviron(Dict[str, Any]):
    """answer_environ's result: the request line's keys at once; PATH_INFO
    (percent-decoded) and a header's key (HTTP_*, CONTENT_TYPE,
    CONTENT_LENGTH) computed only when a format asks for it, through get()
    (the only way the access-log formats read an environ). A client's head
    is up to 8 KB of its choosing: splitting all its lines, or decoding an
    8 KB path of "%", cost milliseconds of Python (with the GIL) a line,
    for a request that cost it nothing to send (reviews s27)."""

    def __init__(self, fields: Dict[str, Any], headers: str,
                 path: Optional[str],
                 answered_at: Optional[float] = None) -> None:
        super().__init__(fields)
        self._headers = headers
        self._lower: Optional[str] = None
        self._path = path
        self._missing: set[str] = set()
        # When it was answered (time.time()): the line's %(t)s, as it is
        # logged later, by a worker. Not an environ key, which an app's
        # own environ could carry.
        self.answered_at = answered_at

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        if not isinstance(key, str) or key in self._missing:
            return default
        upper = key.upper()     # (the %({name}e)s atom's case)
        if upper == "PATH_INFO" and self._path is not None:
            value: Optional[str] = unquote_to_bytes(
                self._path.encode("latin-1")).decode("latin-1")
        elif upper.startswith("HTTP_") and len(upper) > 5:
            value = self._header(upper[5:].replace("_", "-"))
        elif upper in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            value = self._header(upper.replace("_", "-"))
        else:
            return default
        if value is None:
            self._missing.add(key)
            return default
        self[key] = value
        return value

    def _header(self, name: str) -> Optional[str]:
        """The value of field `name` as the app's environ would have it:
        repeated lines joined with "," (a cookie's with "; "); a name with
        "_" is never one (the environ drops those: a way to smuggle a
        field past a proxy that checks its "-" twin). Found in the head
        lower-cased once (latin-1 keeps every length), read from the head
        itself."""
        if not _TOKEN_RE.fullmatch(name):
            return None
        if self._lower is None:
            self._lower = self._headers.lower()
        values = [self._headers[m.start(1):m.end(1)].strip(" \t")
                  for m in re.finditer(r"(?m)^%s[ \t]*:([^\r\n]*)"
                                       % re.escape(name.lower()),
                                       self._lower)]
        if not values:
            return None
        return ("; " if name.lower() == "cookie" else ",").join(values)


_TOKEN_RE = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")


def answer_environ(head: bytes, remote_addr: str, remote_port: int,
                   answered_at: Optional[float] = None) -> Dict[str, Any]:
    """The environ an access-log line is made from for a request the server
    answered itself (a malformed or refused head, see _answer_logger):
    what the client sent, read as far as it reads, the way the app's
    environ would have it. The request line gives REQUEST_METHOD, RAW_URI,
    PATH_INFO (percent-decoded, latin-1), QUERY_STRING and
    SERVER_PROTOCOL when it has those parts (an absolute-form target's
    authority is its HTTP_HOST); a header line "name: value" gives its
    HTTP_ key when a format asks for it (%(a)s, %(f)s, %({name}i)s).
    Nothing here is believed beyond the log line, which escapes it:
    forwarding fields are not applied (REMOTE_ADDR is the peer's, or the
    PROXY header's). answered_at, when given, is the line's %(t)s."""
    fields: Dict[str, Any] = {
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": str(remote_port) if remote_port >= 0 else "",
    }
    text = head.decode("latin-1").lstrip("\r\n")
    line, _, headers = text.partition("\n")
    parts = line.rstrip("\r").split(" ")
    if parts[0]:
        fields["REQUEST_METHOD"] = parts[0]
    if len(parts) >= 2:
        uri = " ".join(parts[1:-1] if len(parts) > 2 else parts[1:])
        fields["RAW_URI"] = uri
        absolute = _ABSOLUTE_FORM.fullmatch(uri)
        if absolute is not None:
            fields["HTTP_HOST"] = absolute.group(1)
            uri = absolute.group(2) or "/"
        path, _, query = uri.partition("?")
        fields["QUERY_STRING"] = query
    else:
        path = None
    if len(parts) >= 3:
        fields["SERVER_PROTOCOL"] = parts[-1]
    return _AnswerEnviron(fields, headers, path, answered_at)


def status_line(code: int) -> str:
    """ "400 Bad Request" for 400: the status line of a code."""
    try:
        return "%d %s" % (code, HTTPStatus(code).phrase)
    except ValueError:
        return str(code)


def format_access(environ: WSGIEnvironment, status: Union[str, int, None],
                  length: Optional[int],
                  request_time: Optional[float] = None) -> str:
    """One Combined Log Format line (without newline):

        %h - %u [%d/%b/%Y:%H:%M:%S %z] "%r" %s %b "%{Referer}" "%{User-Agent}"

    status is the status line ("200 OK") or code; length the body bytes
    sent (0 or None gives "-", as Apache's %b); request_time the time the
    request arrived, in seconds since the epoch (default: now).
    """
    if request_time is None:
        request_time = time.time()
    code = str(status).split(" ", 1)[0] if status else "-"
    return '%s - %s [%s] "%s" %s %s "%s" "%s"' % (
        _field(environ, "REMOTE_ADDR"),
        _field(environ, "REMOTE_USER"),
        _format_time(request_time),
        _escape(_request_line(environ)),
        code,
        length if length else "-",
        _field(environ, "HTTP_REFERER"),
        _field(environ, "HTTP_USER_AGENT"),
    )


# -- access log formats (gunicorn's atoms) ------------------------------------

# The default: what format_access() writes, byte for byte (%(t)s carries
# its brackets, as in gunicorn).
DEFAULT_ACCESS_FORMAT = \
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

# Atom name -> what it is (README and error messages).
ACCESS_ATOMS = {
    "h": "remote address",
    "l": "'-'",
    "u": "user name (REMOTE_USER)",
    "t": "date and time of the request, [10/Oct/2000:13:55:36 -0700]",
    "r": "request line",
    "m": "request method",
    "U": "URL path without the query string",
    "q": "query string",
    "H": "protocol",
    "s": "status code",
    "B": "response body length",
    "b": "response body length, '-' for 0",
    "f": "referer",
    "a": "user agent",
    "T": "request time in whole seconds",
    "M": "request time in milliseconds",
    "D": "request time in microseconds",
    "L": "request time in decimal seconds",
    "p": "process id, as <PID>",
    "{name}i": "request header",
    "{name}o": "response header",
    "{name}e": "environ variable",
}

# %(key)... conversions; "%%" is skipped by the alternation.
_KEY_RE = re.compile(r"%%|%\(([^)]*)\)")
# One conversion as %-formatting reads it: %%, or %(key), flags, width,
# precision, length modifier and the conversion character.
_SPEC_RE = re.compile(r"%(?:%|(\([^)]*\))?([-#0 +]*)(\*|\d*)"
                      r"(?:\.(\*|\d*))?[hlL]?(.?))", re.S)
# Conversions allowed: those that write text (values are escaped) or
# numbers. %c would write any code point raw, bypassing the escaping,
# and fails on a number above 0x10ffff (a slow request's %(D)c).
_CONVERSIONS = "sdiufFeEgG"
_MAX_WIDTH = 1000


def _check_conversions(fmt: str) -> None:
    """Raise ValueError (one line) for a conversion of fmt that is not a
    %(atom) with one of _CONVERSIONS and a width/precision up to
    _MAX_WIDTH."""
    for m in _SPEC_RE.finditer(fmt):
        if m.group(0) == "%%":
            continue
        key, _flags, width, precision, conv = m.groups()
        spec = m.group(0)
        if key is None:
            why = "%r names no atom (write %%(name)s; %%%% for a %%)" % spec
        elif not conv:
            why = "%r: incomplete format" % spec
        elif conv not in _CONVERSIONS:
            why = ("%r: conversion %r not allowed (use one of %s)"
                   % (spec, conv, ", ".join("%" + c for c in _CONVERSIONS)))
        elif "*" in (width, precision) or any(
                n and int(n) > _MAX_WIDTH for n in (width, precision)):
            why = "%r: width and precision must be numbers up to %d" % (
                spec, _MAX_WIDTH)
        else:
            continue
        raise ValueError("bad access log format %r: %s" % (fmt, why))


def compile_access_format(fmt: Optional[str]) -> AccessLine:
    """A function (environ, status, length, seconds, headers) -> line for
    the access log format fmt, in gunicorn's syntax: %-formatting with the
    atoms of ACCESS_ATOMS as keys. Only the atoms the format uses are
    computed per request. Raises ValueError with a one-line message for
    an unknown atom or a format that %-formatting rejects.

    For DEFAULT_ACCESS_FORMAT (or None) it is format_access() itself.
    """
    if fmt is None or fmt == DEFAULT_ACCESS_FORMAT:
        return _format_default
    if not isinstance(fmt, str):
        raise TypeError("must be a str, not %s" % type(fmt).__name__)
    _check_conversions(fmt)
    getters: Dict[str, Atom] = {}
    for m in _KEY_RE.finditer(fmt):
        key = m.group(1)
        if key is None or key in getters:
            continue
        getters[key] = _atom_getter(key)
    # Try it on a sample: catches "%(h)" with no conversion, a lone "%",
    # "%(D)d" is fine (D is an int), "%(h)d" is not.
    sample = {key: get({"REQUEST_METHOD": "GET", "SERVER_PROTOCOL":
                        "HTTP/1.1", "PATH_INFO": "/"}, "200 OK", 0, 0.0, ())
              for key, get in getters.items()}
    try:
        fmt % sample
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError("bad access log format %r: %s" % (fmt, exc)) \
            from None
    items = tuple(getters.items())
    failed: List[Exception] = []

    def format_line(environ: WSGIEnvironment, status: str, length: int,
                    seconds: float, headers: Headers) -> str:
        try:
            return fmt % {key: get(environ, status, length, seconds, headers)
                          for key, get in items}
        except Exception as exc:
            # Checked at start, so this should not happen; if it does,
            # the request still gets its (Combined) line, and the error
            # is said once on the error log.
            if not failed:
                failed.append(exc)
                logging.getLogger(ERROR_LOGGER).error(
                    "access log format %r failed (%s: %s); writing "
                    "Combined Log Format lines instead", fmt,
                    type(exc).__name__, exc)
            return _format_default(environ, status, length, seconds,
                                   headers)
    return format_line


def _format_default(environ: WSGIEnvironment, status: str, length: int,
                    seconds: float, headers: Headers) -> str:
    return format_access(environ, status, length, _started(environ, seconds))


def _started(environ: WSGIEnvironment, seconds: float) -> float:
    """When the request of a line began: `seconds` before now, or, for one
    the server answered itself, when it answered."""
    if type(environ) is _AnswerEnviron and environ.answered_at is not None:
        return environ.answered_at
    return time.time() - seconds


def _env_atom(key: str) -> Atom:
    return lambda e, s, n, t, h: _field(e, key)


def _atom_getter(key: str) -> Atom:
    """The function computing one atom from (environ, status, length,
    seconds, headers). Values from the request are escaped as in the
    Combined format; a missing one is "-"."""
    simple: Dict[str, Atom] = {
        "h": _env_atom("REMOTE_ADDR"),
        "l": lambda e, s, n, t, h: "-",
        "u": _env_atom("REMOTE_USER"),
        "t": lambda e, s, n, t, h: "[%s]" % _format_time(_started(e, t)),
        "r": lambda e, s, n, t, h: _escape(_request_line(e)),
        "m": _env_atom("REQUEST_METHOD"),
        "U": lambda e, s, n, t, h: _escape(
            _env_text(e, "SCRIPT_NAME") + _env_text(e, "PATH_INFO")) or "-",
        "q": _env_atom("QUERY_STRING"),
        "H": _env_atom("SERVER_PROTOCOL"),
        "s": lambda e, s, n, t, h: (str(s).split(" ", 1)[0] if s else "-"),
        "B": lambda e, s, n, t, h: n or 0,
        "b": lambda e, s, n, t, h: n if n else "-",
        "f": _env_atom("HTTP_REFERER"),
        "a": _env_atom("HTTP_USER_AGENT"),
        "T": lambda e, s, n, t, h: int(t),
        "M": lambda e, s, n, t, h: int(t * 1000),
        "D": lambda e, s, n, t, h: int(t * 1000000),
        "L": lambda e, s, n, t, h: "%.6f" % t,
        "p": lambda e, s, n, t, h: "<%d>" % os.getpid(),
    }
    if key in simple:
        return simple[key]
    m = re.fullmatch(r"\{([^{}]+)\}([ioe])", key)
    if m is None:
        raise ValueError(
            "bad access log format: unknown atom %%(%s)s (known: %s)"
            % (key, ", ".join(ACCESS_ATOMS)))
    name, kind = m.group(1), m.group(2)
    if kind == "i":
        upper = name.upper().replace("-", "_")
        if upper in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return _env_atom(upper)
        return _env_atom("HTTP_" + upper)
    if kind == "e":
        # gunicorn matches environ keys whatever their case.
        lower = name.lower()

        def environ_atom(e: WSGIEnvironment, s: str, n: int, t: float,
                         h: Headers) -> str:
            value = e.get(name)
            if value is None:
                for k, v in e.items():
                    if k.lower() == lower:
                        value = v
                        break
            text = _text(value) if value is not None else ""
            return _escape(text) if text else "-"
        return environ_atom
    lower = name.lower()

    def response_header(e: WSGIEnvironment, s: str, n: int, t: float,
                        h: Headers) -> str:
        values = [v for k, v in h or () if k.lower() == lower]
        return _escape(", ".join(values)) if values else "-"
    return response_header
