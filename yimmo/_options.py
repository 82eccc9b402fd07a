"""The table of server options and everything derived from it.

OPTIONS below is the single source for the command-line flags, the YIMMO_*
environment variables, the defaults, the validation of keyword arguments to
yimmo.serve()/yimmo.Server() and the option docs in the README
(options_rst()). Add an option by adding a row; nothing else lists them.

This module imports nothing from the rest of yimmo, so it works before the C
extension is built.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from typing import (
    Any, Callable, Dict, List, Literal, Mapping, NamedTuple, NoReturn,
    Optional, Protocol, Sequence, Tuple, TypedDict, Union, cast,
)

ENV_PREFIX = "YIMMO_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# limit_request_line=0 means "as long as the parser allows".
MAX_REQUEST_LINE = 65536
# The least values the C core takes (ext/module.c): smaller ones are refused
# here, naming the option, rather than by the core after the listeners are
# bound (or in every server process a supervisor forks).
MIN_REQUEST_LINE = 16
MIN_REQUEST_FIELD_SIZE = 16
MIN_REQUEST_HEAD_SIZE = 64
MIN_CLIENT_TIMEOUT = 0.001  # header, body and write timeouts
# Every int option has a maximum, so a 20-digit value is refused as a bad
# option value instead of overflowing a C int on the way in.
MAX_WORKERS = 4096  # the C core refuses more
# Half the supervisor's heartbeat slots (_supervisor.SLOTS): a reload
# runs as many successors next to the old processes. "auto" is capped too.
MAX_PROCESSES = 128
MAX_HEADER_FIELDS = 32768  # as gunicorn
INT_MAX = 2 ** 31 - 1  # a C int: listen()'s backlog, byte counts


# -- value kinds --------------------------------------------------------------
#
# A kind knows how to check a Python value (keyword arguments) and how to
# parse a string (flags and environment variables). Both raise TypeError or
# ValueError with a message that completes "option 'x' ...".


class Int(NamedTuple):
    minimum: int
    maximum: Optional[int] = None
    # Value that 0 is replaced with; 0 is then accepted whatever the
    # minimum (limit_request_line: 0, or at least what the core needs).
    zero_means: Optional[int] = None
    none_ok: bool = False  # None: the default that depends on others

    def describe(self) -> str:
        if self.maximum is not None:
            text = "an int from %d to %d" % (self.minimum, self.maximum)
        else:
            text = "an int >= %d" % self.minimum
        if self.zero_means is not None and self.minimum > 0:
            text = "0 or " + text
        return text

    def check(self, value: object) -> Optional[int]:
        if value is None and self.none_ok:
            return None
        # bool is an int subclass, but workers=True is a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be an int, not %s" % type(value).__name__)
        if value == 0 and self.zero_means is not None:
            return self.zero_means
        if value < self.minimum or (self.maximum is not None
                                    and value > self.maximum):
            raise ValueError("must be %s, got %r" % (self.describe(), value))
        return value

    def parse(self, text: str) -> Optional[int]:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("must be %s, got %r" % (self.describe(), text))
        return self.check(value)


class Seconds(NamedTuple):
    allow_zero: bool
    # The least value above 0 (the core refuses a client timeout under a
    # millisecond, ext/module.c); 0.0: any.
    minimum: float = 0.0

    def describe(self) -> str:
        if self.minimum > 0:
            return "a number of seconds >= %g%s" % (
                self.minimum, " or 0" if self.allow_zero else "")
        return "a number of seconds %s 0" % (">=" if self.allow_zero else ">")

    def check(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("must be a number of seconds, not %s"
                            % type(value).__name__)
        # inf/nan would reach the event loop's timers as garbage.
        if not math.isfinite(value) or value < 0 or (
                value == 0 and not self.allow_zero) or (
                0 < value < self.minimum):
            raise ValueError("must be %s, got %r" % (self.describe(), value))
        return float(value)

    def parse(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("must be %s, got %r" % (self.describe(), text))
        return self.check(value)


class Choice(NamedTuple):
    choices: Tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise TypeError("must be a str, not %s" % type(value).__name__)
        if value.lower() not in self.choices:
            raise ValueError("must be %s, got %r" % (self.describe(), value))
        return value.lower()

    def parse(self, text: str) -> str:
        return self.check(text.strip())


class OptionalPath(NamedTuple):
    """A path, "-" for stderr, or None (off). "" also means off, so an
    environment variable can be overridden with an empty flag value."""

    def describe(self) -> str:
        return '"-" (stderr), a file path, or None (off)'

    def check(self, value: object) -> Optional[str]:
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError("must be a str or None, not %s"
                            % type(value).__name__)
        path = os.fspath(value)
        if not isinstance(path, str):
            raise TypeError("must be a str or None, not bytes")
        return path or None

    def parse(self, text: str) -> Optional[str]:
        return self.check(text)


def _str_list(value: object) -> List[str]:
    """A list or tuple of str, or one comma-separated str: the items,
    stripped (the empty ones of a str left out)."""
    items: Sequence[object]
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise TypeError("must be a str or a list of str, not %s"
                        % type(value).__name__)
    result = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError("must be a str or a list of str, not a list "
                            "containing %s" % type(item).__name__)
        result.append(item.strip())
    return result


class Networks(NamedTuple):
    """IP addresses and networks (ADDR or ADDR/PREFIX, IPv4 or IPv6), or
    "*" for any: a list, or one comma-separated string."""

    def describe(self) -> str:
        return "IP addresses or networks (e.g. 10.0.0.0/8), or *"

    def check(self, value: object) -> List[str]:
        items = _str_list(value)
        for item in items:
            if item != "*":
                check_network(item)
        return items

    def parse(self, text: str) -> List[str]:
        return self.check(text)


def check_network(text: str) -> None:
    """Check "ADDR" or "ADDR/PREFIX" the way the C core reads it (numeric
    addresses only, no zone index); raises ValueError naming it."""
    import ipaddress
    addr, slash, prefix = text.partition("/")
    try:
        if "%" in addr:
            raise ValueError
        ip = ipaddress.ip_address(addr)
        bits = 32 if ip.version == 4 else 128
        if slash and not (_is_decimal(prefix) and len(prefix) <= 3
                          and int(prefix) <= bits):
            raise ValueError
    except ValueError:
        raise ValueError("bad address or network %r (expected e.g. "
                         "10.0.0.1, 10.0.0.0/8, ::1, fd00::/8 or *)"
                         % text) from None
    # An IPv4-mapped address (::ffff:a.b.c.d) stands for the IPv4 one, its
    # prefix counting ::ffff:0:0/96 too: /96 to /128 (ext/trust.c).
    if slash and isinstance(ip, ipaddress.IPv6Address) \
            and ip.ipv4_mapped is not None \
            and int(prefix) < 96:
        raise ValueError("bad network %r: an IPv4-mapped network "
                         "(::ffff:a.b.c.d/N) needs a prefix of 96 to 128"
                         % text)


# The fields --proxy-headers may name, as they are written.
PROXY_HEADER_FIELDS = ("X-Forwarded-For", "X-Forwarded-Proto",
                       "X-Forwarded-Host", "Forwarded")


class ProxyHeaders(NamedTuple):
    """Forwarding field names (any case) from PROXY_HEADER_FIELDS, never
    Forwarded with an X-Forwarded-* one: a list, or one comma-separated
    string; "none" (or nothing) for none."""

    def describe(self) -> str:
        return "forwarding field names (e.g. X-Forwarded-For), or none"

    def check(self, value: object) -> List[str]:
        items = _str_list(value)
        if items and all(item.lower() == "none" for item in items):
            items = []
        by_lower = {name.lower(): name for name in PROXY_HEADER_FIELDS}
        chosen = set()
        for item in items:
            name = by_lower.get(item.lower())
            if item.lower() == "none":
                raise ValueError("none cannot be listed with fields")
            if name is None:
                raise ValueError("unknown field %r (expected %s, or none)"
                                 % (item, ", ".join(PROXY_HEADER_FIELDS)))
            chosen.add(name)
        if "Forwarded" in chosen and len(chosen) > 1:
            raise ValueError("Forwarded cannot be believed together with "
                             "X-Forwarded-* fields: list the family your "
                             "proxy sets")
        return [name for name in PROXY_HEADER_FIELDS if name in chosen]

    def parse(self, text: str) -> List[str]:
        return self.check(text)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Processes(NamedTuple):
    """An int >= 1, or "auto" for the number of CPUs."""

    def describe(self) -> str:
        return 'an int from 1 to %d or "auto"' % MAX_PROCESSES

    def check(self, value: object) -> int:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return min(cpu_count(), MAX_PROCESSES)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError('must be an int or "auto", not %s'
                            % type(value).__name__)
        if value < 1 or value > MAX_PROCESSES:
            raise ValueError("must be %s, got %r" % (self.describe(), value))
        return value

    def parse(self, text: str) -> int:
        if text.strip().lower() == "auto":
            return min(cpu_count(), MAX_PROCESSES)
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("must be %s, got %r" % (self.describe(), text))
        return self.check(value)


class FileMode(NamedTuple):
    """Permission bits, written in octal on the command line ("660")."""

    def describe(self) -> str:
        return "an octal file mode from 0 to 777"

    def check(self, value: object) -> Optional[int]:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be an int (e.g. 0o660), not %s"
                            % type(value).__name__)
        if not 0 <= value <= 0o777:
            if value > 0 and set(str(value)) <= set("01234567"):
                # 660 where 0o660 was meant (a config file, Python).
                raise ValueError("must be %s, got %d, a decimal number: "
                                 "write 0o%d" % (self.describe(), value,
                                                 value))
            raise ValueError("must be %s, got %o" % (self.describe(), value))
        return value

    def parse(self, text: str) -> Optional[int]:
        word = text.strip().lower()
        if word.startswith("0o"):
            word = word[2:]
        if not word or any(c not in "01234567" for c in word):
            raise ValueError("must be %s, got %r" % (self.describe(), text))
        if int(word, 8) > 0o777:
            raise ValueError("must be %s, got %s" % (self.describe(), word))
        return int(word, 8)


class Addresses(NamedTuple):
    """One or more listen addresses (see parse_address)."""

    def describe(self) -> str:
        return "an address or a list of addresses"

    def check(self, value: object) -> List[str]:
        items: Sequence[object]
        if isinstance(value, str):
            items = [value]
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            raise TypeError("must be a str or a list of str, not %s"
                            % type(value).__name__)
        if not items:
            raise ValueError("needs at least one address")
        result = []
        for item in items:
            if not isinstance(item, str):
                raise TypeError("must be a str or a list of str, not a list "
                                "containing %s" % type(item).__name__)
            parse_address(item)
            result.append(item)
        return result

    def parse(self, text: str) -> List[str]:
        # Environment form: comma-separated. Unix socket paths with commas
        # cannot be given this way; use --bind for those.
        return self.check([a.strip() for a in text.split(",") if a.strip()])


class Bool(NamedTuple):
    """On/off. A flag takes no value (--reload); the environment says
    1/true/yes/on or 0/false/no/off."""

    def describe(self) -> str:
        return "true or false"

    def check(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise TypeError("must be True or False, not %s"
                            % type(value).__name__)
        return value

    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("", "0", "false", "no", "off"):
            return False
        raise ValueError("must be 1/true/yes/on or 0/false/no/off, got %r"
                         % text)


class AccessLogFormat(NamedTuple):
    """An access log format in gunicorn's syntax, checked when given."""

    def describe(self) -> str:
        return "an access log format"

    def check(self, value: object) -> Optional[str]:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TypeError("must be a str, not %s" % type(value).__name__)
        if not value:
            return None
        # Imported here: yimmo._logging imports nothing of yimmo's either.
        from ._logging import compile_access_format
        compile_access_format(value)  # ValueError names the problem
        return value

    def parse(self, text: str) -> Optional[str]:
        return self.check(text)


