"""The statistics the fitted models share: non-negative least squares, cross-validated predictions, error metrics.

scikit-learn is imported inside the functions, so that loading a fitted model to predict does not import it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: predicting from a model file needs no pandas


CV_ROW_FITS = 300_000  # leave-one-out (or one group) while units x points stays below this; beyond, FOLDS folds
FOLDS = 5
CV_MAX_POINTS = 10_000  # beyond, CV runs on this many points drawn at random (the final fit uses them all)
NNLS_DIRECT_MAX = 2000  # rows up to which scipy's NNLS runs on X itself; beyond, on its k x k QR factor (same fit)


def nnls(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Non-negative least squares with a non-negative intercept, on column-scaled X (well conditioned).
    `sample_weight` weights the squared residuals (1/y**2: relative error)."""
    if len(X) > NNLS_DIRECT_MAX:
        return _nnls_reduced(X, y, sample_weight)
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


def _nnls_reduced(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> tuple[float, np.ndarray]:
    """`nnls` for many rows: the same problem (centred as LinearRegression centres it, then refit through the
    origin when the intercept is negative) through its normal equations. With G = A'WA = R'R (Cholesky) and
    R'z = A'Wy, |W^1/2 (Ab - y)|^2 = |Rb - z|^2 + const, so scipy's NNLS runs on k x k instead of n x k: one pass
    over the rows per fit, however many there are."""
    from scipy.optimize import nnls as scipy_nnls

    top = X.max(axis=0)
    scale = np.where(top > 0, top, 1.0)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = float(w.sum())
    Xw = X * w[:, None]  # the one n x k temporary; the scaled sums follow from the raw ones
    gram, rhs = (X.T @ Xw) / np.outer(scale, scale), (Xw.T @ y) / scale
    col = Xw.sum(axis=0) / scale
    x_mean, y_mean = col / total, float(w @ y) / total

    def solve(G: np.ndarray, b: np.ndarray) -> np.ndarray:
        ridge = 0.0
        for _ in range(8):  # a (near-)singular G (a constant or empty column): the smallest ridge that factors
            try:
                R = np.linalg.cholesky(G + ridge * np.eye(len(G))).T
                break
            except np.linalg.LinAlgError:
                ridge = max(ridge * 100, 1e-12 * float(np.trace(G)) or 1e-12)
        return scipy_nnls(R, np.linalg.solve(R.T, b))[0]

    coef = solve(gram - total * np.outer(x_mean, x_mean), rhs - total * x_mean * y_mean)
    intercept = y_mean - float(x_mean @ coef)
    if intercept < 0:
        G1 = np.block([[np.array([[total]]), col[None, :]], [col[:, None], gram]])
        b = solve(G1, np.concatenate([[float(w @ y)], rhs]))
        intercept, coef = float(b[0]), b[1:]
    return intercept, coef / scale


def nonneg_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of y = a * x through the origin, constrained to a >= 0."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    denom = float(np.dot(x, x))
    return max(0.0, float(np.dot(x, y)) / denom) if denom > 0 else 0.0


def nonneg_slopes(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares slopes of y = X @ a through the origin, constrained to a >= 0 (scipy's NNLS)."""
    from scipy.optimize import nnls as scipy_nnls

    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    scale = np.where(np.abs(X).max(axis=0) > 0, np.abs(X).max(axis=0), 1.0)
    return scipy_nnls(X / scale, y)[0] / scale


def cv_keys(n: int, groups: np.ndarray | None) -> np.ndarray:
    """The held-out unit of each of `n` points: itself (leave-one-out) or its group (leave-one-group-out), while
    units x points <= CV_ROW_FITS (every fit reads the points: the cost); beyond, one of FOLDS folds (points, or
    whole groups, dealt at random with a fixed seed). Beyond CV_MAX_POINTS points, CV_MAX_POINTS of them drawn at
    random take part and the rest are -1 (never held out, never trained on): CV costs the same from there on."""
    rng = np.random.default_rng(0)
    if n > CV_MAX_POINTS:
        keys = np.full(n, -1)
        part = np.sort(rng.choice(n, CV_MAX_POINTS, replace=False))
        keys[part] = cv_keys(CV_MAX_POINTS, None if groups is None else np.asarray(groups)[part])
        return keys
    if groups is None:
        return np.arange(n) if n * n <= CV_ROW_FITS else rng.permutation(n) % FOLDS
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    if len(uniq) * n <= CV_ROW_FITS:
        return inv
    return rng.permutation(len(uniq))[inv] % FOLDS


def cv_predictions(make, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Out-of-fold predictions: leave-one-group-out when `groups` is given, else leave-one-out (folds, and a
    sample of the points, beyond the bounds of `cv_keys`; NaN where a point is not held out)."""
    keys = cv_keys(len(y), groups)
    pred = np.full(len(y), np.nan)
    for k in np.unique(keys[keys >= 0]):
        held = keys == k
        train, test = np.flatnonzero(~held & (keys >= 0)), np.flatnonzero(held)
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
