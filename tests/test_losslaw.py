"""The loss law L(N, D) = E + A/N^alpha + B/D^beta: recovery from synthetic curves, and real tiny runs."""

import numpy as np
import pytest

from vramfit.cli import main
from vramfit.errors import VramfitError
from vramfit.fit.losslaw import MIN_RUNS, LossLaw, fit_loss_law, fit_runs, law_for_corpus, stored_runs


def synthetic_curves(true: LossLaw, noise: float = 0.003):
    rng = np.random.default_rng(0)
    N = np.repeat([1e5, 3e5, 1e6, 3e6, 1e7], 12)
    D = np.tile(np.geomspace(1e5, 1e9, 12), 5)
    return N, D, true.predict(N, D) * (1 + rng.normal(0, noise, len(N)))


def test_recovers_known_parameters_from_synthetic_curves():
    true = LossLaw(1.2, 30.0, 250.0, 0.3, 0.35)
    law = fit_loss_law(*synthetic_curves(true), n_runs=5)
    assert law.E == pytest.approx(1.2, rel=0.02)
    assert law.alpha == pytest.approx(0.3, abs=0.02) and law.beta == pytest.approx(0.35, abs=0.02)
    assert law.A == pytest.approx(30.0, rel=0.15) and law.B == pytest.approx(250.0, rel=0.1)
    assert law.rmse_log < 0.005


def test_not_enough_runs_is_one_clear_message(tmp_path, capsys):
    with pytest.raises(VramfitError, match=f"not enough runs .* need {MIN_RUNS}"):
        fit_runs([{"corpus_id": "x", "data_dir": "d", "params": 10, "tokens_per_step": 8, "losses": [[1, 3.0]]}])
    N, D, y = synthetic_curves(LossLaw(1.2, 30.0, 250.0, 0.3, 0.35))
    with pytest.raises(VramfitError, match="not enough model sizes"):
        fit_loss_law(np.full(len(D), 1e6), D, y)
    from vramfit.store import Store

    with Store(tmp_path / "empty.sqlite"):
        pass
    assert main(["fit", "--loss", "--db", str(tmp_path / "empty.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not enough runs") and "\n" not in err


def test_real_short_runs_rank_the_better_config_first(char_corpus, tmp_path, capsys, monkeypatch):
    """Three tiny char-level runs (40 iterations each): the fitted law predicts the 2-layer 64-wide model's final
    loss below the 1-layer 16-wide one's, as measured, and `suggest --hours --rank loss` uses it."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "runs.sqlite"
    for L, C in ((1, 16), (1, 32), (2, 64)):
        assert main(["train", "--measure", "--db", str(db), "--data-dir", str(char_corpus), "--out-dir",
                     f"out{C}", "--n-layer", str(L), "--n-head", "2", "--n-embd", str(C), "--block-size", "32",
                     "--batch-size", "8", "--max-iters", "40", "--eval-interval", "10", "--eval-iters", "2",
                     "--log-interval", "10", "--warmup-iters", "4", "--learning-rate", "3e-3",
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    runs = sorted(stored_runs(db), key=lambda r: r["params"])
    assert len(runs) == 3 and all(len(r["evals"]) == 4 and r["tokens_seen"] == 40 * 8 * 32 for r in runs)
    small, big = runs[0], runs[-1]
    assert big["evals"][-1][2] < small["evals"][-1][2] - 0.1  # clearly better, measured
    assert main(["fit", "--loss", "--db", str(db), "--loss-out", "results/losslaw"]) == 0
    assert "L(N, D) =" in capsys.readouterr().out
    law = law_for_corpus(char_corpus, tmp_path / "results" / "losslaw")
    assert law is not None and law.n_runs == 3
    D = big["tokens_seen"]
    assert law.predict(big["params"], D) < law.predict(small["params"], D)
    for r in runs:  # the fitted curve passes near each run's final loss
        assert law.predict(r["params"], r["tokens_seen"]) == pytest.approx(r["evals"][-1][2], rel=0.05)