class LogConfig(NamedTuple):
    """A logging configuration file (by extension: .json or .toml hold a
    dictConfig dict, anything else is INI for fileConfig), or, from
    Python or a config file, a dictConfig dict."""

    def describe(self) -> str:
        return "a file path or a dict"

    def check(self, value: object) -> Union[str, Dict[str, Any], None]:
        if value is None:
            return None
        if isinstance(value, dict):
            # A logging.config.dictConfig dict: its values are whatever
            # dictConfig takes (typeshed says Any too).
            return cast(Dict[str, Any], value)
        return OptionalPath().check(value)

    def parse(self, text: str) -> Union[str, Dict[str, Any], None]:
        return self.check(text)


# -- the table ----------------------------------------------------------------


class Kind(Protocol):
    """What the kinds above have in common."""

    def describe(self) -> str: ...

    def check(self, value: object) -> object: ...

    def parse(self, text: str) -> object: ...


class Option(NamedTuple):
    name: str  # keyword argument and key in the options dict
    flags: Tuple[str, ...]  # command-line flags
    kind: Kind  # one of the kinds above
    default: object
    help: str
    metavar: str = "N"
    # An alias sets these options instead of one of its own
    # (--client-timeout).
    sets: Tuple[str, ...] = ()
    # How the README states a default that depends on other options.
    default_text: Optional[str] = None
    # Only for the command line (and its environment variable and config
    # file): not a keyword argument of serve()/Server().
    cli_only: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS = (
    Option("bind", ("-b", "--bind"), Addresses(), ["127.0.0.1:8000"],
           "Address to listen on: HOST:PORT, [IPV6]:PORT, PORT or :PORT "
           "(all IPv4 interfaces), unix:PATH, or fd://N (an inherited "
           "listening socket). Port 0 picks a free port. "
           "Repeat the flag to listen on several; the environment variable "
           "takes a comma-separated list.",
           metavar="ADDRESS"),
    Option("workers", ("-w", "--workers"), Int(1, MAX_WORKERS), 8,
           "Number of worker threads running the application."),
    Option("backlog", ("--backlog",), Int(1, INT_MAX), 2048,
           "Length of the listen() queue of pending connections."),
    Option("limit_request_line", ("--limit-request-line",),
           Int(MIN_REQUEST_LINE, MAX_REQUEST_LINE,
               zero_means=MAX_REQUEST_LINE), 4094,
           "Longest request line in bytes; longer gets 414. 0 means the "
           "maximum, %d." % MAX_REQUEST_LINE,
           metavar="BYTES"),
    Option("limit_request_fields", ("--limit-request-fields",),
           Int(1, MAX_HEADER_FIELDS), 100,
           "Most header fields in a request; more gets 431."),
    Option("limit_request_field_size", ("--limit-request-field-size",),
           Int(MIN_REQUEST_FIELD_SIZE, INT_MAX), 8190,
           "Longest header field line in bytes; longer gets 431.",
           metavar="BYTES"),
    Option("limit_request_head_size", ("--limit-request-head-size",),
           Int(MIN_REQUEST_HEAD_SIZE, INT_MAX), 65536,
           "Largest request head (request line and headers) in bytes; "
           "larger gets 431.",
           metavar="BYTES"),
    Option("max_body_size", ("--max-body-size",), Int(0, 2 ** 62), 0,
           "Largest request body in bytes; larger gets 413. 0 means no "
           "limit.",
           metavar="BYTES"),
    Option("header_timeout", ("--header-timeout",),
           Seconds(False, MIN_CLIENT_TIMEOUT), 10.0,
           "Seconds a client has to send a complete request head.",
           metavar="SECONDS"),
    Option("keepalive_timeout", ("--keepalive-timeout",), Seconds(True), 5.0,
           "Seconds an idle keep-alive connection is kept open. 0 closes "
           "each connection after its response.",
           metavar="SECONDS"),
    Option("body_timeout", ("--body-timeout",),
           Seconds(False, MIN_CLIENT_TIMEOUT), 30.0,
           "Longest gap in seconds between two pieces of a request body.",
           metavar="SECONDS"),
    Option("write_timeout", ("--write-timeout",),
           Seconds(False, MIN_CLIENT_TIMEOUT), 30.0,
           "Seconds a client may stop reading a response before the "
           "connection is closed.",
           metavar="SECONDS"),
    Option("buffer_body", ("--buffer-body",), Int(0, 131072), 65536,
           "Request bodies up to this many bytes are read completely "
           "before a worker runs the app, so clients that send them slowly "
           "tie up only their connection, never a worker (the server "
           "answers Expect: 100-continue for them itself; larger bodies "
           "stream to the app, which answers it by reading). 0 streams "
           "every body.",
           metavar="BYTES"),
    Option("min_body_rate", ("--min-body-rate",), Int(0, INT_MAX), 1024,
           "Least average rate, in bytes per second over each 10-second "
           "window, at which a request body must arrive while the server "
           "waits for it; slower gets 408 and a closed connection. 0 turns "
           "it off.",
           metavar="BYTES"),
    Option("max_pending", ("--max-pending",),
           Int(0, INT_MAX, none_ok=True), None,
           "Most requests waiting for a worker. When that many wait, no new "
           "request is read from any connection (its bytes wait in the "
           "kernel) until one finishes.",
           default_text="16 per worker"),
    Option("queue_timeout", ("--queue-timeout",), Seconds(True), 0.0,
           "A request that waited longer than this for a worker gets 503 "
           "with Retry-After, without running the app, so that under a "
           "flood work goes to clients still waiting. 0 turns it off.",
           metavar="SECONDS"),
    Option("graceful_timeout", ("--graceful-timeout",), Seconds(True), 30.0,
           "On shutdown, seconds in-flight requests get to finish.",
           metavar="SECONDS"),
    Option("access_log", ("--access-log",), OptionalPath(), None,
           'Where to write the access log (Combined Log Format): "-" for '
           "stderr, or a file path. Off by default; an empty value turns "
           "it off.",
           metavar="PATH"),
    Option("access_log_format", ("--access-log-format",), AccessLogFormat(),
           None,
           "Format of the access log lines, with gunicorn's atoms: "
           "%(h)s remote address, %(l)s '-', %(u)s user, %(t)s "
           "[time], %(r)s request line, %(m)s method, %(U)s path, %(q)s "
           "query string, %(H)s protocol, %(s)s status, %(b)s body "
           "bytes ('-' for 0), %(B)s body bytes, %(f)s referer, %(a)s "
           "user agent, %(T)s/%(M)s/%(D)s/%(L)s request time in "
           "seconds/milliseconds/microseconds/decimal seconds, %(p)s "
           "<pid>, %({name}i)s request header, %({name}o)s response "
           "header, %({name}e)s environ variable. An unknown atom is an "
           "error.",
           metavar="FORMAT",
           default_text='Combined Log Format, ``%(h)s %(l)s %(u)s %(t)s '
                        '"%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"``'),
    Option("error_log", ("--error-log",), OptionalPath(), "-",
           'Where the server\'s own log (logger "yimmo") goes: "-" for '
           "stderr, or a file path (appended to; reopened on SIGUSR1).",
           metavar="PATH"),
    Option("log_level", ("--log-level",), Choice(LOG_LEVELS), "info",
           "Level of the 'yimmo' logger: %s." % ", ".join(LOG_LEVELS),
           metavar="LEVEL"),
    Option("processes", ("-p", "--processes"), Processes(), 1,
           "Number of server processes. 1 serves in this process; 2 or "
           "more puts a supervisor in front that binds the listeners, "
           "forks that many server processes, restarts them when they die "
           "and reloads them on SIGHUP. \"auto\": one per CPU. At most "
           "128 (a reload runs as many new processes next to the old).",
           metavar="P"),
    Option("reuse_port", ("--reuse-port",), Bool(), False,
           "Give each server process its own listening socket with "
           "SO_REUSEPORT (the kernel spreads connections across them) "
           "instead of one shared listener. A process's socket listens "
           "once it has loaded the app, so a process that is still "
           "importing (or fails to) takes no connection.",
           metavar=""),
    Option("preload", ("--preload",), Bool(), False,
           "Import the application in the supervisor before forking, so "
           "the processes share its memory (copy-on-write). SIGHUP then "
           "restarts the processes but not the code.",
           metavar=""),
    Option("max_requests", ("--max-requests",), Int(0, INT_MAX), 0,
           "A server process that completed this many requests is "
           "replaced gracefully (its successor starts first). 0: never."),
    Option("max_requests_jitter", ("--max-requests-jitter",),
           Int(0, INT_MAX), 0,
           "Adds a random 0..N to each process's max-requests, so "
           "processes are not all replaced at once."),
    Option("max_rss", ("--max-rss",), Int(0, INT_MAX), 0,
           "A server process whose resident memory passed this many "
           "megabytes (checked every few seconds) is replaced gracefully. "
           "0: no limit.",
           metavar="MB"),
    Option("max_lifetime", ("--max-lifetime",), Seconds(True), 0.0,
           "A server process older than this many seconds is replaced "
           "gracefully. 0: no limit.",
           metavar="SECONDS"),
    Option("max_lifetime_jitter", ("--max-lifetime-jitter",), Seconds(True),
           0.0,
           "Adds a random 0..SECONDS to each process's max-lifetime.",
           metavar="SECONDS"),
    Option("heartbeat_timeout", ("--heartbeat-timeout",), Seconds(True),
           20.0,
           "A server process whose event loop has made no progress for "
           "this many seconds (its heartbeat stopped) is killed and "
           "replaced. 0: never.",
           metavar="SECONDS"),
    Option("start_timeout", ("--start-timeout",), Seconds(True), 60.0,
           "A server process not ready this many seconds after it "
           "started (hung importing the app), or this many more after "
           "its app was loaded (its worker threads not started), is "
           "killed; it counts as a failure at start. 0: never.",
           metavar="SECONDS"),
    Option("unix_socket_mode", ("--unix-socket-mode",), FileMode(), None,
           "Permissions of the unix socket files the server creates, in "
           "octal (e.g. 660). Default: as the umask leaves them.",
           metavar="MODE"),
    Option("forwarded_allow_ips", ("--forwarded-allow-ips",), Networks(),
           ["127.0.0.1", "::1"],
           "Proxies whose word about the client is believed: from these "
           "peers (IP addresses or networks such as 10.0.0.0/8, "
           "comma-separated; * for any; unix socket peers always), the "
           "fields --proxy-headers names set REMOTE_ADDR, wsgi.url_scheme "
           "and HTTP_HOST, and PROXY headers are read (--proxy-protocol). "
           "From anyone else those fields stay plain HTTP_* headers.",
           metavar="ADDRS"),
    Option("proxy_headers", ("--proxy-headers",), ProxyHeaders(),
           ["X-Forwarded-For", "X-Forwarded-Proto"],
           "The forwarding fields a trusted proxy's word is taken from "
           "(comma-separated, any case): X-Forwarded-For, "
           "X-Forwarded-Proto, X-Forwarded-Host, or Forwarded alone; none "
           "for none. Name only fields your proxy sets or strips: it "
           "passes the others on from the client, who can write anything "
           "there.",
           metavar="NAMES"),
    Option("proxy_protocol", ("--proxy-protocol",), Bool(), False,
           "Read a PROXY protocol header (v1 or v2, as HAProxy and cloud "
           "load balancers send) at the start of each connection from a "
           "trusted peer (--forwarded-allow-ips), which must send one; it "
           "sets REMOTE_ADDR and REMOTE_PORT. An untrusted peer is served "
           "plain HTTP, and closed if it sends a PROXY header.",
           metavar=""),
    Option("log_config", ("--log-config",), LogConfig(), None,
           "A logging configuration applied after yimmo's own: a .json or "
           ".toml file holding a logging.config.dictConfig dict, or any "
           "other file in logging.config.fileConfig's INI format (from "
           "Python or a config file, also a dict). Loggers it does not "
           "name keep yimmo's set-up; loggers it names (\"yimmo\", "
           "\"yimmo.access\") get its handlers instead.",
           metavar="FILE"),
    Option("config", ("-c", "--config"), OptionalPath(), None,
           "Read options from FILE: a Python file whose module-level names "
           "are option names (a gunicorn.conf.py works for the options "
           "yimmo shares with gunicorn), or a .toml file. Flags and "
           "environment variables override it.",
           metavar="FILE", cli_only=True),
    Option("reload", ("--reload",), Bool(), False,
           "Development: restart the server when a Python file of the app "
           "(not of site-packages or the standard library) changes. A file "
           "with a syntax error is logged and the running code keeps "
           "serving until it is fixed.",
           metavar="", cli_only=True),
    Option("timeout", ("-t", "--timeout"), Seconds(True), 30.0,
           "Longest time in seconds a request may run in the application "
           "(as gunicorn's --timeout, but nothing is killed): the client "
           "gets 503 (or a closed connection if the response had begun), "
           "the worker's stack is logged, yimmo.RequestTimeout is raised in "
           "the worker thread, and a worker still stuck a second later is "
           "replaced by a new thread. 0 turns it off. It includes the time "
           "the worker waits for a client that reads a response more slowly "
           "than the app produces it (the worker is held meanwhile; a "
           "wsgi.file_wrapper file is sent by the I/O thread and does not "
           "hold it).",
           metavar="SECONDS"),
    Option("client_timeout", ("--client-timeout",),
           Seconds(False, MIN_CLIENT_TIMEOUT), None,
           "Sets --header-timeout, --body-timeout and --write-timeout "
           "together; the specific options win over it.",
           metavar="SECONDS",
           sets=("header_timeout", "body_timeout", "write_timeout")),
)

