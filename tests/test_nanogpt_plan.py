"""predict / estimate / suggest --like a nanoGPT config file, on a model fitted to synthetic points."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from nanogpt_files import CHAR_CONFIG, prepare_shakespeare_char
from planner_data import synthetic_db

from vramfit.cli import main
from vramfit.fit.features import features
from vramfit.fit.profile import Profile

SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    db = synthetic_db(tmp_path_factory.mktemp("db") / "v.sqlite")
    out = tmp_path_factory.mktemp("models")
    assert main(["fit", "--db", str(db), "--out", str(out)]) == 0
    (path,) = out.glob("*.json")
    return path


@pytest.fixture
def checkout(tmp_path, corpus_text, monkeypatch):
    root = tmp_path / "nanoGPT"
    meta = prepare_shakespeare_char(corpus_text[:20_000], root / "data" / "shakespeare_char")
    (root / "config").mkdir()
    (root / "config" / "train_shakespeare_char.py").write_text(CHAR_CONFIG)
    monkeypatch.chdir(root)
    return root, meta


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _need(doc, s: dict) -> float:
    return float(doc.model.predict(features(*(s[k] for k in SHAPE)))[0]) * (1 + doc.margin_rel)


def test_predict_like_is_the_config_as_it_is(capsys, checkout, model_file):
    _, meta = checkout
    like = "config/train_shakespeare_char.py"
    rc, out, err = run(capsys, "predict", "--like", like, "--model", model_file, "--json")
    assert rc == 0, err
    flags = ["--n-layer", 6, "--n-head", 6, "--n-embd", 384, "--block-size", 256, "--batch-size", 64,
             "--vocab", meta["vocab_size"]]
    rc, explicit, _ = run(capsys, "predict", *flags, "--loop", "nanogpt", "--model", model_file, "--json")
    assert json.loads(out)["predicted_bytes"] == json.loads(explicit)["predicted_bytes"]  # in nanoGPT's loop
    rc, vramfit_loop, _ = run(capsys, "predict", *flags, "--model", model_file, "--json")
    assert json.loads(vramfit_loop)["predicted_bytes"] < json.loads(out)["predicted_bytes"]  # its kept logits
    rc, out, _ = run(capsys, "predict", "--like", like, "--batch-size", 8, "--model", model_file, "--json")
    rc, explicit, _ = run(capsys, "predict", *flags[:8], "--batch-size", 8, "--vocab", meta["vocab_size"],
                          "--loop", "nanogpt", "--model", model_file, "--json")
    assert json.loads(out)["predicted_bytes"] == json.loads(explicit)["predicted_bytes"]  # a flag overrides it


def test_predict_needs_sizes_or_like(capsys, model_file):
    rc, _, err = run(capsys, "predict", "--n-layer", 2, "--model", model_file)
    assert rc == 2 and err.startswith("error: missing --n-head") and "--like" in err and err.count("\n") == 1


@pytest.mark.parametrize("vram", ["8G", "2G"])
def test_suggest_like_finds_the_largest_batch_block_and_model_close_to_it(capsys, checkout, model_file, tmp_path,
                                                                         vram):
    _, meta = checkout
    like = "config/train_shakespeare_char.py"
    save = tmp_path / "s.json"
    rc, out, err = run(capsys, "suggest", "--vram", vram, "--like", like, "--model", model_file, "--save", save,
                       "--json")
    assert rc == 0, err
    doc = json.loads(out)
    model = Profile.load(model_file)
    budget = doc["budget_bytes"]
    base = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, vocab_size=meta["vocab_size"])
    assert {k: doc["as_is"][k] for k in SHAPE} == base
    assert doc["as_is"]["fits"] == (_need(model, base) <= budget)
    found = {s["label"]: s for s in doc["suggestions"]}
    assert set(found) == {"largest batch", "longest block", "largest model"}
    for s in found.values():
        assert _need(model, s) <= budget and s["vocab_size"] == meta["vocab_size"]
        assert s["command"].startswith(f"vramfit train --config {like}")
    batch = found["largest batch"]
    assert {k: batch[k] for k in SHAPE if k != "batch_size"} == {k: base[k] for k in SHAPE if k != "batch_size"}
    assert _need(model, dict(batch, batch_size=batch["batch_size"] + 1)) > budget
    block = found["longest block"]
    assert block["batch_size"] == 64 and block["n_embd"] == 384
    assert _need(model, dict(block, block_size=block["block_size"] + 64)) > budget
    big = found["largest model"]
    assert (big["block_size"], big["batch_size"], big["n_embd"] // big["n_head"]) == (256, 64, 64)
    assert 32 <= big["n_embd"] / big["n_layer"] <= 128  # width/depth within 2x of the config's 64
    if vram == "2G":  # the config itself does not fit a small card: its largest batch and block are smaller
        assert not doc["as_is"]["fits"] and batch["batch_size"] < 64 and block["block_size"] < 256
    assert json.loads(save.read_text())["suggestions"][0]["rank"] == 1  # `train --suggestion N` reads them
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json")
                                        .read_text()))


def test_suggest_takes_the_vocabulary_from_meta_pkl(capsys, checkout, model_file, tmp_path):
    root, meta = checkout
    rc, out, err = run(capsys, "suggest", "--vram", "8G", "--model", model_file, "--top", 1, "--data-dir",
                       root / "data" / "shakespeare_char", "--save", tmp_path / "s.json")
    assert rc == 0 and f"vocab {meta['vocab_size']}: from" in out and "meta.pkl" in out, err
    assert f"--vocab-size {meta['vocab_size']} " in out


def test_estimate_like_a_config(capsys, checkout):
    _, meta = checkout
    rc, out, err = run(capsys, "estimate", "--like", "config/train_shakespeare_char.py", "--n-layer", 1,
                       "--n-embd", 48, "--batch-size", 2, "--block-size", 16, "--target", "cpu", "--json")
    assert rc == 0, err
    est = json.loads(out)
    assert est["batch_size"] == 2 and est["model_config"]["n_head"] == 6
    assert est["model_config"]["vocab_size"] == meta["vocab_size"]
    assert est["model_config"]["dropout"] == 0.2 and est["model_config"]["bias"] is False  # the file's, as it is


def test_suggest_like_takes_a_card_name(capsys, checkout, model_file, tmp_path):
    """`suggest --like` plans for a named card's nvidia-smi total as the other ways in do (`--vram "RTX 3070"`)."""
    rc, out, err = run(capsys, "suggest", "--vram", "RTX 3070", "--like", "config/train_shakespeare_char.py",
                       "--model", model_file, "--save", tmp_path / "s.json", "--json")
    assert rc == 0, err
    assert json.loads(out)["budget_bytes"] == 8192 * 2**20
