"""experiments/gpu_evidence.sh, rehearsed on the CPU (issue 26): the plan fits 8 minutes on an H100, every stage
writes under --out, a budget is kept, at most 8 files result, and a run killed mid-stage keeps what it finished."""

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "gpu_evidence.sh"
sys.path.insert(0, str(ROOT / "experiments"))

import gpu_evidence  # noqa: E402

SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
PROVENANCE = ("gpu", "driver", "torch", "cuda", "cudnn", "triton", "date")


def env_for(tmp_path: Path) -> dict:
    """The test's environment with an exported OUT (the lent machine's result folder: never to be touched) and a
    private TMPDIR (the run's scratch, which it must remove)."""
    (tmp_path / "OUT").mkdir()
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "OUT": str(tmp_path / "OUT"), "TMPDIR": str(tmp_path / "tmp"),
            "VRAMFIT_PYTHON": sys.executable}


def check_out(out: Path) -> dict[str, tarfile.TarFile]:
    """The result folder's limits: <= 8 plain files with safe names, none deeper, each < 16 MiB, no leftovers;
    every archive a valid tar.gz carrying the provenance. Returns the archives by name."""
    files = list(out.iterdir())
    assert 1 <= len(files) <= 8 and all(f.is_file() and SAFE.match(f.name) for f in files), files
    assert all(f.stat().st_size < 16 * 2**20 for f in files)
    assert not [f for f in files if f.name.startswith(".")]  # no temporary file left behind
    archives = {f.name: tarfile.open(f) for f in files if f.name.endswith(".tar.gz")}
    for tar in archives.values():
        prov = json.load(tar.extractfile("provenance.json"))
        assert set(PROVENANCE) <= set(prov) and prov["date"]
    return archives


def results(tar: tarfile.TarFile) -> dict[str, dict]:
    """Each stage's result.json in a group archive, by stage."""
    return {m.name.split("/")[0]: json.load(tar.extractfile(m)) for m in tar.getmembers()
            if m.name.endswith("/result.json")}


def test_list_prints_a_plan_within_eight_minutes_on_an_h100_and_runs_nothing(tmp_path):
    t = time.time()
    r = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, timeout=60,
                       env=env_for(tmp_path))
    assert r.returncode == 0, r.stderr
    assert time.time() - t < 10 and not list((tmp_path / "OUT").iterdir())
    total = int(re.search(r"^total: (\d+) s on an H100", r.stdout, re.M).group(1))
    assert total <= 480
    for s in gpu_evidence.STAGES:
        assert re.search(rf"^{s.name}\s+{gpu_evidence.GROUPS[s.group]}\s+{s.gpu_s}\b", r.stdout, re.M), s.name
    required = [s for s in gpu_evidence.STAGES if not s.optional]
    assert total == sum(s.gpu_s for s in required) + gpu_evidence.OVERHEAD_S  # the whole a-d plan fits
    assert [s.group for s in required] == sorted(s.group for s in required)  # in priority order a, b, c, d


def test_the_budget_cuts_the_plan_first_fit_in_priority_order():
    Stage = gpu_evidence.Stage
    stages = (Stage("a1", "a", 10, 5, ""), Stage("b1", "b", 50, 0, ""), Stage("b2", "b", 20, 0, ""),
              Stage("c1", "c", 25, 5, ""), Stage("e1", "e", 5, 0, "", optional=True))
    planned, optional, skipped = gpu_evidence.plan(stages, 59, gpu=True)
    # b1 does not fit after a1; the shorter b2 and c1 still do; the optional stage is never planned, only offered
    assert [s.name for s in planned] == ["a1", "b2", "c1"] and [s.name for s in skipped] == ["b1"]
    assert [s.name for s in optional] == ["e1"]
    assert [s.name for s in gpu_evidence.plan(stages, 60, gpu=False)[0]] == ["a1", "b1", "b2", "c1"]  # CPU seconds
    for budget in (30, 100, 200, 480):  # the real plan: in priority order, within the budget
        planned, _, skipped = gpu_evidence.plan(gpu_evidence.STAGES, budget, gpu=True)
        assert sum(s.gpu_s for s in planned) <= budget and planned == sorted(planned, key=gpu_evidence.STAGES.index)
        assert all(sum(x.gpu_s for x in planned if gpu_evidence.STAGES.index(x) < gpu_evidence.STAGES.index(s))
                   + s.gpu_s > budget for s in skipped)


