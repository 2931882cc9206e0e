"""The warm estimator process (`vramfit.dryrun.warm`): the same estimates as in this process, one server shared by
calls of any process, one per cache version, and every way it can fail a one-line error."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from gpt.config import GPTConfig
from vramfit.dryrun import warm
from vramfit.dryrun.estimate import EstimateRequest
from vramfit.dryrun.estimator import Estimator
from vramfit.errors import VramfitError
from vramfit.recipe import Recipe

TINY = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
pytestmark = pytest.mark.skipif(os.name != "posix", reason="the warm server listens on a Unix socket")


@pytest.fixture
def short_dir():
    """A cache folder with a short path (a socket path holds ~100 bytes; pytest's tmp_path under xdist is longer)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="vramfit-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _server_path() -> Path:
    """This cache's socket; skips where a socket path would be too long (a deep temporary folder)."""
    path = warm.socket_path()
    if path is None:
        pytest.skip("no Unix socket path under this temporary folder")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _sans_time(d: dict) -> dict:
    return {**d, "seconds": 0, "modes": {k: {**m, "seconds": 0} for k, m in d["modes"].items()}}


def test_warm_estimates_equal_this_process_and_one_server_serves_every_call():
    _server_path()
    reqs = [EstimateRequest(TINY, b, Recipe(dtype="bfloat16"), "cuda", (8, 6)) for b in (2, 3)]  # compiled
    with Estimator("process") as here:
        want = _sans_time(here.estimate(reqs[:1])[0].to_dict())
    got, pids = [], []
    for r in reqs:  # two estimators, as two commands would be: the second finds the first's server
        with Estimator("warm") as w:
            got.append(_sans_time(w.estimate([r])[0].to_dict()))
        pids.append(w.server_pid)
    assert got[0] == want and got[1]["peak_bytes"] > want["peak_bytes"]
    assert pids[0] == pids[1] and _alive(pids[0])
    with pytest.raises(VramfitError, match="flash attention cannot run"), Estimator("warm") as w:  # refused: said,
        w.estimate([EstimateRequest(TINY, 2, Recipe(dtype="float32", attn_kernel="flash"), "cuda")])
    assert w.server_pid == pids[0]  # and the server serves on


def test_one_server_per_version_and_none_where_switched_off(monkeypatch):
    path = _server_path()
    assert path.parent == warm.cache_root() and path.name.startswith("estimator-")
    monkeypatch.setenv("VRAMFIT_CUDA_VERSION", "12.1")  # an emulation setting: another version, another server
    assert warm.socket_path() not in (None, path)
    monkeypatch.setenv(warm.IDLE_ENV, "0")
    assert warm.socket_path() is None  # callers run a fresh child instead


FAKE = """
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
c, _ = s.accept()
c.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\\n")
%s
"""


@pytest.mark.parametrize("behaviour,msg", [("os.abort()", "estimator process died"),
                                           ("time.sleep(60)", "took more than 1 s")])
def test_a_server_that_dies_or_hangs_is_one_clean_error(monkeypatch, short_dir, behaviour, msg):
    monkeypatch.setenv("VRAMFIT_CACHE_DIR", str(short_dir))
    monkeypatch.setattr(warm, "SERVER", (sys.executable, "-c", FAKE % behaviour))
    _server_path()
    req = EstimateRequest(TINY, 1, target="cpu")
    with pytest.raises(VramfitError, match=msg), Estimator("warm", timeout=1) as w:
        w.estimate([req])
    deadline = time.monotonic() + 10
    while not _gone(w.server_pid) and time.monotonic() < deadline:  # a hung server is killed, a dead one gone
        time.sleep(0.05)
    assert w.server_pid and _gone(w.server_pid)


def _gone(pid: int) -> bool:
    """Exited (a zombie not yet reaped counts: the server's starter does not wait for it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def test_a_stale_socket_is_replaced_and_an_idle_server_exits(monkeypatch, short_dir):
    monkeypatch.setenv("VRAMFIT_CACHE_DIR", str(short_dir))
    monkeypatch.setenv(warm.IDLE_ENV, "1")
    path = _server_path()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket file that nobody listens on: a server that was killed
    stale.close()
    with Estimator("warm") as w:
        est = w.estimate([EstimateRequest(TINY, 1, target="cpu")])[0]
    assert est.peak_bytes > 0 and w.server_pid
    deadline = time.monotonic() + 20
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not path.exists()  # idle past 1 s: it exited and removed its socket
    assert warm.stop_all() == 0


def test_a_depth_sweep_at_one_batch_traces_that_batch_and_other_groups_trace_it_symbolically():
    """`pool.run_group`: the calibration design's pairs (depths at one batch size) trace that size (half the cost
    of a symbolic trace; the same bytes, `test_compiled`), a group of several batch sizes one symbolic trace."""
    from vramfit.dryrun import compiled
    from vramfit.dryrun.pool import run_group

    recipe = Recipe(dtype="bfloat16")
    deep = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    compiled._CACHE.clear()
    run_group([EstimateRequest(m, 4, recipe, "cuda", headline_only=True) for m in (TINY, deep)])
    assert {k[-1] for k in compiled._CACHE} == {4} and compiled.SYMBOLIC_BATCH
    compiled._CACHE.clear()
    run_group([EstimateRequest(TINY, b, recipe, "cuda", headline_only=True) for b in (4, 5)])
    assert len(compiled._CACHE) == 3 and 4 not in {k[-1] for k in compiled._CACHE}


def test_no_server_where_the_cache_directory_cannot_be_written(monkeypatch, short_dir):
    """A cache directory below a file: no server can start; the estimate runs in a fresh child all the same."""
    (short_dir / "file").write_text("")
    monkeypatch.setenv("VRAMFIT_CACHE_DIR", str(short_dir / "file" / "cache"))
    assert warm.socket_path() is not None  # a path it tries, and fails to create
    with Estimator("warm") as w:
        est = w.estimate([EstimateRequest(TINY, 1, target="cpu")])[0]
    assert est.peak_bytes > 0 and w.server_pid == 0


def test_a_server_refuses_a_socket_of_another_version(tmp_path):
    """Started for another version's socket (another checkout's source), the server exits at once, unbound."""
    import subprocess

    path = tmp_path / "estimator-0000000000000000.sock"
    r = subprocess.run([*warm.SERVER, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "version" in r.stderr and not path.exists()


def test_pool_workers_die_with_the_process_that_started_them(tmp_path):
    """A `suggest` killed mid-plan (SIGKILL: no atexit, no executor shutdown) leaves no estimator worker behind:
    each worker dies with its pool's process (`vramfit.child.die_with_parent`, PR_SET_PDEATHSIG on Linux)."""
    import signal
    import subprocess

    from gpt.files import pid_alive

    script = ("import os, sys; from vramfit.dryrun.pool import WarmWorkers\n"
              "w = WarmWorkers(2)\n"
              "pids = [w._pool(i).submit(os.getpid).result() for i in range(2)]\n"
              "print(*pids, flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)
