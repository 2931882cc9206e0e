"""`vramfit sweep` end to end on the CPU: the quick grid, physics, resume, fault injection, OOM, concurrency."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vramfit.cli import main
from vramfit.shape import KEYS
from vramfit.store import Store
from vramfit.sweep.grid import load_grid
from vramfit.sweep.session import SweepOptions, run_sweep
from vramfit.sweep.whole_grid import GridChooser

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "grids" / "quick.toml"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--vocab-size", "256"]


def vramfit(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vramfit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def n_points(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return c.execute("SELECT count(*) FROM points").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return 0


def run(capsys, *args: str) -> str:
    """`vramfit ARGS` in this process (a sweep that needs no process of its own: the workers still get theirs)."""
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    return out


def test_quick_grid_measures_every_point(quick_db):
    df = Store(quick_db).points_frame()
    planned = {tuple(p[k] for k in KEYS) for p in load_grid(QUICK).points()[0]}
    assert sorted(tuple(int(r[k]) for k in KEYS) for _, r in df.iterrows()) == sorted(planned)
    assert len(df) == len(planned) == 13 and (df.status == "ok").all() and df.stable.all()
    assert (df.device_type == "cpu").all() and (df.source == "sweep").all()
    assert df.nvml_bytes.isna().all() and df.allocated_bytes.isna().all() and df.reserved_bytes.isna().all()
    assert (df.tracked_bytes > 0).all() and (df.rss_bytes > 0).all()
    assert (df.ms_per_iter > 0).all() and (df.tokens_per_s > 0).all() and (df.iters >= 3).all()
    steps = df.timings.map(lambda t: json.loads(t)["step_ms"])  # the timed plain steps, kept for the best step
    assert (steps.map(len) == 10).all() and all(min(s) <= m for s, m in zip(steps, df.ms_per_iter, strict=True))


def test_tracked_peak_grows_along_every_axis(quick_db):
    df = Store(quick_db).points_frame()
    rows = {tuple(int(r[k]) for k in KEYS): r.tracked_bytes for _, r in df.iterrows()}
    for i, axis in enumerate(KEYS):
        pairs = [(a, b) for a in rows for b in rows
                 if a[i] < b[i] and all(a[j] == b[j] for j in range(len(KEYS)) if j != i)]
        assert pairs, f"quick grid varies {axis} alone nowhere"
        for a, b in pairs:
            assert rows[b] > rows[a], (axis, a, b)


def test_rss_and_tracked_peaks_agree(quick_db):
    df = Store(quick_db).points_frame()
    # RSS = tracked tensors + a small constant of Python/autograd objects and allocator metadata
    gap = df.rss_bytes - df.tracked_bytes
    assert ((gap >= -0.02 * df.tracked_bytes) & (gap <= 0.03 * df.tracked_bytes + 2 * 2**20)).all(), \
        (gap / 2**20).round(2).tolist()


def test_rerun_resumes_and_runs_export(quick_db, tmp_path, capsys):
    out = run(capsys, "sweep", "--grid", str(QUICK), "--device", "cpu", "--db", str(quick_db), "--quiet")
    assert "13 already measured" in out and "nothing to do" in out
    assert main(["runs", "--db", str(quick_db)]) == 0
    out = capsys.readouterr().out
    assert "quick" in out and "done" in out
    csv = tmp_path / "p.csv"
    assert main(["export", "--db", str(quick_db), "--csv", str(csv), "--parquet", str(tmp_path / "p.parquet")]) == 0
    assert "wrote 13 points" in capsys.readouterr().out and csv.stat().st_size > 0


def test_sigkill_mid_point_then_resume(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    args = ["sweep", "--device", "cpu", "--db", str(db), *TINY, "--batch-size", "1,2,3,4,5"]
    proc = subprocess.Popen([sys.executable, "-m", "vramfit", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while n_points(db) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(0.3)  # the next worker is starting
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = n_points(db)
    assert 1 <= done < 5
    with Store(db) as s:  # opens cleanly; what was committed is all there
        df = s.points_frame()
        assert len(df) == done and (df.status == "ok").all()
        assert s.sweeps_frame().status.tolist() == ["killed"]  # its process is gone: nobody will close the row
    out = run(capsys, *args)  # the resume needs no process of its own
    assert f"{5 - done} points to measure, {done} already measured" in out
    df = Store(db).points_frame()
    assert len(df) == 5 and sorted(df.batch_size) == [1, 2, 3, 4, 5]


FAKE_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    spec = json.loads(sys.stdin.read())
    p = spec["point"]
    if p["batch_size"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if p["batch_size"] == 3:
        time.sleep(60)
    if p["batch_size"] == 4:
        sys.stderr.write("Traceback: something broke\\n")
        sys.exit(3)
    print("noise on stdout")
    print(json.dumps({**p, "status": "ok", "tracked_bytes": 100 * p["batch_size"], "rss_bytes": 1, "iters": 3,
                      "stable": True}))
""")


