"""Planning nanochat runs: the CUDA kernels of nanochat's attention (`vramfit.dryrun.sdpa`), the dry run of its step
on an emulated GPU and compiled, ZeRO-2 per GPU (`vramfit.plan.ddp.zero2_state_bytes`) and `suggest --like` with a
`scripts/base_train.py` command line (`vramfit.plan.nanochat`).

The reference is karpathy/nanochat at 92d63d4: `nanochat/flash_attention.py` (FA3 or SDPA), `nanochat/optim.py`
(MuonAdamW's ZeRO-2 sharding), `scripts/base_train.py` (the flags, the total batch and the accumulation)."""

from __future__ import annotations

import pytest

from gpt.config import GPTConfig, nanochat_config
from vramfit.cli import main
from vramfit.dryrun import sdpa
from vramfit.dryrun.estimate import EstimateRequest, estimate_step
from vramfit.errors import VramfitError
from vramfit.plan.ddp import zero2_state_bytes
from vramfit.plan.nanochat import device_batches, is_base_train, largest
from vramfit.recipe import Recipe

NO_ENV: dict = {}
TINY = dict(n_layer=2, n_head=2, n_embd=64, block_size=256, vocab_size=256, arch="nanochat", n_kv_head=1,
            window_pattern="SL")


def test_fa3_where_nanochat_loads_it():
    """`_load_flash_attention_3`: Hopper (varunneal/flash-attention-3), sm80/86/89 (kernels-community/flash-attn3),
    not Blackwell; `_resolve_use_fa3`: bf16 only."""
    for cap in ((8, 0), (8, 6), (8, 9), (9, 0)):
        assert sdpa.fa3_loads(cap, "bfloat16", NO_ENV)
    assert not sdpa.fa3_loads((10, 0), "bfloat16", NO_ENV) and not sdpa.fa3_loads((12, 0), "bfloat16", NO_ENV)
    assert not sdpa.fa3_loads((9, 0), "float16", NO_ENV) and not sdpa.fa3_loads((7, 5), "bfloat16", NO_ENV)
    assert not sdpa.fa3_loads((9, 0), "bfloat16", {"VRAMFIT_FA3": "0"})
    assert sdpa.nanochat_kernels("default", "bfloat16", 128, (9, 0), gqa=True, env=NO_ENV) == \
        {"full": "fa3", "window": "fa3"}


def test_sdpa_fallback_follows_the_mask_and_gqa():
    """`_sdpa_attention`: is_causal for a full window, an explicit bool mask for a short one, enable_gqa under GQA;
    sdp_utils.cpp: flash refuses any mask (check_for_attn_mask) and takes GQA; memory-efficient takes the mask
    but not GQA (check_batch_size_and_num_heads_dense<false>); cuDNN takes both (first on sm90/10x); math all."""
    def kernels(cap, gqa, requested="default"):
        return sdpa.nanochat_kernels(requested, "bfloat16", 128, cap, gqa=gqa, env={"VRAMFIT_FA3": "0"},
                                     build=sdpa.CudaBuild())

    assert kernels((8, 0), gqa=False) == {"full": "flash", "window": "efficient"}
    assert kernels((8, 0), gqa=True) == {"full": "flash", "window": "math"}
    assert kernels((9, 0), gqa=True) == {"full": "cudnn", "window": "cudnn"}
    assert kernels((12, 0), gqa=True) == {"full": "flash", "window": "math"}  # no FA3 on Blackwell
    assert sdpa.nanochat_kernels("default", "float16", 128, (7, 5), gqa=False, env=NO_ENV,
                                 build=sdpa.CudaBuild()) == {"full": "efficient", "window": "efficient"}
    with pytest.raises(Exception, match="flash attention cannot run"):
        kernels((8, 0), gqa=False, requested="flash")  # forced flash: the short windows' mask


