"""Dry-run estimator: the fake-tensor estimate against real tracked CPU steps, CUDA emulation, API, CLI."""

import ctypes
import gc
import json
import os
import sys

import pytest
import torch
from cuda_steps import eager_cuda_peak

from gpt.config import GPTConfig
from gpt.data import synthetic_batch
from gpt.errors import ConfigError
from gpt.train import Trainer
from vramfit.cli import main
from vramfit.dryrun.estimate import (
    CUDA_CONTEXT_BYTES,
    Estimate,
    EstimateRequest,
    device_bytes,
    estimate_step,
    parse_capability,
    parse_recipe,
    target_bytes,
)
from vramfit.dryrun.estimator import Estimator
from vramfit.dryrun.fake_step import (
    CATEGORIES,
    cublas_workspace_bytes,
    cuda_attention_kernel,
    cuda_kernel_workspace,
    run_step,
    train_config,
)
from vramfit.errors import VramfitError
from vramfit.measure.probe import StorageTracker
from vramfit.recipe import Recipe


@pytest.fixture(scope="module", autouse=True)
def _return_freed_heap_to_the_os():
    """The real CPU steps here leave freed, still-resident heap behind (glibc raises its mmap threshold); trim it
    so later tests that measure RSS growth in this process see fresh pages."""
    yield
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# (shape, batch, recipe, expected phase of the peak): forward peaks need the math attention path with long
# context and a tiny model; optimizer peaks need parameters to dominate and an optimizer with temporaries.
CASES = [
    (dict(n_layer=1, n_head=1, n_embd=32, block_size=256, vocab_size=64), 1,
     dict(dtype="bfloat16", optimizer="fused", attn_kernel="math"), "forward"),
    (dict(n_layer=4, n_head=1, n_embd=32, block_size=256, vocab_size=64), 1,
     dict(dtype="bfloat16", optimizer="loop", attn_kernel="math"), "forward"),
    (dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100), 4,
     dict(dtype="float32", optimizer="fused"), "backward"),
    (dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100), 4,  # bf16: the fp32 loss path peaks
     dict(dtype="bfloat16", optimizer="fused"), "forward"),                    # at the end of forward
    (dict(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=8192), 4,
     dict(dtype="float32", optimizer="foreach"), "backward"),
    (dict(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=256, dropout=0.1, bias=False), 2,
     dict(dtype="bfloat16", optimizer="fused", attn_kernel="math"), "backward"),
    (dict(n_layer=3, n_head=3, n_embd=96, block_size=64, vocab_size=512), 2,
     dict(dtype="float32", optimizer="loop"), "backward"),
    (dict(n_layer=4, n_head=4, n_embd=256, block_size=16, vocab_size=64), 1,
     dict(dtype="float32", optimizer="foreach"), "optimizer"),
    (dict(n_layer=4, n_head=4, n_embd=256, block_size=16, vocab_size=64), 8,
     dict(dtype="bfloat16", optimizer="loop"), "optimizer"),
    (dict(n_layer=4, n_head=1, n_embd=256, block_size=16, vocab_size=8192), 1,
     dict(dtype="bfloat16", optimizer="foreach"), "optimizer"),
    (dict(n_layer=4, n_head=4, n_embd=256, block_size=16, vocab_size=64), 1,
     dict(dtype="float32", optimizer="loop"), "optimizer"),
]


def real_tracked_peak(mc: GPTConfig, batch: int, recipe: Recipe) -> int:
    """Two real `Trainer.step` calls on the CPU under the sweep's own storage tracker (64 B CPU rounding)."""
    r = recipe.resolved("cpu")
    cfg = train_config(mc, batch, r.dtype, r.optimizer, r.attn_kernel, grad_clip=1.0, accum=1)
    gen = torch.Generator().manual_seed(0)
    with StorageTracker(round_to=64) as tracker:
        trainer = Trainer(cfg, mc, device="cpu")
        tracker.reset_peak()
        for _ in range(2):
            trainer.step(lambda: synthetic_batch(batch, mc.block_size, mc.vocab_size, gen, "cpu"))
    return tracker.peak


