"""The dry run knows the recipe's switches: gradient accumulation, activation checkpointing and each optimizer.

As in tests/test_estimate.py, the fake-tensor estimate is checked byte for byte against real `Trainer.step` calls
on the CPU under the sweep's storage tracker, and against the same run for real under the estimator's tracker.
"""

from __future__ import annotations

import json

import pytest
import torch

from gpt.config import GPTConfig
from gpt.data import synthetic_batch
from gpt.train import Trainer
from vramfit.dryrun.estimate import EstimateRequest, estimate_step, parse_recipe
from vramfit.dryrun.fake_step import run_step, train_config
from vramfit.errors import VramfitError
from vramfit.measure.probe import StorageTracker
from vramfit.recipe import Recipe

SHAPE = dict(n_layer=4, n_head=2, n_embd=64, block_size=64, vocab_size=128)
CASES = [
    (SHAPE, 4, dict(dtype="float32", optimizer="fused", grad_accum=2)),
    (SHAPE, 4, dict(dtype="float32", optimizer="fused", checkpoint="all")),
    (SHAPE, 4, dict(dtype="bfloat16", optimizer="foreach", checkpoint="2")),
    (dict(SHAPE, dropout=0.1), 2, dict(dtype="bfloat16", optimizer="fused", checkpoint="all", attn_kernel="math")),
    (SHAPE, 2, dict(dtype="float32", optimizer="sgd")),
    (SHAPE, 2, dict(dtype="bfloat16", optimizer="adafactor")),
    (SHAPE, 2, dict(dtype="float32", optimizer="muon")),
    (SHAPE, 2, dict(dtype="float32", optimizer="adafactor", grad_accum=3, checkpoint="all")),
    (dict(SHAPE, arch="nanochat", bias=False), 2, dict(dtype="float32", optimizer="sgd", checkpoint="all",
                                                      grad_accum=2)),
]


def real_tracked_peak(mc: GPTConfig, batch: int, recipe: Recipe) -> int:
    """Two real `Trainer.step` calls on the CPU under the sweep's own storage tracker (64 B CPU rounding)."""
    r = recipe.resolved("cpu")
    cfg = train_config(mc, batch, r.dtype, r.optimizer, r.attn_kernel, grad_clip=1.0, accum=r.grad_accum,
                       checkpoint=r.checkpoint)
    gen = torch.Generator().manual_seed(0)
    with StorageTracker(round_to=64) as tracker:
        trainer = Trainer(cfg, mc, device="cpu")
        tracker.reset_peak()
        for _ in range(2):
            trainer.step(lambda: synthetic_batch(batch, mc.block_size, mc.vocab_size, gen, "cpu"))
    return tracker.peak


@pytest.mark.parametrize("shape,batch,recipe_d", CASES, ids=[str(c[2]) for c in CASES])
def test_estimate_equals_real_tracked_cpu_peak_for_each_switch(shape, batch, recipe_d):
    mc, recipe = GPTConfig(**shape), Recipe(**recipe_d)
    est = estimate_step(EstimateRequest(mc, batch, recipe, target="cpu"))
    assert est.peak_bytes == real_tracked_peak(mc, batch, recipe)
    same = run_step(EstimateRequest(mc, batch, recipe, target="cpu"), fake=False)
    assert (same.peak_bytes, same.peak_phase, same.peak_op) == (est.peak_bytes, est.peak_phase, est.peak_op)
    assert same.breakdown == est.breakdown and same.steady_bytes == est.steady_bytes
    assert sum(est.breakdown.values()) == est.peak_bytes
    assert est.recipe == recipe.to_dict()


def test_each_switch_moves_memory_the_way_it_should():
    """Checkpointing lowers an activation-bound peak; accumulating half-batches lowers it too; the optimizer
    states after the step are what `GPTConfig.optimizer_state_bytes` counts for each kind."""
    mc = GPTConfig(**SHAPE)

    def est(batch: int, **kw: object):
        return estimate_step(EstimateRequest(mc, batch, Recipe(dtype="float32", **kw), target="cpu"))

    plain, every2, full = est(8, optimizer="fused"), est(8, optimizer="fused", checkpoint="2"), \
        est(8, optimizer="fused", checkpoint="all")
    assert full.peak_bytes < every2.peak_bytes < plain.peak_bytes
    assert full.breakdown["activations"] < plain.breakdown["activations"]
    assert est(4, optimizer="fused", grad_accum=2).peak_bytes < plain.peak_bytes
    steady = {kind: est(2, optimizer=kind).steady_bytes for kind in ("fused", "sgd", "adafactor")}
    counted = {kind: sum(mc.optimizer_state_bytes(kind).values()) for kind in steady}
    # the same parameters under each: the differences in steady bytes are the differences in state (64 B rounding
    # per tensor aside)
    assert abs((steady["fused"] - steady["sgd"]) - (counted["fused"] - counted["sgd"])) < 64 * 200
    assert steady["adafactor"] < steady["sgd"] < steady["fused"]


