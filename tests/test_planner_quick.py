"""The planner on real CPU measurements (the quick grid): held-out accuracy, and the loop closed by training."""

import re

import pytest

from vramfit.cli import main
from vramfit.fit.memmodel import fit_points
from vramfit.store import Store


def test_held_out_shapes_within_5_percent_and_beats_naive(quick_db):
    with Store(quick_db) as store:
        points = store.points_frame(status="ok")
    report = fit_points(points, target="tracked")
    ours, naive = report.metrics["ours"]["grouped"], report.metrics["naive"]["grouped"]
    assert report.cv["shape"].nunique() >= 5  # grouped CV really holds whole shapes out
    assert ours["max_rel"] < 0.05, ours
    assert ours["max_rel"] < naive["max_rel"] and ours["mape"] < naive["mape"]


def test_suggest_then_train_the_suggestion_closes_the_loop(quick_db, char_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # out/suggest-N goes here
    models = tmp_path / "models"
    assert main(["fit", "--db", str(quick_db), "--target", "tracked", "--out", str(models)]) == 0
    (model,) = models.glob("*.json")
    capsys.readouterr()
    assert main(["suggest", "--vram", "40M", "--model", str(model), "--vocab", "65", "--block-size", "32",
                 "--n-layer", "1,2", "--n-embd", "64,128", "--objective", "tokens", "--top", "2",
                 "--data-dir", str(char_corpus), "--save", str(tmp_path / "s.json")]) == 0
    assert "#1: vramfit train" in capsys.readouterr().out
    db = tmp_path / "train.sqlite"
    rc = main(["train", "--suggestion", "1", "--suggestions", str(tmp_path / "s.json"), "--db", str(db),
               "--max-iters", "8", "--eval-interval", "8", "--eval-iters", "1", "--log-interval", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = re.search(r"vs measured .* \(tracked\): error ([+-][\d.]+)%", out)
    assert m, out
    assert abs(float(m.group(1))) < 5.0
    with Store(db) as store:
        rows = store.points_frame()
    assert list(rows["source"]) == ["train"] and rows["tracked_bytes"].iloc[0] > 0
    assert rows["vocab_size"].iloc[0] == 65 and bool(rows["stable"].iloc[0])
    assert (tmp_path / "out" / "suggest-1" / "ckpt.pt").is_file()


@pytest.mark.parametrize("target", ["tracked", "rss"])
def test_fit_targets_on_cpu(quick_db, target):
    from vramfit.fit.memmodel import TARGETS, data_hash

    with Store(quick_db) as store:
        points = store.points_frame()
    report = fit_points(points, target=target)
    col = TARGETS[target]
    assert report.target == target and report.n_points == 13
    ok = points[points["status"] == "ok"].reset_index(drop=True)
    assert report.cv["measured"].tolist() == ok[col].tolist()  # fitted to this target's readings
    assert report.data_hash == data_hash(ok, col)
    assert report.metrics["ours"]["train"]["max_rel"] < 0.05  # and it predicts them


def test_dry_run_model_beside_physics_and_naive(quick_db, tmp_path, capsys):
    """On the CPU the dry-run estimate is the tracked peak itself, so y = c0 + k*estimate has k ~ 1, c0 ~ 0."""
    rc = main(["fit", "--db", str(quick_db), "--target", "tracked", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "dry-run c0 + k*estimate" in out
    from vramfit.fit.profile import Profile

    (path,) = tmp_path.glob("*.json")
    doc = Profile.load(path)
    assert doc.dryrun.coef_[0] == pytest.approx(1.0, abs=0.01)
    assert doc.metrics["dryrun"]["grouped"]["max_rel"] < 0.005
