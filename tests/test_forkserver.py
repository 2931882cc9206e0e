"""The sweep's fork server: a forked point's record is the spawned worker's, crashes and hangs become rows, and no
worker outlives its sweep (issue 17; issue 15 item 6)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vramfit.child import PARENT_ENV, die_with_parent
from vramfit.errors import VramfitError
from vramfit.measure.devices import resolve
from vramfit.recipe import Recipe
from vramfit.store import device_key
from vramfit.sweep.executors import Job, LocalExecutor
from vramfit.sweep.forkserver import fork_available
from vramfit.sweep.grid import Measure
from vramfit.sweep.orphans import orphan_workers, wait_for_orphans
from vramfit.sweep.pool import DRIVER_ENV, OWNER_ENV, WorkerPool, point_spec, worker_env

ROOT = Path(__file__).resolve().parents[1]
LINUX = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
FORK = pytest.mark.skipif(not fork_available()[0], reason="no fork server here")
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 256}
MEASURE = Measure(min_iters=4, max_iters=12, window=3, tolerance=0.005, timeout_s=120, threads=1)
RSS_TOLERANCE = 0.03  # as the Ray executor's readings against the local ones (tests/test_ray.py)


QUICK = {"n_layer": 1, "n_head": 2, "n_embd": 128, "block_size": 128, "vocab_size": 2048}  # the quick grid's first


def _spec(batch: int, shape: dict = TINY) -> tuple[dict, dict]:
    d = resolve("cpu", None)[0]
    r = d.resolve(Recipe())
    return point_spec({**shape, "batch_size": batch}, r, d, MEASURE, None), worker_env(d, r, MEASURE)


@FORK
def test_a_forked_point_records_what_a_spawned_worker_records():
    spec, env = _spec(8, QUICK)
    spawned = WorkerPool(fork=False).run(spec, env, 120)
    d = resolve("cpu", None)[0]
    ex = LocalExecutor()
    assert ex.pool.fork
    job = Job(spec["point"], device_key(d.to_dict()), spec)
    try:  # two batches of one point, as the adaptive plan measures: the second forked from the same zygote
        forked = [next(ev.record for ev in ex.run([job], [d], [d.resolve(Recipe())], MEASURE) if ev.kind == "done")
                  for _ in range(2)]
        servers = list(ex.pool._servers.values())
        assert len(servers) == 1 and servers[0].alive
    finally:
        ex.close()
    assert spawned["worker"] == "spawn" and spawned["status"] == "ok"
    for rec in forked:
        assert rec["worker"] == "fork" and rec["status"] == "ok" and rec["fork_mallopt"] is True
        assert rec["tracked_bytes"] == spawned["tracked_bytes"]  # byte-identical
        assert abs(rec["rss_bytes"] - spawned["rss_bytes"]) <= RSS_TOLERANCE * spawned["rss_bytes"]
        same = {"pid", "timings", "worker", "fork_mallopt", "ms_per_iter", "tokens_per_s", "rss_bytes"}
        assert {k: v for k, v in rec.items() if k not in same} == \
               {k: v for k, v in spawned.items() if k not in same}
        assert rec["timings"]["import"] < 0.1 * spawned["timings"]["import"]  # the zygote imported (ratio: load-proof)
    assert forked[0]["pid"] != forked[1]["pid"]  # a fresh process per point


FAKE_ZYGOTE = textwrap.dedent("""
    import json, os, sys, time
    from vramfit.measure import worker, zygote
    real = worker.main
    def main(argv):
        b = json.loads(argv[0])["point"]["batch_size"]
        if b == 2:
            os.abort()
        if b == 3:
            time.sleep(60)
        if b == 4:
            sys.stderr.write("Traceback: something broke\\n")
            sys.stderr.flush()
            os._exit(3)
        if b == 5:
            os.kill(os.getppid(), 9)  # the zygote itself dies
            time.sleep(60)
        return real(argv)
    worker.main = main
    zygote.main()
    sys.stdout.flush()
    os._exit(0)