def test_recipe_switches_inline_and_in_keys():
    r = parse_recipe("optimizer=adafactor,grad_accum=4,checkpoint=2")
    assert (r.optimizer, r.grad_accum, r.checkpoint) == ("adafactor", 4, "2")
    assert Recipe(checkpoint=1).checkpoint == "all" and Recipe(checkpoint="0").checkpoint == "none"
    assert r.key() != Recipe(optimizer="adafactor").key() != Recipe().key()
    # at their defaults the switches leave the recipe's dict and key as they were before they existed
    assert Recipe().to_dict() == {"dtype": "auto", "compile": None, "optimizer": "auto", "attn_kernel": "default",
                                  "alloc_conf": ""}
    assert Recipe().key() == "auto-e-default-" + __import__("hashlib").sha1(
        b'{"alloc_conf": "", "attn_kernel": "default", "compile": null, "dtype": "auto", "optimizer": "auto"}'
    ).hexdigest()[:8]
    for bad, msg in [("grad_accum=0", "grad_accum"), ("checkpoint=some", "checkpoint must be"),
                     ("optimizer=lion", "optimizer must be one of")]:
        with pytest.raises(VramfitError, match=msg):
            parse_recipe(bad)


def test_checkpointing_under_the_compile_emulation_is_refused_clearly():
    from gpt.errors import ConfigError

    with pytest.raises(ConfigError, match="not emulated"):
        estimate_step(EstimateRequest(GPTConfig(**SHAPE), 2, Recipe(compile=True, checkpoint="all"), target="cuda"))


def test_cuda_target_runs_every_switch():
    mc = GPTConfig(**SHAPE)
    for kw in (dict(checkpoint="all"), dict(optimizer="adafactor"), dict(optimizer="sgd", grad_accum=2)):
        est = estimate_step(EstimateRequest(mc, 4, Recipe(dtype="bfloat16", compile=False, **kw), target="cuda"))
        assert est.peak_bytes > mc.n_params() * 4 and est.allocator["peak_reserved"] >= est.peak_bytes


def test_a_sweep_measures_a_recipe_with_the_switches(tmp_path):
    """A grid's [recipe] carries the switches to the sweep's worker: each recipe is its own environment, the
    tracked peaks move as the dry run says (checkpointing lowers it) and agree with the dry run."""
    from vramfit.store import Store
    from vramfit.sweep.grid import load_grid
    from vramfit.sweep.session import SweepOptions, run_sweep
    from vramfit.sweep.whole_grid import GridChooser

    db = tmp_path / "db.sqlite"
    axes = "[axes]\nn_layer = 4\nn_head = 2\nn_embd = 64\nblock_size = 64\nbatch_size = 8\nvocab_size = 128\n"
    peaks = {}
    for name, recipe in [("plain", 'dtype = "float32"\noptimizer = "sgd"\n'),
                         ("switched", 'dtype = "float32"\noptimizer = "sgd"\ncheckpoint = "all"\ngrad_accum = 2\n')]:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'name = "{name}"\n{axes}[recipe]\n{recipe}[measure]\nmax_iters = 6\n')
        grid = load_grid(path)
        run_sweep(grid, SweepOptions(db, device="cpu", quiet=True), GridChooser())
        df = Store(db).points_frame(recipe_key=grid.recipe.resolved("cpu").key())
        assert len(df) == 1 and df.status.iloc[0] == "ok"
        peaks[name] = int(df.tracked_bytes.iloc[0])
        est = estimate_step(EstimateRequest(GPTConfig(**SHAPE), 8, grid.recipe, target="cpu"))
        assert abs(est.peak_bytes - peaks[name]) <= 0.005 * peaks[name], (name, est.peak_bytes, peaks[name])
    assert peaks["switched"] < peaks["plain"]
    stored = [json.loads(row[0]) for row in Store(db).conn.execute("SELECT recipe_json FROM environments")]
    assert {(d.get("checkpoint"), d.get("grad_accum")) for d in stored} == {(None, None), ("all", 2)}


def test_cli_estimate_with_the_switches(capsys):
    from vramfit.cli import main

    small = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "32", "--batch-size", "2"]
    rc = main(["estimate", *small, "--recipe", "optimizer=adafactor,grad_accum=4,checkpoint=all,compile=false"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "adafactor," in out and "AdamW" not in out and "peak" in out
    rc = main(["estimate", *small, "--recipe", "checkpoint=all"])  # CUDA compiles by default: not emulated
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error:") and "not emulated" in err and "Traceback" not in err
