"""--reload, for development: a parent process that watches the app's
Python files and runs the real server as a child, restarting it when one
changes.

The parent never imports the app. It runs `python -m yimmo` with the same
arguments as a child, with CHILD_ENV naming where each server process
(one, or those of --processes N) lists in a file of its own the source
files of the modules it has imported, each with its state when it was
loaded (rewritten when that set grows, since frameworks import lazily,
each process on its own requests); files of the standard library,
site-packages and yimmo itself are left out. The parent stats those files
about once a second, sooner when inotify (through ctypes, Linux) reports
an event of one of them (each file is watched, and its directory for
files made, removed or moved there); then it waits until the files have
been quiet for a moment and none written is still open for writing (an
editor writing in place truncates first) or missing, for at most a second
(other files next to the app, its log, give no event), or while git
writes the work tree of a changed file (at most 10 s). On a
change it compiles the changed
files first: a syntax error is logged with the file and line and the
running child keeps serving the old code; once they compile, the old child
is stopped (SIGTERM, gracefully) and a new one started. Stop then start:
the port is refused for the moment between them (the old server's grace
plus the new one's import), which a development server can afford. A
child that exits by itself (an import error in the new code) is reported
and the parent waits for the next change; a child whose first import
fails lists what it imported and the files in the traceback, so fixing
the app restarts it too. A module imported through a symlink is watched
at both paths: editing the target or pointing the link elsewhere is a
change.

SIGTERM and SIGINT stop the child and the parent; SIGHUP restarts the
child, unless the terminal the parent was started from is gone (then it
stops, as it does whenever it finds that terminal gone); SIGUSR1 is
passed on. The child gets SIGTERM if the parent dies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import shutil
import signal
import site
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from types import FrameType
from typing import (
    TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Mapping,
    Optional, Sequence, Set, Tuple,
)

from . import _signals
from ._options import CliOptions, ServerOptions

if TYPE_CHECKING:
    from ._server import SignalHandler

log = logging.getLogger("yimmo")

CHILD_ENV = "_YIMMO_RELOAD_FILES"

# Set (to anything) to poll even where inotify works: the tests use it.
POLL_ENV = "_YIMMO_RELOAD_POLL"
POLL_INTERVAL = 1.0


def _list_of(list_path: str, pid: int) -> str:
    """The list file of server process pid: CHILD_ENV's path, ".PID"."""
    return "%s.%d" % (list_path, pid)


def _is_list(name: str) -> bool:
    """Whether a name in the parent's directory is a process's list (not
    the ".tmp" file a process killed while writing it left)."""
    prefix, _, pid = name.partition(".")
    return prefix == "files" and pid.isdigit()


# After inotify wakes us, the watched files must have been quiet this long
# (no event, none open for writing after a write) before they are
# compared; a file still open after a write is waited for at most
# SETTLE_MAX.
SETTLE = 0.05
SETTLE_MAX = 1.0
# While git writes the work tree of a changed file (a checkout, a stash,
# a rebase: its index.lock there, still empty), a settle goes on, for at
# most this long: git writes the files in index order, with others in
# between, and the server must not start on half the new tree.
VCS_SETTLE_MAX = 10.0

# A file's state: (st_mtime_ns, st_size, st_ino).
Signature = Tuple[int, int, int]


# -- the child: which files to watch -------------------------------------------


def _excluded_dirs() -> Tuple[str, ...]:
    dirs = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(os.path.realpath(path))
    try:
        dirs.update(os.path.realpath(p) for p in site.getsitepackages())
    except AttributeError:  # old virtualenv's site module
        pass
    user_site = getattr(site, "USER_SITE", None)
    if user_site:
        dirs.add(os.path.realpath(user_site))
    dirs.add(os.path.dirname(os.path.realpath(__file__)))  # yimmo itself
    return tuple(d.rstrip(os.sep) + os.sep for d in dirs)


def _add_file(files: Set[str], path: object,
              excluded: Tuple[str, ...]) -> None:
    """Add path to files if it is a .py file of the app: its real path,
    and the path as imported too when that is a symlink (or goes through
    one), so that pointing the link elsewhere is a change as well (the
    parent stats it, which follows the link)."""
    if not isinstance(path, str) or not path.endswith(".py"):
        return
    real = os.path.realpath(path)
    if real.startswith(excluded) or not os.path.isfile(real):
        return
    files.add(real)
    absolute = os.path.abspath(path)
    if absolute != real:
        files.add(absolute)


def app_files(excluded: Optional[Tuple[str, ...]] = None) -> Set[str]:
    """The .py files of the imported modules that belong to the app."""
    if excluded is None:
        excluded = _excluded_dirs()
    files: Set[str] = set()
    for module in list(sys.modules.values()):
        _add_file(files, getattr(module, "__file__", None), excluded)
    return files