""")


@FORK
def test_crashed_hung_and_failing_children_become_rows_and_a_dead_zygote_is_replaced():
    with WorkerPool(zygote_cmd=[sys.executable, "-c", FAKE_ZYGOTE]) as pool:
        recs = {b: pool.run(*_spec(b), timeout=5) for b in (1, 2, 3, 4, 5, 6)}
    assert recs[1]["status"] == "ok" and recs[1]["worker"] == "fork"
    assert recs[2]["status"] == "error" and "killed by SIGABRT" in recs[2]["error"]
    assert recs[3]["status"] == "timeout" and "timed out after 5 s" in recs[3]["error"]
    assert recs[4]["status"] == "error" and "exit code 3" in recs[4]["error"] and "something broke" in recs[4]["error"]
    assert recs[5]["status"] == "error" and "fork server died" in recs[5]["error"]
    assert recs[6]["status"] == "ok" and recs[6]["batch_size"] == 6  # a new zygote took over


def _tagged(db: Path) -> list[int]:
    """Processes whose environment says they work for a sweep of `db` (any sweep, dead or alive)."""
    want = f"{OWNER_ENV}={db.resolve()}".encode()
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and want in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


@LINUX
@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_a_killed_sweep_leaves_no_worker(tmp_path, mode):
    db = tmp_path / "db.sqlite"
    args = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--vocab-size", "256"]
    env = {**os.environ, "VRAMFIT_WORKERS": mode}
    proc = subprocess.Popen([sys.executable, "-m", "vramfit", "sweep", "--device", "cpu", "--db", str(db), *args,
                             "--batch-size", ",".join(map(str, range(1, 40)))], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(_tagged(db)) < (2 if mode == "fork" else 1) and time.time() < deadline:
            time.sleep(0.05)
        assert _tagged(db), "no worker appeared"
    finally:
        proc.kill()  # the sweep alone: its workers must follow by themselves
        proc.wait()
    deadline = time.time() + 10
    while _tagged(db) and time.time() < deadline:
        time.sleep(0.05)
    assert _tagged(db) == []
    wait_for_orphans(db, wait_s=0)  # a resumed sweep may start


@LINUX
def test_a_sweep_does_not_start_beside_an_orphan_of_its_database(tmp_path, capsys, monkeypatch):
    from vramfit.cli import main

    db = tmp_path / "db.sqlite"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    env = {**os.environ, OWNER_ENV: str(db.resolve()), DRIVER_ENV: str(gone.pid)}
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**env, DRIVER_ENV: str(os.getpid())})  # a concurrent sweep's worker: fine
    try:
        deadline = time.time() + 10
        while orphan.pid not in orphan_workers(db) and time.time() < deadline:
            time.sleep(0.05)
        assert orphan_workers(db) == [orphan.pid]
        assert orphan_workers(tmp_path / "other.sqlite") == []
        with pytest.raises(VramfitError, match=f"still run .pid {orphan.pid}"):
            wait_for_orphans(db, wait_s=0.3)
        monkeypatch.setenv("VRAMFIT_ORPHAN_WAIT_S", "0.3")
        capsys.readouterr()
        rc = main(["sweep", "--device", "cpu", "--db", str(db), "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                   "--block-size", "32", "--vocab-size", "256", "--batch-size", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "still run" in err, err
    finally:
        orphan.kill()
        alive.kill()
        orphan.wait()
        alive.wait()
    wait_for_orphans(db, wait_s=5)


WATCHED = textwrap.dedent("""
    import os, sys, time
    sys.platform = "darwin"  # no prctl: the watchdog path of other systems
    from vramfit.child import die_with_parent
    print(die_with_parent(), flush=True)
    time.sleep(60)