def test_rehearsal_within_a_60_s_budget_writes_every_stage_under_out(tmp_path):
    """The same script on the CPU: the CUDA stages say so, the others run; it ends within --budget-s 60, prints
    what it skipped, and everything it did is under --out (the exported OUT and the scratch folder untouched)."""
    out = tmp_path / "evidence"
    t = time.time()
    r = subprocess.run(["bash", str(SCRIPT), "--out", str(out), "--budget-s", "60"], capture_output=True,
                       text=True, timeout=120, env=env_for(tmp_path))
    took = time.time() - t
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert took <= 60, r.stdout
    archives = check_out(out)
    assert set(archives) <= {f"{g}.tar.gz" for g in gpu_evidence.GROUPS.values()}
    summary = (out / "summary.md").read_text()
    seen = {}
    for tar in archives.values():
        seen.update(results(tar))
    for s in gpu_evidence.STAGES:  # every stage either wrote its result into its group's archive or was skipped
        assert s.name in seen or re.search(rf"\| {s.name} \| .* \| skipped \|", summary), s.name
    assert seen["facts-system"]["status"] == "ok" and seen["facts-context"]["status"] == "skip"
    assert "needs CUDA" in seen["check-4"]["note"]
    prov = json.load(archives["a-facts.tar.gz"].extractfile("provenance.json"))
    assert prov["torch"] and prov["commit"] and "facts-system/nvidia-smi-q.txt" in \
        archives["a-facts.tar.gz"].getnames()
    if "sweep-small" in seen and seen["sweep-small"]["status"] == "ok":  # the rehearsal's sweep, estimate beside
        assert "| L1 H2 C64 T64 V256 | 2 | ok |" in summary
    assert not list((tmp_path / "OUT").iterdir()) and not list((tmp_path / "tmp").glob("vramfit-evidence-*"))


