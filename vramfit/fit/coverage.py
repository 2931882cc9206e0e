"""What a fitted model has seen: the measured range of each shape axis, of parameters and of tokens per step, and
how far a config lies outside it. A prediction outside the measured ranges is an extrapolation: the planner says
so, widens the margin, and offers a check by dry run (`vramfit estimate`) or by one measured point."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vramfit.shape import KEYS

EXTRAPOLATION_MARGIN = 0.5  # the margin grows by this fraction of the prediction per factor of e outside the range


def ranges(points) -> dict[str, list[float]]:
    """[min, max] of each shape axis, of parameters and of tokens per step over the points (a DataFrame or a list
    of dicts with the KEYS)."""
    from gpt.config import count_params

    cols = {k: np.asarray([float(p) for p in (points[k] if hasattr(points, "columns") else
                                             [q[k] for q in points])]) for k in KEYS}
    cols["params"] = np.asarray(count_params(cols["n_layer"], cols["n_embd"], cols["block_size"],
                                             cols["vocab_size"]), dtype=float)
    cols["tokens"] = cols["block_size"] * cols["batch_size"]
    return {k: [float(v.min()), float(v.max())] for k, v in cols.items() if len(v)}


@dataclass(frozen=True)
class Extrapolation:
    """How a config sits against the measured ranges: the axes outside, and the log-distance beyond them."""

    outside: dict[str, tuple[float, float, float]]  # axis -> (value, measured min, measured max)
    distance: float  # max over axes of |ln(value / nearest bound)|; 0 inside every range

    @property
    def inside(self) -> bool:
        return not self.outside

    def widened_margin(self, margin_rel: float) -> float:
        """The model's margin, widened with the distance outside what was measured."""
        return margin_rel + EXTRAPOLATION_MARGIN * self.distance

    def describe(self) -> str:
        parts = [f"{k} {v:,.0f} (measured {lo:,.0f}-{hi:,.0f})" for k, (v, lo, hi) in self.outside.items()]
        return "outside the measured range: " + ", ".join(parts)


def check(measured: dict[str, list[float]] | None, config: dict) -> Extrapolation:
    """`config` (the KEYS) against the measured `ranges` (None: a model file without ranges: inside)."""
    if not measured:
        return Extrapolation({}, 0.0)
    from gpt.config import count_params

    values = {k: float(config[k]) for k in KEYS}
    values["params"] = float(count_params(config["n_layer"], config["n_embd"], config["block_size"],
                                          config["vocab_size"]))
    values["tokens"] = float(config["block_size"] * config["batch_size"])
    outside, dist = {}, 0.0
    for k, v in values.items():
        if k not in measured:
            continue
        lo, hi = measured[k]
        if v < lo or v > hi:
            outside[k] = (v, lo, hi)
            dist = max(dist, abs(math.log(v / (lo if v < lo else hi))))
    return Extrapolation(outside, dist)
