"""The I/O loop's thread runs as SCHED_BATCH while it serves (its wake-ups
do not preempt a worker holding the CPU, see ymo_server_run): only while
it serves, only from the default policy, and never passed on to the
workers or to threads the app starts."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"),
                                reason="Linux scheduling policies")

SCRIPT = textwrap.dedent('''
    import os, threading, time, urllib.request, yimmo

    main_tid = threading.get_native_id()
    seen = {}

    def app(environ, start_response):
        seen["worker"] = os.sched_getscheduler(0)
        t = threading.Thread(
            target=lambda: seen.__setitem__("app_thread",
                                            os.sched_getscheduler(0)))
        t.start()
        t.join()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=2)
    seen["before"] = os.sched_getscheduler(0)

    def client():
        deadline = time.monotonic() + 10
        while server.address is None and time.monotonic() < deadline:
            time.sleep(0.01)
        host, port = server.address[:2]
        with urllib.request.urlopen("http://%s:%d/" % (host, port),
                                    timeout=10) as r:
            assert r.read() == b"ok"
        seen["loop"] = os.sched_getscheduler(main_tid)
        server.stop()

    threading.Thread(target=client).start()
    server.serve_forever()         # the loop runs on this (main) thread
    seen["after"] = os.sched_getscheduler(0)
    names = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch",
             os.SCHED_IDLE: "idle"}
    print(" ".join("%s=%s" % (k, names.get(v, v))
                   for k, v in sorted(seen.items())))
''')


def run(tmp_path, prefix=()):
    script = tmp_path / "sched_app.py"
    script.write_text(SCRIPT)
    out = subprocess.run(list(prefix) + [sys.executable, str(script)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(kv.split("=") for kv in out.stdout.split())


def test_loop_thread_is_batch_while_serving_and_restored(tmp_path):
    seen = run(tmp_path)
    assert seen == {"before": "other", "loop": "batch", "after": "other",
                    "worker": "other", "app_thread": "other"}


def test_a_policy_the_user_chose_is_left_alone(tmp_path):
    # SCHED_IDLE needs no privilege; chrt sets it for the whole process.
    if subprocess.run(["chrt", "--help"], capture_output=True).returncode:
        pytest.skip("no chrt")
    seen = run(tmp_path, ["chrt", "--idle", "0"])
    assert seen["before"] == seen["loop"] == seen["after"] == "idle"