def test_killed_hung_and_crashing_workers_are_recorded_and_the_sweep_goes_on(tmp_path):
    grid = load_grid(None, {"n_layer": [1], "n_head": [1], "n_embd": [8], "block_size": [8], "vocab_size": [8],
                            "batch_size": [1, 2, 3, 4, 5]}, measure_overrides={"timeout_s": 3})
    db = tmp_path / "db.sqlite"
    res = run_sweep(grid, SweepOptions(db, device="cpu", quiet=True, worker_cmd=[sys.executable, "-c", FAKE_WORKER]),
                    GridChooser())
    assert dict(res.counts) == {"ok": 2, "error": 2, "timeout": 1}
    df = Store(db).points_frame().set_index("batch_size")
    assert df.loc[1, "status"] == "ok" and df.loc[5, "tracked_bytes"] == 500
    assert df.loc[2, "status"] == "error" and "SIGKILL" in df.loc[2, "error"]
    assert df.loc[3, "status"] == "timeout" and "timed out after 3 s" in df.loc[3, "error"]
    assert df.loc[4, "status"] == "error" and "exit code 3" in df.loc[4, "error"]
    assert "something broke" in df.loc[4, "error"]
    # errors and timeouts are tried again on the next run, ok points are not
    fail = [sys.executable, "-c", "import sys; sys.exit(1)"]
    res = run_sweep(grid, SweepOptions(db, device="cpu", quiet=True, worker_cmd=fail), GridChooser())
    assert res.resumed == 2 and res.planned == 3 and dict(res.counts) == {"error": 3}


def test_emulated_small_memory_records_oom(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    run(capsys, "sweep", "--device", "cpu", "--db", str(db), *TINY, "--batch-size", "1,64", "--emulate-vram", "3M")
    df = Store(db).points_frame().set_index("batch_size")
    assert df.loc[1, "status"] == "ok" and df.loc[1, "tracked_bytes"] < 3 * 2**20
    assert df.loc[64, "status"] == "oom" and "OutOfMemoryError" in df.loc[64, "error"]
    assert (df.total_memory_bytes == 3 * 2**20).all() and (df.emulate_bytes == 3 * 2**20).all()


def test_two_sweeps_on_one_database_at_once(tmp_path):
    db = tmp_path / "db.sqlite"
    cmds = [[sys.executable, "-m", "vramfit", "sweep", "--device", "cpu", "--db", str(db), "--quiet", *TINY,
             "--batch-size", bs] for bs in ("1,2", "3,4")]
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1000:] for o in outs]
    with Store(db) as s:
        df = s.points_frame()
        assert sorted(df.batch_size) == [1, 2, 3, 4] and (df.status == "ok").all()
        assert df.env_id.nunique() == 1
        sw = s.sweeps_frame()
        assert sw.n_ok.tolist() == [2, 2] and sw.status.tolist() == ["done", "done"]


