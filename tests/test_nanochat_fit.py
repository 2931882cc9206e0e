"""Both families in sweeps, the store, the fit and `train --measure` (issue 29, part A).

The family is part of a point's Shape (`arch`), the optimizer part of its recipe; the FAMILY features count each
family's physics from `gpt.config`'s own sizes (checked here against the GPTConfig counts, themselves checked
against nanochat's formula in tests/test_nanochat.py). GPT-2-only data keep the PHYSICS features (the golden test
pins their output).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gpt.config import GPTConfig
from vramfit.cli import main
from vramfit.errors import VramfitError
from vramfit.fit.features import FAMILY, PHYSICS, STEP, features, frame_features, point_features
from vramfit.fit.memmodel import MemoryModel, fit_points
from vramfit.fit.profile import Profile
from vramfit.shape import GPT2, Shape, arch_options, arch_spec
from vramfit.sweep.grid import load_grid

SIZES = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32, "batch_size": 4, "vocab_size": 65}


def frame(points: list[dict], optimizer: str = "muon", target: list[float] | None = None) -> pd.DataFrame:
    """Points as the store's frame has them (one CPU device, one recipe)."""
    df = pd.DataFrame([{**SIZES, "arch": GPT2, **p} for p in points])
    recipe = json.dumps({"dtype": "float32", "compile": False, "optimizer": optimizer, "attn_kernel": "default",
                         "alloc_conf": ""})
    return df.assign(status="ok", device_type="cpu", device_name="cpu: test", recipe_key="float32-e-default-x",
                     recipe=recipe, tracked_bytes=target if target is not None else 0.0)


def test_arch_text_is_canonical_and_reads_back():
    spec = arch_spec(GPTConfig(**{k: v for k, v in SIZES.items() if k != "batch_size"}, arch="nanochat",
                               mlp="swiglu", n_kv_head=1))
    assert spec == "nanochat:n_kv_head=1,mlp=swiglu"  # ARCH_OPTIONS order, defaults left out
    assert arch_options(spec) == {"arch": "nanochat", "n_kv_head": 1, "mlp": "swiglu"}
    assert arch_spec(GPTConfig()) == GPT2 and arch_spec({"n_head": 4, "arch": "nanochat", "n_kv_head": 4}) == \
        "nanochat"
    shape = Shape(**SIZES, arch="nanochat:mlp=swiglu,n_kv_head=1,value_embeds=true")  # any order, defaults said
    assert shape.arch == spec and shape == Shape.of({**SIZES, "arch": spec}) != Shape.of(SIZES)
    assert shape.as_tuple() == tuple(SIZES.values()) and shape.model_config().n_kv_head == 1
    assert shape.text().endswith(f"vocab_size=65 arch={spec}") and "arch" not in Shape(**SIZES).text()
    for bad, message in (("llama", "arch must be one of"), ("nanochat:mlp", "not option=value"),
                         ("nanochat:value_embeds=maybe", "cannot read"), ("gpt2:mlp=relu2", "nanochat option")):
        with pytest.raises(VramfitError, match=message):
            Shape(**SIZES, arch=bad)


