"""`--loop nanogpt` (issue 28 item 5): the dry run steps nanoGPT's train.py loop (`gpt.nanogpt_loop`), and
`--like` a nanoGPT config uses every setting of it that changes memory, or refuses it; never ignores it.
`experiments/bench_nanogpt_loop.py` checks the estimate against nanoGPT's own train.py where a checkout is given
(NANOGPT_DIR)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.config import GPTConfig, nanogpt_adamw, nanogpt_recipe, resolve_recipe
from gpt.errors import ConfigError
from gpt.pyconfig import MEMORY_KEYS, NANOGPT_DEFAULTS, NO_MEMORY_EFFECT
from vramfit.cli import main
from vramfit.dryrun.estimate import EstimateRequest
from vramfit.dryrun.fake_step import run_step
from vramfit.errors import VramfitError
from vramfit.plan.like import estimate_request
from vramfit.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = "batch_size = 2\nblock_size = 32\nn_layer = 1\nn_head = 2\nn_embd = 32\ndropout = 0.1\nbias = True\n"


def config(tmp_path, extra: str = "") -> Path:
    path = tmp_path / "cfg.py"
    path.write_text(TINY + extra)
    return path


def test_every_train_py_setting_is_used_or_has_no_memory_effect():
    """No nanoGPT setting is silently ignored: each of train.py's globals is one the estimate uses (and where) or
    one that leaves a training step's memory alone (and why)."""
    assert set(MEMORY_KEYS) | set(NO_MEMORY_EFFECT) == set(NANOGPT_DEFAULTS)
    assert not set(MEMORY_KEYS) & set(NO_MEMORY_EFFECT)


@pytest.mark.skipif(not os.environ.get("NANOGPT_DIR"), reason="set NANOGPT_DIR to a nanoGPT checkout")
def test_the_settings_are_train_pys_globals():
    """NANOGPT_DEFAULTS are exactly the settings train.py declares before its configurator runs (the scalar
    globals it puts in `config_keys`), read from the checkout with `ast`."""
    import ast

    tree = ast.parse((Path(os.environ["NANOGPT_DIR"]) / "train.py").read_text())
    names = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            if stmt.targets[0].id == "config_keys":
                break
            names.append(stmt.targets[0].id)
    assert set(names) == set(NANOGPT_DEFAULTS)


def test_nanogpt_picks_its_adamw_and_dtype_per_device():
    """nanoGPT's configure_optimizers passes fused=True on CUDA only; elsewhere torch picks: foreach only where
    every parameter is on a foreach device (torch/optim/optimizer.py `_default_to_fused_or_foreach`, devices from
    torch/utils/_foreach_utils.py `_get_foreach_kernels_supported_devices`), so the for-loop AdamW on the CPU. On
    the CPU its autocast context is a nullcontext: fp32 whatever dtype says."""
    from torch.optim.optimizer import _default_to_fused_or_foreach
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

    cpu_param = torch.zeros(4, requires_grad=True)
    assert _default_to_fused_or_foreach([cpu_param], False, False) == (False, False)
    assert "cuda" in _get_foreach_kernels_supported_devices() and "cpu" not in _get_foreach_kernels_supported_devices()
    assert (nanogpt_adamw("cpu"), nanogpt_adamw("cuda")) == ("loop", "fused")
    assert nanogpt_recipe("bfloat16", False, "auto", "cpu") == ("float32", False, "loop")
    assert nanogpt_recipe("auto", None, "auto", "cpu") == ("float32", True, "loop")  # compile = True by default
    assert nanogpt_recipe("auto", None, "fused", "cuda", (8, 6)) == ("bfloat16", True, "fused")
    assert nanogpt_recipe("auto", None, "auto", "cuda", (7, 5)) == ("float16", True, "fused")
    assert nanogpt_recipe("auto", None, "auto", "cuda", (6, 1))[1] is False
    assert resolve_recipe("auto", None, "auto", "cpu", loop="nanogpt") == ("float32", True, "loop")
    with pytest.raises(ConfigError, match="runs the fused AdamW on cuda"):
        nanogpt_recipe("auto", None, "foreach", "cuda", (8, 0))
    with pytest.raises(ConfigError, match="loop must be one of"):
        resolve_recipe("auto", None, "auto", "cpu", loop="hf")


def test_the_fake_nanogpt_step_equals_a_real_one():
    """The dry run's nanoGPT loop on fake tensors is byte-exact against the same loop on real CPU tensors (two
    micro-steps, clipping, dropout)."""
    req = EstimateRequest(GPTConfig(1, 2, 32, 32, 96, dropout=0.1, bias=False), 2, Recipe(compile=False), "cpu",
                          gradient_accumulation_steps=2, loop="nanogpt")
    fake, real = run_step(req), run_step(req, fake=False)
    assert fake.peak_bytes == real.peak_bytes and fake.breakdown == real.breakdown
    assert fake.optimizer == "loop" and fake.dtype == "float32"