BY_NAME = {opt.name: opt for opt in OPTIONS}
# Only real options have a value; aliases just set others. Command-line
# only options are not server options.
DEFAULTS = {opt.name: opt.default for opt in OPTIONS
            if not opt.sets and not opt.cli_only}
CLI_DEFAULTS = {opt.name: opt.default for opt in OPTIONS if opt.cli_only}


# The types of the options, for type checkers: Options for the keyword
# arguments of serve() and Server() (what the kinds accept), ServerOptions
# for what validate() and parse_command_line() return (what the kinds
# return, defaults filled in), CliOptions for the command-line only ones.
# tests/test_typing.py checks that they name exactly the table's options.
# Optional and Union, not X | Y: TypedDict keeps these at run time, where
# Python 3.9 cannot evaluate X | Y.

_Path = Union[str, "os.PathLike[str]"]


class Options(TypedDict, total=False):
    """The keyword arguments of yimmo.serve() and yimmo.Server()."""

    bind: Union[str, List[str], Tuple[str, ...]]
    workers: int
    backlog: int
    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    limit_request_head_size: int
    max_body_size: int
    header_timeout: float
    keepalive_timeout: float
    body_timeout: float
    write_timeout: float
    buffer_body: int
    min_body_rate: int
    max_pending: Optional[int]
    queue_timeout: float
    graceful_timeout: float
    access_log: Optional[_Path]
    access_log_format: Optional[str]
    error_log: Optional[_Path]
    log_level: str
    processes: Union[int, Literal["auto"]]
    reuse_port: bool
    preload: bool
    max_requests: int
    max_requests_jitter: int
    max_rss: int
    max_lifetime: float
    max_lifetime_jitter: float
    heartbeat_timeout: float
    start_timeout: float
    unix_socket_mode: Optional[int]
    forwarded_allow_ips: Union[str, List[str], Tuple[str, ...]]
    proxy_headers: Union[str, List[str], Tuple[str, ...]]
    proxy_protocol: bool
    log_config: Union[_Path, Dict[str, Any], None]
    timeout: float
    client_timeout: Optional[float]


