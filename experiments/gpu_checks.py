"""Issue 12's checks on a real GPU (items 4-9), run by experiments/gpu_validate.sh as stages check-4 .. check-9.

    python experiments/gpu_validate.py check ITEM OUT [DATA_DIR]      ITEM: 4 5 6 7 8 9

Each writes OUT/checks/item<ITEM>.json: {"item", "what", "status": pass | fail | skip, "numbers", "note"}; the
summary stage turns them into one table. The CPU tests simulate each case (tests/test_cuda_*.py); these measure it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
MIB = 2**20
SHAPE = {"n_layer": 2, "n_head": 4, "n_embd": 256, "block_size": 256, "batch_size": 8, "vocab_size": 8192}
WHAT = {
    "4": "own process found in NVML (getpid or the PID snapshot); a foreign process is counted, not measured",
    "5": "train --measure: get_device_properties allocates nothing; NVML opened by torch's UUID; stored on that GPU",
    "6": "emulated card: non-allocator memory counted, allocator recapped after step 1, NVML within the card",
    "7": "peak = nvml - memory_reserved + max_memory_reserved >= the raw end-of-step reading",
    "8": "step 1 (compile autotuning) left out of the peak: peak_steps starts at 2",
    "9": "NCCL's memory outside the allocator, measured around process-group init + first all-reduce",
}


def vramfit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "vramfit", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def grid_file(path: Path, compile_: bool, batches: list[int], shape: dict | None = None) -> Path:
    s = {**SHAPE, **(shape or {})}
    axes = "\n".join(f"{k} = {[v] if k != 'batch_size' else batches}" for k, v in s.items())
    path.write_text(f'name = "{path.stem}"\n[axes]\n{axes}\n[recipe]\ncompile = {str(compile_).lower()}\n'
                    "[measure]\nmin_iters = 4\nmax_iters = 15\ntimeout_s = 300\ntiming_iters = 3\n")
    return path


def points(db: Path) -> list[dict]:
    """Every point of a database with its `extra` fields merged in."""
    from vramfit.store import Store

    with Store(db) as s:
        df = s.points_frame()
        extras = s.point_extras(df.point_id.tolist())
    return [{**row, **extras[int(row["point_id"])]} for row in df.to_dict("records")]


def sweep(out: Path, name: str, compile_: bool, batches: list[int], *extra: str, shape: dict | None = None) -> list:
    db = out / f"{name}.sqlite"
    g = grid_file(out / f"{name}.toml", compile_, batches, shape)
    r = vramfit("sweep", "--grid", str(g), "--device", "cuda", "--db", str(db), "--redo", "--quiet", *extra)
    (out / f"{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"sweep {name} failed: {r.stderr[-400:]}")
    return points(db)


def check_4(out: Path, data_dir: str | None) -> dict:
    """A point alone, then the same point beside a foreign process holding 512 MiB on the GPU."""
    from vramfit.measure.devices import nvml_devices
    from vramfit.measure.probe import NvmlProbe

    (alone,) = sweep(out, "item4-alone", False, [8])
    gpu = nvml_devices()[0][0]
    hog = subprocess.Popen([PY, "-c", "import torch, time; x = torch.empty(512 * 2**20, dtype=torch.uint8, "
                            "device='cuda'); torch.cuda.synchronize(); time.sleep(600)"])
    try:
        nv = NvmlProbe(gpu.gpu_uuid)
        for _ in range(60):
            if len(nv.processes() or []) >= 1:
                break
            time.sleep(1)
        (shared,) = sweep(out, "item4-shared", False, [8])
    finally:
        hog.kill()
    mig = gpu.mig_parent_uuid is not None
    nums = {k: {f: p.get(f) for f in ("status", "nvml_bytes", "nvml_source", "nvml_pid_match", "foreign_procs")}
            for k, p in (("alone", alone), ("beside_512MiB", shared))}
    same = alone["nvml_bytes"] and shared["nvml_bytes"] and abs(shared["nvml_bytes"] / alone["nvml_bytes"] - 1) < 0.05
    ok = (alone["status"] == shared["status"] == "ok" and alone["nvml_source"] == "pid"
          and (shared.get("foreign_procs") or 0) >= 1
          and (shared["nvml_source"] == "device-shared" or (shared["nvml_source"] == "pid" and same)))
    return {"status": "pass" if ok else "fail", "numbers": nums,
            "note": f"MIG instance: {mig}" + ("" if mig else " (MIG off: instance memory checked on the CPU only)")}


def check_5(out: Path, data_dir: str | None) -> dict:
    """NVML before/after get_device_properties in a fresh process; then a short `train --measure`."""
    code = ("import json, torch\nfrom vramfit.measure.devices import nvml_devices, torch_uuid\n"
            "from vramfit.measure.probe import NvmlProbe\n"
            "g = nvml_devices()[0][0]; nv = NvmlProbe(g.gpu_uuid); pid = __import__('os').getpid()\n"
            "b = nv.device_used(); p = torch.cuda.get_device_properties(0); a = nv.device_used()\n"
            "listed = pid in [q for q, _ in nv.processes() or []]\n"
            "torch.empty(1, device='cuda'); torch.cuda.synchronize(); c = nv.device_used()\n"
            "print(json.dumps({'props_delta': a - b, 'context_delta': c - a, 'listed_before_context': listed, "
            "'uuid_match': torch_uuid(p) == g.gpu_uuid}))")
    r = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return {"status": "fail", "numbers": {}, "note": r.stderr[-300:]}
    nums = json.loads(r.stdout.strip().splitlines()[-1])
    db = out / "item5.sqlite"
    t = vramfit("train", "--measure", "--db", str(db), "--data-dir", data_dir or "data/gpu_validate_char",
                "--out-dir", str(out / "item5-out"), "--n-layer", "2", "--n-head", "4", "--n-embd", "128",
                "--block-size", "128", "--batch-size", "8", "--max-iters", "30", "--eval-interval", "1000",
                "--eval-iters", "2", "--compile", "false", "--device", "cuda")
    (out / "item5-train.log").write_text(t.stdout + t.stderr)
    rows = points(db) if db.is_file() else []
    if t.returncode != 0 or not rows:
        return {"status": "fail", "numbers": nums, "note": t.stderr[-300:]}
    p = rows[-1]
    nums.update({k: p.get(k) for k in ("gpu_uuid", "context_bytes", "nvml_bytes", "nvml_source", "idle_baseline")})
    ok = (nums["props_delta"] < 2 * MIB and not nums["listed_before_context"] and nums["uuid_match"]
          and (p.get("context_bytes") or 0) > 0 and p.get("nvml_source") == "pid")
    return {"status": "pass" if ok else "fail", "numbers": nums,
            "note": "props_delta: device memory get_device_properties allocated (assumed 0)"}


def check_6(out: Path, data_dir: str | None) -> dict:
    """Batches 4..256 of a mid-size shape on an emulated 3 GiB card (and this card's NVML total vs vramfit.cards)."""
    from vramfit.cards import CARDS
    from vramfit.measure.devices import nvml_devices

    cap = 3 * 2**30
    rows = sweep(out, "item6", False, [4, 16, 64, 256], "--emulate-vram", "3G",
                 shape={"n_layer": 4, "n_embd": 512, "block_size": 512})
    ok_rows = [p for p in rows if p["status"] == "ok"]
    nums = {"points": [{k: p.get(k) for k in ("batch_size", "status", "nvml_bytes", "non_allocator_bytes",
                                               "allocator_cap_bytes", "context_bytes", "error")} for p in rows]}
    gpu = nvml_devices()[0][0]
    named = [c for c in CARDS.values() if c.label.split(" (")[0].lower() in gpu.device_name.lower()]
    nums["nvml_total"] = gpu.total_memory_bytes
    nums["cards_entry"] = {c.name: c.total_bytes for c in named} or "this card is not in vramfit.cards"
    ok = (all((p.get("nvml_bytes") or 0) <= cap for p in ok_rows) and any(p["status"] == "oom" for p in rows)
          and all(p.get("non_allocator_bytes") is not None for p in ok_rows) and bool(ok_rows))
    return {"status": "pass" if ok else "fail", "numbers": nums, "note": "ok points must stay within 3 GiB by NVML"}


def check_7(out: Path, data_dir: str | None) -> dict:
    """The peak against the raw reading on the item-6 points (near the cap, where the allocator retries)."""
    db = out / "item6.sqlite"
    if not db.is_file():
        check_6(out, data_dir)
    rows = [p for p in points(db) if p.get("nvml_raw_bytes") is not None]
    nums = [{k: p.get(k) for k in ("batch_size", "status", "nvml_bytes", "nvml_raw_bytes", "alloc_retries")}
            for p in rows]
    ok = bool(rows) and all(p["nvml_bytes"] >= p["nvml_raw_bytes"] for p in rows)
    return {"status": "pass" if ok else "fail", "numbers": nums,
            "note": "gap = nvml_bytes - nvml_raw_bytes: the part of the peak an end-of-step reading misses"}


def check_8(out: Path, data_dir: str | None) -> dict:
    """One compiled point: the peak's steps and what step 1 alone held."""
    (p,) = sweep(out, "item8", True, [8])
    nums = {k: p.get(k) for k in ("status", "peak_steps", "nvml_bytes", "step1_nvml_bytes", "reserved_bytes",
                                  "step1_reserved_bytes", "compile")}
    ok = p["status"] == "ok" and (p.get("peak_steps") or [0])[0] == 2 and p.get("compile") is True
    return {"status": "pass" if ok else "fail", "numbers": nums,
            "note": "step1_* - steady: what compile's first step adds (now left out)"}


def check_9(out: Path, data_dir: str | None) -> dict:
    """NCCL's memory on as many ranks as there are GPUs (1: a lower bound, the communicator without peers)."""
    from vramfit.measure.devices import nvml_devices
    from vramfit.plan.ddp import NCCL_BYTES_ASSUMED, measure_ddp

    n = min(2, len(nvml_devices()[0]))
    if n == 0:
        return {"status": "skip", "numbers": {}, "note": "no GPU visible"}
    point = {**SHAPE}
    ranks = measure_ddp(point, nproc=n, recipe={"compile": False}, measure={"max_iters": 8}, device="cuda")
    vals = [r.get("nccl_bytes") for r in ranks]
    ok = all(v is not None for v in vals) and all(r["status"] == "ok" for r in ranks)
    return {"status": "pass" if ok else "fail",
            "numbers": {"ranks": n, "nccl_bytes": vals, "assumed": NCCL_BYTES_ASSUMED},
            "note": "1 rank: a lower bound (no peer buffers)" if n == 1 else f"{n} ranks"}


def run_check(item: str, out: Path, rest: list[str]) -> int:
    checks = {"4": check_4, "5": check_5, "6": check_6, "7": check_7, "8": check_8, "9": check_9}
    if item not in checks:
        print(f"unknown check {item!r} (items {', '.join(checks)})")
        return 2
    folder = out / "checks"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        res = checks[item](folder, rest[0] if rest else None)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run is a failed check, with why
        res = {"status": "fail", "numbers": {}, "note": f"{type(exc).__name__}: {str(exc)[:300]}"}
    res = {"item": int(item), "what": WHAT[item], **res, "seconds": round(time.time() - t0, 1)}
    (folder / f"item{item}.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"item {item}: {res['status']} ({res['what']}) {json.dumps(res['numbers'], default=str)[:600]}")
    return 0 if res["status"] != "fail" else 1
