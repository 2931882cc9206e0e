"""`suggest --hours`: ranking what fits by what the time buys; its one-line errors; the new plots."""

import json

import pytest
from test_throughput import timed_synthetic

from vramfit.cli import main
from vramfit.fit.losslaw import LossLaw
from vramfit.fit.memmodel import fit_points

SPACE = ["--n-layer", "2,4,8", "--n-embd", "128,256,512", "--block-size", "256", "--vocab", "8192"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    report = fit_points(timed_synthetic(noise=0.01), target="nvml")
    return report.save(tmp_path_factory.mktemp("hours") / "m.json")


@pytest.mark.parametrize("hours", ["0", "-1", "6x", "inf"])
def test_bad_hours_are_one_line_errors(model_file, tmp_path, capsys, hours):
    rc = main(["suggest", "--vram", "8G", "--model", str(model_file), f"--hours={hours}",
               "--save", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --hours must be a positive number") and "\n" not in err


def test_old_model_file_without_throughput_says_refit(model_file, tmp_path, capsys):
    d = json.loads(model_file.read_text())
    del d["throughput"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    rc = main(["suggest", "--vram", "8G", "--model", str(tmp_path / "old.json"), "--hours", "6",
               "--save", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "re-run `vramfit fit`" in err and "\n" not in err


def test_hours_ranks_toward_compute_optimal(model_file, tmp_path, capsys):
    rc = main(["suggest", "--vram", "8G", "--model", str(model_file), "--hours", "6", "--json", "--top", "30",
               *SPACE, "--save", str(tmp_path / "s.json")])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hours"] == 6 and doc["rank"] == "optimal"
    items = doc["suggestions"]
    useful = [min(s["tokens_in_budget"], 20 * s["params"]) for s in items]
    assert useful == sorted(useful, reverse=True)  # the documented objective, best first
    for s in items:
        assert s["tokens_in_budget"] == pytest.approx(s["tokens_per_s"] * 6 * 3600)
        assert s["hours_to_optimal"] == pytest.approx(20 * s["params"] / s["tokens_per_s"] / 3600)
        assert s["tokens_per_s"] == pytest.approx(s["tokens_per_step"] / s["ms_per_iter"] * 1000)
    # more hours buy more tokens per parameter: the best config grows
    assert main(["suggest", "--vram", "8G", "--model", str(model_file), "--hours", "600", "--json", "--top", "1",
                 *SPACE, "--save", str(tmp_path / "s2.json")]) == 0
    long = json.loads(capsys.readouterr().out)["suggestions"][0]
    assert long["params"] > items[0]["params"]  # strictly: 100x the hours buy a bigger model, not the same one
    rc = main(["suggest", "--vram", "8G", "--model", str(model_file), "--hours", "1.5", *SPACE,
               "--save", str(tmp_path / "s3.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "tokens/s" in out and "h to 20xP" in out and "tokens in 1.5 h" in out


def test_a_fitted_loss_law_ranks_by_predicted_loss(model_file, tmp_path, capsys):
    law = LossLaw(1.5, 40.0, 300.0, 0.3, 0.3, corpus_id="c")
    path = law.save(tmp_path / "law.json")
    rc = main(["suggest", "--vram", "8G", "--model", str(model_file), "--hours", "6", "--json", "--top", "30",
               "--loss-law", str(path), *SPACE, "--save", str(tmp_path / "s.json")])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rank"] == "loss" and doc["loss_law"]["A"] == 40.0
    losses = [s["predicted_loss"] for s in doc["suggestions"]]
    assert losses == sorted(losses)
    assert losses[0] == pytest.approx(law.predict(doc["suggestions"][0]["params"],
                                                  doc["suggestions"][0]["tokens_in_budget"]))
    assert main(["suggest", "--vram", "8G", "--model", str(model_file), "--hours", "6", "--rank", "loss",
                 "--data-dir", str(tmp_path), "--save", str(tmp_path / "s.json")]) == 2
    assert "no loss law" in capsys.readouterr().err


@pytest.mark.slow
def test_plots_ms_and_frontier(model_file, tmp_path):
    import matplotlib.image as mpimg
    from PIL import Image

    from vramfit.plan.suggest import TimeBudget
    from vramfit.show.plots import all_plots

    points = timed_synthetic(noise=0.01)
    report = fit_points(points, target="nvml")
    paths = {p.name: p for p in all_plots(report, points, tmp_path, 8 * 2**30, None, TimeBudget(6.0))}
    assert {"ms_pred_vs_measured.png", "frontier.png"} <= set(paths)
    info = Image.open(paths["ms_pred_vs_measured.png"]).info
    assert "time per iteration" in info["Title"] and "measured ms/iter" in info["Description"]
    info = Image.open(paths["frontier.png"]).info
    assert "6 hours" in info["Title"] and "x: parameters" in info["Description"]
    for name in ("ms_pred_vs_measured.png", "frontier.png"):  # drawn, not only titled
        img = mpimg.imread(paths[name])
        assert img.shape[0] > 300 and img.shape[1] > 500 and img[..., :3].std() > 0.05, name


def test_hours_output_matches_the_schema(model_file, tmp_path, capsys):
    from importlib import resources

    import jsonschema

    assert main(["suggest", "--vram", "8G", "--model", str(model_file), "--hours", "2", "--rank", "chinchilla",
                 "--json", "--top", "3", *SPACE, "--save", str(tmp_path / "s.json")]) == 0
    doc = json.loads(capsys.readouterr().out)
    schema = json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json").read_text())
    jsonschema.validate(doc, schema)
    from vramfit.fit.losslaw import chinchilla

    losses = [s["predicted_loss"] for s in doc["suggestions"]]
    assert losses == sorted(losses)  # --rank chinchilla: the lowest predicted loss first
    for s in doc["suggestions"]:  # Hoffmann et al.'s law at the config's parameters and the tokens the hours buy
        assert s["predicted_loss"] == pytest.approx(float(chinchilla().predict(s["params"], s["tokens_in_budget"])))