class ServerOptions(TypedDict):
    """Every server option, checked and normalised (validate())."""

    bind: List[str]
    workers: int
    backlog: int
    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    limit_request_head_size: int
    max_body_size: int
    header_timeout: float
    keepalive_timeout: float
    body_timeout: float
    write_timeout: float
    buffer_body: int
    min_body_rate: int
    max_pending: Optional[int]
    queue_timeout: float
    graceful_timeout: float
    access_log: Optional[str]
    access_log_format: Optional[str]
    error_log: Optional[str]
    log_level: str
    processes: int
    reuse_port: bool
    preload: bool
    max_requests: int
    max_requests_jitter: int
    max_rss: int
    max_lifetime: float
    max_lifetime_jitter: float
    heartbeat_timeout: float
    start_timeout: float
    unix_socket_mode: Optional[int]
    forwarded_allow_ips: List[str]
    proxy_headers: List[str]
    proxy_protocol: bool
    log_config: Union[str, Dict[str, Any], None]
    timeout: float


class CliOptions(TypedDict):
    """The command-line only options (parse_command_line())."""

    config: Optional[str]
    reload: bool


def _copy_defaults() -> Dict[str, object]:
    return {name: (list(v) if isinstance(v, list) else v)
            for name, v in DEFAULTS.items()}