_CASE_ESTIMATES: dict[str, Estimate] = {}


def case_estimate(shape: dict, batch: int, recipe_d: dict) -> Estimate:
    """The CPU estimate of one of CASES, computed once per test session."""
    key = json.dumps([shape, batch, recipe_d], sort_keys=True)
    if key not in _CASE_ESTIMATES:
        req = EstimateRequest(GPTConfig(**shape), batch, Recipe(**recipe_d), target="cpu")
        _CASE_ESTIMATES[key] = estimate_step(req)
    return _CASE_ESTIMATES[key]


@pytest.mark.parametrize("shape,batch,recipe_d,phase", CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_estimate_equals_real_tracked_cpu_peak(shape, batch, recipe_d, phase):
    mc, recipe = GPTConfig(**shape), Recipe(**recipe_d)
    est = case_estimate(shape, batch, recipe_d)
    real = real_tracked_peak(mc, batch, recipe)
    assert abs(est.peak_bytes - real) <= 0.005 * real, (est.peak_bytes, real)
    assert est.peak_phase == phase, est.peak_op
    # the same run for real under the estimator's own tracker: same peak, same phase and op
    same = run_step(EstimateRequest(mc, batch, recipe, target="cpu"), fake=False)
    assert (same.peak_bytes, same.peak_phase, same.peak_op) == (est.peak_bytes, est.peak_phase, est.peak_op)
    assert sum(est.breakdown.values()) == est.peak_bytes
    assert est.breakdown["parameters"] >= mc.n_params() * 4
    assert set(est.breakdown) == set(CATEGORIES)


def test_cases_cover_every_phase_and_both_dtypes():
    """The estimator itself (fake tensors only) puts the peak in each of the three phases across CASES, under
    both dtypes: a change that moves every peak to one phase, or ignores the recipe's dtype, fails here."""
    estimates = [case_estimate(shape, batch, recipe_d) for shape, batch, recipe_d, _ in CASES]
    assert [e.peak_phase for e in estimates] == [c[3] for c in CASES]
    assert {e.peak_phase for e in estimates} == {"forward", "backward", "optimizer"}
    assert [e.dtype for e in estimates] == [c[2]["dtype"] for c in CASES]
    assert {e.dtype for e in estimates} == {"float32", "bfloat16"}


def test_breakdown_and_steady_state():
    mc = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=1000)
    est = estimate_step(EstimateRequest(mc, 4, Recipe(dtype="float32", optimizer="fused"), target="cpu"))
    b = est.breakdown
    p = mc.n_params() * 4
    assert p <= b["parameters"] < p * 1.01
    assert b["optimizer_state"] >= 2 * p  # Adam m and v exist in the second step
    assert b["logits_loss"] > 0 and b["activations"] > 0
    assert est.peak_step == 2 and est.step_peaks[1] == est.peak_bytes >= est.step_peaks[0]
    assert 3 * p <= est.steady_bytes < 3.05 * p  # parameters + m + v (+ step counters) after zero_grad
    d = est.to_dict()
    assert Estimate.from_dict(json.loads(json.dumps(d))) == est


def test_attention_kernel_choice_follows_the_gpu():
    """PyTorch's sdp_utils.cpp (see tests/test_sdpa.py for the individual rules)."""
    assert cuda_attention_kernel("default", "bfloat16", 64, (8, 0)) == "flash"
    assert cuda_attention_kernel("default", "float16", 64, (9, 0)) == "cudnn"  # cuDNN first on Hopper
    assert cuda_attention_kernel("default", "float16", 64, (7, 5)) == "efficient"
    assert cuda_attention_kernel("default", "float32", 64, (8, 0)) == "efficient"
    assert cuda_attention_kernel("default", "bfloat16", 320, (8, 0)) == "efficient"
    assert cuda_attention_kernel("default", "float16", 36, (8, 6)) == "flash"  # flash pads 36 to 40 itself
    assert cuda_attention_kernel("math", "bfloat16", 64, (9, 0)) == "math"
    with pytest.raises(ConfigError, match="flash attention cannot run"):
        cuda_attention_kernel("flash", "float32", 64, (8, 0))
    with pytest.raises(ConfigError, match="flash attention cannot run"):
        cuda_attention_kernel("flash", "float16", 64, (7, 5))