def _procs() -> dict[int, tuple[int, bytes]]:
    """pid -> (ppid, cmdline) of every process /proc lists."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


def _worker_children(pid: int) -> list[int]:
    """The sweep `pid`'s workers: spawned ones (its children running the worker) and forked ones (children of its
    fork server, which run the zygote's command line)."""
    procs = _procs()
    zygotes = {p for p, (pp, cmd) in procs.items() if pp == pid and b"vramfit.measure.zygote" in cmd}
    return [p for p, (pp, cmd) in procs.items()
            if (pp == pid and b"vramfit.measure.worker" in cmd) or pp in zygotes]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_real_worker_killed_from_outside_is_an_error_row(tmp_path):
    db = tmp_path / "db.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "vramfit", "sweep", "--device", "cpu", "--db", str(db), *TINY,
                             "--batch-size", "1,2,3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180  # two torch imports (the sweep's, its fork server's) first: ~40 s under load
    killed = None
    # once the first point is stored (the fork server's own fork-safety child, `zygote.cuda_state`, is gone by
    # then), every child is a point's worker; a forked point lives ~0.5 s here: kill it on sight
    while killed is None and time.time() < deadline:
        for victim in _worker_children(proc.pid) if n_points(db) >= 1 else []:
            try:
                os.kill(victim, signal.SIGKILL)
                killed = victim
                break
            except ProcessLookupError:  # it finished meanwhile: the next one
                continue
        time.sleep(0.02)
    assert killed, "no worker process appeared"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    df = Store(db).points_frame()
    bad = df[df.status == "error"]
    assert len(bad) == 1 and "killed by SIGKILL" in bad.error.iloc[0]
    assert (df.status == "ok").sum() == 2
    assert "1 error, 2 ok" in out


ECHO_WORKER = textwrap.dedent("""
    import json, os, sys, time
    spec = json.loads(sys.stdin.read())
    time.sleep(0.3)
    print(json.dumps({**spec["point"], "status": "ok", "nvml_bytes": 3, "reserved_bytes": 2, "allocated_bytes": 1,
                      "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "uuid": spec["gpu_uuid"],
                      "device": spec["device"], "dtype": spec["recipe"]["dtype"]}))
""")


@pytest.mark.parametrize("names, rows", [(("Card A", "Card A"), 4), (("Card A", "Card B"), 8)])
def test_several_gpus_share_or_split_the_grid(tmp_path, monkeypatch, names, rows):
    import json

    import vramfit.sweep.session as sweep_mod
    from vramfit.measure.devices import DeviceFacts

    fake = [DeviceFacts("cuda", name, 8 * 2**30, index=i, gpu_uuid=f"GPU-{i}", compute_capability="8.0",
                        torch_version="x") for i, name in enumerate(names)]
    monkeypatch.setattr(sweep_mod, "resolve", lambda device, indices: fake)
    grid = load_grid(None, {"n_layer": [1], "n_head": [1], "n_embd": [8], "block_size": [8], "vocab_size": [8],
                            "batch_size": [1, 2, 3, 4]})
    db = tmp_path / "db.sqlite"
    res = run_sweep(grid, SweepOptions(db, device="cuda", gpu_indices=[0, 1], quiet=True,
                                       worker_cmd=[sys.executable, "-c", ECHO_WORKER]), GridChooser())
    assert dict(res.counts) == {"ok": rows}
    df = Store(db).points_frame()
    extra = [json.loads(e) for e in Store(db).conn.execute("SELECT extra FROM points ORDER BY point_id")
             .fetchone()]
    assert extra[0]["device"] == "cuda" and extra[0]["dtype"] == "bfloat16"  # auto dtype resolved from sm 8.0
    assert len(df) == rows and set(df.gpu_uuid) == {"GPU-0", "GPU-1"}
    assert (df.groupby("device_name").batch_size.apply(sorted).map(tuple) == (1, 2, 3, 4)).all()
    cvd = [json.loads(r[0])["cvd"] == json.loads(r[0])["uuid"] for r in Store(db).conn.execute(
        "SELECT extra FROM points")]
    assert all(cvd)  # each worker sees only its GPU, by UUID