def test_grid_axes_take_the_family_and_its_options(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text("""
[[axes]]
n_layer = [1]
n_head = [4]
n_embd = [64]
block_size = [32]
batch_size = [4]
vocab_size = [65]
arch = ["gpt2", "nanochat"]
n_kv_head = [1, 4]
[[axes]]
arch = "nanochat"
mlp = ["relu2", "swiglu"]
[recipe]
optimizer = "muon"
""")
    points, invalid = load_grid(grid).points()
    assert [p.get("arch", GPT2) for p in points] == ["gpt2", "nanochat:n_kv_head=1", "nanochat",  # block 2 inherits
                                                     "nanochat:n_kv_head=1,mlp=swiglu", "nanochat:mlp=swiglu"]
    assert invalid == 1  # GPT-2 with one K/V head: not GPT-2
    grid.write_text(grid.read_text().replace('mlp = ["relu2", "swiglu"]', "mlp = [4]"))
    with pytest.raises(VramfitError, match="mlp: expected a str"):
        load_grid(grid)


def test_family_features_count_each_familys_physics():
    """GPT-2 rows: the PHYSICS values (params = grads = P under AdamW). nanochat rows: exact state bytes (Muon's
    one state, the untied head, value-embedding and rotary tables), the K/V width under GQA, the MLP's saved hidden
    width, the value-embedding layers, the masked windows; the optimizer step's stacks."""
    gpt2 = point_features([SIZES], families=True, recipe={"optimizer": "fused"})
    physics = features(*SIZES.values())
    assert all(gpt2[k][0] == physics[k][0] for k in PHYSICS) and gpt2["grads"][0] == physics["params"][0]
    assert all(gpt2[k][0] == 0 for k in FAMILY if k not in PHYSICS and k != "grads")
    assert gpt2["muon_stack"][0] == gpt2["adam_largest"][0] == 0  # fused AdamW: no step transients counted

    N, L, C, T, H = 4 * 32, 2, 64, 32, 4
    chat = {**SIZES, "arch": "nanochat:n_kv_head=1"}
    cfg = Shape.of(chat).model_config()
    adam, muon = (point_features([chat], True, {"optimizer": o}) for o in ("fused", "muon"))
    weights, counts = cfg.n_params() * 4, cfg.param_counts()
    rotary = 2 * 10 * T * (C // H // 2) * 4
    assert adam["params"][0] * 12 == weights + 8 * cfg.n_params() + rotary  # weights + m + v + cos/sin
    matrices = counts["matrices"]
    assert muon["params"][0] * 12 == weights + 8 * (cfg.n_params() - matrices) + 4 * matrices + 4 * sum(
        max(r, c) for r, c in cfg.block_matrices()) + rotary  # Muon: one momentum + a factored second moment
    assert adam["grads"][0] * 4 == weights and counts["head"] == counts["embedding"] == 128 * C  # untied, 65 -> 128
    kv = C // H  # one K/V head
    assert adam["kv_acts"][0] == N * L * kv and adam["mlp_acts"][0] == N * L * 4 * C * 2
    assert adam["ve_acts"][0] == N * 1 * kv  # value embeddings on the last layer of two
    assert adam["logits"][0] == adam["acts"][0] == 0 and adam["chat_logits"][0] == N * 65
    swiglu = point_features([{**chat, "arch": "nanochat:mlp=swiglu"}], True, {"optimizer": "muon"})
    assert swiglu["mlp_acts"][0] == N * L * (8 * C // 3) * 4
    (rows, cols), k = max(cfg.muon_stacks().items(), key=lambda s: s[1] * s[0][0] * s[0][1])
    assert muon["muon_stack"][0] == k * rows * cols == L * 4 * C * C  # the MLP's (4C, C) matrices, one per layer
    assert muon["muon_square"][0] == L * C * C and muon["adam_largest"][0] == 128 * C
    window = point_features([{**chat, "block_size": 256, "arch": "nanochat:window_pattern=SL"}], True)
    assert window["chat_attn"][0] == 256 * 256 * 1  # the mask of one layer of two (a short window: 128)


def test_a_mixed_fit_takes_family_features_and_gpt2_alone_keeps_physics(capsys, tmp_path):
    """Points generated from known per-family bytes are fitted back exactly, the step piece with Muon's stacks
    (held out: far better than the naive line); the model file round-trips; a GPT-2-only frame keeps PHYSICS."""
    archs = [GPT2, "nanochat:n_kv_head=1", "nanochat:mlp=swiglu", "nanochat:value_embeds=false"]
    sizes = [(L, C, B, 512) for L in (1, 2) for C in (32, 64) for B in (2, 8)] + [(1, 32, 8, 65), (2, 64, 8, 65)]
    sizes += [(1, 64, 1, 512), (2, 64, 1, 512)]  # a batch of one: the peak at the optimizer step
    points = [{**SIZES, "n_layer": L, "n_embd": C, "batch_size": B, "vocab_size": V, "arch": a}
              for a in archs for L, C, B, V in sizes]
    df = frame(points)
    X = frame_features(df)
    assert tuple(c for c in X.columns if c in FAMILY) == FAMILY and set(STEP) <= set(X.columns)
    true = {"params": 12.0, "grads": 2.0, "logits": 12.0, "acts": 60.0, "embed": 8.0, "chat_logits": 16.0,
            "chat_acts": 30.0, "kv_acts": 10.0, "mlp_acts": 4.0, "ve_acts": 5.0, "chat_embed": 20.0}
    backward = 2e5 + sum(X[k] * v for k, v in true.items())
    step = 2e5 + 12 * X["params"] + 4 * X["grads"] + 24 * X["muon_stack"] + 8 * X["muon_square"]
    df["tracked_bytes"] = np.maximum(backward, step)
    prof = fit_points(df)
    assert prof.model.features == FAMILY and prof.metrics["ours"]["train"]["max_rel"] < 1e-6  # recovered
    assert prof.model.n_step_points_ == int((step > backward).sum()) > 0  # the optimizer-step points found
    assert prof.metrics["ours"]["grouped"]["max_rel"] * 5 < prof.metrics["naive"]["grouped"]["max_rel"]
    again = Profile.from_json(json.loads(json.dumps(prof.to_json())))
    assert np.allclose(again.model.predict(X), prof.model.predict(X)) and again.model.family_ == ("muon", "float32")
    sizes = {k: df[k].to_numpy() for k in SIZES}
    assert np.allclose(again.model.predict(again.model.columns(sizes, df["arch"].to_numpy())), df["tracked_bytes"])
    model_file = prof.save(tmp_path / "mixed.json")  # a mixed profile plans (GPT-2 shapes, through its columns)
    assert main(["predict", "--model", str(model_file), *Shape(**SIZES).flags()]) == 0
    assert "predicted" in capsys.readouterr().out
    assert "step_extra" in prof.model.to_dict() and len(prof.model.to_dict()["step_extra"]) == len(STEP)
    gpt2 = df[df.arch == GPT2].drop(columns="arch")
    assert list(frame_features(gpt2).columns) == list(features(*SIZES.values()))
    assert fit_points(gpt2).model.features == PHYSICS and "step_extra" not in fit_points(gpt2).model.to_dict()
    with pytest.raises(ValueError, match="step coefficients"):
        MemoryModel.from_dict({**prof.model.to_dict(), "step_extra": [1.0]})


def test_the_worker_trains_and_records_a_nanochat_point():
    from vramfit.measure.worker import run_point

    arch = "nanochat:n_kv_head=1,mlp=swiglu"
    rec = run_point({"point": {**SIZES, "n_layer": 1, "arch": arch}, "device": "cpu",
                     "recipe": {"dtype": "float32", "compile": False, "optimizer": "muon"},
                     "measure": {"min_iters": 3, "max_iters": 4, "timing_iters": 0}})
    assert rec["status"] == "ok", rec.get("error")
    assert rec["arch"] == arch and rec["tracked_bytes"] > 0
    assert rec["n_params"] == Shape(**{**SIZES, "n_layer": 1}, arch=arch).model_config().n_params()


def test_train_measure_of_a_suggested_nanochat_config_lands_within_its_margin(capsys, tmp_path, char_corpus):
    """A FAMILY profile (fitted on the CPU dry run's byte-exact peaks of six small shapes, both families, Muon)
    predicts the real run of a nanochat suggestion within its margin; the run is stored with its family."""
    from vramfit.dryrun.estimate import EstimateRequest, estimate_step
    from vramfit.recipe import Recipe

    recipe = Recipe(dtype="float32", compile=False, optimizer="muon")
    small = {**SIZES, "n_head": 2, "n_embd": 32}
    points = [{**small, "n_layer": L, "batch_size": B, "arch": a} for a in (GPT2, "nanochat")
              for L, B in ((1, 2), (2, 2), (2, 6))]
    peaks = [estimate_step(EstimateRequest(Shape.of(p).model_config(), p["batch_size"], recipe, "cpu")).peak_bytes
             for p in points]
    prof = fit_points(frame(points, target=peaks))
    model_file = prof.save(tmp_path / "cpu.json")
    item = {"rank": 1, **small, "batch_size": 4, "arch": "nanochat"}
    (tmp_path / "s.json").write_text(json.dumps({"suggestions": [item], "recipe": recipe.to_dict(),
                                                 "model_file": str(model_file), "data_dir": str(char_corpus)}))
    db = tmp_path / "runs.sqlite"
    rc = main(["train", "--suggestion", "1", "--suggestions-file", str(tmp_path / "s.json"), "--db", str(db),
               "--max-iters", "6", "--eval-interval", "0", "--eval-iters", "1", "--device", "cpu",
               "--out-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(x for x in out.splitlines() if x.startswith("predicted"))
    assert "(tracked): error" in line and "exceeds" not in line, line
    from vramfit.store import Store

    with Store(db, readonly=True) as s:
        row = s.points_frame().iloc[0]
    assert row.arch == "nanochat" and row.source == "train" and row.status == "ok"


def test_a_boundary_search_finds_the_largest_nanochat_batch_on_real_cpu_runs(tmp_path, capsys):
    """The boundary search on nanochat points: real CPU workers under an emulated card, the family kept in every
    probe's store row and in the printed shape; a rerun takes every probe from the store."""
    from vramfit.store import Store

    grid, db = tmp_path / "g.toml", tmp_path / "db.sqlite"
    grid.write_text("[[axes]]\n" + "".join(f"{k} = [{v}]\n" for k, v in SIZES.items() if k != "batch_size")
                    + 'batch_size = [1, 64]\narch = ["nanochat"]\n')
    args = ["sweep", "--boundary", "--grid", str(grid), "--device", "cpu", "--db", str(db), "--emulate-vram", "3M"]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "largest batch" in x and "(start" in x)
    assert line.startswith("n_layer=2 n_head=4 n_embd=64 block_size=32 vocab_size=65 arch=nanochat: "), line
    df = Store(db, readonly=True).points_frame().set_index("batch_size")
    best = int(line.split("largest batch ")[1].split()[0])
    assert 1 <= best < 64 and df.loc[best, "status"] == "ok" and df.loc[best + 1, "status"] == "oom"
    assert set(df["arch"]) == {"nanochat"} and df.loc[best, "tracked_bytes"] <= 3 * 2**20
    assert main(args) == 0
    assert f"largest batch {best} " in capsys.readouterr().out
    assert len(Store(db, readonly=True).points_frame()) == len(df)


def test_an_adaptive_plan_of_both_families_fits_the_family_features(tmp_path):
    """The adaptive plan over a grid of both families: its model takes the FAMILY columns (`vramfit fit`'s
    rule), it covers both families before anything else, and a resumed plan counts the stored nanochat points as
    measured (their identity has the family)."""
    from fake_workers import fake_cmd

    from vramfit.store import Store
    from vramfit.sweep.adaptive import AdaptiveChooser, AdaptivePlanner, PlanSettings, extremes, point_key
    from vramfit.sweep.session import SweepOptions, run_sweep

    spec = tmp_path / "g.toml"
    spec.write_text("[[axes]]\n" + "".join(f"{k} = [{v}]\n" for k, v in SIZES.items() if k not in ("n_layer",
                    "batch_size")) + 'n_layer = [1, 2]\nbatch_size = [2, 8]\narch = ["gpt2", "nanochat"]\n'
                    + "[measure]\ntimeout_s = 60\n")
    cands = load_grid(spec).points()[0]
    planner = AdaptivePlanner(cands, "tracked_bytes", PlanSettings(points=4))
    assert planner.family == ("fused", "float32") and planner.X.shape[1] == 1 + len(FAMILY)
    assert {("arch", GPT2), ("arch", "nanochat")} <= extremes(cands)
    assert AdaptivePlanner([p for p in cands if "arch" not in p], "tracked_bytes", PlanSettings()).family is None
    assert point_key({**SIZES, "arch": "nanochat"}) != point_key(SIZES) == point_key({**SIZES, "arch": GPT2})
    db = tmp_path / "db.sqlite"
    opts = SweepOptions(db, device="cpu", quiet=True, worker_cmd=fake_cmd())
    run_sweep(load_grid(spec), opts, AdaptiveChooser(PlanSettings(points=4)))
    rows = Store(db, readonly=True).points_frame()
    assert len(rows) == 4 and set(rows["arch"].fillna(GPT2)) == {GPT2, "nanochat"}  # both covered first
    again = run_sweep(load_grid(spec), opts, AdaptiveChooser(PlanSettings(points=4)))
    assert again.resumed == 4 and len(Store(db, readonly=True).points_frame()) == 4