def test_cuda_emulation_kernels_dtypes_and_rounding():
    mc = GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=512, vocab_size=512)
    peaks = {}
    for kernel in ("flash", "efficient", "math"):
        est = estimate_step(EstimateRequest(mc, 2, Recipe(dtype="bfloat16", attn_kernel=kernel), target="cuda"))
        assert est.attention == kernel and est.rounding == 512 and est.compute_capability == (8, 0)
        peaks[kernel] = est.peak_bytes
    # math keeps B*H*T*T scores; flash and efficient are linear in T
    assert peaks["math"] > 1.3 * peaks["efficient"] and peaks["math"] > 1.3 * peaks["flash"]
    auto = estimate_step(EstimateRequest(mc, 2, Recipe(), target="cuda"))
    assert (auto.dtype, auto.attention, auto.optimizer) == ("bfloat16", "flash", "fused")
    assert auto.breakdown["workspace"] >= 2 * cublas_workspace_bytes((8, 0))  # forward and autograd threads
    assert auto.compiled and any("torch.compile emulated" in n for n in auto.notes)  # compile defaults on for CUDA
    turing = estimate_step(EstimateRequest(mc, 2, Recipe(optimizer="foreach"), target="cuda", capability=(7, 5)))
    assert (turing.dtype, turing.attention) == ("float16", "efficient")  # fp16 + GradScaler path
    fp32 = estimate_step(EstimateRequest(mc, 2, Recipe(dtype="float32"), target="cuda"))
    assert fp32.attention == "efficient" and fp32.peak_bytes > auto.peak_bytes
    assert all(v % 512 == 0 for v in fp32.breakdown.values())


def test_flash_backward_workspace_formula():
    q = torch.empty(2, 4, 200, 64, device="meta", dtype=torch.bfloat16)
    args = (q, q, q)  # the backward op's (grad_out, query, key, ...)
    ws = cuda_kernel_workspace(torch.ops.aten._scaled_dot_product_flash_attention_backward.default, args)
    assert ws == 2 * 4 * 256 * 4 + 2 * 256 * 4 * 64 * 4  # softmax_d + dq_accum, fp32, T rounded to 128
    assert cuda_kernel_workspace(torch.ops.aten.mm.default, (q, q)) == 0


def test_shape_larger_than_this_machines_ram_is_estimated():
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mc = GPTConfig(n_layer=2, n_head=64, n_embd=8192, block_size=2048, vocab_size=50304)
    est = estimate_step(EstimateRequest(mc, 16, Recipe(dtype="bfloat16"), target="cuda"))
    assert est.peak_bytes > ram
    assert est.breakdown["parameters"] >= mc.n_params() * 4


def test_gpt2_small_estimate_is_plausible():
    mc = GPTConfig()  # GPT-2 124M, block 1024
    est = estimate_step(EstimateRequest(mc, 12, Recipe(dtype="bfloat16"), target="cuda"))  # compiles (CUDA default)
    eager, comp = est.modes["eager"], est.modes["compiled"]
    assert 10 * 2**30 < eager["peak_bytes"] < 20 * 2**30
    assert 7 * 2**30 < comp["peak_bytes"] < 0.8 * eager["peak_bytes"]  # Inductor's fused loss, saved set
    assert est.peak_bytes == comp["peak_bytes"] and est.peak_phase == "backward"
    assert eager["seconds"] > 0 and est.seconds >= eager["seconds"]  # its speed: experiments/bench_estimate.py


def test_child_estimate_matches_in_process():
    """The same requests in this process, in one fresh child and in two warm workers: the same estimates."""
    mc = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=256)
    reqs = [EstimateRequest(mc, b, Recipe(dtype="bfloat16", optimizer="foreach"), "cuda", (9, 0)) for b in (2, 5)]
    with Estimator("process") as here, Estimator("child") as child:
        a, b = here.estimate(reqs), child.estimate(reqs)
    assert [(e.peak_bytes, e.peak_phase, e.peak_op, e.breakdown, e.process) for e in a] == \
        [(e.peak_bytes, e.peak_phase, e.peak_op, e.breakdown, e.process) for e in b]
    assert a[0].peak_bytes < a[1].peak_bytes and child.ran == 2
    with pytest.raises(VramfitError, match="flash attention cannot run"), Estimator("child") as child:
        child.estimate([EstimateRequest(mc, 2, Recipe(dtype="float32", attn_kernel="flash"), "cuda")])