def test_nanogpts_loop_keeps_the_logits_and_the_next_batch():
    """nanoGPT's loop holds `logits` through backward and has fetched the next batch before it: with a vocabulary
    large enough for the loss to be the peak, its peak holds one more batch x block x vocab fp32 tensor and one
    more batch than vramfit's step (same optimizer, so only the loop differs)."""
    B, T, V = 2, 32, 2048
    base = dict(model=GPTConfig(1, 2, 32, T, V, bias=False), batch_size=B, target="cpu")
    ours = run_step(EstimateRequest(**base, recipe=Recipe(compile=False, optimizer="loop")))
    theirs = run_step(EstimateRequest(**base, recipe=Recipe(compile=False), loop="nanogpt"))
    assert theirs.breakdown["logits_loss"] - ours.breakdown["logits_loss"] == B * T * V * 4
    assert theirs.peak_bytes - ours.peak_bytes >= B * T * V * 4


def test_estimate_like_uses_the_configs_loop_micro_steps_clipping_and_device(tmp_path, capsys):
    """A nanoGPT config's gradient_accumulation_steps, grad_clip, device and compile reach the estimate, with
    nanoGPT's loop (its AdamW on the CPU); --loop vramfit estimates vramfit's step of the same config."""
    cfg = config(tmp_path, "gradient_accumulation_steps = 2\ngrad_clip = 0.0\ndevice = 'cpu'\ncompile = False\n")
    req = estimate_request({}, like=cfg)
    assert (req.loop, req.target, req.grad_clip, req.recipe.grad_accum) == ("nanogpt", "cpu", 0.0, 2)
    assert req.recipe.compile is False and req.model.dropout == 0.1 and req.model.bias is True
    assert estimate_request({}, like=cfg, loop="vramfit", target="cuda").loop == "vramfit"
    given = estimate_request({}, like=cfg, recipe="compile=true")  # --recipe replaces dtype/compile, not the steps
    assert (given.recipe.compile, given.recipe.grad_accum) == (True, 2)
    assert estimate_request({}, like=cfg, recipe="grad_accum=5").recipe.grad_accum == 5
    assert main(["estimate", "--like", str(cfg), "--vocab", "65"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("GPT 1L 2H 32C, block 32, vocab 65, batch 2 x 2 micro-steps on cpu, nanoGPT's train.py "
                          "loop: float32, loop AdamW")


@pytest.mark.parametrize(("extra", "flags", "msg"), [
    ("optimizer = 'sgd'\n", [], "optimizer is not a setting of nanoGPT's train.py"),
    ("checkpoint = 'all'\n", [], "checkpoint is not a setting of nanoGPT's train.py"),
    ("device = 'mps'\n", [], "device 'mps': vramfit estimates a CUDA GPU or the CPU"),
    ("", ["--recipe", "optimizer=foreach"], "nanoGPT's train.py runs the fused AdamW on cuda"),
    ("", ["--recipe", "checkpoint=all", "--target", "cpu"], "nanoGPT's train.py has no checkpoint = 'all'"),
    ("", ["--loop", "hf"], "unknown loop 'hf'"),
])
def test_what_nanogpts_loop_cannot_run_is_refused_in_one_line(tmp_path, capsys, extra, flags, msg):
    cfg = config(tmp_path, extra)
    assert main(["estimate", "--like", str(cfg), "--vocab", "65", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err


def test_vramfit_keys_in_a_nanogpt_config_are_used_by_vramfits_loop(tmp_path):
    cfg = config(tmp_path, "optimizer = 'sgd'\n")
    with pytest.raises(VramfitError, match="remove it, or estimate vramfit's loop"):
        estimate_request({}, like=cfg)
    assert estimate_request({}, like=cfg, loop="vramfit").loop == "vramfit"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NANOGPT_DIR"), reason="set NANOGPT_DIR to a nanoGPT checkout")
def test_bench_matches_nanogpts_own_train_py(tmp_path):
    """nanoGPT's unmodified train.py (1 and 3 micro-steps, dropout and bias on and off) beside `estimate --like`:
    within 0.1 % (the bench exits 1 otherwise)."""
    md = tmp_path / "loop.md"
    proc = subprocess.run([sys.executable, "experiments/bench_nanogpt_loop.py", os.environ["NANOGPT_DIR"],
                           "--configs", "0,3", "--md", str(md)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in md.read_text().splitlines() if line.startswith("| 4 | 64 |")]
    assert len(rows) == 2 and "| 3 | 0.2 | True |" in rows[1]


def test_suggest_plans_nanogpts_loop_by_the_dry_run(tmp_path, monkeypatch, capsys):
    """`suggest --like` a nanoGPT config without a profile: every dry-run estimate is of nanoGPT's loop with the
    file's micro-steps and clipping, and the first line says so; with a GPU profile it warns that the profile
    measured vramfit's loop. (The estimator is a stand-in: what it is asked is under test.)"""
    from planner_data import synthetic_points
    from test_noprofile import formula_estimate

    from vramfit.dryrun.pool import WarmWorkers
    from vramfit.fit.memmodel import fit_points

    asked = []

    def run(self, requests):
        asked.extend(requests)
        return [formula_estimate(r) for r in requests]

    monkeypatch.setattr(WarmWorkers, "run", run)
    monkeypatch.setattr("vramfit.plan.profiles.local_gpu_capability", lambda: None)
    cfg = config(tmp_path, "gradient_accumulation_steps = 2\ngrad_clip = 0.5\n")
    args = ["suggest", "--vram", "8G", "--like", str(cfg), "--vocab", "65", "--save", str(tmp_path / "s.json")]
    assert main([*args, "--no-profile", "--no-cache"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "bfloat16, fused AdamW, compiled, 2 micro-steps, nanoGPT's train.py loop, by the dry run" in first
    assert asked and all(r.loop == "nanogpt" and r.grad_clip == 0.5 and r.recipe.grad_accum == 2 for r in asked)
    profile = fit_points(synthetic_points(), target="nvml").save(tmp_path / "gpu.json")
    assert main([*args, "--model", str(profile)]) == 0
    assert "warning: the profile measured vramfit's training loop" in capsys.readouterr().err
    assert main([*args, "--model", str(profile), "--loop", "hf"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown --loop 'hf'")


def test_a_nanogpt_checkpoint_is_estimated_with_its_loop_and_settings(tmp_path):
    """nanoGPT's checkpoint `config` is train.py's globals: its loop, micro-steps, dtype, compile and device; a
    vramfit checkpoint's config (data_dir, no dataset) keeps vramfit's loop."""
    from nanogpt_files import nanogpt_checkpoint

    ckpt = tmp_path / "out" / "ckpt.pt"
    nanogpt_checkpoint(ckpt, vocab_size=65)
    req = estimate_request({}, ckpt=ckpt)
    assert (req.loop, req.target, req.recipe.dtype, req.recipe.compile) == ("nanogpt", "cuda", "bfloat16", True)
    assert (req.batch_size, req.model.n_layer, req.model.bias) == (12, 1, False)
    assert estimate_request({}, ckpt=ckpt, target="cpu", loop="vramfit").loop == "vramfit"


def test_predicts_loop_terms_are_the_dry_runs_difference():
    """`predict` adds what nanoGPT's loop keeps alive beyond vramfit's step (`plan.like.loop_terms`: the logits,
    and one batch of tokens more: the next x and y less the rebound targets the loss's backward freed); at a
    backward peak that is exactly the dry run's difference of the two loops (same optimizer)."""
    from vramfit.plan.like import loop_terms
    from vramfit.shape import Shape

    for B, T, V in ((2, 32, 2048), (4, 64, 96)):
        base = dict(model=GPTConfig(1, 2, 32, T, V, bias=False), batch_size=B, target="cpu")
        ours = run_step(EstimateRequest(**base, recipe=Recipe(compile=False, optimizer="loop")))
        theirs = run_step(EstimateRequest(**base, recipe=Recipe(compile=False), loop="nanogpt"))
        assert theirs.peak_phase == ours.peak_phase == "backward"
        terms = loop_terms("nanogpt", Shape(1, 2, 32, T, B, V), "float32")
        assert theirs.peak_bytes - ours.peak_bytes == sum(terms.values())


def test_predict_like_prices_the_configs_loop_and_micro_steps(tmp_path, capsys):
    """`predict --like` a nanoGPT config: nanoGPT's loop (its logits and next batch added to the profile's
    prediction, in the profile's dtype), its micro-steps priced where the profile prices switches and warned
    about where it cannot; --loop vramfit predicts vramfit's step of it."""
    import json

    from planner_data import synthetic_points

    from vramfit.fit.memmodel import fit_points

    profile = fit_points(synthetic_points(), target="nvml").save(tmp_path / "gpu.json")
    cfg = config(tmp_path, "gradient_accumulation_steps = 2\n")
    args = ["predict", "--like", str(cfg), "--vocab", "65", "--model", str(profile), "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    theirs = json.loads(out.out)
    assert "trains 2 micro-steps; this profile was fitted on one recipe" in out.err
    assert main([*args, "--loop", "vramfit"]) == 0
    ours = json.loads(capsys.readouterr().out)
    B, T, V = 2, 32, 65
    size = 4 if json.loads(profile.read_text())["recipe"]["dtype"] == "float32" else 2
    assert theirs["loop"] == "nanogpt" and "loop" not in ours
    assert abs(theirs["predicted_bytes"] - ours["predicted_bytes"] - (B * T * V * size + B * T * 8)) <= 1
    assert main([*args, "--loop", "nanochat"]) == 2
    assert "predict prices vramfit's and nanoGPT's loops" in capsys.readouterr().err
