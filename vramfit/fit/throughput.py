"""ThroughputModel: time per training iteration from the sweep's timed steps, per device and recipe.

    best ms/iter  = c0 + a * FLOPs/iter + b * N*V + c * N*L*C        (all coefficients >= 0)
    ms/iter       = slowdown * best ms/iter

FLOPs/iter is nanoGPT's accounting (PaLM appendix B): 6*P*N for the matmuls of forward and backward (P the
non-embedding parameters, tied lm_head included) plus 12*L*C*T*N for attention, N = batch*block tokens. c0 is the
per-iteration overhead (kernel launches, the optimizer's per-tensor work, Python). The two memory-traffic terms
(cross-entropy over the logits, N*V, and the elementwise work of LayerNorm/GELU/residuals, N*L*C) are time the
FLOP count misses (small matmuls run at a fraction of the large ones' FLOP rate). The plain `FLOPS` model
(FLOPs + constant) is fitted and cross-validated beside it as the baseline.

Two things keep machine noise out of the shape law:
- The target is each point's *best* timed step (the worker times `measure.timing_iters` plain steps): on a shared
  CPU, steps are slowed by whatever else runs, never sped up, so the minimum is the shape's own cost. On the CPU
  the worker also records the CPU time each step used (`step_cpu_ms`), which is the best step where present: at
  load 16-20 on 2 cores wall times stretched 3-8x and the CPU times less, but not nothing: between sweeps at load
  11-20 the same point's best CPU time moved 8.8 % a reading and up to 2x (results/bench/fit-recipe-cpu.md). Measured on
  the 2-core CI-class VM: the same point's median step moved 7 % (max 43 %) between sweeps, its best step 4 %.
- The fit is Huber-robust on relative residuals (weights 1/y^2, IRLS, `delta` 5 %): one point timed during a slow
  spell (a whole process 35 % slow happens) does not bend the coefficients for the rest.
`slowdown` (the median over the points of typical/best step, >= 1) turns the shape's cost back into the time a
step typically takes on this machine, which is what planning by hours needs; on an idle GPU it is ~1.

A profile whose points vary the recipe's switches (`fit.features.SWITCHES`) prices them per optimizer step
(RECIPE_THROUGHPUT, `time_features(..., switches=...)`): the micro-step terms above times grad_accum, the
forward of each checkpointed block once more (`recompute`: its matmul and attention FLOPs; `recompute_acts`: its
elementwise work, N*C per block), an overhead per micro-step (`micro`), per block and micro-step (`blocks`: the
dispatch of each of its forward and backward ops, which at small widths costs more than their arithmetic) and per
recomputed block (`recompute_blocks`: its forward's dispatch again, with torch.utils.checkpoint's own work: the RNG
state saved and restored, its saved-tensor hooks, torch 2.13.0 torch/utils/checkpoint.py L1632, L1657-1667,
L1175-1207), and the optimizer step's cost per parameter for each kind (`opt_<kind>`: P where the recipe's
optimizer is that kind).

Points of another model family (`vramfit.shape.Shape.arch`, nanochat) count their FLOPs as that family does
(`time_features(..., arch=...)`: `GPTConfig.flops_per_token`, nanochat's `estimate_flops`, karpathy/nanochat@92d63d4
nanochat/gpt.py L319-339: 6 x its matmul parameters, the untied head included and the embedding and value-embedding
lookups not, plus 12 h q min(window, T) per layer); for GPT-2 rows that is the count above. The memory-traffic
terms are the same for both.

Only sweep points are used: `train` runs time a different loop (data loading, logging, and on the CPU all threads,
while the sweep measures with `measure.threads`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpt.config import count_params
from vramfit.fit.features import has_families, shape_key
from vramfit.fit.stats import cv_keys, cv_predictions, error_metrics, nnls
from vramfit.shape import GPT2, KEYS, Shape

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: predicting from a model file needs no pandas

THROUGHPUT = ("flops", "logits", "acts")
FLOPS = ("flops",)
OPT_KINDS = ("fused", "foreach", "loop", "muon", "sgd", "adafactor")  # gpt.config.OPTIMIZERS without auto
RECIPE_THROUGHPUT = (*THROUGHPUT, "recompute", "recompute_acts", "micro", *(f"opt_{k}" for k in OPT_KINDS),
                     "blocks", "recompute_blocks")
HUBER_DELTA = 0.05
UNITS = {"flops": "ms per TFLOP", "logits": "ms per 1e6 token x vocab", "acts": "ms per 1e6 token x layer x channel",
         "recompute": "ms per TFLOP recomputed", "recompute_acts": "ms per 1e6 token x recomputed block x channel",
         "micro": "ms per micro-step", **{f"opt_{k}": f"ms per 1e6 params ({k} step)" for k in OPT_KINDS},
         "blocks": "ms per block per micro-step", "recompute_blocks": "ms per recomputed block"}
_UNIT_SCALE = {"flops": 1e12, "logits": 1e6, "acts": 1e6, "recompute": 1e12, "recompute_acts": 1e6,
               **{f"opt_{k}": 1e6 for k in OPT_KINDS}}
MIN_POINTS = 3
THROUGHPUT_CV = (("loo", "leave-one-out, best step"), ("grouped", "shape held out, best step"),
                 ("grouped_typical", "shape held out, typical step"))  # metrics keys -> labels (fit, report)


def time_features(n_layer, n_head, n_embd, block_size, batch_size, vocab_size, bias: bool = True,
                  switches: dict | None = None, arch=None) -> dict:
    """FLOPs per iteration and the memory-traffic terms, elementwise over numpy arrays (float64); `switches`
    ({grad_accum, checkpoint_every, optimizer}: arrays or scalars) adds the RECIPE_THROUGHPUT terms, per
    optimizer step; `arch` (the points' family texts, or one for all) counts each family's FLOPs."""
    L, _H, C, T, B, V = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in
                                              (n_layer, n_head, n_embd, block_size, batch_size, vocab_size)))
    N = B * T
    p_nonemb = np.asarray(count_params(L, C, T, V, bias, non_embedding=True), dtype=np.float64)
    P = np.asarray(count_params(L, C, T, V, bias), dtype=np.float64)
    flops = 6 * p_nonemb * N + 12 * L * C * T * N
    if arch is not None and np.any(np.asarray(arch) != GPT2):
        flops = N * family_flops_per_token(L, _H, C, T, V, arch)
    out = {"flops": flops, "logits": N * V, "acts": N * L * C, "tokens": N, "params": P}
    if switches is None:
        return out
    accum = np.broadcast_to(np.asarray(switches["grad_accum"], dtype=np.float64), L.shape)
    every = np.broadcast_to(np.asarray(switches["checkpoint_every"], dtype=np.float64), L.shape)
    kind = np.broadcast_to(np.asarray(switches["optimizer"]), L.shape)
    ckpt = np.where(every > 0, np.ceil(L / np.maximum(every, 1)), 0.0)
    block_fwd = 24 * C * C + 4 * C * T  # a block's forward FLOPs per token: 2 x its 12 C^2 weights + attention
    out = {**{k: accum * out[k] for k in THROUGHPUT}, "tokens": N, "params": P,
           "recompute": accum * ckpt * N * block_fwd, "recompute_acts": accum * ckpt * N * C, "micro": accum,
           "blocks": accum * L, "recompute_blocks": accum * ckpt}
    return out | {f"opt_{k}": P * (kind == k) for k in OPT_KINDS}


def family_flops_per_token(L, H, C, T, V, arch) -> np.ndarray:
    """Training FLOPs per token of each point as its family counts them (`GPTConfig.flops_per_token`), once per
    distinct model."""
    names = np.broadcast_to(np.asarray(arch, dtype=object), L.shape).astype(str)
    keys = [(int(a), int(b), int(c), int(d), int(e), n) for a, b, c, d, e, n in zip(L, H, C, T, V, names,
                                                                                      strict=True)]
    memo = {k: Shape(*k[:4], 1, k[4], k[5]).model_config().flops_per_token() for k in dict.fromkeys(keys)}
    return np.array([memo[k] for k in keys], dtype=np.float64)


def frame_time_features(df: pd.DataFrame, switches: bool = False) -> pd.DataFrame:
    """Time feature columns of a points frame; `switches`: each row's recipe switches in them (RECIPE_THROUGHPUT)."""
    import pandas as pd

    sw = None
    if switches and len(df):
        from gpt.config import checkpoint_every
        from vramfit.fit.features import frame_recipes

        rs = frame_recipes(df)
        sw = {"grad_accum": [r.grad_accum for r in rs], "checkpoint_every": [checkpoint_every(r.checkpoint)
                                                                             for r in rs],
              "optimizer": ["fused" if r.optimizer == "auto" else r.optimizer for r in rs]}
    arch = df["arch"].fillna(GPT2).to_numpy() if has_families(df) else None
    return pd.DataFrame(time_features(*(df[c].to_numpy() for c in KEYS), switches=sw, arch=arch), index=df.index)


def _slowdown(ratio: np.ndarray) -> float:
    """A device's typical/best step factor from the points' ratios: their median, never below 1."""
    return max(1.0, float(np.median(ratio)))


class ThroughputModel:
    """Predict ms per iteration from feature columns. scikit-learn style: fit(X, y) -> self."""

    def __init__(self, features: tuple[str, ...] = THROUGHPUT, delta: float = HUBER_DELTA) -> None:
        self.features = tuple(features)
        self.delta = delta
        self.slowdown = 1.0

    def _X(self, X: pd.DataFrame | dict) -> np.ndarray:
        return np.column_stack([np.asarray(X[f], dtype=np.float64) for f in self.features])

    def fit(self, X: pd.DataFrame | dict, y, typical=None) -> ThroughputModel:
        """y: best-step ms per point; `typical` (the points' usual step, e.g. the median) sets `slowdown`."""

        y = np.asarray(y, dtype=np.float64)
        A, w = self._X(X), np.ones_like(y)
        for _ in range(50):  # IRLS with Huber weights on the relative residual (one plain fit when delta is 0)
            self.intercept_, self.coef_ = nnls(A, y, sample_weight=w / y**2)
            if not self.delta:
                break
            r = np.abs((self.intercept_ + A @ self.coef_) / y - 1)
            w_new = np.where(r <= self.delta, 1.0, self.delta / np.maximum(r, 1e-12))
            if np.allclose(w_new, w, atol=1e-4):
                break
            w = w_new
        if typical is not None:
            self.slowdown = _slowdown(np.asarray(typical, dtype=np.float64) / y)
        return self

    def predict_best(self, X: pd.DataFrame | dict) -> np.ndarray:
        """ms of an undisturbed iteration (the shape's cost)."""
        return self.intercept_ + self._X(X) @ self.coef_

    def predict(self, X: pd.DataFrame | dict) -> np.ndarray:
        """ms a typical iteration takes on the profiled machine (best x slowdown)."""
        return self.slowdown * self.predict_best(X)

    def coefficients(self) -> list[dict]:
        rows = [{"term": "overhead", "value": self.intercept_, "unit": "ms/iter"}]
        rows += [{"term": f, "value": float(c) * _UNIT_SCALE.get(f, 1.0), "unit": UNITS.get(f, "ms")}
                 for f, c in zip(self.features, self.coef_, strict=True)]
        return rows + [{"term": "slowdown", "value": self.slowdown, "unit": "typical / best step"}]

    def to_dict(self) -> dict:
        return {"features": list(self.features), "intercept": self.intercept_, "coef": [float(c) for c in self.coef_],
                "slowdown": self.slowdown, "delta": self.delta}

    @classmethod
    def from_dict(cls, d: dict) -> ThroughputModel:
        m = cls(tuple(d["features"]), float(d.get("delta") or 0.0) if "delta" in d else HUBER_DELTA)
        m.intercept_, m.coef_ = float(d["intercept"]), np.asarray(d["coef"], dtype=np.float64)
        m.slowdown = float(d.get("slowdown", 1.0))  # files fitted before it existed: ms_per_iter was the target
        return m


def device_peak_flops(device_name: str) -> float | None:
    """Dense bf16/fp16 peak FLOP/s of a known GPU (`gpt.config.peak_flops_of`), else None (CPUs: unknown)."""
    from gpt.config import peak_flops_of

    return peak_flops_of(device_name)


@dataclass
class ThroughputReport:
    """A fitted throughput model with CV metrics beside the FLOPs-only baseline, and the device's MFU."""

    model: ThroughputModel
    baseline: ThroughputModel
    metrics: dict  # {"ours": {"loo", "grouped", "train"}, "flops": {...}}
    n_points: int
    peak_flops: float | None
    mfu: float | None  # median measured model-FLOPs utilisation of the sweep points, where the peak is known
    cv: pd.DataFrame | None = None

    def to_json(self) -> dict:
        return {"model": self.model.to_dict(), "baseline": self.baseline.to_dict(),
                "coefficients": self.model.coefficients(), "metrics": self.metrics, "n_points": self.n_points,
                "peak_flops": self.peak_flops, "mfu": self.mfu}


def best_step_ms(timings) -> float:
    """The fastest timed step of a point (its `timings` JSON's step_ms; on a CPU the CPU time the step used,
    step_cpu_ms, where the worker recorded it: on a shared CPU the neighbours stretch the wall time 2-5x and the CPU
    time little), NaN where the worker did not list them."""
    try:
        t = json.loads(timings) if isinstance(timings, str) else timings
        steps = t.get("step_cpu_ms") or t["step_ms"]
        return float(min(steps)) if steps else math.nan
    except (TypeError, KeyError, ValueError, AttributeError):
        return math.nan


def timed_points(points: pd.DataFrame) -> pd.DataFrame:
    """The ok sweep points with a steady-state ms/iter, plus `ms_best` (their fastest step; ms/iter where the
    steps were not recorded, as in databases swept before vramfit kept them; when at least MIN_POINTS points have
    their steps, only those)."""
    import pandas as pd

    ok = points[(points["status"] == "ok") & points["ms_per_iter"].notna() & (points["ms_per_iter"] > 0)]
    if "source" in ok.columns:
        ok = ok[ok["source"].fillna("sweep") != "train"]
    ok = ok.reset_index(drop=True)
    best = ok["timings"].map(best_step_ms) if "timings" in ok.columns else pd.Series(math.nan, index=ok.index)
    stepped = (best > 0).to_numpy()
    if stepped.sum() >= MIN_POINTS and not stepped.all():
        # points swept before the steps were kept were timed differently (median step, under the exact-RSS malloc
        # settings that made CPU steps 1.6x slower): do not mix the two in one law
        ok, best = ok[stepped].reset_index(drop=True), best[stepped].reset_index(drop=True)
    best = best.where(best > 0, ok["ms_per_iter"])
    return ok.assign(ms_best=np.minimum(best.to_numpy(dtype=np.float64), ok["ms_per_iter"].to_numpy()))


def _held_out_slowdown(best: np.ndarray, typical: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Per point, the slowdown fitted without its group (without itself when `groups` is None)."""
    ratio = typical / best
    keys = cv_keys(len(best), groups)  # the folds of cv_predictions
    out = np.ones(len(best))
    for k in np.unique(keys[keys >= 0]):
        rest = ratio[(keys != k) & (keys >= 0)]
        out[keys == k] = _slowdown(rest) if len(rest) else 1.0
    return out


def fit_throughput(points: pd.DataFrame, switches: bool = False) -> ThroughputReport | None:
    """Fit and cross-validate the throughput model on ONE device+recipe's points (`switches`: one recipe family's,
    the switches priced by RECIPE_THROUGHPUT); None below MIN_POINTS."""
    import pandas as pd

    ok = timed_points(points)
    if len(ok) < MIN_POINTS:
        return None
    X, y = frame_time_features(ok, switches), ok["ms_best"].to_numpy(dtype=np.float64)
    ours = THROUGHPUT
    if switches:  # the optimizer kinds measured: a kind never run has no cost to fit
        ours = tuple(f for f in RECIPE_THROUGHPUT if not f.startswith("opt_") or X[f].any())
    typical = ok["ms_per_iter"].to_numpy(dtype=np.float64)
    groups = shape_key(ok).to_numpy()
    metrics, fitted = {}, {}
    cv = pd.DataFrame({"measured": y, "typical": typical, "shape": groups, "flops": X["flops"]})
    for name, feats in (("ours", ours), ("flops", FLOPS)):
        make = lambda f=feats: ThroughputModel(f)  # noqa: E731
        fitted[name] = make().fit(X, y, typical)
        metrics[name] = {}
        for how, g in (("loo", None), ("grouped", groups if len(set(groups)) > 1 else None)):
            pred = cv_predictions(make, X, y, g)  # best-step predictions: the shape law, held out
            metrics[name][how] = error_metrics(y, pred)
            metrics[name][f"{how}_typical"] = error_metrics(typical, pred * _held_out_slowdown(y, typical, g))
            cv[f"{name}_{how}"] = pred
        metrics[name]["train"] = error_metrics(y, fitted[name].predict_best(X))
    peak = device_peak_flops(str(ok["device_name"].iloc[0])) if "device_name" in ok.columns else None
    mfu = float(np.median(X["flops"] / (typical / 1000) / peak)) if peak else None
    return ThroughputReport(fitted["ours"], fitted["flops"], metrics, len(ok), peak, mfu, cv)


def load_throughput(d: dict | None) -> ThroughputReport | None:
    """The `throughput` entry of a model JSON rebuilt (None for files fitted before it existed)."""
    if not d:
        return None
    return ThroughputReport(ThroughputModel.from_dict(d["model"]), ThroughputModel.from_dict(d["baseline"]),
                            d.get("metrics", {}), int(d.get("n_points", 0)), d.get("peak_flops"), d.get("mfu"))


def predict_ms(model: ThroughputModel, n_layer, n_head, n_embd, block_size, batch_size, vocab_size,
               arch: str = GPT2) -> np.ndarray:
    """Typical ms per iteration for arrays of configs of one family (never below 1 microsecond)."""
    f = time_features(n_layer, n_head, n_embd, block_size, batch_size, vocab_size, arch=arch)
    return np.maximum(model.predict(f), 1e-3)

