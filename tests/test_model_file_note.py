"""The report names the saved model file it describes, and calls it stale only on evidence: a new point the saved
model does not cover with its margin (a `train --measure` run it predicted adds a point, not a contradiction)."""

import pandas as pd
from planner_data import synthetic_points

from vramfit.fit.features import frame_features
from vramfit.fit.memmodel import fit_points
from vramfit.plan.workflows import fit_and_save
from vramfit.show.calculator import model_file_note


def _with_point(points: pd.DataFrame, scale: float) -> pd.DataFrame:
    """`points` plus a measured run of a new shape (batch 12) reading `scale` x the saved model's bound."""
    report = fit_points(points)
    row = points.iloc[[5]].copy()
    row["batch_size"] = 12
    row["nvml_bytes"] = report.model.predict(frame_features(row))[0] * (1 + report.margin_rel) * scale
    return pd.concat([points, row], ignore_index=True)


def test_saved_model_is_current_stale_only_on_evidence(tmp_path):
    points = synthetic_points().iloc[::6].reset_index(drop=True)  # 36 points: each fit's leave-one-out stays quick
    (_, path), = fit_and_save(points, tmp_path)
    assert model_file_note(fit_points(points), tmp_path, points) == f"{path} (same data hash and target)"
    covered = _with_point(points, 0.98)  # inside prediction + margin: the saved file still holds
    assert model_file_note(fit_points(covered), tmp_path, covered) == (
        f"{path} (fitted on {len(points)} of these {len(covered)} points; none of them exceeds its prediction + "
        "margin)")
    beyond = _with_point(points, 1.05)  # above prediction + margin: the file is stale
    assert "is stale" in model_file_note(fit_points(beyond), tmp_path, beyond)
    assert "is stale" in model_file_note(fit_points(covered), tmp_path)  # no points to judge by: the hash decides