# -- addresses ----------------------------------------------------------------


def _is_decimal(text: str) -> bool:
    """text is ASCII digits 0-9 only. str.isdigit() alone also takes "²"
    (int() then fails: a traceback's message in the error line) and other
    scripts' digits, which int() reads ("١٢" is 12) but the C core, given
    a network's text, does not."""
    return text.isascii() and text.isdigit()


def parse_address(text: str) -> Union[str, int, Tuple[str, int]]:
    """Check a bind address and split it.

    Returns the path (str) for "unix:PATH", the descriptor (int) for
    "fd://N" (an inherited listening socket), else (host, port) with the
    host as written (brackets removed); "PORT" and ":PORT" give host
    "0.0.0.0". Raises ValueError with a message naming the address.
    """
    if not isinstance(text, str):
        raise TypeError("address must be a str, not %s" % type(text).__name__)
    if text.startswith("fd://"):
        number = text[len("fd://"):]
        if not _is_decimal(number) or int(number) > 65535:
            raise ValueError("bad address %r: expected fd://N with N a "
                             "descriptor number" % text)
        return int(number)
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ValueError("bad address %r: empty unix socket path" % text)
        return path
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError("bad address %r: expected [IPV6]:PORT" % text)
    elif text.count(":") > 1:
        raise ValueError("bad address %r: put an IPv6 address in brackets, "
                         "e.g. [::1]:8000" % text)
    elif ":" in text:
        host, _, port = text.partition(":")
        host = host or "0.0.0.0"
    else:
        host, port = "0.0.0.0", text
    if not host.strip() or any(c.isspace() for c in host):
        raise ValueError("bad address %r: bad host" % text)
    if not _is_decimal(port) or int(port) > 65535:
        raise ValueError("bad address %r: port must be a number from 0 to "
                         "65535" % text)
    return host, int(port)