def test_a_dying_estimator_process_is_one_clean_error(monkeypatch):
    import vramfit.dryrun.estimator as mod

    req = EstimateRequest(GPTConfig(n_layer=1, n_head=1, n_embd=32, block_size=16, vocab_size=64), 1, target="cpu")
    for code, msg in (("import os; os.abort()", r"died \(SIGABRT\)"), ("import sys; sys.exit('error: boom')", "boom"),
                      ("pass", "printed no result")):
        monkeypatch.setattr(mod, "CHILD", (sys.executable, "-c", code))
        with pytest.raises(VramfitError, match=msg), Estimator("child") as child:
            child.estimate([req])


def test_bad_requests_fail_in_the_callers_process():
    mc = GPTConfig(n_layer=1, n_head=1, n_embd=32, block_size=16, vocab_size=64)
    for kw, msg in (({"target": "tpu"}, "unknown target"), ({"batch_size": 0}, "batch_size must be a positive"),
                    ({"capability": "9.x"}, "cannot read compute capability"),
                    ({"recipe": Recipe(alloc_conf="max_split_size_mb:1")}, "PYTORCH_CUDA_ALLOC_CONF")):
        with pytest.raises((VramfitError, ConfigError), match=msg):
            EstimateRequest(**{"model": mc, "batch_size": 1, **kw})
    with pytest.raises(VramfitError, match="unknown estimator place"):
        Estimator("cloud")
    req = EstimateRequest(mc, 3, Recipe(dtype="bfloat16", compile=True), "cuda", "8.6", headline_only=True)
    assert req.capability == (8, 6) and EstimateRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req


def test_device_bytes_is_reserved_plus_the_context_table():
    mc = GPTConfig(n_layer=1, n_head=1, n_embd=32, block_size=16, vocab_size=64)
    est = estimate_step(EstimateRequest(mc, 1, Recipe(dtype="bfloat16"), target="cuda"))
    a, p = est.allocator, est.process
    assert a["peak_reserved"] >= a["peak_allocated"] >= est.peak_bytes
    assert a["peak_reserved"] % (2 * 2**20) == 0  # segments are 2 MiB, 20 MiB or multiples of 2 MiB
    assert device_bytes(est) == a["peak_reserved"] + p["context_bytes"] and "pytorch/pytorch#" in p["context_source"]
    assert target_bytes(est, "reserved") == a["peak_reserved"] and target_bytes(est, "allocated") == a["peak_allocated"]
    assert target_bytes(est, "nvml") == device_bytes(est) and target_bytes(est, "tracked") == est.peak_bytes
    expandable = estimate_step(EstimateRequest(mc, 1, Recipe(dtype="bfloat16", alloc_conf="expandable_segments:True"),
                                               target="cuda"))
    assert expandable.allocator["conf"]["expandable_segments"] and expandable.peak_bytes == est.peak_bytes
    old = Estimate.from_dict({**est.to_dict(), "allocator": {}, "process": {}})  # from an older vramfit
    assert device_bytes(old) == int(est.peak_bytes * 1.05) + CUDA_CONTEXT_BYTES


def test_parsers():
    assert parse_capability("8.6") == (8, 6) and parse_capability("sm90") == (9, 0) and parse_capability("75") == (7, 5)
    with pytest.raises(VramfitError):
        parse_capability("eight")
    assert parse_recipe(None) == Recipe()
    assert parse_recipe("dtype=bfloat16, optimizer=foreach,compile=false") == Recipe(
        dtype="bfloat16", optimizer="foreach", compile=False)
    with pytest.raises(VramfitError):
        parse_recipe("dtype=float8")
    with pytest.raises(VramfitError):
        parse_recipe("nosuchfile.toml")


