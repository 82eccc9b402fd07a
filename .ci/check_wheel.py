"""Check what a built yimmo wheel holds, against the source tree.

    python check_wheel.py WHEEL SOURCE_DIR [--repaired]

A wheel holds the package's modules (every SOURCE_DIR/yimmo/*.py), its
typing files (py.typed and every *.pyi; py.typed and _yimmo.pyi always,
so a package that lost them fails here too), exactly one
compiled extension (yimmo/_yimmo.*.so) and the dist-info; with --repaired,
also exactly one bundled libev (yimmo.libs/libev-HASH.so.*, auditwheel's
copy), its license (LICENSE-libev) and nothing else bundled. Anything else
(a header, a C file, a test, a benchmark, a build artefact) fails the
check, named.
"""

import argparse
import os
import re
import sys
import zipfile


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("wheel")
    parser.add_argument("source")
    parser.add_argument("--repaired", action="store_true")
    args = parser.parse_args()

    name, version = os.path.basename(args.wheel).split("-")[:2]
    with zipfile.ZipFile(args.wheel) as wheel:
        names = [n for n in wheel.namelist() if not n.endswith("/")]

    pkg = os.path.join(args.source, "yimmo")
    expected = {"yimmo/" + f for f in os.listdir(pkg)
                if f.endswith((".py", ".pyi")) or f == "py.typed"}
    # The typed API (PEP 561): the marker and the C extension's stub.
    expected |= {"yimmo/py.typed", "yimmo/_yimmo.pyi"}
    dist_info = re.escape("%s-%s.dist-info/" % (name, version))
    allowed = [
        r"yimmo/[A-Za-z_][A-Za-z0-9_]*\.pyi?",
        r"yimmo/py\.typed",
        r"yimmo/_yimmo\.[A-Za-z0-9_.-]+\.so",
        dist_info + r"(METADATA|WHEEL|RECORD|entry_points\.txt"
                    r"|top_level\.txt|licenses/LICENSE[^/]*"
                    r"|sboms/[^/]+\.json)",
    ]
    if args.repaired:
        allowed.append(r"yimmo\.libs/libev-[0-9a-f]+\.so[.0-9]*")

    problems = []
    for n in names:
        if not any(re.fullmatch(p, n) for p in allowed):
            problems.append("does not belong in the wheel: " + n)
    for n in sorted(expected - set(names)):
        problems.append("missing from the wheel: " + n)
    for n in sorted(n for n in names if n.startswith("yimmo/")
                    and n.endswith((".py", ".pyi", ".typed"))
                    and n not in expected):
        problems.append("not in the source tree: " + n)
    exts = [n for n in names
            if n.startswith("yimmo/_yimmo.") and n.endswith(".so")]
    if len(exts) != 1:
        problems.append("expected one compiled extension, got %r" % exts)
    if args.repaired:
        libev = [n for n in names if n.startswith("yimmo.libs/")]
        if len(libev) != 1:
            problems.append("expected one bundled libev, got %r" % libev)
        notice = "%s-%s.dist-info/licenses/LICENSE-libev" % (name, version)
        if notice not in names:
            problems.append("libev's license is missing: " + notice)

    for n in names:
        print("  " + n)
    if problems:
        for p in problems:
            print("check_wheel: " + p, file=sys.stderr)
        sys.exit(1)
    print("check_wheel: %s: %d files, as expected"
          % (os.path.basename(args.wheel), len(names)))


if __name__ == "__main__":
    main()