# -- keyword arguments --------------------------------------------------------


def validate(options: Mapping[str, object]) -> ServerOptions:
    """Check keyword arguments for Server()/serve(); return the full set.

    The result has every option (defaults filled in), values normalised
    (bind as a list, timeouts as float, log_level lower-case) and aliases
    expanded. Unknown names raise TypeError, bad types TypeError, bad
    values ValueError, each with a one-line message.
    """
    result = _copy_defaults()
    aliases = {}
    for name, value in options.items():
        opt = BY_NAME.get(name)
        if opt is None:
            raise TypeError(_unknown(name, keyword=True))
        if opt.cli_only:
            # Not "unknown option 'config' (did you mean 'config'?)".
            raise TypeError("option %r is only for the command line (%s), "
                            "not a keyword argument" % (name, opt.flags[-1]))
        if opt.sets and value is None:
            continue  # timeout=None: the alias is simply not used
        try:
            value = opt.kind.check(value)
        except (TypeError, ValueError) as exc:
            raise type(exc)("option %r: %s" % (name, exc)) from None
        if opt.sets:
            aliases[name] = value
        else:
            result[name] = value
    # An alias only fills in what was not given explicitly.
    for name, value in aliases.items():
        for target in BY_NAME[name].sets:
            if target not in options:
                result[target] = value
    # Every name of DEFAULTS, each checked by its kind, which returns the
    # type ServerOptions gives it (tests/test_typing.py checks that the
    # TypedDict and the table name the same options).
    return cast(ServerOptions, result)