def failure_files(exc: Optional[BaseException]) -> Set[str]:
    """The app's .py files an import failure points at: every file in the
    tracebacks of exc and its causes, and the file of a SyntaxError. The
    module that failed is no longer in sys.modules, so without these a
    child that never started would leave the parent nothing to watch."""
    excluded = _excluded_dirs()
    files: Set[str] = set()
    seen: Set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, SyntaxError):
            _add_file(files, exc.filename, excluded)
        tb = exc.__traceback__
        while tb is not None:
            _add_file(files, tb.tb_frame.f_code.co_filename, excluded)
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return files


# path -> the file's state when the child loaded it (note_loads).
_loaded: Dict[str, Signature] = {}


def note_loads() -> None:
    """In the child, before the app is imported: note each source file's
    state when Python loads it (SourceFileLoader.path_stats, which decides
    between the file and its cached bytecode). The list the parent
    watches gives that state, not the state when the list is written: a
    module edited after it was loaded but before the report (a slow
    import of the rest of the app) is then a change the parent acts on,
    where it was taken for what the server runs (review s25, D5)."""
    from importlib.machinery import SourceFileLoader
    original = SourceFileLoader.path_stats

    def path_stats(self: SourceFileLoader,
                   path: str) -> Mapping[str, object]:
        sig = _signature(path)
        if sig is not None:
            for p in {os.path.abspath(path), os.path.realpath(path)}:
                _loaded[p] = sig
        return original(self, path)

    SourceFileLoader.path_stats = path_stats  # type: ignore[method-assign]


def report_modules(list_path: str, config_path: Optional[str] = None,
                   extra_files: Iterable[str] = ()) -> None:
    """In the child, after the app was imported (or failed to be: then
    extra_files are those failure_files() found): write the app's files
    to this process's list (_list_of list_path) now, and again from a
    daemon thread whenever more modules have been imported."""
    excluded = _excluded_dirs()
    extra = set(extra_files)
    if config_path:
        extra.add(os.path.realpath(config_path))

    def write(files: Set[str]) -> None:
        # Each file with its state when it was loaded (note_loads), or
        # else now, before any edit the parent has yet to see: the parent
        # compares with that, so an edit made before it reads the list
        # is still a change. Every source file loaded, too, the modules
        # whose import raised included (not in sys.modules): an app that
        # catches the ImportError of an optional module runs without it,
        # and the parent, which keeps watching only what the server
        # reports, must still restart it when that module is fixed (C
        # review s28).
        loaded: Set[str] = set()
        for path in list(_loaded):
            _add_file(loaded, path, excluded)
        lines = []
        for path in sorted(files | loaded | extra):
            sig = _loaded.get(path) or _signature(path)
            if sig is not None:
                lines.append("%d %d %d %s" % (sig + (path,)))
        # Per process: the server processes of a supervisor all report,
        # each its own imports (a lazy one made in one process only).
        # (os.getpid() each time: a process forked from this one after the
        # thread began has no thread, but may write once, failing.)
        mine = _list_of(list_path, os.getpid())
        tmp = mine + ".tmp"
        # (surrogateescape: a path that is not UTF-8 goes through as its
        # bytes, and the parent reads it back the same way.)
        with open(tmp, "w", encoding="utf-8",
                  errors="surrogateescape") as f:
            # NUL-terminated: a path may hold any other character,
            # line breaks included.
            f.write("".join(line + "\0" for line in lines))
        os.replace(tmp, mine)

    write(app_files(excluded))

    def watch_imports() -> None:
        count = len(sys.modules)
        while True:
            time.sleep(POLL_INTERVAL)
            if len(sys.modules) != count:
                count = len(sys.modules)
                try:
                    write(app_files(excluded))
                except OSError:
                    return  # the parent has gone

    threading.Thread(target=watch_imports, name="yimmo-reload-imports",
                     daemon=True).start()


# -- the parent ----------------------------------------------------------------


