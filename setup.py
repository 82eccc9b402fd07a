"""Build script for the C extension yimmo._yimmo.

Project metadata lives in pyproject.toml; this file only describes the
extension: its sources (every ext/*.c), where libev is, and the compiler
flags. Environment switches:

    YIMMO_WERROR=1     treat warnings as errors (CI does this)
    YIMMO_SANITIZE=1   build with AddressSanitizer + UBSan
    YIMMO_SANITIZE=thread
                       build with ThreadSanitizer (for a TSan interpreter:
                       .ci/tsan)
    YIMMO_FAULT_INJECTION=1
                       build the allocation fault injector in (ext/alloc.h;
                       tests/test_fault_injection.py): never for production
    LIBEV_PREFIX=DIR   look for DIR/include/ev.h and DIR/lib/libev.*
"""

import os
import shlex
import shutil
import subprocess
import sys
from glob import glob

import setuptools
from setuptools import Extension, setup

LIBEV_MISSING = (
    "yimmo: libev headers (ev.h) not found. Install them: Debian/Ubuntu "
    "`apt-get install libev-dev`, Fedora `dnf install libev-devel`, "
    "Homebrew `brew install libev`; or set LIBEV_PREFIX."
)

# Commands that compile the extension. Others (egg_info, sdist, --version,
# clean, ...) must work on a machine without libev, e.g. to cut an sdist.
BUILD_COMMANDS = {
    "build", "build_ext", "install", "develop", "bdist", "bdist_wheel",
    "bdist_egg", "editable_wheel",
}

# The compiler searches these already and treats them as system headers, so
# ev.h in them never warns; giving them again with -isystem would reorder the
# default search path.
DEFAULT_INCLUDE_DIRS = {"/usr/include", "/usr/local/include"}


class Libev:
    """Where libev is: include/library dirs and extra flags."""

    def __init__(self, include_dirs=(), library_dirs=(), libraries=("ev",),
                 extra_link_args=()):
        self.include_dirs = list(include_dirs)
        self.library_dirs = list(library_dirs)
        self.libraries = list(libraries)
        self.extra_link_args = list(extra_link_args)

    def isystem_args(self):
        """-isystem flags for the include dirs.

        libev's ev.h macros (ev_init, ev_timer_set) trip -Wstrict-aliasing
        under -Wall -O2; as a system header its warnings are not reported,
        so -Werror stays usable for our own code.
        """
        args = []
        for d in self.include_dirs:
            if os.path.normpath(d) not in DEFAULT_INCLUDE_DIRS:
                args += ["-isystem", d]
        return args


def libev_from_pkg_config():
    """Ask pkg-config about libev; None if it is absent or does not know."""
    if shutil.which("pkg-config") is None:
        return None
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "libev"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            universal_newlines=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    libev = Libev(libraries=())
    for arg in shlex.split(out):
        if arg.startswith("-I"):
            libev.include_dirs.append(arg[2:])
        elif arg.startswith("-L"):
            libev.library_dirs.append(arg[2:])
        elif arg.startswith("-l"):
            libev.libraries.append(arg[2:])
        else:
            libev.extra_link_args.append(arg)
    if not libev.libraries:
        libev.libraries.append("ev")
    # pkg-config omits -I for the default include dirs; check ev.h is there.
    if not any(os.path.isfile(os.path.join(d, "ev.h"))
               for d in libev.include_dirs + sorted(DEFAULT_INCLUDE_DIRS)):
        return None
    return libev


def libev_from_prefixes():
    """Look for PREFIX/include/ev.h in the usual places."""
    prefixes = []
    if os.environ.get("LIBEV_PREFIX"):
        prefixes.append(os.environ["LIBEV_PREFIX"])
    prefixes += ["/usr", "/usr/local", "/opt/homebrew", "/opt/local"]
    for prefix in prefixes:
        # PREFIX/include/libev/ev.h: Fedora and RHEL's libev-devel (whose
        # pkg-config file says so too, when pkg-config is there).
        for include in (os.path.join(prefix, "include"),
                        os.path.join(prefix, "include", "libev")):
            if not os.path.isfile(os.path.join(include, "ev.h")):
                continue
            libdirs = [d for d in (os.path.join(prefix, "lib"),
                                   os.path.join(prefix, "lib64"))
                       if os.path.isdir(d)]
            if os.path.normpath(prefix) in ("/usr", "/usr/local"):
                libdirs = []  # the linker searches these already
            return Libev([include], libdirs)
    return None


def find_libev():
    # An explicit LIBEV_PREFIX wins over whatever pkg-config says.
    if os.environ.get("LIBEV_PREFIX"):
        return libev_from_prefixes()
    return libev_from_pkg_config() or libev_from_prefixes()


def is_build(argv):
    return any(arg in BUILD_COMMANDS for arg in argv[1:])


def compile_args():
    # PyMODINIT_FUNC marks PyInit__yimmo visible, so hidden is safe; it keeps
    # the ymo_* symbols from clashing with other extensions in the process.
    # No -D_GNU_SOURCE: pyconfig.h defines it (unguarded on 3.9, so a
    # command-line definition would be a redefinition under -Werror); the
    # plain C files that need it define it themselves, as 1, like pyconfig.
    args = ["-std=gnu11", "-Wall", "-Wextra", "-g", "-fvisibility=hidden"]
    if os.environ.get("YIMMO_SANITIZE") in ("1", "thread"):
        args += sanitize_args()
    else:
        args.append("-O2")
    if os.environ.get("YIMMO_WERROR") == "1":
        args.append("-Werror")
    if os.environ.get("YIMMO_FAULT_INJECTION") == "1":
        args.append("-DYMO_FAULT_INJECTION")
    return args


def sanitize_args():
    if os.environ.get("YIMMO_SANITIZE") == "thread":
        return ["-fsanitize=thread", "-fno-omit-frame-pointer", "-O1"]
    return ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]


def link_args():
    if os.environ.get("YIMMO_SANITIZE") in ("1", "thread"):
        return sanitize_args()
    return []


def make_extension(libev):
    return Extension(
        "yimmo._yimmo",
        sources=sorted(glob("ext/*.c")),
        depends=sorted(glob("ext/*.h")),
        include_dirs=["ext"],
        library_dirs=libev.library_dirs,
        libraries=libev.libraries + ["pthread"],
        extra_compile_args=libev.isystem_args() + compile_args(),
        extra_link_args=libev.extra_link_args + link_args(),
    )


def license_args():
    """The license, dynamic in pyproject.toml (see the comment there).

    setuptools >= 77 writes it as a PEP 639 License-Expression; older ones
    (an in-place build in a venv that has setuptools 61-76) take the old
    free-text field. Distributions come from pip or `python -m build`,
    whose isolated builds get setuptools >= 77 (pyproject's build-system).
    """
    # yimmo is MIT. The binary wheels also carry libev (auditwheel copies
    # it in), whose BSD license asks for its notice to go with them:
    # LICENSE-libev, and its terms in the expression, as projects that
    # vendor libraries do for all their distributions alike.
    expression = "MIT AND (BSD-2-Clause OR GPL-2.0-or-later)"
    files = ["LICENSE", "LICENSE-libev"]
    if int(setuptools.__version__.split(".")[0]) >= 77:
        return {"license_expression": expression, "license_files": files}
    return {"license": expression, "license_files": files}


def main():
    libev = find_libev()
    if libev is None:
        if is_build(sys.argv):
            print(LIBEV_MISSING, file=sys.stderr)
            sys.exit(1)
        libev = Libev()  # metadata-only command: nothing gets compiled
    setup(ext_modules=[make_extension(libev)], **license_args())


main()