def _unknown(name: str, keyword: bool = False) -> str:
    """"unknown option NAME", with the closest option name if any (of the
    keyword arguments only, for keyword)."""
    message = "unknown option %r" % name
    names = [opt.name for opt in OPTIONS
             if not (keyword and opt.cli_only)]
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        message += " (did you mean %r?)" % close[0]
    return message


# -- command line and environment ---------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line, "yimmo: error: ...".

    The stock parser prints the usage block first; the contract is one line
    on stderr and exit status 2.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, "%s: error: %s\n" % (self.prog, message))


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str],
                 dest: str = argparse.SUPPRESS,
                 default: object = argparse.SUPPRESS,
                 help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help)

    def __call__(self, parser: argparse.ArgumentParser,
                 namespace: argparse.Namespace,
                 values: Union[str, Sequence[Any], None],
                 option_string: Optional[str] = None) -> None:
        # Imported here: this module must not import the C extension.
        from yimmo import __version__
        parser.exit(0, "yimmo %s\n" % __version__)


def _converter(opt: Option) -> Callable[[str], object]:
    """argparse type= function: parse and validate one flag value."""
    def convert(text: str) -> object:
        try:
            return opt.kind.parse(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc))
    convert.__name__ = opt.name  # argparse names it in some messages
    return convert


def _flag_help(opt: Option) -> str:
    extra = ["env %s" % opt.env]
    if opt.default is not None:
        default = opt.default
        if isinstance(default, bool):
            default = "on" if default else "off"
        elif isinstance(default, list):
            default = ",".join(default)
        extra.append("default %s" % default)
    # argparse %-formats help strings: the access log atoms need escaping.
    return ("%s [%s]" % (opt.help, "; ".join(extra))).replace("%", "%%")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="yimmo",
        usage="python -m yimmo [options] APP",
        description="Serve a WSGI application with yimmo.",
        epilog="APP is MODULE:NAME, MODULE:NAME.ATTR, MODULE (uses "
               "'application', then 'app') or MODULE:FACTORY(ARGS) with "
               "literal arguments. Each option can also be set with the "
               "environment variable shown; flags win over the environment, "
               "which wins over the config file (-c).",
        allow_abbrev=False,  # so a new option never changes what --x means
    )
    parser.add_argument("app", metavar="APP", nargs="?",
                        help="the WSGI application, e.g. myproject.wsgi:app "
                             "(or wsgi_app in the config file)")
    for opt in OPTIONS:
        if isinstance(opt.kind, Bool):
            parser.add_argument(*opt.flags, dest=opt.name,
                                action="store_const", const=True,
                                default=argparse.SUPPRESS,
                                help=_flag_help(opt))
            continue
        kwargs: Dict[str, Any] = dict(
            dest=opt.name, type=_converter(opt), default=argparse.SUPPRESS,
            metavar=opt.metavar, help=_flag_help(opt))
        if opt.name == "bind":
            kwargs["action"] = "append"
        parser.add_argument(*opt.flags, **kwargs)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and exit")
    return parser


