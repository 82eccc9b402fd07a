"""Listening sockets: binding TCP and unix addresses, inherited descriptors
(fd://N and systemd socket activation), SO_REUSEPORT, and removing the
unix socket files a server created.

Used by the single-process Server and by the supervisor, which binds (or
inherits) the listeners once and hands them to the processes it forks.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import (Callable, List, NamedTuple, Optional, Sequence, Tuple,
                    Union)

from . import _options

log = logging.getLogger("yimmo")

# systemd's sd_listen_fds(3): the first passed descriptor.
SD_LISTEN_FDS_START = 3


# A listener's address: (host, port) for TCP, the path for unix.
Address = Union[Tuple[str, int], str]
# (absolute path, st_dev, st_ino) of a unix socket file a server created.
UnixFile = Tuple[str, int, int]


class Listener(NamedTuple):
    sock: socket.socket
    text: str            # the address as given ("127.0.0.1:0", "fd://3")
    address: Address     # (host, port) for TCP, the path for unix
    is_unix: bool
    # (absolute path, st_dev, st_ino) of a socket file we created and must
    # remove when done; None for TCP and for inherited sockets.
    unix_file: Optional[UnixFile]
    # TCP with --reuse-port under a supervisor: the socket is bound (which
    # reserves the port) but not listening; each process opens its own
    # listening socket on `address` with SO_REUSEPORT.
    reuse_port: bool = False


UNIX_PATH_MAX = 107   # Linux's sun_path, less its terminating NUL


def explain(exc: OSError) -> str:
    """An OSError as one line, without the "[Errno 24]" prefix (not every
    OSError has a strerror: socket.bind's "AF_UNIX path too long" has
    only its text). Out of descriptors it names the limit to raise: the
    bare "Too many open files" said neither which nor how (hostile review
    s22)."""
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.EMFILE, errno.ENFILE) and "ulimit" not in text:
        text += (": raise the limit (ulimit -n)" if exc.errno == errno.EMFILE
                 else ": the system's limit (fs.file-max) is reached")
    return text


def _fail(text: str, exc_or_errno: Union[OSError, int],
          message: Optional[str] = None) -> OSError:
    code = exc_or_errno if isinstance(exc_or_errno, int) \
        else exc_or_errno.errno
    if message is None:
        assert isinstance(exc_or_errno, OSError), "an errno needs a message"
        message = explain(exc_or_errno)
    return OSError(code, "cannot bind %s: %s" % (text, message))


def bind_all(options: _options.ServerOptions,
             reserve_reuse_port: bool = False) -> List[Listener]:
    """Bind (or inherit) every listener the options name.

    With systemd socket activation naming this process (LISTEN_PID and
    LISTEN_FDS), its sockets are used instead of `bind`, and the variables
    are removed so that processes we start do not take them as theirs.
    reserve_reuse_port (a supervisor with reuse_port): TCP sockets are
    bound with SO_REUSEPORT but do not listen; see Listener.reuse_port.
    On failure the sockets bound so far are closed and OSError names the
    address.
    """
    texts = list(options["bind"])
    activated = systemd_fds()
    if activated:
        log.info("Using %d socket(s) from systemd socket activation",
                 len(activated))
        texts = ["fd://%d" % fd for fd in activated]
    # One descriptor named twice would make two listeners of one socket,
    # closed twice (the second close hitting whatever reused the number).
    fds = [fd for fd in map(_options.parse_address, texts)
           if isinstance(fd, int)]
    for fd in set(fds):
        if fds.count(fd) > 1:
            raise ValueError("option 'bind': fd://%d is given more than "
                             "once" % fd)
    listeners: List[Listener] = []
    try:
        for text in texts:
            listeners.append(bind_one(
                text, options["backlog"], options["reuse_port"],
                options["unix_socket_mode"], reserve_reuse_port))
    except BaseException:
        close_all(listeners)
        raise
    return listeners


def bind_one(text: str, backlog: int, reuse_port: bool = False,
             unix_mode: Optional[int] = None,
             reserve_reuse_port: bool = False) -> Listener:
    try:
        return _bind_one(text, backlog, reuse_port, unix_mode,
                         reserve_reuse_port)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE) and \
                "ulimit" not in str(exc):
            # Out of descriptors for the socket itself (or for the codec
            # getaddrinfo imports): which limit (hostile review s23).
            raise _fail(text, exc) from None
        raise


def _bind_one(text: str, backlog: int, reuse_port: bool,
              unix_mode: Optional[int],
              reserve_reuse_port: bool) -> Listener:
    parsed = _options.parse_address(text)
    if isinstance(parsed, int):
        return inherit_fd(text, parsed)
    if isinstance(parsed, str):
        return bind_unix(text, parsed, backlog, unix_mode)
    host, port = parsed
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, "cannot bind %s: %s"
                      % (text, exc.strerror)) from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = tcp_socket(family, reuse_port)
    try:
        sock.bind(sockaddr)
        if not reserve_reuse_port:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise _fail(text, exc) from None
    name = sock.getsockname()
    return Listener(sock, text, (name[0], name[1]), False, None,
                    reserve_reuse_port)


def tcp_socket(family: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def reuse_port_listener(reserved: Listener, backlog: int,
                        listen: bool = True) -> Listener:
    """A process's own listening socket on the address a reserved
    Listener holds (SO_REUSEPORT: the kernel spreads connections across
    the processes' sockets). listen=False: bound only, so that the kernel
    gives it no connection yet; the caller listens (with the backlog)
    once it can accept."""
    assert isinstance(reserved.address, tuple), "reuse_port is TCP only"
    host, port = reserved.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = tcp_socket(family, True)
    try:
        sock.bind(reserved.sock.getsockname())
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise _fail(reserved.text, exc) from None
    return Listener(sock, reserved.text, reserved.address, False, None)


def bind_unix(text: str, path: str, backlog: int,
              mode: Optional[int] = None) -> Listener:
    # sun_path holds 108 bytes with the terminating NUL; bind() would
    # only say "AF_UNIX path too long".
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise _fail(text, errno.ENAMETOOLONG,
                    "the path is %d bytes long; a unix socket's can be at "
                    "most %d" % (size, UNIX_PATH_MAX))
    # A socket file left by a server that is gone is replaced; one that
    # still accepts connections is not.
    try:
        st_mode = os.stat(path).st_mode
        if not stat.S_ISSOCK(st_mode):
            # Never replaced: it is not ours, and bind() would only say
            # "Address already in use".
            raise _fail(text, errno.EEXIST, "%s exists and is not a socket"
                        % ("a directory" if stat.S_ISDIR(st_mode)
                           else "a file"))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            log.info("Removing stale socket file %s", path)
            os.unlink(path)
        except OSError:
            pass
        else:
            raise _fail(text, errno.EADDRINUSE,
                        "a server is listening on it already")
        finally:
            probe.close()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise _fail(text, exc) from None
    st = os.stat(path)
    unix_file = (os.path.abspath(path), st.st_dev, st.st_ino)
    try:
        if mode is not None:
            # Before listen(): no client connects under the umask's mode.
            os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        unlink_unix_files([unix_file])
        raise _fail(text, exc) from None
    return Listener(sock, text, path, True, unix_file)


def inherit_fd(text: str, fd: int) -> Listener:
    """fd://N: a listening stream socket this process inherited."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise OSError(exc.errno, "cannot use %s: %s"
                      % (text, exc.strerror)) from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET,
                                    socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            raise OSError(errno.EINVAL, "cannot use %s: not a listening "
                          "stream socket" % text)
        sock.setblocking(False)
        sock.set_inheritable(False)
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            if isinstance(name, bytes):  # abstract namespace
                name = name.decode("latin-1")
            return Listener(sock, text, name, True, None)
        name = sock.getsockname()
        return Listener(sock, text, (name[0], name[1]), False, None)
    except BaseException:
        sock.detach()   # not ours to close on failure: the caller's fd
        raise


