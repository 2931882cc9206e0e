"""`suggest --like FILE` is the one suggest workflow with its request filled from a config file or checkpoint:
every suggest flag works with it, through the CLI (a GPU profile fitted to synthetic timed points)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
from nanogpt_files import CHAR_CONFIG, nanogpt_checkpoint, prepare_shakespeare_char
from test_throughput import timed_synthetic

from vramfit.cards import CARDS
from vramfit.cli import main
from vramfit.fit.features import features
from vramfit.fit.memmodel import fit_points
from vramfit.fit.profile import Profile
from vramfit.plan.ddp import DdpMemoryModel, DdpTerm
from vramfit.shape import KEYS, Shape

LIKE = "config/train_shakespeare_char.py"
SCHEMA = json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json").read_text())


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    return fit_points(timed_synthetic(noise=0.01), target="nvml").save(tmp_path_factory.mktemp("like") / "gpu.json")


@pytest.fixture
def checkout(tmp_path, corpus_text, monkeypatch):
    """A nanoGPT checkout: data/shakespeare_char prepared, config/train_shakespeare_char.py; the working folder."""
    meta = prepare_shakespeare_char(corpus_text[:20_000], tmp_path / "data" / "shakespeare_char")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "train_shakespeare_char.py").write_text(CHAR_CONFIG)
    monkeypatch.chdir(tmp_path)
    return meta["vocab_size"]


def like(capsys, *args) -> tuple[int, dict | str, str]:
    """`suggest --like LIKE ARGS --json --suggestions-file s.json`: (exit code, the document, stderr)."""
    rc = main(["suggest", "--like", LIKE, "--json", "--suggestions-file", "s.json", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip().startswith("{") else out
    if isinstance(doc, dict):
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(doc, SCHEMA)
    return rc, doc, err


def by_label(doc: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in doc["suggestions"]:
        out.setdefault(s["label"], []).append(s)
    return out


def need(profile: Profile, s: dict, model=None) -> float:  # noqa: ANN001 - a memory model
    f = features(*Shape.of(s).as_tuple())
    return float((model or profile.model).predict(f)[0]) * (1 + profile.margin_rel)


def test_like_plans_the_config_and_what_is_close_to_it(capsys, checkout, profile_file):
    rc, doc, err = like(capsys, "--vram", "8G", "--model", profile_file)
    assert rc == 0, err
    profile = Profile.load(profile_file)
    assert doc["like"] == LIKE and doc["objective"] == "params" and doc["data_dir"] == "data/shakespeare_char"
    assert Shape.of(doc["as_is"]) == Shape(6, 6, 384, 256, 64, checkout)
    found = by_label(doc)
    assert list(found) == ["largest batch", "longest block", "largest model"]
    assert [s["rank"] for s in doc["suggestions"]] == [1, 2, 3]
    for s in doc["suggestions"]:
        assert need(profile, s) <= doc["budget_bytes"]
        assert s["command"].startswith(f"vramfit train --config {LIKE}") and f"out/like-{s['rank']}" in s["command"]
    (batch,), (block,) = found["largest batch"], found["longest block"]
    assert need(profile, {**batch, "batch_size": batch["batch_size"] + 1}) > doc["budget_bytes"]
    assert block["batch_size"] == 64 and need(profile, {**block, "block_size": block["block_size"] + 64}) > \
        doc["budget_bytes"]
    assert json.loads(open("s.json").read())["suggestions"] == doc["suggestions"]  # what `train --suggestion N` reads


def test_vram_names_a_card(capsys, checkout, profile_file):
    rc, doc, err = like(capsys, "--vram", "t4", "--model", profile_file)
    assert rc == 0, err
    assert doc["card"] == "t4" and doc["vram_bytes"] == CARDS["t4"].total_bytes == doc["budget_bytes"]
    rc, doc, _ = like(capsys, "--vram", "t4", "--reserve", "1G", "--model", profile_file)
    assert doc["budget_bytes"] == CARDS["t4"].total_bytes - 2**30


def test_gpus_plan_per_gpu_memory_with_the_ddp_term(capsys, checkout, profile_file):
    rc, doc, err = like(capsys, "--vram", "8G", "--gpus", 2, "--model", profile_file)
    assert rc == 0, err
    profile = Profile.load(profile_file)
    ddp = DdpMemoryModel(profile.model, DdpTerm.for_device("cuda"))
    assert doc["gpus"] == 2 and doc["strategy"] == "ddp"
    for s in doc["suggestions"]:
        assert s["command"].startswith(f"vramfit train --nproc 2 --config {LIKE}")
        assert s["tokens_per_step"] == 2 * s["batch_size"] * s["block_size"]
        assert need(profile, s, ddp) <= doc["budget_bytes"]
    assert doc["as_is"]["predicted_bytes"] == int(ddp.predict(features(*Shape.of(doc["as_is"]).as_tuple()))[0])
    (single,) = by_label(like(capsys, "--vram", "8G", "--model", profile_file)[1])["largest batch"]
    assert by_label(doc)["largest batch"][0]["batch_size"] < single["batch_size"]  # DDP's buckets take room


def test_hours_rank_the_model_close_to_it_by_what_the_time_buys(capsys, checkout, profile_file, monkeypatch):
    rc, doc, err = like(capsys, "--vram", "8G", "--hours", 2, "--top", 3, "--model", profile_file)
    assert rc == 0, err
    assert doc["hours"] == 2 and doc["rank"] == "optimal" and doc["ranking"]["objective"] == "hours"
    for s in doc["suggestions"]:
        assert s["tokens_in_budget"] == pytest.approx(s["tokens_per_s"] * 2 * 3600)
    assert list(by_label(doc)) == ["largest batch", "longest block", "model close to it"]
    models = by_label(doc)["model close to it"]
    assert len(models) == 3
    useful = [min(s["tokens_in_budget"], 20 * s["params"]) for s in models]
    assert useful == sorted(useful, reverse=True)
    monkeypatch.setenv("COLUMNS", "200")
    rc = main(["suggest", "--like", LIKE, "--vram", "8G", "--hours", "2", "--model", str(profile_file),
               "--suggestions-file", "s.json"])
    out, err = capsys.readouterr()
    assert rc == 0 and "found" in out and "ms/iter" in out and "largest batch" in out, err


def test_top_and_objective(capsys, checkout, profile_file):
    rc, doc, _ = like(capsys, "--vram", "8G", "--top", 3, "--model", profile_file)
    found = by_label(doc)
    assert rc == 0 and len(found["largest batch"]) == 1 and len(found["largest model"]) == 3  # one shape: one batch
    params = [s["params"] for s in found["largest model"]]
    assert params == sorted(params, reverse=True)
    rc, doc, _ = like(capsys, "--vram", "8G", "--objective", "balanced", "--model", profile_file)
    assert rc == 0 and doc["objective"] == "balanced" and doc["ranking"]["objective"] == "balanced"
    assert list(by_label(doc)) == ["largest batch", "longest block", "model close to it"]
    rc, _, err = like(capsys, "--vram", "8G", "--objective", "biggest", "--model", profile_file)
    assert rc == 2 and err.startswith("error: unknown objective 'biggest'") and err.count("\n") == 1


def test_device_picks_the_profile_by_its_recorded_fit_time(capsys, checkout, profile_file):
    gpu = Profile.load(profile_file)
    models = Path("results", "models")
    models.mkdir(parents=True)
    replace(gpu, device="Old GPU", fitted_at="2026-01-01T00:00:00+00:00").save(f"{models}/old.json")
    replace(gpu, device="New GPU", fitted_at="2026-06-01T00:00:00+00:00").save(f"{models}/new.json")
    replace(gpu, device="A CPU", device_type="cpu", target="tracked").save(f"{models}/cpu.json")
    os.utime(f"{models}/old.json")  # the newest file by mtime is not the newest fit
    rc, doc, err = like(capsys, "--vram", "8G")
    assert rc == 0 and doc["device"] == "New GPU" and doc["model_file"].endswith("new.json"), err
    rc, doc, err = like(capsys, "--vram", "8G", "--target", "cpu")
    assert rc == 0 and doc["device"] == "A CPU" and doc["plan"].startswith("plan for CPU RAM"), err
    rc, doc, err = like(capsys, "--vram", "8G", "--target", "cuda", "--model", f"{models}/old.json")
    assert rc == 0 and doc["device"] == "Old GPU", err


def test_within_measured_and_size_flags(capsys, checkout, profile_file):
    ranges = Profile.load(profile_file).ranges
    rc, doc, err = like(capsys, "--vram", "8G", "--within-measured", "--vocab", 512, "--batch-size", 8,
                        "--model", profile_file)
    assert rc == 0, err
    assert Shape.of(doc["as_is"]) == Shape(6, 6, 384, 256, 8, 512)
    assert len(by_label(doc)) == 3
    for s in doc["suggestions"]:
        assert s["extrapolated"] == [] and all(ranges[k][0] <= s[k] <= ranges[k][1] for k in KEYS)
        assert "--vocab-size 512" in s["command"]
    rc, doc, err = like(capsys, "--vram", "8G", "--n-layer", 4, "--model", profile_file)
    assert rc == 0 and doc["as_is"]["n_layer"] == 4 and by_label(doc)["largest batch"][0]["n_layer"] == 4, err
    rc, _, err = like(capsys, "--vram", "8G", "--n-layer", "4,8", "--model", profile_file)
    assert rc == 2 and err == "error: with --like, --n-layer takes one value (it replaces the config's)\n"


def test_like_a_checkpoint(capsys, checkout, profile_file):
    nanogpt_checkpoint(Path("out-char") / "ckpt.pt", checkout)
    rc = main(["suggest", "--like", "out-char", "--vram", "8G", "--model", str(profile_file),
               "--json", "--suggestions-file", "s.json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert Shape.of(doc["as_is"]) == Shape(1, 2, 32, 32, 12, checkout)  # model_args, its config's batch
    assert all(s["command"].startswith("vramfit train --n-layer") for s in doc["suggestions"])  # no config file


@pytest.mark.slow
def test_the_readme_example_plans_without_a_profile(capsys, checkout):
    """README "Coming from nanoGPT": `vramfit suggest --vram 8G --like config/train_shakespeare_char.py
    --no-profile` (it failed with `cannot read compute capability None`)."""
    rc = main(["suggest", "--vram", "8G", "--like", LIKE, "--no-profile"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("plan for a CUDA GPU of compute capability") and f"{LIKE} as it is: n_layer=6" in out
    assert "largest batch" in out and "longest block" in out and "largest model" in out
    assert "warning: no profile of this device" in err
    rc, doc, err = like(capsys, "--vram", "8G", "--no-profile")  # the cache answers: no estimate runs again
    assert rc == 0 and doc["dry_run"]["estimates_run"] == 0 and doc["recipe"]["dtype"] == "bfloat16", err
    m = doc["margin_rel"]  # re-checked by the estimator: its figure raised by the validation margin fits
    assert all(s["margin_bytes"] == int(s["predicted_bytes"] * m) and s["headroom_bytes"] >= 0
               for s in doc["suggestions"])


def test_the_dry_runs_recipe_is_the_files_unless_given(tmp_path):
    """Without --recipe, a no-profile plan estimates with the dtype and compile the config file sets."""
    from vramfit.plan.like import read_like
    from vramfit.plan.profiles import _dry_run_recipe
    from vramfit.plan.request import PlanRequest

    (tmp_path / "c.py").write_text(CHAR_CONFIG + "dtype = 'float16'\ncompile = False\n")
    found = read_like(tmp_path / "c.py")
    assert found.recipe == {"dtype": "float16", "compile": False} and found.config
    rec = _dry_run_recipe(PlanRequest("8G"), found)
    assert (rec.dtype, rec.compile, rec.optimizer) == ("float16", False, "fused")
    rec = _dry_run_recipe(PlanRequest("8G", recipe="dtype=bfloat16,compile=true"), found)
    assert (rec.dtype, rec.compile) == ("bfloat16", True)
    assert read_like(tmp_path / "c.py").shape == Shape(6, 6, 384, 256, 64)  # no corpus there: GPT-2's vocabulary