def test_fa3_and_gqa_backward_workspaces():
    """FA3 (hopper/flash_api.cpp mha_bwd): softmax_d, softmax_lse_log2 (B, H, T128) and dq_accum (B, H, T128 x D')
    in fp32, and under GQA dk_accum, dv_accum (B, H_kv, T128 x D'); FA2's mha_bwd under GQA: dk_expanded and
    dv_expanded at the query heads' width in the input dtype."""
    b, h, t, d = 2, 8, 200, 128
    assert sdpa.backward_workspace("fa3", (b, h, t, d), 2) == 2 * b * h * 256 * 4 + b * h * 256 * 128 * 4
    assert sdpa.backward_workspace("fa3", (b, h, t, d), 2, kv_heads=2) == \
        sdpa.backward_workspace("fa3", (b, h, t, d), 2) + 2 * b * 2 * 256 * 128 * 4
    assert sdpa.backward_workspace("fa3", (b, h, t, 80), 2) == sdpa.backward_workspace("fa3", (b, h, t, 96), 2)
    assert sdpa.backward_workspace("flash", (b, h, t, d), 2, kv_heads=2) == \
        sdpa.backward_workspace("flash", (b, h, t, d), 2) + 2 * b * t * h * d * 2


def test_the_cuda_dry_run_runs_nanochats_kernels():
    """The emulated GPU runs nanochat's step with FA3 on Hopper and with SDPA on Blackwell, where the short windows'
    mask under GQA leaves only the math kernel (its scores materialised: more memory)."""
    mc = GPTConfig(**TINY)
    fa3 = estimate_step(EstimateRequest(mc, 2, Recipe(compile=False), "cuda", (9, 0)))
    sdpa_path = estimate_step(EstimateRequest(mc, 2, Recipe(compile=False), "cuda", (12, 0)))
    assert fa3.attention == "fa3" and fa3.optimizer == "muon" and fa3.dtype == "bfloat16"
    assert sdpa_path.attention == "flash (full windows), math (short windows, masked)"
    assert sdpa_path.peak_bytes > fa3.peak_bytes > 0


@pytest.mark.slow
def test_the_compiled_dry_run_of_nanochat():
    """The torch.compile emulation runs nanochat's segments (embedding, one graph per kind of layer, head) and its
    compiled optimizer steps; fusion makes the compiled step smaller than the eager one."""
    mc = GPTConfig(**TINY, smear=False, backout=False, resid_scalars=False, value_embeds=False)
    est = estimate_step(EstimateRequest(mc, 2, Recipe(dtype="bfloat16", compile=True), "cpu"))
    assert est.compiled and est.optimizer == "muon"
    assert 0 < est.modes["compiled"]["peak_bytes"] < est.modes["eager"]["peak_bytes"]


def test_zero2_state_bytes_follow_nanochats_sharding():
    """optim.py: AdamW parameters of >= 1024 elements keep 1/N of their rows' exp_avg and exp_avg_sq, smaller ones
    all of it; each Muon group of K matrices is split into chunks of ceil(K/N), each rank keeping its chunk's
    momentum and factored second moment. d20 on 8 GPUs: C = 1280, 10 heads, vocab 32768."""
    mc = nanochat_config(20)
    assert zero2_state_bytes(mc, 1, "bfloat16") == sum(mc.optimizer_state_bytes("muon", "bfloat16").values())
    C, V, L = 1280, 32768, 20
    muon = 10 * (C * C + C) + 3 * (4 * C * C + 4 * C) * 2 + 2 * (10 * 12 + 12)  # K = 80, 20, 20, 10 over 8 ranks
    adamw = 2 * (V * C * 2 + V * C * 4 + 10 * V * C * 2) // 8 + 2 * 4 * (2 * L + 24 + 1 + 1)
    assert zero2_state_bytes(mc, 8, "bfloat16") == 4 * muon + adamw
    with pytest.raises(VramfitError, match="do not divide"):
        zero2_state_bytes(mc, 3)