""")


@pytest.mark.skipif(os.name == "nt", reason="POSIX re-parenting")
@pytest.mark.parametrize("platform", ["linux", "elsewhere"])
def test_a_child_dies_with_its_parent(tmp_path, platform):
    script = WATCHED if platform == "elsewhere" else WATCHED.replace('sys.platform = "darwin"', "pass")
    middle = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}
        p = subprocess.Popen([sys.executable, "-c", {script!r}], stdout=subprocess.PIPE, text=True, env=env)
        print(p.pid, p.stdout.readline().strip(), flush=True)
        time.sleep(60)
    """)
    mid = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid, how = mid.stdout.readline().split()
    assert how == ("watchdog" if platform == "elsewhere" else "prctl")
    mid.kill()
    mid.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(int(pid), signal.SIGKILL)
        pytest.fail(f"the child outlived its parent ({how})")


def test_die_with_parent_needs_a_parent(monkeypatch):
    monkeypatch.delenv(PARENT_ENV, raising=False)
    assert die_with_parent() == ""


def test_spawn_is_said_where_fork_is_not_used(monkeypatch):
    monkeypatch.setenv("VRAMFIT_WORKERS", "spawn")
    pool = WorkerPool()
    assert not pool.fork and "VRAMFIT_WORKERS=spawn" in pool.describe()
    monkeypatch.delenv("VRAMFIT_WORKERS")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "macOS" in WorkerPool().describe()
    assert "custom worker" in WorkerPool([sys.executable, "-c", "pass"]).describe()
    assert json.loads(json.dumps(MEASURE.to_dict()))["timeout_s"] == 120


