"""MemoryModel: a non-negative linear memory model, with an optional optimizer-step regime, CV and JSON I/O.

The peak of a training step is in backward for most shapes (weights, Adam state, activations, logits), but moves
to the optimizer step when parameters dominate (all gradients plus Adam temporaries, activations already freed).
`regimes=2` fits y = max(c0 + w.x, c0 + a*P): the first piece on every feature, the second on parameters alone,
by alternating assignment (each point belongs to the piece that predicts more), each piece non-negative least
squares. `regimes=1` is the plain linear model.

Inside the backward piece, the transient buffers on top of weights, Adam state and saved activations are the
larger of two: at the loss (logits gradient, b*N*V + e*N*C) or inside a block's backward (the 4C-wide MLP
gradient, g*N*C); which one is larger depends on vocab vs width, so the fit alternates that assignment too
(a char-level vocab puts the peak in the layers, a BPE vocab at the loss).

Points of both families (`fit.features.FAMILY`) give the step piece the optimizer's transients too (Muon's largest
stack, MuonAdamW's largest AdamW tensor): y_step = c0 + a*P + s.STEP, all non-negative. GPT-2 points whose
recipes vary the switches (`fit.features.RECIPE_PHYSICS`) give it the optimizer state (y_step = c0 + a*P + s*state)
and, where blocks are checkpointed, the larger of that and a block's recompute (`REBLOCK`). A fit takes one or the
other: points of both kinds are refused (`fit_points`).

When the data hold no parameter-dominated points, the step regime falls back to physics: AdamW with fp32 master
weights holds at least weights + grads + m + v = 16 B/param at the step (fp32 and bf16/fp16 autocast alike), so
y_step = c0 + 16*P. Without that floor, a model fitted on activation-heavy shapes under-predicts big models
trained at small batch (seen on the CPU quick grid: -19 % for a 24M-param model at 128 tokens/step).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING

import numpy as np

from vramfit.errors import VramfitError
from vramfit.fit.features import (
    BREAKDOWN,
    FAMILY,
    LAYER_TERMS,
    LOSS_TERMS,
    NAIVE,
    PHYSICS,
    REBLOCK,
    RECIPE_PHYSICS,
    RECOMPUTE_AT,
    STEP,
    UNITS,
    columns,
    frame_features,
    has_families,
    recipe_of,
    shape_key,
)
from vramfit.fit.stats import cv_predictions, error_metrics, nnls, nonneg_coefs, nonneg_slope
from vramfit.shape import GPT2, KEYS
from vramfit.store import SHARED_GPU
from vramfit.units import MAX_SIZE

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: predicting from a model file needs no pandas

    from vramfit.fit.profile import Profile

MIN_MARGIN = 0.01  # never promise tighter than 1 %
ADAMW_STEP_BYTES_PER_PARAM = 16.0  # fp32 weights + grads + Adam m + v, all alive at the optimizer step
MUON_STEP_BYTES_PER_PARAM = 12.0  # Muon's matrices: weights + grads + momentum (the FAMILY step's lower bound)
GRADS_WEIGHTS_BYTES_PER_PARAM = 8.0  # fp32 weights + grads: the step's floor besides the optimizer state (switches)
STEP_BYTES_PER_PARAM_MAX = 24.0  # plus foreach/loop temporaries (~4 B/param) and slack; more is not the step
TARGETS = {"nvml": "nvml_bytes", "allocated": "allocated_bytes", "reserved": "reserved_bytes",
           "rss": "rss_bytes", "tracked": "tracked_bytes"}


class MemoryModel:
    """Predict peak training memory (bytes) from feature columns. scikit-learn style: fit(X, y) -> self."""

    def __init__(self, features: tuple[str, ...] = PHYSICS, regimes: int = 2, max_iter: int = 30) -> None:
        self.features = tuple(features)
        self.regimes = regimes
        self.max_iter = max_iter
        self.family_: tuple[str, str] | None = None  # fitted on the FAMILY columns: (optimizer, dtype) they count

    def columns(self, sizes: dict, arch: np.ndarray | str = GPT2) -> dict[str, np.ndarray]:
        """The feature columns this model reads for points given as arrays of the KEYS sizes (and their family):
        PHYSICS, or the FAMILY ones under the recipe it was fitted on."""
        return columns(sizes, arch, self.family_)

    def _X(self, X: pd.DataFrame | dict) -> np.ndarray:
        if self.switches and "state" not in X:
            raise VramfitError("this profile prices the recipe's switches: ask it through Profile.memory(shapes, "
                               "recipe), which gives the model each recipe's switch features")
        return np.column_stack([np.asarray(X[f], dtype=np.float64) for f in self.features])

    def _P(self, X: pd.DataFrame | dict) -> np.ndarray:
        return np.asarray(X["params"], dtype=np.float64)

    def _step(self, X: pd.DataFrame | dict) -> np.ndarray:
        """The parameter-dominated piece: the optimizer step, c0 + a*P (+ e.STEP for FAMILY, + s*state with
        switches); with switches, where blocks are checkpointed, the larger of that and a block's recompute, c0 +
        REBLOCK columns @ their coefficients (`_recompute`)."""
        out = self.step_intercept_ + self.step_coef_ * self._P(X)
        if self.step_features:
            out = out + self._S(X) @ self.step_extra_
        if self.switches:
            out = out + self.step_state_coef_ * np.asarray(X["state"], dtype=np.float64)
            rec = self.step_intercept_ + _recompute(X, self.reblock_coef_)
            out = np.where(np.asarray(X["recompute"]) > 0, np.maximum(out, rec), out)
        return out

    @property
    def step_features(self) -> tuple[str, ...]:
        """The step piece's features besides params: the optimizer's transients (FAMILY models only)."""
        return STEP if self.features == FAMILY else ()

    @property
    def layer_coef_(self) -> float:
        """The in-layer transient's coefficient (PHYSICS; FAMILY: GPT-2's, nanochat's is `layer_[1]`)."""
        return float(self.layer_[0])

    @layer_coef_.setter
    def layer_coef_(self, value: float) -> None:
        self.layer_ = np.concatenate([[float(value)], self.layer_[1:]]) if hasattr(self, "layer_") \
            else np.array([float(value)])

    @property
    def has_step(self) -> bool:
        """Whether the optimizer-step piece is fitted (any of its coefficients > 0)."""
        return self.step_coef_ > 0 or bool(np.any(self.step_extra_ > 0))

    def _S(self, X: pd.DataFrame | dict) -> np.ndarray:
        return np.column_stack([np.asarray(X[f], dtype=np.float64) for f in self.step_features]) \
            if self.step_features else np.zeros((len(self._P(X)), 0))

    @property
    def physics(self) -> bool:
        """Whether the backward piece takes the larger of the loss and in-layer transients (PHYSICS, FAMILY or
        RECIPE_PHYSICS)."""
        return self.regimes == 2 and self.features in (PHYSICS, FAMILY, RECIPE_PHYSICS)

    @property
    def switches(self) -> bool:
        """Whether the model prices the recipe's switches (RECIPE_PHYSICS: the optimizer state, accumulation and
        checkpointing are features; its optimizer-step piece is c0 + a*P + s*state)."""
        return "state" in self.features

    def fit(self, X: pd.DataFrame, y) -> MemoryModel:
        y = np.asarray(y, dtype=np.float64)
        if len(y) < 2:
            raise VramfitError(f"need at least 2 measured points to fit, have {len(y)}")
        everything = np.ones(len(y), dtype=bool)
        self.intercept_, self.coef_, self.layer_ = self._fit_backward(X, y, everything)
        self.step_intercept_, self.step_coef_, self.step_state_coef_ = 0.0, 0.0, 0.0
        self.step_extra_ = np.zeros(len(self.step_features))
        self.reblock_coef_ = np.zeros(len(REBLOCK))
        self.n_step_points_ = 0
        # the step piece's physical floor: AdamW's 16 B/param; FAMILY: Muon's 12 (then 12 B a unit of state + 4 B a
        # gradient); switches: fp32 weights + grads (8 B/param) + the optimizer state
        low = MUON_STEP_BYTES_PER_PARAM if self.step_features else \
            GRADS_WEIGHTS_BYTES_PER_PARAM if self.switches else ADAMW_STEP_BYTES_PER_PARAM
        if self.regimes == 2 and "params" in self.features:
            if len(y) >= 4:
                self._fit_two_regimes(X, y)
            per_param = self.step_coef_ + (self.step_extra_[0] if self.step_features else 0.0)  # + grads
            if not low <= per_param <= STEP_BYTES_PER_PARAM_MAX:
                # no step-regime points, or a "step" piece that is really something else: the physical floor
                # (keeping the backward fit where the recompute piece took the parameter-dominated points)
                if not self.reblock_coef_.any():
                    self.intercept_, self.coef_, self.layer_ = self._fit_backward(X, y, everything)
                    self.n_step_points_ = 0
                self.step_intercept_, self.step_coef_ = self.intercept_, ADAMW_STEP_BYTES_PER_PARAM
                self.step_extra_ = np.zeros(len(self.step_features))
                if self.step_features:  # FAMILY: the weights and optimizer state (12 B a unit), then the grads
                    self.step_coef_, self.step_extra_[0] = 12.0, 4.0
                if self.switches:  # fp32 weights + grads, then the optimizer state exactly
                    self.step_coef_, self.step_state_coef_ = GRADS_WEIGHTS_BYTES_PER_PARAM, 1.0
        self.n_points_ = len(y)
        return self

    def _widths(self, X) -> np.ndarray:
        """The columns that size the in-layer transient (`LAYER_TERMS`: one per family for FAMILY)."""
        return np.column_stack([np.asarray(X[t], dtype=np.float64) for t in LAYER_TERMS[self.features]])

    def _layer(self, W: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The in-layer transient of widths `W` with coefficients `g`."""
        return W[:, 0] * g[0] if W.shape[1] == 1 else W @ g

    def _fit_backward(self, X, y: np.ndarray, rows: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """NNLS of the backward piece on `rows`; for the physics model, alternating which transient is larger.
        Returns the constant, the coefficients and the in-layer transient's coefficient(s)."""
        A = self._X(X)[rows]
        if not self.physics:
            c0, w = nnls(A, y[rows])
            return c0, w, np.zeros(1)
        loss = [self.features.index(t) for t in LOSS_TERMS[self.features]]
        W = self._widths(X)[rows]
        k = W.shape[1]
        logits = A[:, loss[0]] + (A[:, loss[2]] if len(loss) > 2 else 0.0)
        # start from physics: logits grads ~12 B x N*V vs the MLP's 4C-wide fp32 grad ~16-20 B x N*C (nanochat:
        # its F-wide hidden grads, F = 4C)
        at_loss = logits >= 1.5 * W[:, 0] + (0.375 * W[:, 1] if k > 1 else 0.0)
        for _ in range(10):
            D = np.column_stack([A * np.where(np.isin(np.arange(A.shape[1]), loss), at_loss[:, None], 1.0),
                                 W * ~at_loss[:, None]])
            c0, w = nnls(D, y[rows])
            coef, g = w[:-k], w[-k:]
            new = sum(coef[i] * A[:, i] for i in loss) >= self._layer(W, g)
            if np.array_equal(new, at_loss):
                break
            at_loss = new
        return c0, coef, g

    def _fit_two_regimes(self, X, y: np.ndarray) -> None:
        P, S = self._P(X), self._S(X)
        # start: the step regime explains the points the backward fit under-predicts most
        resid = y - self.parts(X)[0]
        starts = [resid > np.quantile(resid, 0.75)]
        if self.step_features:  # FAMILY's backward piece has grads too: start also where tokens are few per param
            tokens = np.asarray(X["logits"], dtype=np.float64) + np.asarray(X["chat_logits"], dtype=np.float64)
            ratio = tokens / np.maximum(P, 1.0)
            starts.append(ratio < np.quantile(ratio, 0.25))
        best = (np.sum(resid**2), self.intercept_, self.coef_, self.layer_, 0.0, np.zeros(S.shape[1]), 0.0,
                np.zeros(len(REBLOCK)), 0)
        for step in starts:
            best = self._alternate(X, y, P, S, step, best)
        (_, self.intercept_, self.coef_, self.layer_, self.step_coef_, self.step_extra_, self.step_state_coef_,
         self.reblock_coef_, self.n_step_points_) = best
        self.step_intercept_ = self.intercept_

    def _alternate(self, X, y: np.ndarray, P: np.ndarray, S: np.ndarray, step: np.ndarray, best: tuple) -> tuple:
        """Alternate the assignment of points to the two pieces from `step`; the best (sse, ...) seen."""
        none = np.zeros(S.shape[1])
        fewest = 2 + S.shape[1]  # a step piece of more coefficients than points would fit any few points
        # with switches, a checkpointed point's parameter-dominated peak may be a block's recompute (REBLOCK)
        ckpt = np.asarray(X["recompute"], dtype=np.float64) > 0 if self.switches else np.zeros(len(y), dtype=bool)
        state = np.asarray(X["state"], dtype=np.float64) if self.switches else np.zeros(len(y))
        for _ in range(self.max_iter):
            if step.sum() < fewest or (~step).sum() < 2:
                break
            self.intercept_, self.coef_, self.layer_ = self._fit_backward(X, y, ~step)
            c0 = self.intercept_
            # the step piece shares the constant (same context and workspaces): y - c0 = a * P (+ e . S, + s * state)
            a, extra, s = 0.0, none, 0.0
            if self.switches:  # the optimizer step: fitted on its points where they are physical, else its floor
                plain = step & ~ckpt
                if plain.sum() >= 2:
                    a, s = nonneg_coefs(np.column_stack([P, state])[plain], y[plain] - c0)
                if not GRADS_WEIGHTS_BYTES_PER_PARAM <= a <= STEP_BYTES_PER_PARAM_MAX:
                    a, s = GRADS_WEIGHTS_BYTES_PER_PARAM, 1.0
            elif S.shape[1]:
                w = nonneg_coefs(np.column_stack([P[step], S[step]]), y[step] - c0)
                a, extra = float(w[0]), w[1:]
            else:
                a = nonneg_slope(P[step], y[step] - c0)
            rb = _fit_recompute(X, y - c0, step & ckpt, float(self.coef_[self.features.index("acts")])) \
                if (step & ckpt).sum() >= 2 else np.zeros(len(REBLOCK))
            pred_b, pred_s = self.parts(X)[0], c0 + a * P + S @ extra
            if self.switches:
                pred_s = pred_s + s * state
                pred_s = np.where(ckpt, np.maximum(pred_s, c0 + _recompute(X, rb)), pred_s)
            sse = float(np.sum((np.maximum(pred_b, pred_s) - y) ** 2))
            if sse < best[0] - 1e-9 * best[0]:
                best = (sse, c0, self.coef_, self.layer_, a, extra, s, rb, int(step.sum()))
            new = pred_s > pred_b
            if np.array_equal(new, step):
                break
            step = new
        return best

    def _transients(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(loss transient, in-layer transient) bytes of the physics backward piece."""
        loss = sum(self.coef_[self.features.index(t)] * np.asarray(X[t], dtype=np.float64)
                   for t in LOSS_TERMS[self.features])
        return loss, self._layer(self._widths(X), self.layer_)

    def parts(self, X: pd.DataFrame | dict) -> tuple[np.ndarray, np.ndarray]:
        """(backward-regime prediction, optimizer-step-regime prediction); the model is their max."""
        lin = self.intercept_ + self._X(X) @ self.coef_
        if self.physics and np.any(self.layer_ > 0):
            loss_t, layer_t = self._transients(X)
            lin = lin - loss_t + np.maximum(loss_t, layer_t)
        if self.has_step:
            return lin, self._step(X)
        return lin, np.full_like(lin, -np.inf)

    def predict(self, X: pd.DataFrame | dict) -> np.ndarray:
        lin, step = self.parts(X)
        return np.maximum(lin, step)

    def breakdown(self, X: pd.DataFrame | dict) -> list[dict]:
        """Per point: bytes by part (constant, params+optimizer, logits, activations, attention) and regime."""
        lin, step = self.parts(X)
        out = []
        for i in range(len(lin)):
            if step[i] > lin[i]:
                held = float(step[i]) - self.step_intercept_ if self.switches else \
                    self.step_coef_ * float(self._P(X)[i]) \
                    + (float(self._S(X)[i] @ self.step_extra_) if self.step_features else 0.0)
                out.append({"regime": "optimizer step", "constant": self.step_intercept_, "params+optimizer": held,
                            "logits": 0.0, "activations": 0.0, "attention": 0.0})
                continue
            row = {"regime": "backward", "constant": self.intercept_}
            for part, terms in BREAKDOWN.items():
                row[part] = sum(float(self.coef_[self.features.index(t)]) * float(np.asarray(X[t])[i])
                                for t in terms if t in self.features)
            if self.physics and np.any(self.layer_ > 0):
                loss_t, layer_t = (float(v[i]) for v in self._transients(X))
                if layer_t > loss_t:  # the peak is inside a block's backward: the MLP gradient, not the logits
                    acts = sum(float(self.coef_[self.features.index(t)]) * float(np.asarray(X[t])[i])
                               for t in BREAKDOWN["activations"]
                               if t in self.features and t not in LOSS_TERMS[self.features])
                    row["logits"], row["activations"] = 0.0, acts + layer_t
            out.append(row)
        return out

    def coefficients(self) -> list[dict]:
        """Readable coefficients: name, value and unit."""
        rows = [{"term": "constant", "value": self.intercept_, "unit": "B"}]
        rows += [{"term": f, "value": float(c), "unit": UNITS.get(f, "B")} for f, c in zip(self.features,
                                                                                             self.coef_, strict=True)]
        if self.physics:
            rows += [{"term": "in-layer transient" + (f" ({t})" if len(self.layer_) > 1 else ""), "value": float(g),
                      "unit": "B per token per channel" if t != "chat_layer" else "B per token per hidden channel"}
                     for t, g in zip(LAYER_TERMS[self.features], self.layer_, strict=True)]
        if self.has_step:
            rows += [{"term": "step: constant", "value": self.step_intercept_, "unit": "B"},
                     {"term": "step: params", "value": self.step_coef_, "unit": "B/param"}]
            rows += [{"term": f"step: {f}", "value": float(c), "unit": UNITS[f]}
                     for f, c in zip(self.step_features, self.step_extra_, strict=True)]
        if self.switches:
            rows.append({"term": "step: state", "value": self.step_state_coef_, "unit": UNITS["state"]})
            rows += [{"term": f"recompute: {f}", "value": float(c), "unit": UNITS[f]}
                     for f, c in zip(REBLOCK, self.reblock_coef_, strict=True)]
        return rows

    def to_dict(self) -> dict:
        return {"features": list(self.features), "regimes": self.regimes, "intercept": self.intercept_,
                "coef": [float(c) for c in self.coef_],
                "layer_coef": float(self.layer_[0]) if len(self.layer_) == 1 else [float(g) for g in self.layer_],
                "step_intercept": self.step_intercept_,
                "step_coef": self.step_coef_} | ({"step_extra": [float(c) for c in self.step_extra_]}
                                                 if self.step_features else {}) \
            | ({"family": list(self.family_)} if self.family_ else {}) \
            | ({"step_state_coef": self.step_state_coef_, "reblock_coef": [float(c) for c in self.reblock_coef_]}
               if self.switches else {})

    @classmethod
    def from_dict(cls, d: dict, nonneg: bool = True) -> MemoryModel:
        """The model of `to_dict`; every coefficient finite and, with `nonneg` (what NNLS fits), >= 0 and below
        MAX_SIZE bytes per unit: a ValueError naming the first that is not."""
        m = cls(tuple(d["features"]), int(d.get("regimes", 1)))
        m.intercept_, m.coef_ = float(d["intercept"]), np.asarray(d["coef"], dtype=np.float64)
        family = d.get("family")
        if family is not None and not (isinstance(family, list) and len(family) == 2
                                       and all(isinstance(v, str) for v in family)):
            raise ValueError(f"its family is {family!r}, not [optimizer, dtype]")
        m.family_ = tuple(family) if family else None
        m.step_intercept_, m.step_coef_ = float(d.get("step_intercept", 0.0)), float(d.get("step_coef", 0.0))
        layer = d.get("layer_coef", 0.0)
        m.layer_ = np.atleast_1d(np.asarray(layer, dtype=np.float64))
        if m.layer_.shape != (len(LAYER_TERMS.get(m.features, ("embed",))),):
            raise ValueError(f"{m.layer_.size} in-layer transient coefficients for these features")
        m.step_extra_ = np.asarray(d.get("step_extra", [0.0] * len(m.step_features)), dtype=np.float64)
        m.step_state_coef_ = float(d.get("step_state_coef", 0.0))
        m.reblock_coef_ = np.asarray(d.get("reblock_coef", [0.0] * len(REBLOCK)), dtype=np.float64)
        if m.reblock_coef_.shape != (len(REBLOCK),):
            raise ValueError(f"{len(REBLOCK)} recompute coefficients expected, got {m.reblock_coef_.size}")
        if m.coef_.shape != (len(m.features),):
            raise ValueError(f"{len(m.features)} features but {m.coef_.size} coefficients")
        if m.step_extra_.shape != (len(m.step_features),):
            raise ValueError(f"{len(m.step_features)} step features but {m.step_extra_.size} step coefficients")
        values = {"intercept": m.intercept_, "step_intercept": m.step_intercept_, "step_coef": m.step_coef_,
                  "step_state_coef": m.step_state_coef_,
                  **{f"layer_coef {i}": float(g) for i, g in enumerate(m.layer_)},
                  **{f"coef of {f}": float(c) for f, c in zip(m.features, m.coef_, strict=True)},
                  **{f"step coef of {f}": float(c) for f, c in zip(m.step_features, m.step_extra_, strict=True)},
                  **{f"recompute coef of {f}": float(c) for f, c in zip(REBLOCK, m.reblock_coef_, strict=True)}}
        low = 0.0 if nonneg else -MAX_SIZE
        for name, v in values.items():
            if not (math.isfinite(v) and low <= v <= MAX_SIZE):
                raise ValueError(f"its {name} is {v}, not a finite number in [{low:g}, 2**60]")
        return m


def _recompute_parts(X, at: str) -> np.ndarray:
    """The REBLOCK columns of the recompute piece peaking at block `at` (RECOMPUTE_AT)."""
    shared = [np.asarray(X[f], dtype=np.float64) for f in REBLOCK[:3]]
    return np.column_stack(shared + [np.asarray(X[f"{f}_{at}"], dtype=np.float64) for f in REBLOCK[3:]])


def _recompute(X, coef: np.ndarray) -> np.ndarray:
    """The recompute piece (without the constant): the larger over the blocks where it can peak."""
    return np.max([_recompute_parts(X, at) @ coef for at in RECOMPUTE_AT], axis=0)


def _fit_recompute(X, y: np.ndarray, rows: np.ndarray, acts: float) -> np.ndarray:
    """NNLS of the recompute piece on `rows` (y without the constant), alternating at which block each peaks. The
    plain blocks' activations held at the peak are the tensors the backward piece's `acts` (coefficient `acts`)
    counts, so that coefficient is theirs and the others are fitted: few points peak where plain blocks are held."""
    first, deepest = (_recompute_parts(X, at)[rows] for at in RECOMPUTE_AT)
    guess = np.array([4.0, 1.0, 84.0, 4.0, 4.0, acts])  # fp32 weights, the state, a block's activations, ...
    at_deep = deepest @ guess > first @ guess
    coef = guess
    for _ in range(10):
        A = np.where(at_deep[:, None], deepest, first)
        coef = np.append(nonneg_coefs(A[:, :-1], y[rows] - acts * A[:, -1]), acts)
        new = deepest @ coef > first @ coef
        if np.array_equal(new, at_deep):
            break
        at_deep = new
    return coef


def data_hash(df: pd.DataFrame, target_col: str) -> str:
    cols = [*KEYS, *(["arch"] if has_families(df) else []), target_col,
            *(["recipe_key"] if df["recipe_key"].nunique() > 1 else [])]
    blob = df[cols].sort_values(cols).to_csv(index=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def trusted_points(points: pd.DataFrame, target: str, allow_shared: bool = False) -> pd.DataFrame:
    """The rows a fit may use for `target`: an NVML reading taken as device used minus the idle baseline while
    other compute processes were on the GPU (nvml_source 'device-shared') may count their memory, so such rows
    are left out unless `allow_shared`."""
    if target != "nvml" or allow_shared or "nvml_source" not in points.columns:
        return points
    return points[points["nvml_source"].fillna("") != SHARED_GPU]


def fit_points(points: pd.DataFrame, target: str = "auto", regimes: int = 2, dryrun=None,
               allow_shared: bool = False) -> Profile:
    """Fit ours and the naive baseline on the ok points of ONE device+recipe; CV both; check OOM rows.
    Points of several recipes of one family (`Recipe.family`: they differ only in the switches) make one profile
    that prices the switches (RECIPE_PHYSICS, RECIPE_THROUGHPUT).

    `dryrun(ok_points) -> bytes per row` (the dry-run estimator) adds a third model, y = c0 + k*estimate.
    `allow_shared`: keep NVML readings taken while other processes shared the GPU (see `trusted_points`)."""
    import pandas as pd

    if points.empty:
        raise VramfitError("no measured points to fit (run `vramfit sweep` first)")
    if target == "auto":
        target = "nvml" if points["device_type"].iloc[0] == "cuda" else "tracked"
    if target not in TARGETS:
        raise VramfitError(f"unknown reading {target!r}; choose one of {', '.join(TARGETS)}")
    col = TARGETS[target]
    kept = trusted_points(points, target, allow_shared)
    ok = kept[(kept["status"] == "ok") & kept[col].notna()].reset_index(drop=True)
    if len(ok) < 3:
        shared = len(points) - len(kept)
        raise VramfitError(f"need at least 3 ok points with a {target} reading to fit, have {len(ok)}"
                           + (f" ({shared} read while other processes shared the GPU are left out: "
                              "`vramfit fit --allow-shared-gpu` keeps them)" if shared else ""))
    families = has_families(points)  # a nanochat point among them: FAMILY features (GPT-2 alone: PHYSICS, as ever)
    switches = ok["recipe_key"].nunique() > 1  # recipes of one family: RECIPE_PHYSICS prices their switches
    if families and switches:
        raise VramfitError("these points vary the recipe's switches and include a model family other than GPT-2: "
                           "a fit prices one or the other (sweep the switches on GPT-2 models, or fit one recipe)")
    family = recipe_of(ok) if families else None
    X, y = frame_features(ok, families=families, switches=switches), ok[col].to_numpy(dtype=np.float64)
    groups = shape_key(ok).to_numpy()
    ours = lambda: MemoryModel(FAMILY if families else RECIPE_PHYSICS if switches else PHYSICS,  # noqa: E731
                               regimes=regimes)
    naive = lambda: MemoryModel(NAIVE, regimes=1)  # noqa: E731
    makers = [("ours", ours), ("naive", naive)]
    if dryrun is not None:
        X = X.assign(estimate=np.asarray(dryrun(ok), dtype=np.float64))
        makers.append(("dryrun", lambda: MemoryModel(("estimate",), regimes=1)))
    metrics, cv, fitted_models = {}, pd.DataFrame({"measured": y, "shape": groups}), {}
    for name, make in makers:
        metrics[name] = {}
        for how, g in (("loo", None), ("grouped", groups if len(set(groups)) > 1 else None)):
            pred = cv_predictions(make, X, y, g)
            metrics[name][how] = error_metrics(y, pred)
            cv[f"{name}_{how}"] = pred
        model = make().fit(X, y)
        model.family_ = family
        metrics[name]["train"] = error_metrics(y, model.predict(X))
        cv[f"{name}_fit"] = model.predict(X)
        fitted_models[name] = model
    from vramfit.fit.coverage import ranges
    from vramfit.fit.profile import Profile, now
    from vramfit.fit.throughput import fit_throughput

    fitted, base = fitted_models["ours"], fitted_models["naive"]
    worst = max(metrics["ours"]["grouped"]["worst_under_rel"], metrics["ours"]["loo"]["worst_under_rel"])
    margin = max(MIN_MARGIN, worst if math.isfinite(worst) else MIN_MARGIN)
    device_type, total, capability = _device_facts(ok)
    recipe = json.loads(ok["recipe"].iloc[0]) if isinstance(ok["recipe"].iloc[0], str) else {}
    recipe_key, measured = str(ok["recipe_key"].iloc[0]), []
    if switches:
        from vramfit.fit.features import SWITCHES, frame_recipes

        rs = frame_recipes(ok)
        shared = rs[0].family()  # the recipe the points share but for the switches
        recipe, recipe_key = shared.to_dict(), shared.key()
        measured = sorted({json.dumps({k: getattr(r, k) for k in SWITCHES}) for r in rs})
    return Profile(
        model=fitted, target=target, device=str(ok["device_name"].iloc[0]), recipe_key=recipe_key,
        recipe=recipe, margin_rel=margin,
        baseline=base, metrics=metrics, data_hash=data_hash(ok, col), n_points=len(ok),
        oom_violations=oom_violations(fitted, points), dryrun=fitted_models.get("dryrun"),
        throughput=fit_throughput(points, switches) if "ms_per_iter" in points.columns else None, ranges=ranges(ok),
        device_type=device_type, total_memory_bytes=total, compute_capability=capability, fitted_at=now(), cv=cv,
        switches=[json.loads(m) for m in measured])


def _device_facts(ok: pd.DataFrame) -> tuple[str | None, int | None, str | None]:
    """(device type, total memory, compute capability) of the points' device, where the frame has them."""
    def first(col: str):
        if col not in ok.columns:
            return None
        values = ok[col].dropna()
        return values.iloc[0] if len(values) else None

    total, cc = first("total_memory_bytes"), first("compute_capability")
    return first("device_type"), int(total) if total is not None else None, str(cc) if cc is not None else None


def oom_violations(model: MemoryModel, points: pd.DataFrame) -> list[dict]:
    """OOM rows the model says would fit (prediction <= the capacity they ran under): the model is wrong there."""
    import pandas as pd

    oom = points[points["status"] == "oom"]
    cap_col = "capacity_bytes" if "capacity_bytes" in points.columns else "total_memory_bytes"
    if oom.empty or cap_col not in oom.columns:
        return []
    pred = model.predict(frame_features(oom, families=model.features == FAMILY, switches=model.switches))
    cap = oom[cap_col].to_numpy(dtype=np.float64)
    hit = np.flatnonzero(pd.notna(cap) & (pred <= cap))  # vectorised: a large sweep has thousands of OOM rows
    shapes = oom[list(KEYS)].to_numpy()[hit]
    return [{k: int(v) for k, v in zip(KEYS, shape, strict=True)} | {"predicted": float(pred[i]),
                                                                   "capacity": float(cap[i])}
            for shape, i in zip(shapes, hit, strict=True)]
