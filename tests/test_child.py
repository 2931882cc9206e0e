"""The one child-process JSON runner: request on stdin, records on stdout, exits, timeouts, the live registry."""

import subprocess
import sys
import threading
import time

import pytest

from vramfit.child import ChildResult, LiveChildren, run_json

PY = sys.executable


def test_the_request_arrives_as_json_and_records_come_back_in_order():
    script = ("import json, sys; req = json.load(sys.stdin); print('warming up'); "
              "[print(json.dumps({'i': i, 'x': req['x']})) for i in range(3)]; print('[1, 2]')")
    res = run_json([PY, "-c", script], {"x": "hello"}, timeout=60)
    assert res.ok and not res.timed_out
    assert res.records() == [{"i": 0, "x": "hello"}, {"i": 1, "x": "hello"}, {"i": 2, "x": "hello"}]
    assert res.last_record() is None  # the last line is JSON but not an object


def test_last_record_is_the_last_non_blank_line():
    res = run_json([PY, "-c", "print('{\"a\": 1}'); print('{\"a\": 2}'); print(); print('  ')"], None, timeout=60)
    assert res.last_record() == {"a": 2}
    assert ChildResult(0, "", "").last_record() is None


def test_exits_and_signals_in_words():
    res = run_json([PY, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(3)"], {}, timeout=60)
    assert not res.ok and res.returncode == 3
    assert res.exit_text() == "exit code 3" and res.signal_name() == ""
    assert res.last_stderr_line() == "oops" and res.stderr_tail(2) == "ps"
    res = run_json([PY, "-c", "import os; os.abort()"], {}, timeout=60)
    assert res.signal_name() == "SIGABRT" and res.exit_text() == "killed by SIGABRT"
    assert ChildResult(-99, "", "").signal_name() == "signal 99"


def test_a_hanging_child_is_killed_at_the_timeout_and_keeps_what_it_printed():
    script = "import sys, time; print('{\"started\": 1}', flush=True); print('tick', file=sys.stderr, flush=True); " \
             "time.sleep(60)"
    t0 = time.monotonic()
    res = run_json([PY, "-c", script], {}, timeout=2)
    assert time.monotonic() - t0 < 30
    assert res.timed_out and not res.ok and res.returncode < 0
    assert res.records() == [{"started": 1}] and res.stderr_tail(100) == "tick"


def test_the_environment_is_the_one_given():
    res = run_json([PY, "-c", "import os, json; print(json.dumps({'v': os.environ.get('VRAMFIT_CHILD_T')}))"], {},
                   timeout=60, env={"VRAMFIT_CHILD_T": "42", "PATH": "/usr/bin:/bin"})
    assert res.last_record() == {"v": "42"}


def test_live_children_are_registered_while_running_and_can_be_killed():
    live = LiveChildren()
    out: list[ChildResult] = []
    t = threading.Thread(target=lambda: out.append(run_json([PY, "-c", "import time; time.sleep(60)"], {}, 120,
                                                            live=live)))
    t.start()
    deadline = time.monotonic() + 30
    while not len(live) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(live) == 1
    live.kill_all()
    t.join(30)
    assert not t.is_alive()
    assert out[0].exit_text() == "killed by SIGKILL" and not out[0].timed_out
    assert len(live) == 0


def test_an_interrupt_while_waiting_leaves_no_child_behind(monkeypatch):
    procs: list[subprocess.Popen] = []

    def interrupted(self, *a, **k):  # noqa: ANN001
        procs.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_json([PY, "-c", "import time; time.sleep(60)"], {}, timeout=120)
    assert procs and procs[0].poll() is not None