class _Inotify:
    """inotify(7) through ctypes, used only to wake up early and to wait
    for a writer to finish: what changed is found by comparing stats. None
    of this is needed for correctness; without it the parent polls.

    Two queues. Each watched file has a watch of its own (on `files_fd`):
    its writes, its close after a write, a touch, its removal or move.
    Their directories are watched (on `fd`) only for names that appear,
    go, or are closed after a write (a file made anew at a watched path):
    the writes of other files next to the app (its log, its database)
    give no event at all, and the queue of the files' own events, which
    the kernel coalesces while a writer goes on, does not overflow."""

    IN_MODIFY = 0x00000002
    IN_ATTRIB = 0x00000004
    IN_CLOSE_WRITE = 0x00000008
    IN_MOVED_FROM = 0x00000040
    IN_MOVED_TO = 0x00000080
    IN_CREATE = 0x00000100
    IN_DELETE = 0x00000200
    IN_DELETE_SELF = 0x00000400
    IN_MOVE_SELF = 0x00000800  # the watched file or directory went elsewhere
    IN_Q_OVERFLOW = 0x00004000  # events were lost
    IN_IGNORED = 0x00008000  # its watch is gone (removed, or rm_watch)
    # A file written is done with: closed, gone, or replaced.
    DONE = (IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
            | IN_DELETE_SELF | IN_MOVE_SELF)
    # A name in a directory: a new file there, or another file under it.
    REPLACED = IN_CREATE | IN_MOVED_TO
    FILE_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF
                 | IN_MOVE_SELF)
    DIR_MASK = (IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM
                | IN_MOVED_TO | IN_MOVE_SELF)
    _EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name
    _OVERFLOW = _EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0)

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                           use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        fds = []
        try:
            for _ in range(2):
                fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                if fd < 0:
                    raise OSError(ctypes.get_errno(), "inotify_init1")
                fds.append(fd)
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        self.fd: int = fds[0]  # the directories
        self.files_fd: int = fds[1]  # the files
        self._wd_of: Dict[str, int] = {}  # directory -> its watch
        self._dirs_of: Dict[int, Set[str]] = {}  # watch -> its directories
        self._file_wd: Dict[str, int] = {}  # file -> its watch
        # watch -> its paths (a file and a symlink to it share a watch)
        self._paths_of: Dict[int, Set[str]] = {}
        self._names: Set[bytes] = set()  # the watched files' names...
        self._files: Set[str] = set()  # ...and paths
        # A file could not be watched: fs.inotify.max_user_watches (for
        # all of this user's processes) was reached.
        self.out_of_watches = False

    def watch(self, files: Iterable[str]) -> None:
        """Watch files and their directories, and note their names. Every
        time, for every path: one that was removed, moved or replaced, and
        whose IN_IGNORED was lost with an overflow (a directory's) or came
        only for the file it was (a file's), is watched again at its path
        (inotify_add_watch of an inode already watched gives its watch
        back)."""
        self._files = set(files)
        self._names = {os.fsencode(os.path.basename(p)) for p in self._files}
        for gone in set(self._file_wd) - self._files:
            self._forget_file(self._file_wd[gone], gone)
        # The directories first: with few watches left, a file replaced
        # (an editor's usual save) is still seen, and the rest is stat'ed.
        dirs = {os.path.dirname(p) for p in self._files}
        for d in dirs:
            wd = self._add(self.fd, os.fsencode(d), self.DIR_MASK)
            if wd < 0 and ctypes.get_errno() == errno.ENOSPC:
                self.out_of_watches = True
            old = self._wd_of.get(d)
            if old is not None and old != wd:
                self._forget(old, d)
            if wd >= 0:
                self._wd_of[d] = wd
                self._dirs_of.setdefault(wd, set()).add(d)
        for path in self._files:
            self.watch_file(path)

    def watch_file(self, path: str) -> None:
        """Watch the file now at path (following a symlink, as the
        parent's stat does). A path with no file, or one the kernel will
        not watch (no watches left), is left to its directory's events and
        to the stat once a second."""
        wd = self._add(self.files_fd, os.fsencode(path), self.FILE_MASK)
        if wd < 0 and ctypes.get_errno() == errno.ENOSPC:
            self.out_of_watches = True
        old = self._file_wd.get(path)
        if old is not None and old != wd:
            self._forget_file(old, path)
        if wd >= 0:
            self._file_wd[path] = wd
            self._paths_of.setdefault(wd, set()).add(path)

    def _forget(self, wd: int, d: str) -> None:
        self._wd_of.pop(d, None)
        dirs = self._dirs_of.get(wd)
        if dirs is not None:
            dirs.discard(d)
            if not dirs:
                del self._dirs_of[wd]
                self._rm(self.fd, wd)  # (EINVAL if the kernel dropped it)

    def _forget_file(self, wd: int, path: str) -> None:
        if self._file_wd.get(path) == wd:
            del self._file_wd[path]
        paths = self._paths_of.get(wd)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._paths_of[wd]
                self._rm(self.files_fd, wd)  # (EINVAL if already gone)

    @staticmethod
    def _reads(fd: int) -> Iterator[bytes]:
        """What is queued on fd, in reads of whole records; no more than 8
        of them (names appearing and going next to the app as fast as
        they are read: what is left waits for the next turn)."""
        for _ in range(8):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            yield data
            if len(data) < 65536 - 512:
                return  # (a record is at most 16 + 256 bytes)

    def _records(self, data: bytes) -> Iterator[Tuple[int, int, bytes]]:
        off = 0
        while off + self._EVENT.size <= len(data):
            wd, mask, _, size = self._EVENT.unpack_from(data, off)
            off += self._EVENT.size
            yield wd, mask, data[off:off + size].rstrip(b"\0")
            off += size

    def file_events(self) -> Tuple[List[Tuple[str, int]], bool]:
        """(path, mask) of the watched files' own events queued now, in
        order, and whether some were lost."""
        found: List[Tuple[str, int]] = []
        lost = False
        for data in self._reads(self.files_fd):
            for wd, mask, _ in self._records(data):
                if mask & self.IN_Q_OVERFLOW:
                    lost = True
                    continue
                paths = self._paths_of.get(wd, set())
                found.extend((p, mask) for p in sorted(paths))
                if mask & self.IN_MOVE_SELF:
                    # Renamed (to a backup an editor keeps): each path is
                    # watched again for what is at it now. Another name
                    # of the same file (a hard link) keeps the watch.
                    for p in list(paths):
                        self.watch_file(p)
                elif mask & (self.IN_IGNORED | self.IN_DELETE_SELF):
                    # Gone: watch() or watch_file() watches what is at
                    # these paths later, if anything.
                    for p in list(paths):
                        self._forget_file(wd, p)
        return found, lost

    def events(self) -> Tuple[List[Tuple[str, int]], List[Tuple[str, int]],
                              bool]:
        """The watched files' own events (file_events), the events of
        their names in their directories ((path, mask) in order; each
        read before the files' events, which come later), and whether
        events were lost (an overflow of either queue). Events of
        other names are read and left out: a directory where an app makes
        and removes files (a database's journal) can have thousands a
        second."""
        names: List[Tuple[str, int]] = []
        lost = False
        for data in self._reads(self.fd):
            # (A name in a record ends with NUL: "helper.py" is not found
            # in "helper.py.log".)
            if not any(name + b"\0" in data for name in self._names):
                # Nothing of ours (searched in C, not parsed). A
                # directory's own events, gone with it, watch() makes up
                # for.
                lost = lost or self._OVERFLOW in data
                continue
            for wd, mask, name in self._records(data):
                if name in self._names:
                    for d in self._dirs_of.get(wd, ()):
                        path = os.path.join(d, os.fsdecode(name))
                        if path in self._files:
                            names.append((path, mask))
                elif mask & self.IN_Q_OVERFLOW:
                    lost = True
                elif not name and mask & (self.IN_IGNORED
                                          | self.IN_MOVE_SELF):
                    # Gone, or moved: watch() watches its path again.
                    for d in list(self._dirs_of.get(wd, ())):
                        self._forget(wd, d)
        # The files at paths made or moved there are watched before the
        # files' queue is read: a write to them already queued is theirs,
        # and what is still queued for the file that was there maps to no
        # path any more (the directories' queue is read first, so an
        # older name event cannot follow a newer write).
        for path, mask in names:
            if mask & self.REPLACED:
                self.watch_file(path)
        files, files_lost = self.file_events()
        return files, names, lost or files_lost

    def discard(self) -> None:
        """Read the directories' queue without looking at it."""
        for _ in self._reads(self.fd):
            pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.files_fd)