def test_a_run_killed_mid_stage_keeps_the_stages_it_finished(tmp_path):
    out = tmp_path / "evidence"
    proc = subprocess.Popen(["bash", str(SCRIPT), "--out", str(out), "--budget-s", "300"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env_for(tmp_path), start_new_session=True)
    try:
        for line in proc.stdout:
            if "start sweep-small" in line:  # facts and checks are bundled; the sweep is running
                time.sleep(3)
                break
        os.killpg(proc.pid, signal.SIGKILL)  # as the lent machine's time limit does: no chance to clean up
    finally:
        proc.wait(30)
    archives = check_out(out)
    facts = results(archives["a-facts.tar.gz"])
    assert facts["facts-system"]["status"] == "ok"
    assert set(results(archives["b-checks.tar.gz"])) == {f"check-{i}" for i in range(4, 10)}
    assert "c-sweep.tar.gz" not in archives or "sweep-small" not in results(archives["c-sweep.tar.gz"])
    assert "| facts-system | a-facts | **ok** |" in (out / "summary.md").read_text()


def test_bad_input_is_one_error_line(tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    for i in range(5):
        (out / f"other{i}.txt").write_text("not ours")
    for args, msg in ((["--budget-s", "0"], "--budget-s must be positive"), (["--out", str(out)], "empty --out"),
                      (["--out", str(out / "other0.txt")], "is a file")):
        r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith("error:") and msg in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"other{i}.txt" for i in range(5)]  # nothing lost


def test_bundle_keeps_each_archive_under_its_limit(tmp_path, monkeypatch):
    group = tmp_path / "g" / "stage"
    group.mkdir(parents=True)
    (group / "big.log").write_bytes(b"x" * (5 * 2**20) + b"THE END\n")
    (group / "big.bin").write_bytes(os.urandom(5 * 2**20))
    (group / "small.json").write_text("{}")
    dest = tmp_path / "g.tar.gz"
    gpu_evidence.bundle(tmp_path / "g", dest, {"provenance.json": b"{}"})
    tar = tarfile.open(dest)
    log = tar.extractfile("stage/big.log").read()
    assert len(log) < 4.1 * 2**20 and log.endswith(b"THE END\n") and "stage/big.bin" not in tar.getnames()
    assert b"big.bin" in tar.extractfile("MANIFEST.txt").read()
    monkeypatch.setattr(gpu_evidence, "MAX_ARCHIVE_BYTES", 2**20)
    gpu_evidence.bundle(tmp_path / "g", dest, {"provenance.json": b"{}"})
    assert dest.stat().st_size < 2**20 and "stage/small.json" in tarfile.open(dest).getnames()


@pytest.mark.parametrize("how", ["no repository", "no git"])
def test_the_commit_is_asked_of_git_with_a_check(tmp_path, monkeypatch, how):
    """A copied working tree (no .git) or a machine without git: the provenance says so instead of crashing."""
    from vramfit.measure.provenance import git_commit

    assert re.match(r"^[0-9a-f]{7,}(\+dirty)?$", git_commit(ROOT))
    if how == "no git":
        monkeypatch.setenv("PATH", str(tmp_path))
        assert git_commit(ROOT) == "unknown (no git)"
    else:
        monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
        assert git_commit(tmp_path).startswith("unknown (")


def test_the_gpu_stages_grids_and_comparison_table(tmp_path):
    """The sweeps the GPU stages run (written here as they write them) are valid grids of the points the issue
    asks for, and each measured point gets its estimate beside it (NVML, reserved, allocated)."""
    import gpu_stages

    from vramfit.sweep.grid import load_grid

    gpt2, small = gpu_stages.SWEEP_GPT2, gpu_stages.SWEEP_SMALL
    assert [(p["n_layer"], p["n_embd"], p["block_size"], p["batch_size"]) for p in gpu_stages.grid_points(gpt2)] == \
        [(12, 768, 1024, b) for b in (4, 8, 16)]
    for name, blocks in (("gpt2", gpt2), ("small", small)):
        path = tmp_path / f"{name}.toml"
        path.write_text(gpu_stages.grid_text(name, blocks, gpu_stages.COMPILED, gpu_stages.FAST))
        grid = load_grid(path)
        pts, _ = grid.points()
        assert sorted(map(str, pts)) == sorted(map(str, gpu_stages.grid_points(blocks)))
        assert grid.recipe.dtype == "bfloat16" and grid.recipe.compile is True and grid.recipe.optimizer == "fused"
    assert 8 <= len(gpu_stages.grid_points(gpt2 + small)) <= 12
    point = {**gpu_stages.grid_points(gpt2)[0], "status": "ok", "nvml_bytes": 10 * 2**30,
             "reserved_bytes": 9 * 2**30, "allocated_bytes": 8 * 2**30, "context_bytes": 500 * 2**20}
    est = {**gpu_stages.grid_points(gpt2)[0], "est_nvml": 11 * 2**30, "est_reserved": 9 * 2**30,
           "est_allocated": 6 * 2**30, "est_attention": "cudnn"}
    (row,), lines = gpu_stages._compare([point], [est], cuda=True)
    assert (row["nvml err"], row["reserved err"], row["allocated err"]) == ("+10.0%", "+0.0%", "-25.0%")
    assert row["shape"] == "L12 H12 C768 T1024 V50304" and row["attention"] == "cudnn" and len(lines) == 3


def test_each_cuda_stage_run_by_hand_on_the_cpu_says_it_needs_cuda(tmp_path):
    """Where the runner does not skip them (NVML sees a GPU but torch has no CUDA), the CUDA stages skip themselves."""
    import gpu_stages

    cuda_stages = [s.name for s in gpu_evidence.STAGES if s.cpu_s == 0]
    assert set(cuda_stages) <= set(gpu_stages.STAGES) and set(gpu_stages.STAGES) == {s.name for s in
                                                                                    gpu_evidence.STAGES}
    for name in cuda_stages:
        assert gpu_stages.main([name, str(tmp_path / name)]) == 0
        res = json.loads((tmp_path / name / "result.json").read_text())
        assert res["status"] == "skip" and "needs CUDA" in res["note"], (name, res)
    assert gpu_stages.main(["no-such-stage", str(tmp_path)]) == 2


def test_the_local_memory_reading_separates_the_limit_from_what_kernels_added(monkeypatch):
    """facts-context's `_stack_release` on a simulated driver that reserves, as NVIDIA states, SMs x max threads
    per SM x max(stack limit, the largest frame launched) and keeps it until the limit is set again: a 3,000-byte
    frame above the 1 KiB default must read as 3,000 bytes per thread released, 1 KiB retaken, the rest added."""
    import gpu_stages
    import torch

    sms, per_sm, total = 132, 2048, 80 * 2**30
    state = {"limit": 1024, "lmem": 3000}  # bytes per thread: the limit, and what the reservation holds now

    def set_stack(n: int) -> int:
        state["limit"] = state["lmem"] = n
        return 0

    monkeypatch.setattr(gpu_stages, "_cu_limits", lambda: {"stack_size": state["limit"], "printf_fifo_size": 2**20,
                                                           "malloc_heap_size": 8 * 2**20})
    monkeypatch.setattr(gpu_stages, "_set_stack", set_stack)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type(
        "P", (), {"multi_processor_count": sms, "max_threads_per_multi_processor": per_sm})())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (total - sms * per_sm * state["lmem"], total))
    r = gpu_stages._stack_release("after the steps")
    threads = sms * per_sm
    assert r["max_resident_threads"] == threads and r["stack_at_0"] == 0 and r["stack_back"] == 1024
    assert r["released_bytes"] == threads * 3000 and r["released_per_thread"] == 3000.0
    assert r["retaken_bytes"] == r["expected_at_limit_bytes"] == threads * 1024
    assert r["kernels_added_bytes"] == threads * (3000 - 1024)
