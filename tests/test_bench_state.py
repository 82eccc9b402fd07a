"""The benchmarks' cross-CPU probe and the choice of samples it drives
(bench/bench.py: cross_cpu_us, same_state; bench/matrix.py: compared,
left_out). On a VM the cost of moving data between the two CPUs changes
4x with the host's placement of them; the reports compare servers over the
samples taken in the same state (bench/README.md, "The machine's two
states")."""

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench  # noqa: E402
import matrix  # noqa: E402


def sample(cpu_us, xcpu_us):
    return bench.Sample(rps=1000.0, p99_ms=1.0, cpu_us=cpu_us, errors=0,
                        other_pct=0.0, xcpu_us=xcpu_us)


def test_probe_measures_a_handoff_in_bounded_time():
    started = time.monotonic()
    us = bench.cross_cpu_us(0.05)
    assert time.monotonic() - started < 5
    if not bench.can_pin():
        assert us == 0.0
        return
    # 64 KB copied in and out of shared memory: at least the two copies'
    # time (over 0.1 us even at 1 TB/s), and far below the probe's time.
    assert 0.1 < us < 50000
    # The probe leaves this process's CPUs as they were and no child.
    assert os.sched_getaffinity(0) >= {0, 1}
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_same_state_keeps_the_usual_state_for_every_server():
    by = {"a": [sample(20, 10), sample(35, 40), sample(21, 11)],
          "b": [sample(30, 9), sample(30, 12), sample(45, 38)]}
    kept = bench.same_state(by)
    # The lower quartile of the probes is 10 us: samples over 20 us are
    # left out.
    assert bench.xcpu_reference(s for ss in by.values() for s in ss) == 10
    assert [s.cpu_us for s in kept["a"]] == [20, 21]
    assert [s.cpu_us for s in kept["b"]] == [30, 30]
    assert bench.left_out(by, kept) == [
        "left out (cross-CPU probe over 2x the run's lower quartile, "
        "10.0 us): a 1 of 3, b 1 of 3"]
    # With the run's reference given instead.
    assert bench.same_state(by, 40) == by


def test_same_state_cuts_between_the_states_at_an_even_split():
    """Half the samples in each state: a median would fall between them
    and keep the slow ones; the lower quartile does not."""
    by = {"a": [sample(20, 10), sample(36, 40), sample(21, 11),
                sample(37, 42)],
          "b": [sample(30, 9), sample(46, 44), sample(31, 12),
                sample(45, 38)]}
    kept = bench.same_state(by)
    assert [s.cpu_us for s in kept["a"]] == [20, 21]
    assert [s.cpu_us for s in kept["b"]] == [30, 31]


def test_same_state_keeps_everything_when_a_server_would_have_nothing():
    by = {"a": [sample(20, 10), sample(21, 10), sample(22, 10),
                sample(22, 10)],
          "b": [sample(30, 40)]}
    assert bench.same_state(by) is by
    # ... and says so.
    notes = bench.left_out(by, by)
    assert len(notes) == 1
    assert "all samples compared" in notes[0] and "as b had none" in \
        notes[0] and "b 1 of 1" in notes[0]
    # Samples without a probe (not pinned, a failed probe, an older JSON)
    # are kept.
    plain = {"a": [sample(20, 0.0)], "b": [sample(30, 0.0)]}
    assert bench.same_state(plain) is plain
    old = {"a": [{"cpu_us": 20.0}], "b": [{"cpu_us": 30.0}]}
    assert bench.same_state(old) is old
    mixed = {"a": [sample(20, 10), sample(36, 40)], "b": [sample(30, 0.0)]}
    kept = bench.same_state(mixed)
    assert [s.cpu_us for s in kept["a"]] == [20]
    assert [s.cpu_us for s in kept["b"]] == [30]
    assert bench.left_out(mixed, kept)[0].endswith(": a 1 of 2")


