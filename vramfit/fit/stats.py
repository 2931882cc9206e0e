"""The statistics the fitted models share: non-negative least squares, cross-validated predictions, error metrics.

scikit-learn is imported inside the functions, so that loading a fitted model to predict does not import it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: predicting from a model file needs no pandas


def nnls(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Non-negative least squares with a non-negative intercept, on column-scaled X (well conditioned).
    `sample_weight` weights the squared residuals (1/y**2: relative error)."""
    from sklearn.linear_model import LinearRegression  # here: fitting pays for sklearn, predicting does not

    scale = np.where(X.max(axis=0) > 0, X.max(axis=0), 1.0)
    reg = LinearRegression(positive=True).fit(X / scale, y, sample_weight=sample_weight)
    coef = reg.coef_ / scale
    intercept = float(reg.intercept_)
    if intercept < 0:  # refit through the origin with the constant as a column: keeps it >= 0
        Xc = np.column_stack([np.ones(len(X)), X / scale])
        reg = LinearRegression(positive=True, fit_intercept=False).fit(Xc, y, sample_weight=sample_weight)
        intercept, coef = float(reg.coef_[0]), reg.coef_[1:] / scale
    return intercept, coef


def nonneg_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of y = a * x through the origin, constrained to a >= 0."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    denom = float(np.dot(x, x))
    return max(0.0, float(np.dot(x, y)) / denom) if denom > 0 else 0.0


def cv_predictions(make, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Out-of-fold predictions: leave-one-group-out when `groups` is given, else leave-one-out."""
    from sklearn.model_selection import LeaveOneGroupOut, LeaveOneOut

    splitter = LeaveOneGroupOut() if groups is not None else LeaveOneOut()
    pred = np.full(len(y), np.nan)
    for train, test in splitter.split(X, y, groups):
        if len(train) < 2:
            continue
        pred[test] = make().fit(X.iloc[train], y[train]).predict(X.iloc[test])
    return pred


def error_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """MAPE, max relative error, and the worst under-prediction (bytes and relative to the prediction)."""
    ok = np.isfinite(pred)
    if not ok.any():
        return {"mape": math.nan, "max_rel": math.nan, "worst_under_bytes": math.nan, "worst_under_rel": math.nan,
                "n": 0}
    y, pred = y[ok], pred[ok]
    rel = (pred - y) / y
    under = y - pred
    return {"mape": float(np.mean(np.abs(rel))), "max_rel": float(np.max(np.abs(rel))),
            "worst_under_bytes": float(max(0.0, under.max())),
            "worst_under_rel": float(max(0.0, np.max(under / np.maximum(pred, 1.0)))), "n": int(ok.sum())}