def test_one_inductor_cache_per_sweep_removed_at_its_end_or_none(monkeypatch):
    monkeypatch.delenv("VRAMFIT_COMPILE_CACHE", raising=False)
    spec, env = _spec(1)
    cpu = WorkerPool(fork=False)._env(env, "cpu")  # the CPU's reading keeps step 1: no shared cache by default
    assert cpu["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] == "1" and "TORCHINDUCTOR_CACHE_DIR" not in cpu
    pool = WorkerPool(fork=False)
    a, b = pool._env(env, "cuda"), pool._env(env, "cuda")
    cache = Path(a["TORCHINDUCTOR_CACHE_DIR"])
    assert cache.is_dir() and a["TORCHINDUCTOR_CACHE_DIR"] == b["TORCHINDUCTOR_CACHE_DIR"]  # shared by its points
    assert a["TRITON_CACHE_DIR"].startswith(str(cache)) and "TORCHINDUCTOR_FORCE_DISABLE_CACHES" not in a
    other = WorkerPool(fork=False)
    assert other._env(env, "cuda")["TORCHINDUCTOR_CACHE_DIR"] != str(cache)  # and by no other sweep
    pool.close()
    other.close()
    assert not cache.exists()
    monkeypatch.setenv("VRAMFIT_COMPILE_CACHE", "0")
    off = WorkerPool(fork=False)._env(env, "cuda")
    assert off["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] == "1" and "TORCHINDUCTOR_CACHE_DIR" not in off
    monkeypatch.setenv("VRAMFIT_COMPILE_CACHE", "1")
    forced = WorkerPool(fork=False)
    assert "TORCHINDUCTOR_CACHE_DIR" in forced._env(env, "cpu")
    forced.close()


ASKS_CUDA = textwrap.dedent("""
    import json, torch, torch.cuda
    asked = []
    def spy(name, real):
        def f(*a, **k):
            asked.append(name)
            return real(*a, **k)
        return f
    for name in ("is_available", "device_count", "_lazy_init", "init", "get_device_properties", "current_device"):
        setattr(torch.cuda, name, spy(name, getattr(torch.cuda, name)))
    from vramfit.measure import zygote
    zygote.preload()
    print(json.dumps({"asked": asked, "initialized": torch.cuda.is_initialized()}))
""")


def test_the_fork_server_never_asks_cuda_anything():
    """A process that called cudaGetDeviceCount cannot hand CUDA to a forked child: PyTorch's
    THCPModule_getDeviceCount_wrap (torch/csrc/cuda/Module.cpp) calls poison_fork(), after which a child's first CUDA
    call raises "Cannot re-initialize CUDA in forked subprocess". So the zygote's imports must not call
    torch.cuda.is_available / device_count / init (checked here by spying on them while it imports)."""
    r = subprocess.run([sys.executable, "-c", ASKS_CUDA], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"asked": [], "initialized": False}


def test_every_compile_cache_variable_is_one_torch_reads():
    """A variable torch never reads is a setting that is not in force: each name compile_cache_env sets must occur in
    torch's own sources (TORCHINDUCTOR_AUTOTUNE_LOCAL_CACHE did not: `autotune_local_cache` has no variable)."""
    import torch

    from vramfit.sweep.pool import compile_cache_env

    root = Path(torch.__file__).parent
    text = "\n".join(p.read_text(errors="replace") for sub in ("_inductor", "_functorch", "compiler", "utils")
                     for p in (root / sub).rglob("*.py"))
    names = set(compile_cache_env("/tmp/x")) | set(compile_cache_env(None))
    assert names and {n for n in names if f'"{n}"' not in text} == set()


def test_fork_unsafe_decides_from_what_the_zygote_did_to_cuda():
    """A forked child cannot use CUDA when its parent initialised it, nor after the parent called cudaGetDeviceCount
    (torch/csrc/cuda/Module.cpp: poison_fork's atfork handler sets in_bad_fork in every later child, whose first
    CUDA call raises "Cannot re-initialize CUDA in forked subprocess"). A CPU point is forked either way."""
    from vramfit.sweep.forkserver import fork_unsafe

    clean = {"cuda_initialized": False, "bad_fork": False}
    assert fork_unsafe(clean, "cuda") == "" and fork_unsafe({}, "cuda:0") == ""
    assert "initialised CUDA" in fork_unsafe({**clean, "cuda_initialized": True}, "cuda")
    assert "asked CUDA" in fork_unsafe({**clean, "bad_fork": True}, "cuda")
    assert fork_unsafe({"cuda_initialized": True, "bad_fork": True}, "cpu") == ""


POISONED_ZYGOTE = textwrap.dedent("""
    import sys
    from vramfit.measure import zygote
    zygote.cuda_state = lambda: {"cuda_initialized": False, "bad_fork": True}  # as after torch.cuda.device_count()
    zygote.main()
    sys.stdout.flush()
""")
SPAWNED = [sys.executable, "-c", "import json, sys; print(json.dumps({'status': 'ok', 'worker': 'spawn'}))"]


@FORK
def test_a_fork_server_that_touched_cuda_hands_cuda_points_to_spawned_workers():
    spec, env = _spec(1)
    spec = {**spec, "device": "cuda"}
    with WorkerPool(SPAWNED, fork=True, zygote_cmd=[sys.executable, "-c", POISONED_ZYGOTE]) as pool:
        assert pool.fork
        rec = pool.run(spec, env, 60)
        assert rec["status"] == "ok" and rec["worker"] == "spawn"
        assert not pool.fork and "asked CUDA" in pool.describe()


@FORK
def test_the_real_zygote_reports_its_fork_safety():
    """The zygote's ready message carries its fork-safety test: on a CPU build never poisoned; on a GPU (stage d of
    experiments/gpu_evidence.sh) the same must hold, or CUDA points fall back to spawned workers."""
    from vramfit.sweep.forkserver import ForkServer

    env = _spec(1)[1]
    server = ForkServer(env)
    try:
        assert server.info["cuda_initialized"] is False and server.info["bad_fork"] is False
    finally:
        server.close()


@pytest.mark.gpu
@pytest.mark.skipif(not fork_available()[0], reason="no fork server here")
def test_on_a_gpu_the_fork_server_forks_cuda_points():
    """The fork-safety test on a CUDA build: the zygote's imports (torch, triton, Dynamo) leave CUDA untouched, so a
    CUDA point is forked, and measured."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    d = resolve("cuda", None)[0]
    r = d.resolve(Recipe(compile=False))
    spec = point_spec({**TINY, "batch_size": 2}, r, d, MEASURE, None)
    with WorkerPool() as pool:
        rec = pool.run(spec, worker_env(d, r, MEASURE), 300)
        assert pool.fork, pool.describe()
    assert rec["worker"] == "fork" and rec["status"] == "ok", rec.get("error")