def _parent_death_signal() -> Callable[[], object]:
    """prctl(PR_SET_PDEATHSIG, SIGTERM) where Linux has it: the server
    stops if the parent is killed (-9) instead of serving on, orphaned."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                           use_errno=True)
        prctl = libc.prctl  # looked up now: the child must not fail
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


_set_parent_death_signal = _parent_death_signal()


def _in_child() -> None:
    # Between fork and exec (the parent has no threads). Its own process
    # group: Ctrl-C reaches only the parent, which then stops the child
    # once, with SIGTERM (a SIGINT from the terminal on top would come
    # first and be the app's KeyboardInterrupt in the server).
    os.setpgrp()
    _set_parent_death_signal()
    # A SIGUSR1 passed on before the child can take it (its interpreter
    # is still starting) stays pending across exec, not killing it; the
    # child unblocks it once it notes it (__main__,
    # _SignalsWhileImporting).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _signature(path: str) -> Optional[Signature]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _controlling_tty_fd() -> Optional[int]:
    """The first of stdin, stdout and stderr that is this process's
    controlling terminal, else the terminal itself (/dev/tty) when it has
    one (stdio redirected: `> dev.log 2>&1 &`), or None."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                os.tcgetpgrp(fd)  # ENOTTY: a terminal, but not ours
                return fd
        except OSError:
            pass
    try:  # stdio elsewhere (> log 2>&1 < /dev/null): the terminal itself
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.tcgetpgrp(fd)
    except OSError:
        os.close(fd)
        return None
    return fd


