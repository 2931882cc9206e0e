"""The stages of experiments/gpu_evidence.sh (the plan, time limits and bundling: experiments/gpu_evidence.py).

    python experiments/gpu_stages.py STAGE WORKDIR

Each stage writes its files into WORKDIR and last WORKDIR/result.json: {"status": ok | fail | timeout | skip, "note",
"lines"} (`lines`: the markdown summary.md shows for it). VRAMFIT_EVIDENCE_DEADLINE (epoch seconds) is when the
runner cuts the stage off: a stage made of parts (a sweep, the tests) stops them before it, so that what they
measured is written. A stage that needs CUDA where torch has none says so (status skip).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
MIB = 2**20
SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")
CHECK_SHAPE = {"n_layer": 2, "n_head": 4, "n_embd": 256, "block_size": 256, "batch_size": 8, "vocab_size": 8192}
FAST = {"min_iters": 4, "max_iters": 10, "window": 3, "tolerance": 0.005, "timeout_s": 180, "timing_iters": 5}
COMPILED = {"dtype": "bfloat16", "compile": True, "optimizer": "fused"}  # the lent GPUs' default recipe, spelled out
GPT2 = {"n_layer": [12], "n_head": [12], "n_embd": [768], "block_size": [1024], "vocab_size": [50304]}
SWEEP_GPT2 = [{**GPT2, "batch_size": [4, 8, 16]}]  # GPT-2 124M at block 1024
# small shapes whose 1-10 MiB activations each open a 20 MiB segment (kLargeBuffer) of the caching allocator
SWEEP_SMALL = [{"n_layer": [4], "n_head": [4], "n_embd": [256], "block_size": [256], "vocab_size": [8192],
                "batch_size": [4, 8, 16]},
               {"n_layer": [6], "n_head": [6], "n_embd": [384], "block_size": [512], "vocab_size": [8192],
                "batch_size": [2, 4, 8]}]


# --- helpers --------------------------------------------------------------------------------------------------
def left() -> float:
    """Seconds until the runner cuts this stage off (a day where no runner set it)."""
    return float(os.environ.get("VRAMFIT_EVIDENCE_DEADLINE") or time.time() + 86400) - time.time()


def no_cuda() -> str:
    """Why this stage cannot use CUDA here ('' when it can)."""
    import torch

    if not torch.version.cuda:
        return f"needs CUDA: torch {torch.__version__} was built without it"
    from vramfit.measure.devices import nvml_devices

    gpus, note = nvml_devices()
    if not gpus and not torch.cuda.is_available():
        return f"needs CUDA: no GPU visible ({note or 'NVML lists none'})"
    return ""


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> int:
    """Run `cmd` from the repository root into `log`; past `timeout` SIGINT its process group (a sweep then marks
    itself interrupted and stops its workers), SIGKILL 10 s later. Returns the exit code, 124 when cut off."""
    with log.open("ab") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            return 124


def vramfit_cmd(*args: str) -> list[str]:
    return [PY, "-m", "vramfit", *args]


def grid_text(name: str, blocks: list[dict], recipe: dict, measure: dict) -> str:
    """A sweep grid: the union of `blocks` (axis -> values), one recipe, one measure table."""
    def value(v: object) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    out = [f'name = "{name}"']
    for b in blocks:
        out += ["[[axes]]", *(f"{k} = {value(v)}" for k, v in b.items())]
    out += ["[recipe]", *(f"{k} = {value(v)}" for k, v in recipe.items())]
    out += ["[measure]", *(f"{k} = {value(v)}" for k, v in measure.items())]
    return "\n".join(out) + "\n"


def grid_points(blocks: list[dict]) -> list[dict]:
    return [dict(zip(SHAPE, combo, strict=True)) for b in blocks for combo in itertools.product(*(b[k] for k in SHAPE))]


def points(db: Path) -> list[dict]:
    """Every point of a database with its `extra` fields merged in ([] where there is none)."""
    if not db.is_file():
        return []
    from vramfit.store import Store

    with Store(db) as s:
        df = s.points_frame()
        extras = s.point_extras(df.point_id.tolist())
    return [{**row, **extras[int(row["point_id"])]} for row in df.to_dict("records")]


def sweep(work: Path, name: str, blocks: list[dict], recipe: dict, measure: dict, *extra: str,
          device: str = "cuda", reserve_s: float = 5) -> tuple[list[dict], int]:
    """`vramfit sweep` of a grid into WORKDIR/<name>.sqlite, stopped `reserve_s` before the deadline; (points, rc)."""
    grid = work / f"{name}.toml"
    grid.write_text(grid_text(name, blocks, recipe, measure))
    db = work / f"{name}.sqlite"
    rc = run_logged(vramfit_cmd("sweep", "--grid", str(grid), "--device", device, "--db", str(db), "--redo", *extra),
                    work / f"{name}.log", left() - reserve_s)
    return points(db), rc


def only_point(rows: list[dict], work: Path, name: str) -> dict:
    """The one point a one-point sweep measured; else an error with the end of its log."""
    if len(rows) != 1:
        log = work / f"{name}.log"
        tail = log.read_text(errors="replace")[-400:] if log.is_file() else ""
        raise RuntimeError(f"sweep {name}: {len(rows)} points instead of 1; log: {tail}")
    return rows[0]


def finish(work: Path, status: str, note: str = "", lines: list[str] | tuple = ()) -> int:
    (work / "result.json").write_text(json.dumps({"status": status, "note": note, "lines": list(lines)}, indent=1,
                                                 default=str))
    return 0


def gib(n: object) -> str:
    try:
        return f"{float(n) / 2**30:.3f}"
    except (TypeError, ValueError):
        return "-"


def mib(n: object) -> str:
    try:
        return f"{float(n) / MIB:.1f}"
    except (TypeError, ValueError):
        return "-"


def table(rows: list[dict], cols: list[str]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows)]


def corpus(path: Path, n_chars: int = 300_000) -> Path:
    """A generated text corpus (no network), for the checks that train."""
    rng = random.Random(0)
    words = ["the", "king", "queen", "lord", "and", "of", "to", "my", "thou", "art", "good", "night", "sweet", "hath"]
    text, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ".\n"
        text.append(line)
        size += len(line)
    path.write_text("".join(text))
    return path


# --- a: facts -------------------------------------------------------------------------------------------------
PACKAGES = ("numpy", "pandas", "scikit-learn", "matplotlib", "typer", "rich", "tiktoken", "nvidia-ml-py",
            "platformdirs", "pytest", "triton")
ENV_PREFIXES = ("PYTORCH_", "CUDA_", "TORCH", "NCCL_", "TRITON_", "VRAMFIT_", "NVIDIA_", "LD_LIBRARY_PATH")


def facts_system(work: Path) -> int:
    """nvidia-smi -q, the provenance (GPU, driver, torch, CUDA, cuDNN, Triton, date, commit), the packages and the
    environment variables that change what torch does, `vramfit info --json`."""
    import importlib.metadata

    from vramfit.measure.provenance import provenance

    for args, name in ((["-q"], "nvidia-smi-q.txt"), ([], "nvidia-smi.txt")):
        try:
            r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=False)
            (work / name).write_text(r.stdout + r.stderr)
        except (OSError, subprocess.SubprocessError) as exc:
            (work / name).write_text(f"nvidia-smi unavailable: {type(exc).__name__}: {exc}\n")
    prov = provenance(ROOT)
    (work / "provenance.json").write_text(json.dumps(prov, indent=1))
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    (work / "environment.json").write_text(json.dumps({"packages": versions, "env": env}, indent=1))
    r = subprocess.run(vramfit_cmd("info", "--json"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    (work / "vramfit-info.json").write_text(r.stdout + r.stderr)
    missing = [p for p, v in versions.items() if v is None]
    lines = [f"- {k}: {prov.get(k)}" for k in ("gpu", "driver", "total_memory_bytes", "torch", "cuda", "cudnn",
                                                "triton", "python", "commit")]
    lines += [f"- packages missing: {', '.join(missing) or 'none'}",
              f"- allocator variables in the environment: "
              f"{ {k: v for k, v in env.items() if 'ALLOC_CONF' in k} or 'none'}"]
    return finish(work, "ok", "", lines)


def _first_uses(nv, pid: int, save) -> dict:
    """The measured CUDA context and each first use's bytes outside the caching allocator (NVML's reading of this
    process minus memory_reserved(), before and after), in this order: context, cuBLAS, cuBLASLt, SDPA flash,
    efficient and cuDNN (forward + backward), two compiled GPT-2 training steps; the context's limits
    (cuCtxGetLimit) and its local-memory reservation (`_stack_release`) after the context, after SDPA and after
    the compiled steps. `save(facts)` after each, so that a crash (a kernel that takes the process down) keeps
    what was measured before it."""
    import torch
    import torch.nn.functional as F

    def own() -> int | None:
        used = nv.process_used(pid)
        return used if used is not None else nv.device_used()

    out: dict = {"nvml_pid_listed_before_context": pid in [p for p, _ in nv.processes() or []]}
    dev0 = nv.device_used()
    t = time.perf_counter()
    torch.cuda.init()
    dev1 = nv.device_used()
    out["after_init_device_delta"] = (dev1 or 0) - (dev0 or 0)
    props = torch.cuda.get_device_properties(0)  # assumed: allocates nothing
    out["get_device_properties_device_delta"] = (nv.device_used() or 0) - (dev1 or 0)
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    raw, reserved = own(), torch.cuda.memory_reserved()
    out["limits_at_context"] = _cu_limits()
    out.update(context_nvml_bytes=raw, context_reserved_bytes=reserved, context_bytes=(raw or 0) - reserved,
               context_device_delta=(nv.device_used() or 0) - (dev0 or 0), context_s=time.perf_counter() - t,
               nvml_source="pid" if nv.process_used(pid) is not None else "device", total_memory=props.total_memory,
               capability=f"{props.major}.{props.minor}")
    steps: list[dict] = []
    out["first_uses"] = steps
    out["local_memory"] = [_stack_release("after the context (a 1-element tensor)")]
    save(out)

    def first(name: str, fn) -> None:
        torch.cuda.synchronize()
        b_raw, b_res, t0 = own(), torch.cuda.memory_reserved(), time.perf_counter()
        err = ""
        try:
            fn()
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a kernel this build cannot run is a finding, not a crash
            err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        a_raw, a_res = own(), torch.cuda.memory_reserved()
        steps.append({"first": name, "nvml_delta": (a_raw or 0) - (b_raw or 0), "reserved_delta": a_res - b_res,
                      "non_allocator_bytes": ((a_raw or 0) - (b_raw or 0)) - (a_res - b_res),
                      "seconds": round(time.perf_counter() - t0, 3), "error": err})
        save(out)

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    first("cublas matmul (bf16 mm)", lambda: a @ a)
    w, bias = torch.randn(1024, 2048, device="cuda", dtype=torch.bfloat16), torch.zeros(1024, device="cuda",
                                                                                         dtype=torch.bfloat16)
    first("cublasLt (bf16 linear with bias)", lambda: F.linear(a, w, bias))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def attention(backend):
        def run():
            q, k, v = (torch.randn(4, 12, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        return run

    for label, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION),
                           ("sdpa efficient", SDPBackend.EFFICIENT_ATTENTION),
                           ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
        first(f"{label} (fwd + bwd, B4 H12 T1024 D64 bf16)", attention(backend))
    out["local_memory"].append(_stack_release("after cuBLAS and SDPA"))
    save(out)
    first("compiled GPT-2 step (Inductor; 2 layers, width 768, vocab 50304, T 1024, B 4, bf16, fused AdamW)",
          _compiled_gpt2_steps)
    out["local_memory"].append(_stack_release("after the compiled GPT-2 steps"))
    return out


CU_LIMITS = {"stack_size": 0, "printf_fifo_size": 1, "malloc_heap_size": 2}  # CUlimit (cuda.h)


def _cu_limits() -> dict:
    """cuCtxGetLimit of the current (primary) context: the per-thread stack, printf FIFO and malloc heap sizes."""
    import ctypes

    cu, out = ctypes.CDLL("libcuda.so.1"), {}
    for name, code in CU_LIMITS.items():
        v = ctypes.c_size_t()
        rc = cu.cuCtxGetLimit(ctypes.byref(v), code)
        out[name] = v.value if rc == 0 else f"CUresult {rc}"
    return out


def _set_stack(n: int) -> int:
    import ctypes

    return ctypes.CDLL("libcuda.so.1").cuCtxSetLimit(CU_LIMITS["stack_size"], ctypes.c_size_t(n))


def _stack_release(at: str) -> dict:
    """The context's local-memory reservation, measured: the driver reserves per-thread local memory (the stack
    limit, raised to the largest frame a launched kernel needs, never lowered) for SMs x max resident threads per
    SM (NVIDIA, forums.developer.nvidia.com/t/local-memory-management/289339/9; docs/dry-run.md). Free memory
    (cudaMemGetInfo) as the stack limit goes to 0 and back to what it was: what setting 0 releases is the whole
    reservation now; what setting it back takes again is the reservation at the limit alone; the difference is
    what the kernels launched so far added above the limit."""
    import torch

    props = torch.cuda.get_device_properties(0)
    sms, per_sm = props.multi_processor_count, getattr(props, "max_threads_per_multi_processor", None)
    threads = sms * per_sm if per_sm else None
    torch.cuda.synchronize()
    before, f0 = _cu_limits(), torch.cuda.mem_get_info()[0]
    limit = before["stack_size"]
    rc0 = _set_stack(0)
    f1, at_zero = torch.cuda.mem_get_info()[0], _cu_limits()["stack_size"]
    rc1 = _set_stack(limit) if isinstance(limit, int) else "no limit read"
    f2, back = torch.cuda.mem_get_info()[0], _cu_limits()["stack_size"]
    released, retaken = f1 - f0, f1 - f2
    return {"at": at, "limits": before, "multiprocessors": sms, "max_threads_per_multiprocessor": per_sm,
            "max_resident_threads": threads, "set_0_result": rc0, "stack_at_0": at_zero, "set_back_result": rc1,
            "stack_back": back, "released_bytes": released, "retaken_bytes": retaken,
            "kernels_added_bytes": released - retaken,
            "released_per_thread": round(released / threads, 1) if threads else None,
            "retaken_per_thread": round(retaken / threads, 1) if threads else None,
            "expected_at_limit_bytes": threads * limit if threads and isinstance(limit, int) else None}


def _compiled_gpt2_steps() -> None:
    """Two compiled training steps with the kernels of the public readings' runs (GPT-2's width, vocabulary and
    block; Inductor's Triton kernels, cuBLAS, SDPA, fused AdamW, clip_grad_norm_) on 2 layers, to keep it short."""
    import torch

    from gpt.config import GPTConfig
    from gpt.model import GPT

    model = GPT(GPTConfig(n_layer=2, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step = torch.compile(model)
    x, y = (torch.randint(0, 50304, (4, 1024), device="cuda") for _ in range(2))
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = step(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def facts_context(work: Path) -> int:
    """The CUDA context of this build, measured (NVML before/after torch.cuda.init() and a 1-element tensor), what
    each first use adds outside the allocator, NVML's v2 memory info (the driver's reserved part), and the dry-run
    context table's figure beside it."""
    import torch

    if not torch.version.cuda:
        return finish(work, "skip", f"needs CUDA: torch {torch.__version__} was built without it")
    from vramfit.measure.devices import nvml_devices
    from vramfit.measure.probe import NvmlProbe

    gpus, note = nvml_devices()
    if not gpus:
        return finish(work, "skip", f"needs NVML and a GPU ({note})")
    nv = NvmlProbe(gpus[0].gpu_uuid)
    facts = _first_uses(nv, os.getpid(), lambda d: (work / "context.json").write_text(json.dumps(d, indent=1)))
    try:
        import pynvml

        h = pynvml.nvmlDeviceGetHandleByUUID(gpus[0].gpu_uuid)
        m = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        facts["nvml_memory_v2"] = {k: int(getattr(m, k)) for k in ("total", "reserved", "free", "used")}
    except Exception as exc:  # noqa: BLE001 - an old driver: v1 only
        facts["nvml_memory_v2"] = f"unavailable: {type(exc).__name__}"
    from vramfit.dryrun.context import process_memory
    from vramfit.dryrun.estimate import parse_capability

    table_ctx = process_memory(parse_capability(facts["capability"]), 0)
    facts["dryrun_context_table"] = {k: table_ctx[k] for k in ("context_bytes", "context_source")}
    (work / "context.json").write_text(json.dumps(facts, indent=1, default=str))
    lines = [f"- CUDA context (NVML of this process minus the 1-element tensor's reserved segment): "
             f"**{mib(facts['context_bytes'])} MiB** (raw {mib(facts['context_nvml_bytes'])} MiB, reserved "
             f"{mib(facts['context_reserved_bytes'])} MiB, source {facts['nvml_source']}); the dry run's table says "
             f"{mib(table_ctx['context_bytes'])} MiB ({table_ctx['context_source'].split(':')[0]})",
             f"- torch.cuda.init() alone: device used +{mib(facts['after_init_device_delta'])} MiB; then "
             f"get_device_properties: +{mib(facts['get_device_properties_device_delta'])} MiB (assumed 0); this "
             f"process listed by NVML before its context: {facts['nvml_pid_listed_before_context']}",
             f"- NVML v2 memory: {facts['nvml_memory_v2']}", "",
             *table([{**s, "nvml_delta": mib(s["nvml_delta"]), "reserved_delta": mib(s["reserved_delta"]),
                      "non_allocator_bytes": mib(s["non_allocator_bytes"])} for s in facts["first_uses"]],
                    ["first", "nvml_delta", "reserved_delta", "non_allocator_bytes", "seconds", "error"]),
             "", "(MiB; non_allocator = NVML delta - reserved delta)", "",
             f"- context limits (cuCtxGetLimit, bytes): {facts['limits_at_context']}", "",
             *table([{**r, "released_bytes": mib(r["released_bytes"]), "retaken_bytes": mib(r["retaken_bytes"]),
                      "kernels_added_bytes": mib(r["kernels_added_bytes"]),
                      "expected_at_limit_bytes": mib(r["expected_at_limit_bytes"]),
                      "stack": r["limits"]["stack_size"]} for r in facts["local_memory"]],
                    ["at", "stack", "max_resident_threads", "released_bytes", "released_per_thread",
                     "retaken_bytes", "expected_at_limit_bytes", "kernels_added_bytes"]),
             "", "(local memory, MiB: what a stack limit of 0 releases, what the old limit takes again, "
             "SMs x max threads per SM x the limit, and the difference the launched kernels added; per thread: bytes)"]
    return finish(work, "ok", f"context {mib(facts['context_bytes'])} MiB", lines)


# --- b: the checks ---------------------------------------------------------------------------------------------
def _check(work: Path, item: str, what: str, ok: bool, numbers: dict, note: str = "") -> int:
    doc = {"item": item, "what": what, "status": "pass" if ok else "fail", "numbers": numbers, "note": note}
    (work / "check.json").write_text(json.dumps(doc, indent=1, default=str))
    return finish(work, "ok" if ok else "fail", f"{doc['status']}: {what}",
                  [f"**{doc['status']}**: {what}. {note}", "", "```", json.dumps(numbers, default=str)[:1500], "```"])


def check_4(work: Path) -> int:
    """A point alone, then the same point beside a foreign process holding 512 MiB: the worker finds its own PID
    (nvml_source pid) and counts the other process, or marks its reading shared."""
    from vramfit.measure.devices import nvml_devices
    from vramfit.measure.probe import NvmlProbe

    shape = {k: [v] for k, v in CHECK_SHAPE.items()}
    alone = only_point(sweep(work, "alone", [shape], {"compile": False}, FAST)[0], work, "alone")
    gpu = nvml_devices()[0][0]
    hog = subprocess.Popen([PY, "-c", "import torch, time; x = torch.empty(512 * 2**20, dtype=torch.uint8, "
                            "device='cuda'); torch.cuda.synchronize(); time.sleep(600)"])
    try:
        nv = NvmlProbe(gpu.gpu_uuid)
        for _ in range(60):
            if len(nv.processes() or []) >= 1:
                break
            time.sleep(0.5)
        shared = only_point(sweep(work, "beside", [shape], {"compile": False}, FAST)[0], work, "beside")
    finally:
        hog.kill()
    nums = {k: {f: p.get(f) for f in ("status", "nvml_bytes", "nvml_source", "nvml_pid_match", "foreign_procs")}
            for k, p in (("alone", alone), ("beside_512MiB", shared))}
    same = bool(alone.get("nvml_bytes") and shared.get("nvml_bytes")
                and abs(shared["nvml_bytes"] / alone["nvml_bytes"] - 1) < 0.05)
    ok = (alone["status"] == shared["status"] == "ok" and alone.get("nvml_source") == "pid"
          and (shared.get("foreign_procs") or 0) >= 1
          and (shared.get("nvml_source") == "device-shared" or (shared.get("nvml_source") == "pid" and same)))
    return _check(work, "4", "own PID found in NVML; a foreign process is counted, not measured", ok, nums,
                  f"MIG instance: {gpu.mig_parent_uuid is not None}")


def check_5(work: Path) -> int:
    """get_device_properties allocates nothing and NVML lists no process before the context; then a short
    `train --measure` stores its point on this GPU (by torch's UUID) with a context and a per-PID reading."""
    code = ("import json, os, torch\nfrom vramfit.measure.devices import nvml_devices, torch_uuid\n"
            "from vramfit.measure.probe import NvmlProbe\n"
            "g = nvml_devices()[0][0]; nv = NvmlProbe(g.gpu_uuid); pid = os.getpid()\n"
            "b = nv.device_used(); p = torch.cuda.get_device_properties(0); a = nv.device_used()\n"
            "listed = pid in [q for q, _ in nv.processes() or []]\n"
            "torch.empty(1, device='cuda'); torch.cuda.synchronize(); c = nv.device_used()\n"
            "print(json.dumps({'props_delta': a - b, 'context_delta': c - a, 'listed_before_context': listed, "
            "'listed_after_context': pid in [q for q, _ in nv.processes() or []], "
            "'uuid_match': torch_uuid(p) == g.gpu_uuid}))")
    r = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return _check(work, "5", "get_device_properties / train --measure", False, {}, r.stderr[-300:])
    nums = json.loads(r.stdout.strip().splitlines()[-1])
    data = work / "data"
    subprocess.run(vramfit_cmd("prepare", "--input", str(corpus(work / "corpus.txt")), "--tokenizer", "char",
                               "--data-dir", str(data)), cwd=ROOT, capture_output=True, timeout=120)
    db = work / "train.sqlite"
    rc = run_logged(vramfit_cmd("train", "--measure", "--db", str(db), "--data-dir", str(data), "--out-dir",
                                str(work / "ckpt"), "--n-layer", "2", "--n-head", "4", "--n-embd", "128",
                                "--block-size", "128", "--batch-size", "8", "--max-iters", "20", "--eval-interval",
                                "1000", "--eval-iters", "2", "--compile", "false", "--device", "cuda"),
                    work / "train.log", left() - 5)
    for folder in (work / "ckpt", data):  # a checkpoint and a prepared corpus are no evidence, and large
        shutil.rmtree(folder, ignore_errors=True)
    rows = points(db)
    p = rows[-1] if rows else {}
    nums.update({k: p.get(k) for k in ("gpu_uuid", "context_bytes", "nvml_bytes", "nvml_source", "idle_baseline",
                                       "alloc_conf")}, train_rc=rc)
    ok = (nums["props_delta"] < 2 * MIB and not nums["listed_before_context"] and nums["listed_after_context"]
          and nums["uuid_match"] and rc == 0 and (p.get("context_bytes") or 0) > 0 and p.get("nvml_source") == "pid")
    return _check(work, "5", "get_device_properties allocates nothing; NVML lists the process once its context "
                  "exists; train --measure finds its GPU by torch's UUID", ok, nums)


def check_6(work: Path) -> int:
    """Batches 4, 64, 256 of a mid-size shape on an emulated 3 GiB card: the ok points stay within the card by
    NVML, the large batch is an oom, the non-allocator bytes are recorded; and this card's NVML total beside
    vramfit.cards."""
    from vramfit.cards import CARDS
    from vramfit.measure.devices import nvml_devices

    cap = 3 * 2**30
    shape = {**{k: [v] for k, v in CHECK_SHAPE.items()}, "n_layer": [4], "n_embd": [512], "block_size": [512],
             "batch_size": [4, 64, 256]}
    rows, _ = sweep(work, "card-3g", [shape], {"compile": False}, FAST, "--emulate-vram", "3G")
    ok_rows = [p for p in rows if p["status"] == "ok"]
    nums = {"points": [{k: p.get(k) for k in ("batch_size", "status", "nvml_bytes", "non_allocator_bytes",
                                               "allocator_cap_bytes", "context_bytes", "error")} for p in rows]}
    gpu = nvml_devices()[0][0]
    nums["nvml_total"] = gpu.total_memory_bytes
    nums["cards_entry"] = {c.name: c.total_bytes for c in CARDS.values()
                           if c.label.split(" (")[0].lower() == gpu.device_name.lower()} or "not in vramfit.cards"
    ok = (bool(ok_rows) and all((p.get("nvml_bytes") or 0) <= cap for p in ok_rows)
          and any(p["status"] == "oom" for p in rows)
          and all(p.get("non_allocator_bytes") is not None for p in ok_rows))
    return _check(work, "6", "emulated 3 GiB card: ok points within it by NVML, an oom past it, non-allocator bytes "
                  "recorded", ok, nums)


def check_7(work: Path) -> int:
    """The peak formula (nvml_bytes = NVML now - memory_reserved() + max_memory_reserved()) assumes NVML counts the
    allocator's segments one for one: reserve 1 GiB, then return it (empty_cache); NVML of this process must move
    by the reserved delta within 2 MiB both ways."""
    code = ("import json, os, torch\nfrom vramfit.measure.devices import nvml_devices\n"
            "from vramfit.measure.probe import NvmlProbe\n"
            "nv = NvmlProbe(nvml_devices()[0][0].gpu_uuid); pid = os.getpid()\n"
            "def read():\n    torch.cuda.synchronize(); return nv.process_used(pid), torch.cuda.memory_reserved()\n"
            "torch.empty(1, device='cuda'); n0, r0 = read()\n"
            "x = torch.empty(2**30, dtype=torch.uint8, device='cuda'); n1, r1 = read()\n"
            "del x; torch.cuda.empty_cache(); n2, r2 = read()\n"
            "print(json.dumps({'nvml': [n0, n1, n2], 'reserved': [r0, r1, r2]}))")
    r = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return _check(work, "7", "NVML counts reserved bytes one for one", False, {}, r.stderr[-300:])
    nums = json.loads(r.stdout.strip().splitlines()[-1])
    (n0, n1, n2), (r0, r1, r2) = nums["nvml"], nums["reserved"]
    ok = None not in (n0, n1, n2) and abs((n1 - n0) - (r1 - r0)) <= 2 * MIB and abs((n1 - n2) - (r1 - r2)) <= 2 * MIB
    nums["gap_grow"] = None if n1 is None else (n1 - n0) - (r1 - r0)
    nums["gap_free"] = None if n2 is None else (n1 - n2) - (r1 - r2)
    return _check(work, "7", "NVML moves with the allocator's reserved bytes (1 GiB reserved and returned), the "
                  "assumption behind the peak formula", ok, nums)


def check_8(work: Path) -> int:
    """One compiled point: the peak's steps start at 2 and what step 1 alone held is kept beside."""
    shape = {k: [v] for k, v in CHECK_SHAPE.items()}
    rows, _ = sweep(work, "compiled", [shape], {**COMPILED}, FAST)
    p = rows[-1] if rows else {"status": "missing"}
    nums = {k: p.get(k) for k in ("status", "peak_steps", "nvml_bytes", "step1_nvml_bytes", "reserved_bytes",
                                  "step1_reserved_bytes", "compile", "compile_s", "worker", "error")}
    ok = p.get("status") == "ok" and (p.get("peak_steps") or [0])[0] == 2 and p.get("compile") is True
    return _check(work, "8", "compiled point: step 1 (compilation, autotuning) left out of the peak", ok, nums)


def check_9(work: Path) -> int:
    """NCCL's memory outside the allocator on as many ranks as there are GPUs (1: a lower bound)."""
    from vramfit.measure.devices import nvml_devices
    from vramfit.plan.ddp import NCCL_BYTES_ASSUMED, measure_ddp

    n = min(2, len(nvml_devices()[0]))
    ranks = measure_ddp({**CHECK_SHAPE}, nproc=n, recipe={"compile": False}, measure={"max_iters": 8},
                        device="cuda", timeout=max(30.0, left() - 5))
    vals = [r.get("nccl_bytes") for r in ranks]
    ok = bool(ranks) and all(v is not None for v in vals) and all(r.get("status") == "ok" for r in ranks)
    return _check(work, "9", "NCCL's memory outside the allocator", ok,
                  {"ranks": n, "nccl_bytes": vals, "assumed": NCCL_BYTES_ASSUMED,
                   "errors": [r.get("error") for r in ranks if r.get("error")]},
                  "1 rank: a lower bound (no peer buffers)" if n == 1 else f"{n} ranks")


# --- c: the compiled sweep with the dry-run estimate beside -------------------------------------------------------
def estimates(spec: Path, out: Path) -> int:
    """The dry-run estimate of each point of a sweep (a child of the sweep stage, run beside the sweep)."""
    from gpt.config import GPTConfig
    from vramfit.dryrun.estimate import EstimateRequest, estimate_step, parse_capability, target_bytes
    from vramfit.recipe import Recipe

    doc = json.loads(spec.read_text())
    recipe = Recipe.from_dict(doc["recipe"])
    cap = parse_capability(doc["capability"]) if doc.get("capability") else (8, 0)
    rows = []
    for p in doc["points"]:
        t = time.perf_counter()
        mc = GPTConfig(p["n_layer"], p["n_head"], p["n_embd"], p["block_size"], p["vocab_size"])
        try:
            est = estimate_step(EstimateRequest(mc, p["batch_size"], recipe, doc["target"], cap, headline_only=True))
            row = {**p, **{f"est_{t_}": target_bytes(est, t_) for t_ in ("nvml", "reserved", "allocated")},
                   "est_attention": est.attention, "est_build": est.cuda_build}
        except Exception as exc:  # noqa: BLE001 - one point's estimate failing is a finding
            row = {**p, "est_error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append({**row, "est_s": round(time.perf_counter() - t, 2)})
        out.write_text(json.dumps(rows, indent=1, default=str))  # each as it is done: a cut-off run keeps them
    return 0


def _compare(rows: list[dict], ests: list[dict], cuda: bool) -> tuple[list[dict], list[str]]:
    """Measured points beside their estimates: one row per point, and the markdown table."""
    by_shape = {tuple(e[k] for k in SHAPE): e for e in ests}
    out = []
    for p in rows:
        e = by_shape.get(tuple(int(p[k]) for k in SHAPE), {})
        row = {"shape": f"L{p['n_layer']} H{p['n_head']} C{p['n_embd']} T{p['block_size']} V{p['vocab_size']}",
               "batch": p["batch_size"], "status": p["status"]}
        if cuda:
            for target, col in (("nvml", "nvml_bytes"), ("reserved", "reserved_bytes"),
                                ("allocated", "allocated_bytes")):
                m, est = p.get(col), e.get(f"est_{target}")
                row[f"{target} GiB"] = gib(m)
                row[f"est {target} GiB"] = gib(est)
                row[f"{target} err"] = (f"{est / m - 1:+.1%}" if est and m and m == m else "-")
            row.update(context=mib(p.get("context_bytes")), attention=e.get("est_attention", "-"),
                       compile_s=p.get("compile_s"))
        else:
            m, est = p.get("tracked_bytes"), e.get("est_nvml")
            row.update({"tracked MiB": mib(m), "est MiB": mib(est),
                        "err": f"{est / m - 1:+.1%}" if est and m and m == m else "-",
                        "rss MiB": mib(p.get("rss_bytes"))})
        row["error"] = (p.get("error") or e.get("est_error") or "")[:120]
        out.append(row)
    cols = list(out[0]) if out else ["shape"]
    return out, table(out, cols)


def _compiled_sweep(work: Path, name: str, blocks: list[dict], recipe: dict, measure: dict, *extra: str) -> int:
    """A sweep with the dry-run estimates computed beside it (a second process, on the CPU), then joined."""
    from vramfit.measure.devices import nvml_devices

    cuda = not no_cuda()
    gpus = nvml_devices()[0] if cuda else []
    spec = work / f"{name}-estimate-spec.json"
    est_file = work / f"{name}-estimates.json"
    spec.write_text(json.dumps({"points": grid_points(blocks), "recipe": recipe, "target": "cuda" if cuda else "cpu",
                                "capability": gpus[0].compute_capability if gpus else None}))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the estimator is CPU-only: it must not take GPU memory
    with (work / f"{name}-estimates.log").open("wb") as log:
        est_proc = subprocess.Popen([PY, str(Path(__file__).resolve()), "estimate", str(spec), str(est_file)],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows, rc = sweep(work, name, blocks, recipe, measure, *extra, device="cuda" if cuda else "cpu", reserve_s=12)
    try:
        est_proc.wait(timeout=max(1.0, left() - 4))
    except subprocess.TimeoutExpired:
        os.killpg(est_proc.pid, signal.SIGKILL)
        est_proc.wait()
    ests = json.loads(est_file.read_text()) if est_file.is_file() else []
    compared, lines = _compare(rows, ests, cuda)
    (work / f"{name}-compare.json").write_text(json.dumps(compared, indent=1, default=str))
    n_ok = sum(r["status"] == "ok" for r in compared)
    note = (f"{len(compared)} of {len(grid_points(blocks))} points measured ({n_ok} ok), {len(ests)} estimated"
            + ("; cut off by the time limit" if rc == 124 else f"; sweep exit {rc}" if rc else ""))
    lines = [f"{note}. Measured: NVML (the process's peak), max_memory_reserved, max_memory_allocated; est: the dry "
             "run of the same config (err = est / measured - 1)." if cuda else
             f"{note}. CPU rehearsal: tracked bytes vs the dry run's CPU estimate.", "", *lines]
    status = "timeout" if rc == 124 else "ok" if compared and rc == 0 else "fail"
    return finish(work, status, note, lines)


def sweep_gpt2(work: Path) -> int:
    """GPT-2 124M at block 1024, batch 4/8/16, compiled bf16 with fused AdamW."""
    if why := no_cuda():
        return finish(work, "skip", why)
    return _compiled_sweep(work, "gpt2", SWEEP_GPT2, COMPILED, {**FAST, "timeout_s": 300})


def sweep_small(work: Path) -> int:
    """Small compiled shapes whose 1-10 MiB activations each open a 20 MiB segment (kLargeBuffer) of the caching
    allocator, where reserved departs most from allocated. CPU rehearsal: two tiny eager points."""
    if no_cuda():
        tiny = {"n_layer": [1], "n_head": [2], "n_embd": [64], "block_size": [64], "vocab_size": [256],
                "batch_size": [2, 4]}
        return _compiled_sweep(work, "small", [tiny], {"compile": False}, {**FAST, "threads": 1})
    return _compiled_sweep(work, "small", SWEEP_SMALL, COMPILED, FAST)


# --- d: tests -------------------------------------------------------------------------------------------------
def tests(work: Path) -> int:
    """The fork-safety test on this build (the zygote's own report, and a CUDA point forked from it), then the
    quick gpu-marked tests where pytest is installed and CUDA is here."""
    import importlib.util

    from vramfit.measure.devices import resolve
    from vramfit.recipe import Recipe
    from vramfit.sweep.forkserver import ForkServer, fork_available, fork_unsafe
    from vramfit.sweep.grid import Measure
    from vramfit.sweep.pool import WorkerPool, point_spec, worker_env

    cuda = not no_cuda()
    lines, ok = [], True
    possible, why_not = fork_available()
    if not possible:
        lines.append(f"- fork server: not used here ({why_not})")
    else:
        d = resolve("cuda" if cuda else "cpu", None)[0]
        r = d.resolve(Recipe(compile=False))
        measure = Measure(min_iters=4, max_iters=8, timeout_s=120, threads=1)
        env = worker_env(d, r, measure)
        server = ForkServer(env)
        try:
            info = dict(server.info)
        finally:
            server.close()
        unsafe = fork_unsafe(info, d.torch_device)
        lines.append(f"- fork server's fork-safety test: cuda_initialized {info.get('cuda_initialized')}, bad_fork "
                     f"{info.get('bad_fork')}, import {info.get('import_s')} s -> "
                     f"{'CUDA points spawned: ' + unsafe if unsafe else 'fork-safe'}")
        ok = not unsafe
        if cuda:
            spec = point_spec({**CHECK_SHAPE, "batch_size": 2}, r, d, measure, None)
            with WorkerPool() as pool:
                rec = pool.run(spec, env, 180)
            lines.append(f"- a CUDA point through the pool: worker {rec.get('worker')}, status {rec.get('status')}, "
                         f"nvml {mib(rec.get('nvml_bytes'))} MiB {rec.get('error') or ''}")
            ok = ok and rec.get("status") == "ok" and rec.get("worker") == "fork"
    if not cuda:
        lines.append("- gpu-marked tests: not run (no CUDA: they would all skip)")
    elif importlib.util.find_spec("pytest") is None:
        lines.append("- gpu-marked tests: pytest is not installed here")
    else:
        files = ["tests/test_forkserver.py", "tests/test_sweep_gpu.py", "tests/test_cuda_measure.py"]
        rc = run_logged([PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-x", *files],
                        work / "pytest.log", left() - 5)
        tail = (work / "pytest.log").read_text(errors="replace").strip().splitlines()[-1:]
        lines.append(f"- `pytest -m gpu {' '.join(files)}`: exit {rc} ({tail[0] if tail else ''})")
        ok = ok and rc == 0
    return finish(work, "ok" if ok else "fail", "", lines)


# --- e: only with time left ------------------------------------------------------------------------------------
def emulated_8g(work: Path) -> int:
    """GPT-2 124M compiled at batch 2/4/8 on an emulated 8 GiB card, the estimate beside: which fit."""
    if why := no_cuda():
        return finish(work, "skip", why)
    return _compiled_sweep(work, "card-8g", [{**GPT2, "batch_size": [2, 4, 8]}], COMPILED, {**FAST, "timeout_s": 300},
                           "--emulate-vram", "8G")


def dynamic_batch(work: Path) -> int:
    """experiments/bench_dynamic_batch.py on the compile_gpu grid: static vs dynamic batch dimension."""
    if why := no_cuda():
        return finish(work, "skip", why)
    out = work / "dynamic-batch.md"
    rc = run_logged([PY, "experiments/bench_dynamic_batch.py", "--grid", "experiments/grids/compile_gpu.toml",
                     "--device", "cuda", "--out", str(out)], work / "dynamic-batch.log", left() - 5)
    lines = out.read_text().splitlines() if out.is_file() else []
    return finish(work, "ok" if rc == 0 else "fail", f"exit {rc}", lines)


def demo(work: Path) -> int:
    """scripts/demo.sh (the README's main command) with this python and a scratch database."""
    if why := no_cuda():
        return finish(work, "skip", why)
    env = {**os.environ, "VRAMFIT_PYTHON": PY, "SHAKESPEARE": str(corpus(work / "corpus.txt", 1_000_000)),
           "DB": str(work / "demo.sqlite"), "ITERS": "100"}
    rc = run_logged(["bash", "scripts/demo.sh"], work / "demo.log", left() - 5, env=env)
    found = [x for x in (work / "demo.log").read_text(errors="replace").splitlines() if "vs measured" in x]
    return finish(work, "ok" if rc == 0 else "fail", f"exit {rc}", found[-5:])


STAGES = {"facts-system": facts_system, "facts-context": facts_context, "check-4": check_4, "check-5": check_5,
          "check-6": check_6, "check-7": check_7, "check-8": check_8, "check-9": check_9, "sweep-gpt2": sweep_gpt2,
          "sweep-small": sweep_small, "tests": tests, "emulated-8g": emulated_8g, "dynamic-batch": dynamic_batch,
          "demo": demo}
CUDA_ONLY = {"facts-context", "check-4", "check-5", "check-6", "check-7", "check-8", "check-9"}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "estimate":
        return estimates(Path(argv[1]), Path(argv[2]))
    if len(argv) != 2 or argv[0] not in STAGES:
        print(f"usage: gpu_stages.py STAGE WORKDIR (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    name, work = argv[0], Path(argv[1])
    work.mkdir(parents=True, exist_ok=True)
    if name in CUDA_ONLY and (why := no_cuda()):
        return finish(work, "skip", why)
    try:
        return STAGES[name](work)
    except Exception as exc:  # noqa: BLE001 - a stage that crashes is a failed stage, with why
        import traceback

        traceback.print_exc()
        return finish(work, "fail", f"{type(exc).__name__}: {str(exc)[:300]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
