"""Logging set-up for the server and the access-log line format.

Two loggers: "yimmo" for the server's own messages (to stderr, as
"[2026-11-25 18:00:00 +0000] [PID] [INFO] message") and "yimmo.access" for
one Combined Log Format line per request, to stderr or a file.
configure_logging() sets up both (the command line, serve());
configure_access_log() only the access log (Server(access_log=...) in an
application that handles its own logging). format_access() builds a line.

This module imports nothing from the rest of yimmo.
"""

import logging
import sys
import time

ERROR_LOGGER = "yimmo"
ACCESS_LOGGER = "yimmo.access"

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

# Marks the handlers configure_logging() installed, so calling it again
# (serve() after the CLI did) replaces them instead of doubling every line,
# and leaves handlers that the application added alone.
_OURS = "_yimmo_handler"


def configure_logging(log_level="info", access_log=None):
    """Set up both loggers, as the command line and serve() want them."""
    configure_error_log(log_level)
    configure_access_log(access_log)


def configure_error_log(log_level="info"):
    """Send the "yimmo" logger to stderr at log_level.

    It stops propagating to the root logger, so an application that
    configures root logging does not print server lines twice.
    """
    error_log = logging.getLogger(ERROR_LOGGER)
    _replace_handler(error_log, _stream_handler(ERROR_FORMAT, DATE_FORMAT))
    error_log.setLevel(log_level.upper())
    error_log.propagate = False


def configure_access_log(access_log):
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
        handler = logging.FileHandler(access_log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        _replace_handler(access, handler)


def _stream_handler(fmt, datefmt=None):
    # Not bound to the sys.stderr object of today: tests and daemons swap
    # sys.stderr, and logging's StreamHandler keeps the object it got.
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    return handler


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler that always writes to the current sys.stderr."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _replace_handler(logger, handler):
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
# share it. Replaced as a whole tuple, so threads never see a torn pair.
_last_time = (None, "")


def _format_time(when):
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


def _escape(value):
    """Make a request-supplied string safe for one quoted log field.

    Quotes, backslashes and control or non-ASCII characters are written as
    \\" \\\\ and \\xHH (as Apache does), so a client cannot forge log lines.
    WSGI environ strings are latin-1, one character per byte, so \\xHH is
    the byte received.
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
        else:
            out.append("\\x%02x" % (ord(ch) & 0xFF))
    return "".join(out)


def _field(environ, key):
    value = environ.get(key)
    return _escape(value) if value else "-"


def _request_line(environ):
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not uri:
        uri = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            uri += "?" + environ["QUERY_STRING"]
    return "%s %s %s" % (environ.get("REQUEST_METHOD", "-"), uri or "-",
                         environ.get("SERVER_PROTOCOL", "-"))


def format_access(environ, status, length, request_time=None):
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


def reopen_log_files():
    """Reopen every logging.FileHandler's file (SIGUSR1, after logrotate
    moved it): the next line goes to a new file at the configured path.
    Handlers of every logger, ours and the application's."""
    loggers = [logging.getLogger()]
    loggers += [l for l in logging.Logger.manager.loggerDict.values()
                if isinstance(l, logging.Logger)]
    seen = set()
    for logger in loggers:
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler) or \
                    id(handler) in seen:
                continue
            seen.add(id(handler))
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                    handler.stream = None
                # FileHandler opens it again at the next emit (delay).
                handler.stream = handler._open()
            finally:
                handler.release()
