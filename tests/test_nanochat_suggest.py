"""`suggest` / `predict` / `sweep --arch nanochat` from a profile swept with nanochat points (issue 29, item 3):
nanochat's shapes by its own depth rule (`gpt.config.nanochat_config`), each row with vramfit's train command and,
where base_train builds that model, nanochat's own; the throughput model counts nanochat's FLOPs.

The end-to-end test sweeps a small mixed CPU profile, suggests with --arch nanochat, runs the printed train command
with --measure and checks the reading against the prediction + margin (the issue's "must hold")."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpt.config import GPTConfig, nanochat_config
from vramfit.cli import main
from vramfit.errors import VramfitError
from vramfit.fit.throughput import frame_time_features, time_features
from vramfit.plan.nanochat import base_train_row, rule_models
from vramfit.shape import Shape
from vramfit.sweep.grid import arch_axes, load_grid


def test_the_search_follows_nanochats_depth_rule():
    """Width = depth x aspect ratio rounded up to the head dim, heads = width / head dim (base_train's
    build_model_meta); a K/V head count that does not divide the heads drops that depth."""
    assert rule_models([1, 2, 4, 20], 64, 128, "nanochat") == [(1, 1, 128), (2, 1, 128), (4, 2, 256), (20, 10, 1280)]
    assert [(L, H, C) for L, H, C in rule_models([20], 64, 128, "nanochat")] == \
        [(nanochat_config(20).n_layer, nanochat_config(20).n_head, nanochat_config(20).n_embd)]
    assert rule_models([1, 2, 4], 16, 16, "nanochat:n_kv_head=2") == [(2, 2, 32), (4, 4, 64)]  # depth 1: 1 head
    with pytest.raises(VramfitError, match="no depth"):
        rule_models([1], 16, 16, "nanochat:n_kv_head=2")


def test_nanochats_own_command_where_base_train_builds_the_model():
    row = base_train_row(Shape(20, 10, 1280, 2048, 4, 32768, "nanochat"), 64, 128, grad_accum=2)
    assert row["command"] == "python -m scripts.base_train --depth=20 --device-batch-size=4 --total-batch-size=16384"
    assert row["grad_accum_steps"] == 2 and row["total_batch_size"] == 4 * 2048 * 2
    windowed = base_train_row(Shape(2, 2, 32, 128, 4, 32768, "nanochat:window_pattern=L"), 16, 16)
    assert "--window-pattern=L" in windowed["command"] and "--aspect-ratio=16 --head-dim=16" in windowed["command"]
    assert base_train_row(Shape(2, 2, 32, 128, 4, 65, "nanochat"), 16, 16) is None  # not nanochat's tokenizer
    assert base_train_row(Shape(2, 2, 32, 128, 4, 32768, "nanochat:mlp=swiglu"), 16, 16) is None  # no such flag


def test_sweep_arch_flag_sets_the_family_axes(tmp_path):
    assert arch_axes("gpt2,nanochat") == {"arch": ["gpt2", "nanochat"]}
    assert arch_axes("nanochat:n_kv_head=1,mlp=swiglu") == {"arch": ["nanochat"], "n_kv_head": [1], "mlp": ["swiglu"]}
    with pytest.raises(VramfitError, match="arch must be one of"):
        arch_axes("gpt2,llama")
    sizes = {"n_layer": "1", "n_head": "2", "n_embd": "32", "block_size": "32", "batch_size": "2", "vocab_size": "65"}
    points, _ = load_grid(None, {**sizes, **arch_axes("gpt2,nanochat")}).points()
    assert [p.get("arch", "gpt2") for p in points] == ["gpt2", "nanochat"]
    rc = main(["sweep", *(a for k, v in sizes.items() for a in (f"--{k.replace('_', '-')}", v)), "--arch", "llama",
               "--db", str(tmp_path / "db.sqlite")])
    assert rc != 0 and not (tmp_path / "db.sqlite").exists()


def test_throughput_counts_nanochats_flops():
    """nanochat rows: `GPTConfig.flops_per_token` (its estimate_flops: the untied head, windowed attention, no
    lookups); GPT-2 rows as before, in a mixed frame too."""
    sizes = (2, 2, 128, 256, 4, 512)
    gpt2 = time_features(*sizes)
    chat = time_features(*sizes, arch="nanochat:window_pattern=SL")
    mc = GPTConfig(2, 2, 128, 256, 512, arch="nanochat", window_pattern="SL")
    assert chat["flops"][0] == 4 * 256 * mc.flops_per_token()
    assert chat["flops"][0] != gpt2["flops"][0] and chat["logits"][0] == gpt2["logits"][0]
    df = pd.DataFrame([dict(zip(("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size"), sizes,
                                strict=True), arch=a) for a in ("gpt2", "nanochat:window_pattern=SL")])
    assert np.allclose(frame_time_features(df)["flops"], [gpt2["flops"][0], chat["flops"][0]])


def test_a_gpt2_profile_refuses_arch_nanochat(tmp_path, capsys):
    """A profile fitted on GPT-2 points alone plans no nanochat model: one line, exit 1 (suggest and predict)."""
    from tests.test_nanochat_fit import SIZES, frame
    from vramfit.fit.memmodel import fit_points

    points = [{**SIZES, "n_layer": L, "batch_size": B} for L in (1, 2, 3) for B in (2, 4)]
    df = frame(points, optimizer="fused", target=[1e6 + 1e4 * p["n_layer"] * p["batch_size"] for p in points])
    model = fit_points(df).save(tmp_path / "gpt2.json")
    for argv in (["suggest", "--vram", "1G", "--target", "cpu", "--arch", "nanochat"],
                 ["predict", *Shape(**SIZES).flags(), "--arch", "nanochat"]):
        assert main([*argv, "--model", str(model)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --arch nanochat: gpt2.json was fitted on GPT-2 points only") and "\n" not in err
    assert main(["suggest", "--vram", "1G", "--target", "cpu", "--arch", "nanochat", "--n-embd", "64",
                 "--model", str(model)]) == 2
    assert "--aspect-ratio" in capsys.readouterr().err


@pytest.mark.slow
def test_train_measure_of_a_suggested_nanochat_config_lands_within_its_margin(tmp_path, capsys, char_corpus):
    """sweep (experiments/grids/nanochat_tiny.toml, --arch gpt2,nanochat: 10 points of both families, Muon) -> fit
    -> suggest --arch nanochat -> the printed train command with --measure: the reading is within the prediction +
    margin; predict agrees with the row."""
    grid = Path(__file__).resolve().parents[1] / "experiments" / "grids" / "nanochat_tiny.toml"
    db, models = tmp_path / "db.sqlite", tmp_path / "models"
    assert main(["sweep", "--grid", str(grid), "--arch", "gpt2,nanochat", "--device", "cpu", "--db", str(db),
                 "-q"]) == 0
    assert main(["fit", "--db", str(db), "--models", str(models)]) == 0
    (model,) = models.glob("*.json")
    vocab = json.loads((char_corpus / "meta.json").read_text())["vocab_size"]
    capsys.readouterr()
    sfile = tmp_path / "s.json"
    assert main(["suggest", "--vram", "12M", "--target", "cpu", "--model", str(model), "--arch", "nanochat",
                 "--aspect-ratio", "16", "--head-dim", "16", "--n-layer", "2,3,4", "--block-size", "64",
                 "--batch-size", "2,3,4,5,6,7,8", "--data-dir", str(char_corpus), "--objective", "params", "--top",
                 "1", "--suggestions-file", str(sfile)]) == 0
    out = capsys.readouterr().out
    doc = json.loads(sfile.read_text())
    (item,) = doc["suggestions"]
    assert doc["arch"] == item["arch"] == "nanochat" and (item["n_layer"], item["n_head"], item["n_embd"]) == (4, 4, 64)
    assert item["vocab_size"] == vocab and item["params"] == Shape.of(item).model_config().n_params()
    command = next(line for line in out.splitlines() if line.startswith("#1: "))[4:]
    assert command == item["command"] and "--arch nanochat" in command
    args = shlex.split(command)[1:]
    args[args.index("--out-dir") + 1] = str(tmp_path / "out")
    runs = tmp_path / "runs.sqlite"
    assert main([*args, "--measure", "--db", str(runs), "--device", "cpu", "--max-iters", "6", "--eval-interval",
                 "0", "--eval-iters", "1"]) == 0
    from vramfit.store import Store

    with Store(runs, readonly=True) as s:
        row = s.points_frame().iloc[0]
    assert row.arch == "nanochat" and row.status == "ok"
    assert row.tracked_bytes <= item["predicted_bytes"] + item["margin_bytes"], (row.tracked_bytes, item)
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--arch", "nanochat", "--json",
                 *Shape.of(item).flags()]) == 0
    assert json.loads(capsys.readouterr().out)["predicted_bytes"] == item["predicted_bytes"]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the page's script")
def test_the_report_calculator_plans_both_families_as_predict_does(tmp_path):
    """A mixed profile's page entry offers both families; its script (run in Node, the DOM stubbed) predicts the
    memory, parameters and ms/iter of GPT-2 and nanochat shapes as the Python model does."""
    from tests.test_nanochat_fit import SIZES, frame
    from vramfit.fit.features import frame_features
    from vramfit.fit.memmodel import fit_points
    from vramfit.show.calculator import _script_json, model_entry, page_data
    from vramfit.show.context import PlanContext

    archs = ["gpt2", "nanochat", "nanochat:n_kv_head=1,window_pattern=SL", "nanochat:mlp=swiglu"]
    points = [{**SIZES, "n_layer": L, "n_embd": C, "batch_size": B, "block_size": T, "arch": a} for a in archs
              for L in (1, 2, 3) for C in (32, 64) for B in (1, 4) for T in (32, 256)]
    df = frame(points)
    X = frame_features(df)
    backward = 2e5 + 14 * X["params"] + 10 * X["logits"] + 40 * X["acts"] + 16 * X["chat_logits"] + 30 * X["chat_acts"]
    backward += 9 * X["kv_acts"] + 5 * X["mlp_acts"] + 7 * X["ve_acts"] + 3 * X["chat_attn"]
    df["tracked_bytes"] = np.maximum(backward, 2e5 + 12 * X["params"] + 4 * X["grads"] + 20 * X["muon_stack"])
    flops = frame_time_features(df)["flops"]
    df["ms_per_iter"] = 3 + flops / 1e8 + df["batch_size"] * df["block_size"] * df["vocab_size"] / 1e7
    df["timings"] = [json.dumps({"step_ms": [m, m * 1.1]}) for m in df["ms_per_iter"]]
    prof = fit_points(df)
    assert prof.plans_families and prof.throughput is not None
    shape = Shape(2, 4, 64, 256, 4, 65, "nanochat")
    ctx = PlanContext(vram_bytes=64 * 2**20, reserve_bytes=0, vocab_size=65, sources=["test"])
    entry = model_entry(prof, ctx, shape, tmp_path, points=df)
    assert set(entry["archs"]) == {*archs, "nanochat:n_kv_head=1,window_pattern=SL"} and entry["defaults"]["arch"] == \
        "nanochat"
    cases = [Shape(3, 2, 64, 256, 4, 65, a) for a in archs] + [Shape(4, 4, 128, 512, 2, 512, "nanochat"),
                                                              Shape(2, 2, 64, 32, 16, 65, "gpt2")]
    files = {"script": __import__("vramfit.show", fromlist=["x"]).__path__[0] + "/calculator.js"}
    (tmp_path / "data.json").write_text(_script_json(page_data([entry], [shape])).replace("\\u003c", "<")
                                        .replace("\\u003e", ">").replace("\\u0026", "&"))
    (tmp_path / "cases.json").write_text(json.dumps([{**s.as_dict(), "arch": s.arch} for s in cases]))
    run = subprocess.run(["node", str(Path(__file__).with_name("calculator_node.js")), files["script"],
                          str(tmp_path / "data.json"), str(tmp_path / "cases.json")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    for s, got in zip(cases, json.loads(run.stdout), strict=True):
        assert got["error"] == "", (s, got["error"])
        want = float(prof.memory(s)[0])
        assert got["predicted"] == pytest.approx(want, rel=1e-9, abs=2), s
        assert got["params"] == s.model_config().n_params(), s
        assert got["ms"] == pytest.approx(float(prof.step_ms(s)[0]), rel=1e-9), s
        assert sum(got["breakdown"].values()) == pytest.approx(want, rel=1e-6, abs=8), (s, got["breakdown"])