def _flatten_bind(values: List[List[str]]) -> List[str]:
    # Each --bind value went through Addresses.parse and is a list already.
    return [address for value in values for address in value]


def _apply(result: Dict[str, object], given: Mapping[str, object]) -> None:
    """Layer one source (env or flags) over result: aliases, then the
    specific options, so --header-timeout beats --client-timeout."""
    for name, value in given.items():
        opt = BY_NAME[name]
        for target in opt.sets:
            result[target] = value
    for name, value in given.items():
        if not BY_NAME[name].sets:
            result[name] = value


def _from_environ(parser: _Parser,
                  environ: Mapping[str, str]) -> Dict[str, object]:
    given: Dict[str, object] = {}
    for opt in OPTIONS:
        text = environ.get(opt.env)
        if text is None:
            continue
        try:
            given[opt.name] = opt.kind.parse(text)
        except (TypeError, ValueError) as exc:
            parser.error("%s: %s" % (opt.env, exc))
    return given


def parse_args(
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Tuple[str, ServerOptions]:
    """Parse the command line, YIMMO_* variables and the config file.

    Returns (app_spec, options) with options complete and validated (the
    server options only; see parse_command_line for the others).
    """
    app_spec, options, _ = parse_command_line(argv, environ)
    return app_spec, options


def parse_command_line(
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Tuple[str, ServerOptions, CliOptions]:
    """Parse the command line, YIMMO_* variables and the config file.

    Returns (app_spec, options, cli_options): options complete and
    validated, for serve(); cli_options the command-line only ones
    (config, reload). Flags override environment variables, which
    override the config file (-c/--config or YIMMO_CONFIG), which
    overrides the defaults. Bad input prints one "yimmo: error: ..." line
    and raises SystemExit(2).
    """
    if argv is None:
        argv = sys.argv[1:]
    if environ is None:
        environ = os.environ
    parser = build_parser()
    # Every value went through its kind's parse() (argparse type=).
    args: Dict[str, object] = vars(parser.parse_args(argv))
    app_spec = cast(Optional[str], args.pop("app"))
    if "bind" in args:
        args["bind"] = _flatten_bind(cast(List[List[str]], args["bind"]))
    from_env = _from_environ(parser, environ)
    options = _copy_defaults()
    options.update(CLI_DEFAULTS)
    config_path = cast(Optional[str],
                       args.get("config", from_env.get("config")))
    if config_path:
        # Imported here: the loader imports this module.
        from ._config import ConfigError, load_config
        try:
            config_app, from_config = load_config(config_path)
        except ConfigError as exc:
            parser.error(str(exc))
        _apply(options, from_config)
        if app_spec is None:
            app_spec = config_app
    _apply(options, from_env)
    _apply(options, args)
    if app_spec is None:
        parser.error("the following arguments are required: APP")
    cli = {name: options.pop(name) for name in CLI_DEFAULTS}
    # Each value is a default or came from its kind's parse() or check():
    # the types the TypedDicts give them (tests/test_typing.py checks the
    # TypedDicts name the table's options).
    return (app_spec, cast(ServerOptions, options), cast(CliOptions, cli))


# -- docs ---------------------------------------------------------------------


def _rst_default(opt: Option) -> str:
    if opt.default_text is not None:
        return opt.default_text
    if opt.sets:
        return "(none)"
    if isinstance(opt.kind, Bool):
        return "on" if opt.default else "off"
    if opt.default is None:
        return "off"
    if isinstance(opt.default, list):
        return ", ".join("``%s``" % d for d in opt.default)
    if isinstance(opt.default, float) and opt.default.is_integer():
        return "``%d``" % opt.default
    return "``%s``" % opt.default


def options_rst() -> str:
    """The options as an RST definition list, for the README."""
    lines = []
    for opt in OPTIONS:
        if isinstance(opt.kind, Bool):
            flags = ", ".join("``%s``" % f for f in opt.flags)
        else:
            flags = ", ".join("``%s %s``" % (f, opt.metavar)
                              for f in opt.flags)
        lines.append(flags)
        lines.append("    %s" % opt.help)
        lines.append("")
        if opt.cli_only:
            lines.append("    Name ``%s`` (not a keyword argument); "
                         "environment ``%s``; default %s."
                         % (opt.name, opt.env, _rst_default(opt)))
        else:
            lines.append("    Keyword ``%s``; environment ``%s``; default "
                         "%s." % (opt.name, opt.env, _rst_default(opt)))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m yimmo._options prints the README section.
    sys.stdout.write(options_rst())