def _git_index_lock(directory: str) -> Optional[str]:
    """The index.lock of the git work tree directory is in, or None: the
    nearest .git up from it, a directory, or a file naming the git
    directory (a linked work tree, a submodule)."""
    d = directory
    while True:
        dot_git = os.path.join(d, ".git")
        if os.path.isdir(dot_git):
            return os.path.join(dot_git, "index.lock")
        if os.path.isfile(dot_git):
            try:
                with open(dot_git, encoding="utf-8",
                          errors="surrogateescape") as f:
                    line = f.readline().strip()
            except OSError:
                return None
            if not line.startswith("gitdir:"):
                return None
            return os.path.join(d, line[len("gitdir:"):].strip(),
                                "index.lock")
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _git_writing(lock: str) -> bool:
    """Whether git may be writing the work tree: its index.lock exists,
    is still empty (git writes the new index into it once the tree is
    written; git commit -a fills it before its editor opens) and is
    younger than VCS_SETTLE_MAX (one a crashed git left is not)."""
    try:
        st = os.stat(lock)
    except OSError:
        return False
    return st.st_size == 0 and time.time() - st.st_mtime < VCS_SETTLE_MAX


def _is_made(path: str) -> bool:
    """Whether the name just made at path is a new regular file, which
    its writer closes when it is written (not a symlink, nor another name
    of a file that exists, a hard link)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def syntax_error(path: str) -> Optional[str]:
    """A one-line description of the syntax error in path, or None."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError:
        return None  # deleted: let the new child find out
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return "%s, line %s: %s" % (path, exc.lineno, exc.msg)
    except ValueError as exc:  # null bytes
        return "%s: %s" % (path, exc)
    return None


