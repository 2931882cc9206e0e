"""fit / predict / suggest / plot / report from the command line, on a database of synthetic points."""

import json

import matplotlib.image as mpimg
import pytest
from PIL import Image
from planner_data import synthetic_db

from vramfit.cli import main
from vramfit.store import Store


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = synthetic_db(tmp_path_factory.mktemp("db") / "v.sqlite")
    return path


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def model_file(db, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    assert main(["fit", "--db", str(db), "--out", str(out)]) == 0
    (path,) = out.glob("*.json")
    return path


def test_fit_prints_coefficients_and_both_models(capsys, db, tmp_path):
    rc, out, _ = run(capsys, "fit", "--db", db, "--out", tmp_path)
    assert rc == 0
    assert "B/param" in out and "naive params+tokens" in out and "shape held out" in out
    doc = json.loads(next(tmp_path.glob("synthetic-gpu-*.json")).read_text())
    assert doc["target"] == "nvml" and doc["n_points"] == 108


def test_predict_breakdown(capsys, model_file):
    rc, out, _ = run(capsys, "predict", "--n-layer", 12, "--n-head", 12, "--n-embd", 768, "--block-size", 1024,
                     "--batch-size", 12, "--model", model_file, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["regime"] == "backward"
    assert sum(doc["breakdown"].values()) == pytest.approx(doc["predicted_bytes"], rel=1e-6)
    from vramfit.fit.features import features
    from vramfit.fit.profile import Profile

    fitted = Profile.load(model_file)
    f = features(12, 12, 768, 1024, 12, 50304)
    assert doc["predicted_bytes"] == int(fitted.model.predict(f)[0])
    assert doc["margin_bytes"] == int(fitted.model.predict(f)[0] * fitted.margin_rel)
    assert doc["naive_bytes"] == int(fitted.baseline.predict(f)[0]) != doc["predicted_bytes"]


def test_suggest_table_and_train_commands(capsys, model_file, tmp_path):
    rc, out, _ = run(capsys, "suggest", "--vram", "8G", "--reserve", "500M", "--model", model_file, "--top", 3,
                     "--save", tmp_path / "s.json")
    assert rc == 0
    assert "budget: 7.51 GiB" in out and out.count("vramfit train --n-layer") == 3
    assert "--dtype bfloat16 --compile true --optimizer fused" in out


def test_plots_are_real_pngs(capsys, db, tmp_path):
    rc, out, _ = run(capsys, "plot", "--db", db, "--out", tmp_path, "--vram", "1G",
                     "--suggestions", tmp_path / "no.json")
    assert rc == 0
    pngs = {p.name: p for p in tmp_path.rglob("*.png")}
    expected = {"pred_vs_measured.png": ("Predicted vs measured", "measured peak"),
                "memory_vs_tokens.png": ("Memory vs tokens", "tokens per batch"),
                "feasibility.png": ("Feasibility", "batch_size"),
                "breakdown.png": ("Where the memory goes", ""),
                "cv_residuals.png": ("Cross-validated residuals", "measured")}
    assert set(pngs) == set(expected)
    for name, (title, xlabel) in expected.items():
        img = mpimg.imread(pngs[name])
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
        assert img[..., :3].std() > 0.05  # not a blank canvas
        info = Image.open(pngs[name]).info
        assert title in info["Title"] and xlabel in info["Description"]


def test_report_is_one_html_with_inline_plots(capsys, db, tmp_path):
    rc, _, _ = run(capsys, "report", "--db", db, "--out", tmp_path / "r.html", "--vram", "1G",
                   "--suggestions", tmp_path / "no.json")
    assert rc == 0
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "Cross-validated error" in html


@pytest.mark.parametrize(
    "args, message",
    [
        (["suggest", "--vram", "8G", "--objective", "fast"], "unknown objective"),
        (["suggest", "--vram", "8Q"], "cannot parse size '8Q'"),
        (["suggest", "--vram", "100M"], "below this device's constant"),
        (["suggest", "--vram", "8G", "--reserve", "9G"], "budget must be positive"),
        (["suggest", "--vram", "8G", "--n-layer", "4,x"], "is not an integer"),
        (["predict", "--n-layer", "2", "--n-head", "3", "--n-embd", "64", "--block-size", "8", "--batch-size", "1"],
         "divisible"),
    ],
)
def test_planner_bad_input(capsys, model_file, args, message):
    rc, _, err = run(capsys, *args, "--model", model_file)
    assert rc == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1


def test_missing_model_and_empty_database(capsys, tmp_path):
    rc, _, err = run(capsys, "suggest", "--vram", "8G", "--model", tmp_path / "none.json")
    assert rc == 2 and "no model file" in err
    with Store(tmp_path / "empty.sqlite"):
        pass
    rc, _, err = run(capsys, "fit", "--db", tmp_path / "empty.sqlite")
    assert rc == 2 and "no points" in err
    rc, _, err = run(capsys, "fit", "--db", tmp_path / "missing.sqlite")
    assert rc == 2 and "no database" in err


def test_nothing_fits_says_what_would(capsys, model_file):
    import re

    from vramfit.fit.features import features
    from vramfit.fit.profile import Profile
    from vramfit.units import format_size, parse_size

    rc, _, err = run(capsys, "suggest", "--vram", "500M", "--n-layer", "48", "--n-embd", "4096", "--model",
                     model_file, "--save", "/dev/null")
    assert err.startswith("error: nothing fits in 500.00 MiB") and err.count("\n") == 1, err  # one line, stderr
    out = " ".join(err.split())
    assert rc == 1, out
    m = re.search(r"The smallest config in this space needs ([\d.]+ [KMGT]iB): ((?:\w+=\d+ ?)+)\.", out)
    assert m, out
    cfg = dict(kv.split("=") for kv in m.group(2).split())
    assert cfg["n_layer"] == "48" and cfg["n_embd"] == "4096" and cfg["batch_size"] == "1"
    doc = Profile.load(model_file)  # the need printed is that config's prediction plus the margin
    pred = doc.model.predict(features(*(int(cfg[k]) for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                 "batch_size", "vocab_size"))))[0]
    assert m.group(1) == format_size(pred * (1 + doc.margin_rel))
    assert parse_size(m.group(1).replace(" ", "")) > parse_size("500M")


def test_suggest_plans_for_the_corpus_vocabulary(capsys, model_file, char_corpus, tmp_path):
    """Without --vocab, the configs use --data-dir's vocabulary (the printed commands train on it)."""
    vocab = json.loads((char_corpus / "meta.json").read_text())["vocab_size"]
    rc, out, _ = run(capsys, "suggest", "--vram", "8G", "--model", model_file, "--top", 2, "--data-dir", char_corpus,
                     "--save", tmp_path / "s.json")
    assert rc == 0 and f"vocab {vocab}: from" in out
    assert f"--vocab-size {vocab} " in out and "--vocab-size 50304" not in out
    rc, _, err = run(capsys, "suggest", "--vram", "8G", "--model", model_file, "--data-dir", char_corpus,
                     "--vocab", vocab - 1, "--save", tmp_path / "s.json")
    assert rc == 2 and err.startswith("error: ") and "smaller than the vocabulary" in err and err.count("\n") == 1
    rc, out, _ = run(capsys, "suggest", "--vram", "8G", "--model", model_file, "--top", 1,
                     "--data-dir", tmp_path / "none", "--save", tmp_path / "s.json")
    assert rc == 0 and "--vocab-size 50304" in out  # no prepared corpus: GPT-2's padded BPE vocabulary