def test_matrix_tables_compare_the_same_state():
    row = next(r for r in matrix.ROWS if r.name == "chunks64k")
    hello = next(r for r in matrix.ROWS if r.name == "hello")
    file_row = next(r for r in matrix.ROWS if r.name == "file10m")

    def d(cpu_us, xcpu_us):
        s = sample(cpu_us, xcpu_us)._asdict()
        s.update(rss_peak_kb=1000, p50_ms=0.5)
        return s
    results = {
        "chunks64k": {"yimmo": [d(20, 10), d(36, 40), d(21, 10)],
                      "granian": [d(30, 10), d(31, 11), d(50, 45)]},
        # The reference (10 us) is over every row: this row's probes all
        # count.
        "hello": {"yimmo": [d(8, 9), d(8, 10)],
                  "granian": [d(12, 10), d(12, 12)]},
        # nginx, the ceiling, only ever in the slow state: the others are
        # still compared in the usual one.
        "file10m": {"yimmo": [d(200, 10), d(400, 40)],
                    "granian": [d(300, 10), d(300, 40)],
                    "nginx": [d(100, 40), d(100, 40)]},
    }
    assert [s["cpu_us"] for s in
            matrix.compared(results, row)["yimmo"]] == [20, 21]
    assert len(matrix.compared(results, hello)["granian"]) == 2
    in_file = matrix.compared(results, file_row)
    assert [s["cpu_us"] for s in in_file["yimmo"]] == [200]
    assert len(in_file["nginx"]) == 2
    table = matrix.ratios(results, [row, file_row])
    # 20.5 against 30.5 us: the slow-state samples do not move the ratio.
    assert "| 64 KB as 4 x 16 KB | 0.67x | granian |" in table
    assert "| 0.67x | granian |" in table.split("\n")[-1]
    notes = matrix.left_out(results, [row, hello])
    assert len(notes) == 1
    assert "yimmo 1 of 3" in notes[0] and "granian 1 of 3" in notes[0]


def test_probe_without_a_reader_ends(monkeypatch):
    """A reader that never runs (here: it exits at once) costs the probe
    a bounded wait and no measure, not a hang."""
    if not bench.can_pin():
        pytest.skip("needs CPUs 0 and 1 and taskset")
    real_affinity = os.sched_setaffinity
    parent = os.getpid()

    def affinity(pid, cpus):
        if os.getpid() != parent:
            os._exit(3)
        real_affinity(pid, cpus)
    monkeypatch.setattr(os, "sched_setaffinity", affinity)
    started = time.monotonic()
    assert bench.cross_cpu_us(0.05) == 0.0
    assert time.monotonic() - started < 5


PROBE_UNDER_SIGTERM = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import bench
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
print(os.getpid(), flush=True)
try:
    bench.cross_cpu_us(2)
finally:
    print("affinity", sorted(os.sched_getaffinity(0)), flush=True)
"""


def test_probe_ends_with_its_reader_on_sigterm():
    """matrix.py turns SIGTERM into SystemExit: a SIGTERM during a probe
    takes effect as the probe ends (here 2 s; 0.2 s in the benchmarks),
    with its reader stopped and the process's CPUs as they were."""
    import subprocess
    if not bench.can_pin():
        pytest.skip("needs CPUs 0 and 1 and taskset")
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE_UNDER_SIGTERM, str(bench.BENCH_DIR)],
        stdout=subprocess.PIPE, universal_newlines=True)
    try:
        pid = int(proc.stdout.readline())
        reader = None
        deadline = time.monotonic() + 10
        while reader is None and time.monotonic() < deadline:
            try:
                with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                    kids = f.read().split()
            except OSError:
                kids = []
            reader = int(kids[0]) if kids else None
            time.sleep(0.05)
        assert reader is not None
        time.sleep(0.3)  # well inside the 2 s probe
        started = time.monotonic()
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        assert time.monotonic() - started < 5
        assert proc.returncode == 143
        # The handler ran as the probe ended, after its cleanup.
        assert out.strip() == "affinity %s" % sorted(os.sched_getaffinity(0))
        assert not os.path.exists("/proc/%d" % reader) or \
            "Z" in open("/proc/%d/stat" % reader).read().split(")")[1][:3]
    finally:
        proc.kill()
        proc.wait()
