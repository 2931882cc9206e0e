"""Multi-GPU data parallelism on the CPU: the DDP memory term measured with gloo (2 processes), `train --nproc 2`
through torchrun, and `suggest --gpus N --strategy ddp`."""

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from planner_data import synthetic_points

from vramfit.fit.features import features
from vramfit.fit.memmodel import fit_points
from vramfit.measure.devices import cpu_facts
from vramfit.plan.ddp import DDP_BYTES_PER_PARAM, measure_ddp
from vramfit.recipe import Recipe
from vramfit.sweep.grid import Measure
from vramfit.sweep.pool import WorkerPool, worker_env

jsonschema = pytest.importorskip("jsonschema")  # a dev dependency; absent on some GPU images

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
POINT = dict(n_layer=2, n_head=2, n_embd=192, block_size=64, batch_size=4, vocab_size=1024)


def test_ddp_gradient_buckets_cost_4_bytes_per_param_per_rank():
    m = Measure(max_iters=8)
    rec_d = Recipe().resolved("cpu").to_dict()
    single = WorkerPool().run({"point": POINT, "recipe": rec_d, "device": "cpu", "measure": m.to_dict()},
                              worker_env(cpu_facts(), Recipe.from_dict(rec_d), m), 300)
    ranks = measure_ddp(POINT, nproc=2, measure=m.to_dict())
    assert single["status"] == "ok" and [r["status"] for r in ranks] == ["ok", "ok"]
    assert [r["world_size"] for r in ranks] == [2, 2]
    P = single["n_params"]
    for r in ranks:  # tracked: exactly one more fp32 gradient copy (the buckets); RSS: that + a few MB of gloo
        assert (r["tracked_bytes"] - single["tracked_bytes"]) / P == pytest.approx(DDP_BYTES_PER_PARAM, rel=0.01)
        assert 0.95 * DDP_BYTES_PER_PARAM * P < r["rss_bytes"] - single["rss_bytes"] < DDP_BYTES_PER_PARAM * P + 8e6


def test_train_nproc_2_on_cpu(char_corpus, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "vramfit", "train", "--nproc", "2", "--device", "cpu",
                        "--data-dir", str(char_corpus), "--out-dir", str(out), "--n-layer", "1", "--n-head", "2",
                        "--n-embd", "32", "--block-size", "32", "--batch-size", "4", "--max-iters", "6",
                        "--eval-interval", "3", "--eval-iters", "2", "--log-interval", "3",
                        "--gradient-accumulation-steps", "4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("done: 6 iterations") == 1  # rank 0 only
    assert "tokens/iter 512 (2 processes, DDP)" in r.stdout  # 4 x 32 x (4 accumulation steps / 2 ranks) x 2
    assert (out / "ckpt.pt").is_file()


def test_suggest_gpus_ddp_adds_the_bucket_term(capsys, tmp_path):
    from vramfit.cli import main

    model = fit_points(synthetic_points(), target="nvml").save(tmp_path / "m.json")
    args = ["suggest", "--vram", "8G", "--model", str(model), "--json", "--top", "3", "--n-layer", "12",
            "--n-embd", "768", "--block-size", "1024", "--objective", "tokens"]
    assert main([*args, "--save", str(tmp_path / "1.json")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main([*args, "--gpus", "4", "--strategy", "ddp", "--save", str(tmp_path / "4.json")]) == 0
    four = json.loads(capsys.readouterr().out)
    schema = json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json").read_text())
    jsonschema.validate(four, schema)
    a, b = one["suggestions"][0], four["suggestions"][0]
    assert four["gpus"] == 4 and four["strategy"] == "ddp"
    assert b["breakdown"]["ddp buckets"] == pytest.approx(DDP_BYTES_PER_PARAM * b["params"], abs=1)
    assert b["batch_size"] <= a["batch_size"]  # the buckets take room from the batch
    assert b["tokens_per_step"] == 4 * b["batch_size"] * 1024
    assert b["command"].startswith("vramfit train --nproc 4 ")
    f = features(*(b[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")))
    assert b["predicted_bytes"] >= DDP_BYTES_PER_PARAM * float(f["params"][0])
    assert main([*args, "--gpus", "2", "--strategy", "fsdp"]) == 2