class _Parent:
    def __init__(self, argv: Sequence[str], options: ServerOptions) -> None:
        self.argv = list(argv)
        self.grace = options["graceful_timeout"]
        self.tmpdir = tempfile.mkdtemp(prefix="yimmo-reload-")
        # Where the server processes write their lists (_list_of): a
        # directory per server started (new_generation).
        self.generation = 0
        self.list_path = ""
        self.child: Optional[subprocess.Popen[bytes]] = None
        # path -> signature when last (re)started (None: it was missing)
        self.files: Dict[str, Optional[Signature]] = {}
        # each list file read -> its signature when read
        self.list_sigs: Dict[str, Signature] = {}
        # the names of those of processes that are gone, read already
        self.dead_lists: Set[str] = set()
        self.new_generation()
        self.stopping = False
        self.hup = False  # SIGHUP: restart without a change
        # changed files waiting for a good compile
        self.pending: Set[str] = set()
        # Set by a restart: the next list read is the new server's first,
        # and files the old one reported that this one did not are no
        # longer the app's (see read_list).
        self.new_server = False
        # Written to by Python's signal handling (set_wakeup_fd in
        # run_parent): a signal ends a wait at once.
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.inotify: Optional[_Inotify] = None
        self.warned_watches = False
        # directory -> the index.lock of the git repository it is in
        self.vcs_lock_of: Dict[str, Optional[str]] = {}
        # The terminal the parent was started from, if any (its fd): once
        # it is gone (the window closed, the SSH session ended), the
        # parent stops rather than serving on, detached.
        self.tty_fd = _controlling_tty_fd()
        if not os.environ.get(POLL_ENV):
            try:
                self.inotify = _Inotify()
            except (OSError, AttributeError, TypeError):
                pass
        if self.inotify is None:
            log.info("Reloader: polling for changes every %gs",
                     POLL_INTERVAL)

    def start_child(self) -> None:
        env = dict(os.environ)
        env[CHILD_ENV] = self.list_path
        env.pop(POLL_ENV, None)
        self.child = subprocess.Popen(
            [sys.executable, "-m", "yimmo"] + self.argv, env=env,
            preexec_fn=_in_child)
        log.info("Reloader: started the server (pid %d)", self.child.pid)

    def stop_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(self.grace + 5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def read_list(self) -> List[str]:
        """Read the server processes' lists of files that changed; the
        paths new in them."""
        new: List[str] = []
        reported: Set[str] = set()
        read = False
        for name in sorted(self._list_names()):
            path = os.path.join(os.path.dirname(self.list_path), name)
            sig = _signature(path)
            if sig is None or sig == self.list_sigs.get(path):
                continue
            self.list_sigs[path] = sig
            try:
                with open(path, encoding="utf-8",
                          errors="surrogateescape") as f:
                    records = [r for r in f.read().split("\0") if r]
            except OSError:
                continue
            read = True
            for record in records:
                try:
                    mtime, size, ino, file = record.split(" ", 3)
                    state = (int(mtime), int(size), int(ino))
                except ValueError:
                    continue  # (a child of another version of yimmo)
                reported.add(file)
                if file not in self.files:
                    self.files[file] = state
                    new.append(file)
                    d = os.path.dirname(file)
                    if d not in self.vcs_lock_of:
                        self.vcs_lock_of[d] = _git_index_lock(d)
        if not read:
            return new
        if self.new_server:
            # The first lists since a restart (the new server's, written
            # once it has imported the app or failed to): a file it did
            # not import is no longer the app's, and an edit of it must
            # not restart the server. Kept: a file that is gone (the app
            # may fail to import without it, and wait for it to come
            # back), and one whose change waits for a good compile. Later
            # lists (a lazy import, another process's under a supervisor)
            # only add. (Gone now, too: removed since last compared, the
            # new server may have failed for want of it, C review s28.)
            self.new_server = False
            for path in [p for p, sig in self.files.items()
                         if sig is not None and p not in reported and
                         p not in self.pending and
                         _signature(p) is not None]:
                del self.files[path]
        if self.inotify is not None:
            self.inotify.watch(self.files)
        return new

    def new_generation(self) -> None:
        """A directory of its own for the lists of the server about to
        start; the last one's goes, lists and all. A process of an older
        server still running (the orphans of a supervisor killed outright
        drain on their own) then writes nowhere (review s29, R1: its list
        was read as the new server's)."""
        if self.list_path:
            shutil.rmtree(os.path.dirname(self.list_path), ignore_errors=True)
        self.generation += 1
        d = os.path.join(self.tmpdir, "gen-%d" % self.generation)
        os.mkdir(d, 0o700)
        self.list_path = os.path.join(d, "files")
        self.list_sigs.clear()
        self.dead_lists.clear()

    def _list_names(self) -> List[str]:
        try:
            return [n for n in os.listdir(os.path.dirname(self.list_path))
                    if _is_list(n) and n not in self.dead_lists]
        except OSError:
            return []

    def drop_dead_lists(self) -> None:
        """Read no more the lists, read already, of processes that are
        gone (a supervisor recycles them: --max-requests): what they
        listed stays watched, and the files stay until the restart (the
        tests look in them), but they are no longer stat'ed each turn
        (review s29, R2)."""
        for path, sig in list(self.list_sigs.items()):
            pid = int(path.rsplit(".", 1)[1])
            try:
                os.kill(pid, 0)
                continue
            except ProcessLookupError:
                pass
            except OSError:
                continue            # someone's: alive
            if _signature(path) == sig:     # nothing written since read
                self.dead_lists.add(os.path.basename(path))
                del self.list_sigs[path]

    def take_list(self) -> None:
        """read_list(); files new in it that were edited between the
        child's report and now, before they were watched (a loaded
        machine), may be in the middle of an edit no event told of:
        settle on their states first, as after an overflow (an emptied
        file is one being written)."""
        new = self.read_list()
        self.drop_dead_lists()
        if self.inotify is not None and any(
                _signature(p) != self.files[p] for p in new):
            self.settle(self.inotify, [], [], lost=True)

    def terminal_gone(self) -> bool:
        """Whether the parent was started from a terminal that is no
        longer its controlling terminal (hung up: a SIGHUP from closing it
        must stop the parent, not restart the server)."""
        if self.tty_fd is None:
            return False
        try:
            os.tcgetpgrp(self.tty_fd)
        except OSError:
            return True
        return False

    def warn_watches(self) -> None:
        """Once: inotify could not watch some file or directory."""
        if self.inotify is not None and self.inotify.out_of_watches and \
                not self.warned_watches:
            self.warned_watches = True
            log.warning("Reloader: inotify has no watches left "
                        "(fs.inotify.max_user_watches); the files it "
                        "cannot watch are compared once a second, "
                        "without waiting for an edit to end")

    def changed(self) -> List[str]:
        found = []
        for path, sig in self.files.items():
            now = _signature(path)
            if now != sig:
                self.files[path] = now
                found.append(path)
        return found

    def pause(self, timeout: float) -> None:
        """Sleep for timeout, or until a signal handler ran (the wakeup
        pipe; time.sleep and select are resumed after a handler)."""
        try:
            r, _, _ = select.select([self.wake_r], [], [], max(0.0, timeout))
        except InterruptedError:
            return
        if r:
            _drain(self.wake_r)

    def moved(self) -> bool:
        """Whether a watched file's state differs from the last seen."""
        return any(_signature(p) != sig for p, sig in self.files.items())

    def wait(self, timeout: float) -> None:
        """Until a watched file changed and settled, a signal, or timeout."""
        if self.inotify is None:
            self.pause(timeout)
            return
        inotify = self.inotify
        inotify.watch(self.files)
        end = time.monotonic() + timeout
        flood = False
        while not (self.stopping or self.hup):
            left = end - time.monotonic()
            if left <= 0:
                return
            if flood:
                # The directories' events are being lost: read none of
                # them (parsing a full queue again and again costs most
                # of a core), compare states; the files' own still count.
                self.pause(min(SETTLE, left))
                inotify.discard()
                files, _ = inotify.file_events()
                if files or self.moved():
                    self.settle(inotify, files, [], lost=True)
                    return
                continue
            try:
                r, _, _ = select.select(
                    [inotify.fd, inotify.files_fd, self.wake_r], [], [],
                    left)
            except InterruptedError:
                continue
            if self.wake_r in r:
                _drain(self.wake_r)
            if inotify.fd not in r and inotify.files_fd not in r:
                continue
            files, names, lost = inotify.events()
            if files or names or (lost and self.moved()):
                self.settle(inotify, files, names, lost)
                return
            flood = lost
            if not flood:
                # Only names nobody watches (files an app makes and
                # removes next to its code): taken in batches, not one
                # wake-up per file.
                self.pause(min(SETTLE, end - time.monotonic()))

    def settle(self, inotify: _Inotify, files: List[Tuple[str, int]],
               names: List[Tuple[str, int]], lost: bool = False) -> None:
        """From the first event on a watched file: wait until the watched
        files have been quiet for SETTLE and none written is still open
        for writing, for at most SETTLE_MAX. A file written in place is
        truncated first, and a writer slower than SETTLE (or a loaded
        machine) would otherwise have its empty or half-written file
        restarted on, and then the whole one.

        files are the files' own events (a write, IN_MODIFY, until its
        IN_CLOSE_WRITE), names those of their directories (a regular file
        made at a watched path is being written until it is closed; the
        file now at a path made or moved there is watched from then on).
        Once the directories' events were lost (an overflow), quiet is
        also the files' states unchanged for SETTLE, and a file emptied
        since it was last seen counts as being written (one made anew
        during the overflow has no watch of its own yet, and an empty
        module compiles)."""
        written: Set[str] = set()  # IN_MODIFY without IN_CLOSE_WRITE yet
        made: Set[str] = set()  # IN_CREATE of a regular file, likewise
        emptied: Set[str] = set()
        # Paths with an event in this settle: one with no file now is
        # waited for as if being written (removed, then written anew).
        touched: Set[str] = set()
        vcs_noted = False
        start = last = time.monotonic()
        states: Dict[str, Optional[Signature]] = {}
        while not (self.stopping or self.hup):
            if lost:
                now_states = {p: _signature(p) for p in self.files}
                if now_states != states:
                    states, last = now_states, time.monotonic()
                emptied = {p for p, sig in states.items()
                           if sig is not None and sig[1] == 0 and
                           (self.files[p] or (0, 0, 0))[1] > 0}
            # (The names first: they were read first.)
            for path, mask in names:
                if path not in self.files:
                    continue
                touched.add(path)
                last = time.monotonic()
                if mask & inotify.IN_CREATE:
                    if _is_made(path):
                        made.add(path)
                elif mask & inotify.DONE:
                    made.discard(path)
                    if not mask & inotify.IN_CLOSE_WRITE:
                        written.discard(path)  # another file there now
            for path, mask in files:
                if path in self.files:
                    touched.add(path)
                    last = time.monotonic()
                    if mask & inotify.IN_MODIFY:
                        written.add(path)
                    elif mask & inotify.DONE:
                        written.discard(path)
                        made.discard(path)
            if lost:
                # The directories' IN_CLOSE_WRITE will not be read: the
                # file's own watch, and its state, tell from now on.
                made.clear()
                touched.update(p for p, sig in states.items()
                               if sig is None and self.files[p])
            gone = {p for p in touched if not os.path.exists(p)}
            locks = {self.vcs_lock_of.get(os.path.dirname(p)) for p in touched}
            vcs = [lock for lock in locks if lock and _git_writing(lock)]
            now = time.monotonic()
            if vcs:
                last = now
                if not vcs_noted:
                    vcs_noted = True
                    log.info("Reloader: waiting for git to finish (%s)",
                             vcs[0])
            cap = start + (VCS_SETTLE_MAX if vcs else SETTLE_MAX)
            if vcs and now >= cap:
                log.warning("Reloader: git still holds %s after %gs; going "
                            "on", vcs[0], VCS_SETTLE_MAX)
            if now >= cap or \
                    (not (written or made or emptied or gone) and
                     now - last >= SETTLE):
                return
            self.pause(min(SETTLE / 2, cap - now))
            if lost:
                inotify.discard()
                files, _ = inotify.file_events()
                names = []
            else:
                files, names, lost = inotify.events()

    def settle_states(self) -> None:
        """Polling (no inotify): from a watched file's state found moved,
        wait until the states have stayed the same for SETTLE, with no
        file emptied or gone since it was last seen (an editor that
        writes in place truncates first; one that replaces may remove
        first), for at most SETTLE_MAX. Without it the once-a-second stat
        could restart the server on an empty module, and then again on
        the whole one."""
        start = last = time.monotonic()
        states: Optional[Dict[str, Optional[Signature]]] = None
        while not (self.stopping or self.hup):
            now_states = {p: _signature(p) for p in self.files}
            now = time.monotonic()
            if now_states != states:
                states, last = now_states, now
            unfinished = any(
                was is not None and (sig is None or
                                     (sig[1] == 0 and was[1] > 0))
                for was, sig in ((self.files[p], sig)
                                 for p, sig in states.items()))
            cap = start + SETTLE_MAX
            if now >= cap or (not unfinished and now - last >= SETTLE):
                return
            self.pause(min(SETTLE / 2, cap - now))

    def run(self) -> None:
        self.start_child()
        reported_exit = False
        while not self.stopping:
            self.wait(POLL_INTERVAL)
            if self.stopping:
                break
            if self.terminal_gone():
                log.info("Reloader: the terminal is gone, stopping")
                break
            self.take_list()
            self.warn_watches()
            code = self.child.poll() if self.child is not None else None
            if code is not None and not reported_exit:
                reported_exit = True
                log.error("Reloader: the server exited (%s); waiting for a "
                          "file to change", _status(code))
            if self.inotify is None and self.moved():
                self.settle_states()
            changed = self.changed()
            if changed and self.inotify is not None:
                # A state that moved with no event read yet: wait() ran
                # out as the edit began (a loaded machine: CI's 3.13t
                # side by side restarted on half a save, then again). The
                # edit's events are queued already (inotify queues them
                # in the call that made the change, before this stat saw
                # it), so its end is waited for as wait() would have.
                files, names, lost = self.inotify.events()
                if files or names or lost:
                    self.settle(self.inotify, files, names, lost)
                    changed = sorted(set(changed) | set(self.changed()))
            if self.hup:
                self.hup = False
                log.info("Reloader: SIGHUP, restarting")
                self.pending.clear()
                if self.restart():
                    break
                reported_exit = False
                continue
            if not changed:
                continue
            self.pending.update(changed)
            # Only Python is compiled first (a .toml config is not);
            # anything else wrong shows when the new server starts.
            python = sorted(p for p in self.pending if p.endswith(".py"))
            errors = [e for e in map(syntax_error, python) if e]
            if errors:
                for error in errors:
                    log.error("Reloader: SyntaxError in %s; the server keeps "
                              "running the previous code", error)
                continue
            log.info("Reloader: %s, restarting", self.describe_pending())
            self.pending.clear()
            if self.restart():
                break
            reported_exit = False

    def describe_pending(self) -> str:
        """"a.py changed, b.py removed": the pending files by what they
        are now (a file gone since is removed; one back again changed)."""
        gone = sorted(p for p in self.pending if self.files.get(p) is None)
        here = sorted(p for p in self.pending if self.files.get(p)
                      is not None)
        parts = []
        if here:
            parts.append("%s changed" % ", ".join(here))
        if gone:
            parts.append("%s removed" % ", ".join(gone))
        return ", ".join(parts)

    def restart(self) -> bool:
        """Stop the server and start a new one; True (and none started)
        when a SIGTERM or SIGINT came meanwhile. A SIGHUP that came
        meanwhile is this restart."""
        self.stop_child()
        if self.stopping:
            return True
        self.hup = False
        # The old server's lists go with it: it may have written one as
        # it drained (a lazy import in a request in flight), which the
        # first read would take for the new server's (C review s28).
        self.new_generation()
        self.new_server = True
        self.start_child()
        return False

    def cleanup(self) -> None:
        self.stop_child()
        if self.inotify is not None:
            self.inotify.close()
        # The lists, and what a process killed while writing one left.
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _status(code: int) -> str:
    if code < 0:
        try:
            return "killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "killed by signal %d" % -code
    return "exit status %d" % code


def run_parent(argv: Sequence[str], options: ServerOptions,
               cli: CliOptions) -> int:
    """Run the watching parent until SIGTERM/SIGINT; the exit status."""
    parent = _Parent(argv, options)

    def on_stop(signum: int, frame: Optional[FrameType]) -> None:
        parent.stopping = True

    def on_hup(signum: int, frame: Optional[FrameType]) -> None:
        parent.hup = True

    def on_usr1(signum: int, frame: Optional[FrameType]) -> None:
        child = parent.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGUSR1)

    old_wakeup = signal.set_wakeup_fd(parent.wake_w,
                                      warn_on_full_buffer=False)
    old: Dict[int, SignalHandler] = {}
    for signum, handler in ((signal.SIGTERM, on_stop),
                            (signal.SIGINT, on_stop),
                            (signal.SIGUSR1, on_usr1),
                            (signal.SIGHUP, on_hup)):
        previous = signal.signal(signum, handler)
        # python -m yimmo's StandIn stood for the default: given back as
        # that, and what it noted since the import is acted on.
        old[signum] = signal.SIG_DFL if _signals.is_default(previous) \
            else previous
        if _signals.take_over(signum, previous):
            handler(signum, None)
    try:
        parent.run()
    finally:
        parent.cleanup()
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_wakeup)
        os.close(parent.wake_r)
        os.close(parent.wake_w)
    return 0
