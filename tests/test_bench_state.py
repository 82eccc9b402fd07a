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
    # The median probe is 11.5: samples over 23 us are left out.
    assert [s.cpu_us for s in kept["a"]] == [20, 21]
    assert [s.cpu_us for s in kept["b"]] == [30, 30]
    # With the run's median given instead.
    kept = bench.same_state(by, 40)
    assert kept == by


def test_same_state_keeps_everything_when_a_server_would_have_nothing():
    by = {"a": [sample(20, 10), sample(21, 10), sample(22, 10)],
          "b": [sample(30, 40)]}
    assert bench.same_state(by) is by
    # Samples without a probe (not pinned, or an older JSON) are all kept.
    plain = {"a": [sample(20, 0.0)], "b": [sample(30, 0.0)]}
    assert bench.same_state(plain) is plain
    old = {"a": [{"cpu_us": 20.0}], "b": [{"cpu_us": 30.0}]}
    assert bench.same_state(old) is old


def test_matrix_tables_compare_the_same_state():
    row = next(r for r in matrix.ROWS if r.name == "chunks64k")
    hello = next(r for r in matrix.ROWS if r.name == "hello")

    def d(cpu_us, xcpu_us):
        s = sample(cpu_us, xcpu_us)._asdict()
        s.update(rss_peak_kb=1000, p50_ms=0.5)
        return s
    results = {
        "chunks64k": {"yimmo": [d(20, 10), d(36, 40), d(21, 10)],
                      "granian": [d(30, 10), d(31, 11), d(50, 45)]},
        # The run's median (10.5 us) is over every row: this row's probes
        # all count.
        "hello": {"yimmo": [d(8, 9), d(8, 10)],
                  "granian": [d(12, 10), d(12, 12)]},
    }
    assert [s["cpu_us"] for s in
            matrix.compared(results, row)["yimmo"]] == [20, 21]
    assert len(matrix.compared(results, hello)["granian"]) == 2
    table = matrix.ratios(results, [row])
    # 20.5 against 30.5 us: the slow-state samples do not move the ratio.
    assert "| 0.67x | granian |" in table
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