def test_base_train_lines_batches_and_the_search():
    assert is_base_train("nanochat --depth 20") and is_base_train("torchrun --nproc_per_node=8 -m scripts.base_train")
    assert is_base_train("--depth 4") and not is_base_train("config/train_shakespeare_char.py")
    assert device_batches(2**19, 2048, 1) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert device_batches(2**19, 2048, 8) == [1, 2, 4, 8, 16, 32] and device_batches(1000, 2048, 1) == []
    tried: list[int] = []

    def fits_up_to(limit: int):  # noqa: ANN202
        def fits(x: int) -> bool:
            tried.append(x)
            return x <= limit
        return fits

    depths = list(range(1, 65))
    for limit in (0, 1, 7, 20, 64):
        for start in (None, 1, 20, 64):
            assert largest(depths, fits_up_to(limit), start) == (limit or None)
    tried.clear()
    assert largest(depths, fits_up_to(22), start=20) == 22 and max(tried) <= 24  # gallops, not up to 64


@pytest.mark.parametrize("like, message", [
    ("nanochat --depth x", "cannot read"),
    ("nanochat --device-batch-size 3 --total-batch-size 1000", "multiple of"),
    ("torchrun --nproc_per_node=0 -m scripts.base_train", "positive integer"),
])
def test_bad_base_train_lines_are_one_error(like, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["suggest", "--vram", "24G", "--like", like]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_train_suggestion_trains_the_nanochat_run():
    """`vramfit train --suggestion N` of a nanochat suggestion trains nanochat's model with its accumulation."""
    from gpt.config import make_config
    from vramfit.plan.workflows import suggestion_overrides

    item = {"rank": 1, "n_layer": 2, "n_head": 2, "n_embd": 128, "block_size": 128, "batch_size": 4,
            "vocab_size": 32768, "nanochat": {"command": "python -m scripts.base_train --depth=2", "depth": 2,
                                               "device_batch_size": 4, "grad_accum_steps": 16,
                                               "total_batch_size": 8192, "gpus": 1, "window_pattern": "SSSL"}}
    doc = {"recipe": {"dtype": "bfloat16", "compile": True, "optimizer": "muon"}, "data_dir": "data/x"}
    cfg = make_config(suggestion_overrides(doc, item))
    assert (cfg.arch, cfg.window_pattern, cfg.gradient_accumulation_steps, cfg.optimizer) == \
        ("nanochat", "SSSL", 16, "muon")
    assert cfg.model_config().n_params() == nanochat_config(2, head_dim=64, max_seq_len=128).n_params()


@pytest.mark.slow
def test_compiled_nanochat_estimate_against_a_real_inductor_step():
    """A real `torch.compile`d nanochat Trainer on this CPU (Inductor's C++ backend; the model and both optimizer
    steps compiled), measured by the CPU allocator's profiler events (experiments/bench_compile.py's child):
    within 1.2 % (issue 28), results/bench/compile-nanochat-cpu.csv (+10 % before the emulation wrote the logits'
    gradient over the saved lm_head output, as Inductor's backward does)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shape = [2, 4, 128, 256, 2048, 4, "bfloat16", 0.0, {"arch": "nanochat", "n_kv_head": 2, "window_pattern": "SL"}]
    mc = GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=2048, arch="nanochat", n_kv_head=2,
                   window_pattern="SL")
    est = estimate_step(EstimateRequest(mc, 4, Recipe(dtype="bfloat16", optimizer="muon", compile=True), "cpu",
                                        headline_only=True))
    out = subprocess.run([sys.executable, str(root / "experiments" / "bench_compile.py"), "--child"],
                         input=json.dumps({"shape": shape, "compile": True}), capture_output=True, text=True,
                         timeout=1800, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    real = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    assert abs(est.peak_bytes - real) <= 0.012 * real, (est.peak_bytes, real)


@pytest.mark.gpu
@pytest.mark.parametrize("window_pattern", ["L", "SL"])
def test_nanochat_estimate_matches_cuda_max_memory_allocated(window_pattern, monkeypatch):
    """On a GPU: vramfit's nanochat (SDPA, as nanochat without FA3: VRAMFIT_FA3=0), GQA, bf16, Muon, eager; the peak
    allocated after two steps vs the emulated estimate (within 3 %, as GPT-2's in tests/test_estimate.py)."""
    import torch
    from cuda_steps import eager_cuda_peak

    monkeypatch.setenv("VRAMFIT_FA3", "0")
    mc = GPTConfig(n_layer=4, n_head=8, n_embd=512, block_size=1024, vocab_size=8192, arch="nanochat", n_kv_head=2,
                   window_pattern=window_pattern)
    cap = torch.cuda.get_device_capability()
    est = estimate_step(EstimateRequest(mc, 4, Recipe(dtype="bfloat16", compile=False), "cuda", cap))
    real = eager_cuda_peak(mc, 4, "bfloat16", "muon")
    assert abs(est.peak_bytes - real) <= 0.03 * real, (est.peak_bytes, real, est.attention, est.peak_op)


def test_muon_keeps_every_stack_to_the_end_of_the_step():
    """nanochat's MuonAdamW.step (optim.py): phase 1 stacks every Muon group's gradients, phase 2 updates each group
    on a stack of its weights, phase 3 copies the stacks back; so when the last group is updated, the gradient
    and weight stacks of every group are still alive (what the step's peak holds)."""
    import weakref

    import torch

    from gpt.config import TrainConfig
    from gpt.train import Trainer

    mc = GPTConfig(**TINY)
    trainer = Trainer(TrainConfig(**TINY, device="cpu", optimizer="muon", warmup_iters=0), mc, device="cpu")
    opt, seen, alive_at_last = trainer.optimizer, [], []
    step = opt._muon_step

    def spy(grads, stacked, *rest):  # noqa: ANN001, ANN202
        seen.extend([weakref.ref(grads), weakref.ref(stacked)])
        if len(seen) == 2 * len(mc.muon_stacks()):
            alive_at_last.append(sum(r() is not None for r in seen))
        return step(grads, stacked, *rest)

    opt._muon_step = spy
    x = torch.randint(mc.vocab_size, (2, mc.block_size))
    trainer.step(lambda: (x, x))
    assert alive_at_last == [2 * len(mc.muon_stacks())]
    assert all(r() is None for r in seen)  # and none after the step


DOC_LIKE = "nanochat --depth 2 --head-dim 64 --max-seq-len 128 --device-batch-size 8 --total-batch-size 8192"


def test_suggest_like_a_base_train_line(capsys, tmp_path, monkeypatch):
    """docs/nanochat.md's command (same requests: the estimates are shared through the session's cache): the run
    as it is, the largest device batch base_train accepts that fits, its accumulation keeping the total batch,
    nanochat's command and vramfit's; the document follows the schema."""
    import json
    from importlib import resources

    jsonschema = pytest.importorskip("jsonschema")
    monkeypatch.chdir(tmp_path)
    assert main(["suggest", "--vram", "1G", "--recipe", "compile=false", "--json", "--like", DOC_LIKE]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json").read_text()))
    assert doc["objective"] == "nanochat" and doc["as_is"]["batch_size"] == 8 and doc["as_is"]["grad_accum_steps"] == 8
    for s in doc["suggestions"]:
        chat = s["nanochat"]
        assert s["predicted_bytes"] + s["margin_bytes"] <= doc["budget_bytes"]
        tokens = chat["grad_accum_steps"] * chat["device_batch_size"] * s["block_size"]
        assert tokens == chat["total_batch_size"] == 8192
        assert chat["command"].startswith("python -m scripts.base_train --depth=")
        assert f"--device-batch-size={chat['device_batch_size']}" in chat["command"]
        assert s["command"].startswith("vramfit train --arch nanochat") and "--optimizer muon" in s["command"]
    batch = next(s for s in doc["suggestions"] if s["label"] == "largest device batch")
    assert batch["n_layer"] == 2 and batch["batch_size"] < 8 and not doc["as_is"]["fits"]