def test_recipe_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[recipe]\ndtype = "float32"\nattn_kernel = "math"\n')
    assert parse_recipe(str(path)) == Recipe(dtype="float32", attn_kernel="math")


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


SMALL = ["--n-layer", 2, "--n-head", 2, "--n-embd", 64, "--block-size", 32, "--batch-size", 2, "--vocab", 128]


def test_cli_estimate_json_and_text(capsys):
    rc, out, err = run(capsys, "estimate", *SMALL, "--target", "cpu", "--json", "--recipe", "dtype=bfloat16")
    assert rc == 0, err
    d = json.loads(out)
    assert d["peak_phase"] in ("forward", "backward", "optimizer") and d["peak_bytes"] > 0
    assert d["dtype"] == "bfloat16" and d["target"] == "cpu"
    rc, out, err = run(capsys, "estimate", *SMALL, "--capability", "8.6")
    assert rc == 0, err
    assert "peak" in out and "flash attention" in out and "CUDA context" in out


@pytest.mark.parametrize("args,msg", [
    (["--n-layer", 2, "--n-head", 3, "--n-embd", 64, "--block-size", 32, "--batch-size", 2], "divisible"),
    (["--n-layer", 2, "--n-head", 2, "--n-embd", 64, "--block-size", 32, "--batch-size", 0], "--batch-size"),
    (["--n-layer", 0, "--n-head", 2, "--n-embd", 64, "--block-size", 32, "--batch-size", 1], "--n-layer"),
    ([*SMALL, "--target", "tpu"], "unknown target"),
    ([*SMALL, "--recipe", "dtype=float8"], "dtype"),
    ([*SMALL, "--recipe", "colour=red"], "unknown recipe key"),
    ([*SMALL, "--capability", "x"], "compute capability"),
    ([*SMALL, "--target", "cpu", "--recipe", "dtype=float16"], "float16"),
    ([*SMALL, "--recipe", "dtype=float32,attn_kernel=flash"], "flash attention"),
])
def test_cli_estimate_bad_inputs_are_one_line(capsys, args, msg):
    rc, out, err = run(capsys, "estimate", *args)
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, err


GPU_CASES = [
    (GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=8192), 8, Recipe(dtype="bfloat16")),
    (GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65), 64, Recipe(dtype="bfloat16")),
    (GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=512, vocab_size=8192), 4, Recipe(dtype="float32")),
    (GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=512, vocab_size=8192), 4,
     Recipe(dtype="bfloat16", attn_kernel="math")),
    (GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304), 4,
     Recipe(dtype="bfloat16", optimizer="foreach")),
    (GPTConfig(n_layer=8, n_head=8, n_embd=1024, block_size=128, vocab_size=50304), 1,
     Recipe(dtype="float16", optimizer="foreach")),
]


@pytest.mark.gpu
@pytest.mark.parametrize("mc,batch,recipe", GPU_CASES)
def test_estimate_matches_cuda_max_memory_allocated(mc, batch, recipe):
    """On a GPU: eager steps, peak allocated after two steps vs the emulated estimate (within 3%)."""
    major, minor = torch.cuda.get_device_capability()
    recipe = Recipe(dtype=recipe.dtype, compile=False, optimizer=recipe.optimizer, attn_kernel=recipe.attn_kernel)
    est = estimate_step(EstimateRequest(mc, batch, recipe, target="cuda", capability=(major, minor)))
    r = recipe.resolved("cuda")
    real = eager_cuda_peak(mc, batch, r.dtype, r.optimizer, r.attn_kernel)
    assert abs(est.peak_bytes - real) <= 0.03 * real, (est.peak_bytes, real, est.peak_op)


def test_estimate_leaves_the_callers_rng_and_torch_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mc = GPTConfig(n_layer=1, n_head=1, n_embd=32, block_size=16, vocab_size=64)
    estimate_step(EstimateRequest(mc, 1, Recipe(dtype="bfloat16"), target="cuda"))
    assert torch.equal(torch.rand(3), expected)
    assert not torch.is_autocast_enabled("cpu")