def systemd_fds() -> List[int]:
    """Descriptors passed by systemd socket activation, if LISTEN_PID names
    this process; the variables are removed either way once read, so
    neither our children nor the app take them for theirs."""
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if pid is None or count is None:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    # As sd_listen_fds(3): variables meant for another process are
    # ignored; ones that name no process or no count are an error, not a
    # reason to bind something else in their place.
    try:
        target = int(pid)
    except ValueError:
        raise OSError(errno.EINVAL, "socket activation: LISTEN_PID=%r is "
                      "not a process id" % pid) from None
    if target != os.getpid():
        return []
    try:
        n = int(count)
    except ValueError:
        n = -1
    if n < 0:
        raise OSError(errno.EINVAL, "socket activation: LISTEN_FDS=%r is "
                      "not a number of descriptors" % count)
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))


def close_all(listeners: Sequence[Listener]) -> None:
    for listener in listeners:
        listener.sock.close()
    unlink_unix_files([l.unix_file for l in listeners if l.unix_file])


def unlink_unix_files(files: List[UnixFile],
                      mine: Optional[Callable[[], int]] = None) -> None:
    """Remove the socket files a server created, unless another server has
    put its own there since (our listener closes when a stop begins, so a
    new server may legitimately take the path over while we drain). With
    mine (a server's): only if mine() says they are this process's to
    remove (1), or may be and nobody listens at them any more (2: another
    process may serve the same listener)."""
    how = mine() if mine is not None else 1
    if how == 0:
        return
    while files:
        path, dev, ino = files.pop()
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino) and \
                    not (how == 2 and _listened_at(path)):
                os.unlink(path)
        except OSError:
            pass


def _listened_at(path: str) -> bool:
    """Does some process still accept connections at this socket file?
    (It sees a connection that closes at once, as from a health check.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except BlockingIOError:
            return True            # listening, its queue full
        except OSError:
            return False           # refused: nobody listens
        return True


def describe(address: Address) -> str:
    if isinstance(address, tuple):
        host, port = address
        if ":" in host:
            host = "[%s]" % host
        return "http://%s:%d" % (host, port)
    return "unix:" + address
