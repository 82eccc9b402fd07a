"""Build and run the C tests of the HTTP parser (tests/parser/test_parser.c),
of the PROXY protocol parser (tests/proxy/test_proxy_protocol.c), of the
Forwarded parser and trust table (tests/proxy/test_forwarded.c),
of the hand-off queue (tests/queue/test_queue.c; tests/queue/
tsan_handoff.c under ThreadSanitizer) and of the spare response buckets
(tests/queue/test_spares.c).

The parser is plain C, so its tests are a C program: it is compiled with
ASan and UBSan into a temporary directory and must report no failures.
"""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXT = os.path.join(ROOT, "ext")
PARSER = os.path.join(EXT, "http_parser.c")
TEST = os.path.join(ROOT, "tests", "parser", "test_parser.c")
WARNINGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror"]
TIMEOUT = 300


def _compile(cc, args, tmp_path):
    try:
        proc = subprocess.run([cc, *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("%s timed out" % cc)
    assert proc.returncode == 0, "%s failed:\n%s%s" % (
        " ".join([cc, *args]), proc.stdout, proc.stderr)


def test_parser_c(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "test_parser")
    _compile("gcc", [*WARNINGS, "-g", "-O1", "-fsanitize=address,undefined",
                     "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                     "-I", EXT, TEST, PARSER, "-o", exe], tmp_path)
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    try:
        proc = subprocess.run([exe], cwd=tmp_path, capture_output=True,
                              text=True, errors="replace", env=env,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("test_parser timed out after %d s" % TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed"), output


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_parser_compiles_cleanly(cc, tmp_path):
    """The optimised build (what the extension uses) has no warnings."""
    if shutil.which(cc) is None:
        pytest.skip("%s is not installed" % cc)
    _compile(cc, [*WARNINGS, "-O2", "-c", PARSER, "-o",
                  str(tmp_path / "http_parser.o")], tmp_path)


QUEUE = os.path.join(EXT, "queue.c")
QUEUE_TEST = os.path.join(ROOT, "tests", "queue", "test_queue.c")


def test_queue_push_never_allocates_or_fails(tmp_path):
    """The loop <-> worker hand-off cannot lose an exchange to a failed
    allocation: past the pool, an exchange's own node is used (issue 6)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "test_queue")
    _compile("gcc", [*WARNINGS, "-g", "-O1",
                     "-fsanitize=address,undefined",
                     "-fno-sanitize-recover=all", "-I", EXT, QUEUE_TEST,
                     QUEUE, "-Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc",
                     "-o", exe], tmp_path)
    proc = subprocess.run([exe], cwd=tmp_path, capture_output=True,
                          text=True, errors="replace", timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert proc.stdout.strip().splitlines()[-1].endswith(" 0 failed"), output


HANDOFF_TEST = os.path.join(ROOT, "tests", "queue", "tsan_handoff.c")


def _tsan_env():
    # Not what the suite itself runs under: an ASan run preloads libasan
    # into every child, and a TSan program dies of it at once (SIGSEGV).
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS",
                        "LSAN_OPTIONS", "PYTHONMALLOC")}
    env["TSAN_OPTIONS"] = "exitcode=66"
    return env


def test_queue_handoff_under_thread_sanitizer(tmp_path):
    """Two million exchanges through loop -> 4 workers (with stealing) ->
    loop, on the real queue.c with wsgi_worker.c's locking protocol, under
    ThreadSanitizer: each comes back once with its work done, and TSan
    reports nothing (it exits 66 when it does)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "tsan_handoff")
    _compile("gcc", [*WARNINGS, "-g", "-O1", "-fsanitize=thread", "-I", EXT,
                     HANDOFF_TEST, QUEUE, "-lpthread", "-o", exe], tmp_path)
    proc = subprocess.run([exe, "2000000", "4"], cwd=tmp_path,
                          capture_output=True, text=True, errors="replace",
                          timeout=TIMEOUT,
                          env=_tsan_env())
    output = proc.stdout + proc.stderr
    assert "ThreadSanitizer" not in output, output
    assert proc.returncode == 0, output
    assert proc.stdout.strip() == "ok 2000000", output


def _run_sanitized(exe, tmp_path):
    """Run a C test built with ASan (its own runtime: no LD_PRELOAD of
    Python's, leak check on) to "... 0 failed" and exit status 0."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    proc = subprocess.run([exe], cwd=tmp_path, capture_output=True,
                          text=True, errors="replace", env=env,
                          timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert proc.stdout.strip().splitlines()[-1].endswith(" 0 failed"), output


SPARES_TEST = os.path.join(ROOT, "tests", "queue", "test_spares.c")


def test_spare_buckets_c(tmp_path):
    """The response buckets kept for reuse (ext/bucket.c, ymo_spares_t):
    reset when reused, at most `max` kept, freed after the drain, and a
    fork taken while another thread holds their lock neither waits for it
    nor uses the parent's set (the review of 3d6b78e: a child the app
    forked hung in its next bucket). Under ASan and UBSan, whose leak check
    sees a bucket lost past `max`."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "test_spares")
    _compile("gcc", [*WARNINGS, "-g", "-O1", "-fsanitize=address,undefined",
                     "-fno-sanitize-recover=all", "-I", EXT, SPARES_TEST,
                     os.path.join(EXT, "bucket.c"), "-lpthread", "-o", exe],
             tmp_path)
    _run_sanitized(exe, tmp_path)


ASCII_TEST = os.path.join(ROOT, "tests", "ascii", "test_ascii.c")


def test_ascii_checks_c(tmp_path):
    """ext/ascii.h's eight-at-a-time checks of response field names and
    values (start_response's fast path) against their byte-by-byte
    definitions: every byte at every position of every length to 40, each
    input in a block of its own length, under ASan and UBSan."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "test_ascii")
    _compile("gcc", [*WARNINGS, "-g", "-O1", "-fsanitize=address,undefined",
                     "-fno-sanitize-recover=all", "-I", EXT, ASCII_TEST,
                     "-o", exe], tmp_path)
    _run_sanitized(exe, tmp_path)


PROXY = os.path.join(EXT, "proxy_protocol.c")
PROXY_TEST = os.path.join(ROOT, "tests", "proxy", "test_proxy_protocol.c")


def test_proxy_protocol_c(tmp_path):
    """The PROXY protocol parser (v1 and v2), driven directly with every
    input and each of its prefixes against a guard page, under ASan and
    UBSan."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "test_proxy_protocol")
    _compile("gcc", [*WARNINGS, "-g", "-O1", "-fsanitize=address,undefined",
                     "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                     "-I", EXT, PROXY_TEST, PROXY, "-o", exe], tmp_path)
    proc = subprocess.run([exe], cwd=tmp_path, capture_output=True,
                          text=True, errors="replace", timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert proc.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed"), \
        output


FORWARDED_TEST = os.path.join(ROOT, "tests", "proxy", "test_forwarded.c")


def test_forwarded_c(tmp_path):
    """The Forwarded parser (a malformed value leaves its output cleared)
    and the trust table (IPv4-mapped networks), against a guard page,
    under ASan and UBSan."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "test_forwarded")
    _compile("gcc", [*WARNINGS, "-g", "-O1", "-fsanitize=address,undefined",
                     "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                     "-I", EXT, FORWARDED_TEST,
                     os.path.join(EXT, "forwarded.c"),
                     os.path.join(EXT, "trust.c"), "-o", exe], tmp_path)
    proc = subprocess.run([exe], cwd=tmp_path, capture_output=True,
                          text=True, errors="replace", timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert proc.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed"), \
        output


def test_case_insensitive_compares_are_with_lower_case_literals():
    # ext/ascii.h folds only the text it is given: a literal with an
    # upper-case letter would never match, silently (the field it names
    # would go unrecognised: a singleton let through twice, a framing
    # field missed). Every literal given to those compares is lower case.
    import glob
    import re

    call = re.compile(r"\b(?:YMO_ASCII_IS|ymo_ascii_ieq|IEQ|ieq|IS_NAME)"
                      r"\s*\(([^;{}]*?)\)\s*(?:[);&|{]|\?|$)", re.M)
    seen = 0
    for path in glob.glob(os.path.join(EXT, "*.[ch]")):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for args in call.findall(source):
            for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', args):
                seen += 1
                assert lit == lit.lower(), "%s: %r" % (
                    os.path.basename(path), lit)
    assert seen >= 40  # the parser's field names alone are 26
