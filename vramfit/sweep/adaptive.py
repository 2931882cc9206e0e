"""Adaptive sweep planning: which grid points to measure, when to stop, and where the batch edge is.

`vramfit sweep --plan adaptive` measures a few points of a grid, one at a time, chosen by `AdaptivePlanner`:

1. coverage: until every axis' smallest and largest value has been measured, the next point is the one covering
   the most uncovered extremes (ties: the D-optimal one below);
2. D-optimal: then the point that most increases log det(X'X) of the memory model's design matrix
   (constant + the physics features, columns scaled to [0, 1]), i.e. the largest leverage x'(X'X)^-1 x, taken
   from the near-best (within `cost_slack`) at the lowest predicted cost (tokens x params, a FLOP proxy);
3. feasibility: with a capacity (an emulated card or a GPU), points predicted to need more than
   capacity x (1 + band) are skipped and at most `boundary` points within +-band of it are measured, so that OOM
   rows show the model where the edge is. Predictions come from dry-run estimates (`vramfit.dryrun.estimate`, fake
   tensors) of a few design points, extended to all candidates by fitting the memory model to them and scaled by
   the measured/estimated ratio once real points exist;
4. stop rule (`should_stop`): stop when the leave-one-out max relative error of the fitted model is at most
   `target_error` AND the last `confirm` ok points were predicted within `target_error` by the model fitted
   *before* they were measured; or at `points` measured points; or when no candidate is left.

`bisect_batch` finds the largest batch that fits for one model shape from a starting guess (the model's
prediction) by galloping then bisecting over real runs; `vramfit sweep --boundary` drives it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from vramfit.errors import VramfitError
from vramfit.fit.features import FAMILY, PHYSICS, columns, optimizer_dtype
from vramfit.fit.memmodel import TARGETS, MemoryModel
from vramfit.fit.stats import cv_predictions, error_metrics
from vramfit.measure.devices import DeviceFacts
from vramfit.recipe import Recipe
from vramfit.shape import GPT2, KEYS, Shape
from vramfit.store import DONE_STATUSES, Store
from vramfit.sweep.cost import estimate_cost, format_duration
from vramfit.sweep.progress import point_label, reading_label
from vramfit.sweep.session import Chooser, SweepSession, capacity_bytes, identity_points
from vramfit.units import format_size

PLANS = ("grid", "adaptive")


@dataclass(frozen=True)
class PlanSettings:
    """Knobs of the adaptive plan (the CLI sets `points`, `target_error`, `boundary`)."""

    points: int = 12  # at most this many measured points (resumed ones count)
    target_error: float = 0.03  # stop when CV max |rel error| and the last predictions are within this
    confirm: int = 3  # ... for this many consecutive ok points, predicted before they were measured
    min_points: int = 6  # never stop before this many ok points (the model has 6 coefficients)
    boundary: int = 2  # points near the capacity edge to measure on purpose (OOM rows teach the edge)
    band: float = 0.15  # "near the edge": predicted within +-band x capacity
    n_estimates: int = 8  # dry-run estimates behind the feasibility filter (0: no estimates)
    cost_slack: float = 0.9  # take the cheapest candidate whose D-gain is >= this x the best gain

    def __post_init__(self) -> None:
        checks = [
            (self.points >= 1, "--points must be >= 1"),
            (0 < self.target_error < 1, "--target-error must be in (0, 1), e.g. 0.03"),
            (self.confirm >= 1, "confirm must be >= 1"),
            (self.boundary >= 0, "--boundary-points must be >= 0"),
            (0 <= self.band < 1, "band must be in [0, 1)"),
            (self.n_estimates >= 0, "n_estimates must be >= 0"),
            (0 < self.cost_slack <= 1, "cost_slack must be in (0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise VramfitError(msg)

    def to_dict(self) -> dict:
        return asdict(self)


def feature_dict(points: list[dict], family: tuple[str, str] | None = None) -> dict[str, np.ndarray]:
    """The memory model's columns of points (mappings of the KEYS sizes, `arch` where not GPT-2): PHYSICS, or with
    `family` (the sweep's (optimizer, dtype): `sweep_family`) the FAMILY ones, as `vramfit fit` takes them."""
    sizes = {k: np.array([p[k] for p in points], dtype=np.float64) for k in KEYS}
    return columns(sizes, np.array([Shape.of(p).arch for p in points], dtype=object), family)


def sweep_family(points: list[dict], recipe: Recipe | None) -> tuple[str, str] | None:
    """(optimizer, dtype) when a point is not GPT-2's (its model takes the FAMILY columns), else None (PHYSICS):
    the rule `vramfit fit` follows (`fit.features.has_families`)."""
    if all(Shape.of(p).arch == GPT2 for p in points):
        return None
    return optimizer_dtype(recipe.to_dict() if recipe is not None else None)


def memory_model(family: tuple[str, str] | None) -> MemoryModel:
    """An unfitted memory model on the columns `feature_dict(points, family)` gives."""
    model = MemoryModel(FAMILY if family else PHYSICS, regimes=2)
    model.family_ = family
    return model


def frame_columns(df: pd.DataFrame, family: tuple[str, str] | None) -> pd.DataFrame:
    """`feature_dict` of a DataFrame of points (store rows: the KEYS columns, `arch`)."""
    return pd.DataFrame(feature_dict(df.to_dict("records"), family), index=df.index)


def design_matrix(points: list[dict], scale: np.ndarray | None = None,
                  family: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(constant + the model's features scaled by `scale` (default: the column maxima), the scale)."""
    f = feature_dict(points, family)
    X = np.column_stack([f[c] for c in (FAMILY if family else PHYSICS)])
    if scale is None:
        scale = np.where(X.max(axis=0) > 0, X.max(axis=0), 1.0)
    return np.column_stack([np.ones(len(X)), X / scale]), scale


def cost_proxy(points: list[dict]) -> np.ndarray:
    """Relative cost of measuring a point: a fixed process cost plus tokens x params (FLOPs)."""
    f = feature_dict(points)  # GPT-2's count of a point's sizes: a proxy for any family
    flops = f["tokens"] * f["params"]
    return 1.0 + flops / max(float(flops.max()), 1.0)


def d_optimal_order(X: np.ndarray, chosen: list[int], n: int, allowed: np.ndarray | None = None,
                    cost: np.ndarray | None = None, cost_slack: float = 1.0, ridge: float = 1e-6) -> list[int]:
    """Greedy sequential D-optimal selection: `n` more row indices of X, each maximising log(1 + x'M^-1 x)
    with M = X_S'X_S + ridge I over the rows S chosen so far; among rows within `cost_slack` of the best gain,
    the cheapest by `cost`."""
    allowed = np.ones(len(X), dtype=bool) if allowed is None else allowed.copy()
    allowed[chosen] = False
    S = list(chosen)
    out: list[int] = []
    for _ in range(n):
        idx = np.nonzero(allowed)[0]
        if not len(idx):
            break
        M = X[S].T @ X[S] + ridge * np.eye(X.shape[1]) if S else ridge * np.eye(X.shape[1])
        Minv = np.linalg.pinv(M)
        gain = np.log1p(np.einsum("ij,jk,ik->i", X[idx], Minv, X[idx]))
        best = gain.max()
        near = idx[gain >= cost_slack * best] if cost is not None else idx[gain == best]
        pick = int(near[np.argmin(cost[near])]) if cost is not None else int(near[0])
        out.append(pick)
        S.append(pick)
        allowed[pick] = False
    return out


def extremes(points: list[dict]) -> set[tuple[str, int | str]]:
    """(axis, value) pairs for each axis' smallest and largest value among `points`, and each model family."""
    out = {("arch", Shape.of(p).arch) for p in points}
    for k in KEYS:
        vals = [int(p[k]) for p in points]
        out |= {(k, min(vals)), (k, max(vals))}
    return out


def covered(p: dict, wanted: set[tuple[str, int | str]]) -> int:
    return sum((k, int(p[k])) in wanted for k in KEYS) + (("arch", Shape.of(p).arch) in wanted)


@dataclass
class Choice:
    """The next point to measure and why."""

    point: dict
    reason: str  # coverage | d-optimal | boundary
    predicted_bytes: float | None = None  # by the model fitted on the points measured so far (stop rule)
    feasibility_bytes: float | None = None  # what the feasibility filter expected on the device

    def extra(self) -> dict:
        return {"plan": "adaptive", "plan_reason": self.reason, "plan_predicted_bytes": self.predicted_bytes,
                "plan_feasibility_bytes": self.feasibility_bytes}


@dataclass
class StopCheck:
    stop: bool
    why: str
    cv_max_rel: float = math.nan
    recent_rel: list[float] = field(default_factory=list)


class AdaptivePlanner:
    """Chooses grid points one at a time from what has been measured (see the module docstring).

    `candidates`: the grid's points; `target_col`: the reading the model fits (tracked_bytes on CPU, nvml_bytes on
    CUDA); `capacity`: bytes the device offers (None: no feasibility filter); `estimates`: dry-run bytes for some
    candidates (key -> bytes), the feasibility filter's evidence; `recipe`: the sweep's (its optimizer and dtype
    size the FAMILY columns where a candidate is not GPT-2's)."""

    def __init__(self, candidates: list[dict], target_col: str, settings: PlanSettings,
                 capacity: int | None = None, estimates: dict[Shape, float] | None = None,
                 recipe: Recipe | None = None) -> None:
        if not candidates:
            raise VramfitError("the grid has no valid points to plan from")
        self.cands = [dict(p) for p in candidates]
        self.keys = [point_key(p) for p in self.cands]
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.col = target_col
        self.s = settings
        self.capacity = capacity
        self.family = sweep_family(self.cands, recipe)
        self.X, _ = design_matrix(self.cands, family=self.family)
        self.cost = cost_proxy(self.cands)
        self.wanted = extremes(self.cands)
        self.surrogate: MemoryModel | None = None
        if estimates:
            self.set_estimates(estimates)

    # ------------------------------------------------------------------------------------------ feasibility
    def set_estimates(self, estimates: dict[Shape, float]) -> None:
        """Fit the memory model to dry-run estimates: the feasibility filter's prediction for every candidate."""
        pts = [k.point() for k in estimates]
        if len(pts) < 2:
            return
        X = pd.DataFrame(feature_dict(pts, self.family))
        self.surrogate = memory_model(self.family).fit(X, np.array(list(estimates.values()), dtype=float))

    def feasibility(self, measured: pd.DataFrame) -> np.ndarray | None:
        """Expected device bytes per candidate (None without a capacity or estimates): the estimate-fitted model,
        times the median measured/estimated ratio of the ok points so far."""
        if self.capacity is None or self.surrogate is None:
            return None
        pred = self.surrogate.predict(pd.DataFrame(feature_dict(self.cands, self.family)))
        ok = self._ok(measured)
        if len(ok):
            est = self.surrogate.predict(frame_columns(ok, self.family))
            ratio = float(np.median(ok[self.col].to_numpy(dtype=float) / np.maximum(est, 1.0)))
            pred = pred * ratio
        return pred

    # ------------------------------------------------------------------------------------------ choosing
    def _ok(self, measured: pd.DataFrame) -> pd.DataFrame:
        if measured.empty:
            return measured
        m = measured[(measured["status"] == "ok") & measured[self.col].notna()]
        return m[[point_key(r) in self.index for _, r in m.iterrows()]]

    def _measured_idx(self, measured: pd.DataFrame) -> list[int]:
        if measured.empty:
            return []
        out = []
        for _, r in measured.iterrows():
            i = self.index.get(point_key(r))
            if i is not None and i not in out:
                out.append(i)
        return out

    def fit(self, measured: pd.DataFrame) -> MemoryModel | None:
        """The memory model on the ok candidate points measured so far (None with fewer than 3)."""
        ok = self._ok(measured)
        if len(ok) < 3:
            return None
        return memory_model(self.family).fit(frame_columns(ok, self.family), ok[self.col].to_numpy(dtype=float))

    def next(self, measured: pd.DataFrame) -> Choice | None:
        """The next point to measure given the rows measured so far (status ok/oom), or None when done."""
        done = self._measured_idx(measured)
        if len(done) >= self.s.points:
            return None
        allowed = np.ones(len(self.cands), dtype=bool)
        allowed[done] = False
        feas = self.feasibility(measured)
        near = np.zeros(len(self.cands), dtype=bool)
        if feas is not None:
            cap = float(self.capacity)
            near = np.abs(feas - cap) <= self.s.band * cap
            too_big = feas > cap * (1 + self.s.band)
            status = {point_key(r): r["status"] for _, r in measured.iterrows()} if len(measured) else {}
            n_edge = sum(bool(near[i]) or status.get(self.keys[i]) == "oom" for i in done)
            allowed &= ~too_big
            if n_edge >= self.s.boundary:
                allowed &= ~near
        if not allowed.any():
            return None
        measured_pts = [self.cands[i] for i in done]
        todo = self.wanted - (extremes(measured_pts) & self.wanted if measured_pts else set())
        todo = {t for t in todo if any(covered(self.cands[i], {t}) for i in np.nonzero(allowed)[0])}
        if todo:
            counts = np.array([covered(p, todo) if allowed[i] else -1 for i, p in enumerate(self.cands)])
            pool = allowed & (counts == counts.max())
            pick = d_optimal_order(self.X, done, 1, pool, self.cost, self.s.cost_slack)[0]
            reason = "coverage"
        else:
            pick = d_optimal_order(self.X, done, 1, allowed, self.cost, self.s.cost_slack)[0]
            reason = "boundary" if near[pick] else "d-optimal"
        model = self.fit(measured)
        pred = float(model.predict(pd.DataFrame(feature_dict([self.cands[pick]], self.family)))[0]) if model else None
        return Choice(dict(self.cands[pick]), reason, pred, float(feas[pick]) if feas is not None else None)

    def estimate_targets(self, n: int) -> list[dict]:
        """The candidates to dry-run first: coverage points, then D-optimal ones (the same rule as measuring)."""
        chosen: list[int] = []
        todo = set(self.wanted)
        while todo and len(chosen) < n:
            counts = np.array([covered(p, todo) if i not in chosen else -1 for i, p in enumerate(self.cands)])
            pick = d_optimal_order(self.X, chosen, 1, counts == counts.max())[0]
            chosen.append(pick)
            todo -= extremes([self.cands[pick]])
        chosen += d_optimal_order(self.X, chosen, max(0, n - len(chosen)))
        return [self.cands[i] for i in chosen]

    # ------------------------------------------------------------------------------------------ stopping
    def should_stop(self, measured: pd.DataFrame, prior: dict[tuple, float]) -> StopCheck:
        """The stop rule. `prior`: point key -> the prediction made for it before it was measured."""
        ok = self._ok(measured)
        s = self.s
        if len(self._measured_idx(measured)) >= s.points:
            return StopCheck(True, f"measured {s.points} points (--points)")
        if len(ok) < max(s.min_points, s.confirm + 3):
            return StopCheck(False, f"{len(ok)} ok points, need {max(s.min_points, s.confirm + 3)} before stopping")
        X, y = frame_columns(ok.reset_index(drop=True), self.family), ok[self.col].to_numpy(dtype=float)
        cv = error_metrics(y, cv_predictions(lambda: memory_model(self.family), X, y, None))["max_rel"]
        recent = []
        for _, r in ok.tail(s.confirm).iterrows():
            p = prior.get(point_key(r))
            recent.append(abs(p - r[self.col]) / r[self.col] if p is not None else math.inf)
        good = cv <= s.target_error and all(e <= s.target_error for e in recent)
        why = (f"CV max error {cv:.2%}, last {s.confirm} predicted within "
               + ", ".join(f"{e:.2%}" for e in recent) + f" (target {s.target_error:.2%})")
        return StopCheck(good, why, cv, recent)


def target_column(device_type: str) -> str:
    """The reading the adaptive plan models: what `vramfit fit` uses by default on that device type."""
    return TARGETS["nvml" if device_type == "cuda" else "tracked"]


def _already_measured(store: Store, allp: pd.DataFrame, candidates: list[dict]) -> tuple[pd.DataFrame, dict]:
    """(the grid's points already measured on this identity, the predictions stored with them): a resumed plan
    counts them and feeds the stop rule with what was predicted before they were measured."""
    keys = {point_key(p) for p in candidates}
    in_grid = allp[[point_key(r) in keys for _, r in allp.iterrows()]] if len(allp) else allp
    done = in_grid[in_grid["status"].isin(DONE_STATUSES)]
    measured = done[~pd.Series([point_key(r) for _, r in done.iterrows()], index=done.index, dtype=object)
                    .duplicated(keep="last")] if len(done) else done
    prior: dict[tuple, float] = {}
    extras = store.point_extras([int(i) for i in measured["point_id"]])
    for _, r in measured.iterrows():
        if extras[int(r["point_id"])].get("plan_predicted_bytes") is not None:
            prior[point_key(r)] = float(extras[int(r["point_id"])]["plan_predicted_bytes"])
    return measured, prior


class AdaptiveChooser(Chooser):
    """The grid points `AdaptivePlanner` picks, one at a time, until its stop rule holds (`vramfit sweep --plan
    adaptive`); `result.note` says why it stopped and what it saved.

    Resumable: points of this grid already in the store (same device model, recipe, torch, emulation) count as
    measured, and the predictions stored with them feed the stop rule."""

    one_device = "an adaptive plan"

    def __init__(self, settings: PlanSettings) -> None:
        self.settings = settings

    def run(self, s: SweepSession) -> None:
        settings, o, grid, d, recipe = self.settings, s.options, s.grid, s.device, s.recipes[0]
        store, env_id = s.store, s.env_ids[0]
        candidates = grid.points()[0]
        capacity = capacity_bytes(d, o.emulate_bytes)
        col = target_column(d.device_type)
        planner = AdaptivePlanner(candidates, col, settings, capacity, recipe=recipe)
        if capacity is not None and settings.n_estimates > 0:
            t0 = time.time()
            todo = planner.estimate_targets(min(settings.n_estimates, len(candidates)))
            est, why = cached_estimates(todo, recipe, d)
            planner.set_estimates(est)
            o.say(f"dry-run estimates: {len(est)}/{len(todo)} points in {time.time() - t0:.0f} s"
                  + (f" ({why})" if why else "") + f"; capacity {format_size(capacity)}")
        allp = identity_points(store, env_id)
        measured, prior = _already_measured(store, allp, candidates)
        resumed = len(measured)
        result = s.start(settings.points, resumed, plan=settings.to_dict())
        o.say(f"sweep {result.sweep_id} '{grid.name}' (adaptive, at most {settings.points} of {len(candidates)} "
              f"points, target error {settings.target_error:.1%}) on {d.device_name}"
              + ("" if s.ex.local else f" (executor {s.ex.name})")
              + (f", emulating {format_size(o.emulate_bytes)}" if o.emulate_bytes else "")
              + f": {resumed} already measured; recipe {recipe.key()}; db {o.db}")
        mode = s.ex.worker_mode
        o.say(s.ex.describe())
        if s.batch_line:
            o.say(s.batch_line)
        left = [p for p in candidates if point_key(p) not in {point_key(r) for _, r in measured.iterrows()}]
        if settings.points > resumed and left:
            o.say("at most " + estimate_cost(left[: settings.points - resumed], allp, mode,
                                             compiled=bool(recipe.compile)).line())
        tried = measured
        t_start = time.time()
        while True:
            check = planner.should_stop(measured, prior)
            if check.stop:
                result.note = f"stopped: {check.why}"
                break
            choice = planner.next(tried)
            if choice is None:
                result.note = f"stopped: no candidate left ({check.why})"
                break
            p = choice.point
            extra = {k: v for k, v in choice.extra().items() if v is not None}
            ev = s.measure_one(s.job(p, extra=extra))
            rec = ev.record
            row = pd.DataFrame([{**rec, **Shape.of(p).point(), "point_id": ev.point_id}])
            tried = pd.concat([tried, row], ignore_index=True)
            if rec["status"] in DONE_STATUSES:
                measured = pd.concat([measured, row], ignore_index=True)
                if choice.predicted_bytes is not None:
                    prior[point_key(p)] = choice.predicted_bytes
            pred = ""
            if choice.predicted_bytes is not None and rec.get(col):
                pred = f"; predicted {format_size(choice.predicted_bytes, 1)} " \
                       f"({(choice.predicted_bytes - rec[col]) / rec[col]:+.1%})"
            o.say(f"[{len(tried)}/{settings.points}] {choice.reason}: {point_label(p)}: {reading_label(rec)}{pred}")
        if len(tried) > resumed:
            result.note += "; " + time_saved(candidates, len(tried) - resumed, time.time() - t_start,
                                             identity_points(store, env_id), mode)
        o.say(result.note)


def time_saved(candidates: list[dict], n_run: int, elapsed: float, profile: pd.DataFrame, mode: str) -> str:
    """What the plan saved: this run's wall time against the full grid's, estimated from the profile as it is now
    (`vramfit.sweep.cost`)."""
    full = estimate_cost(candidates, profile, mode)
    saved = full.seconds - elapsed
    return (f"measured {n_run} of {len(candidates)} grid points in {format_duration(elapsed)}; the full grid would "
            f"take ~{format_duration(full.seconds)} ({full.source}): "
            + (f"saved ~{format_duration(saved)} ({saved / full.seconds:.0%})" if saved > 0 and full.seconds > 0
               else "no time saved"))


def point_key(p: dict | pd.Series) -> Shape:
    """A point's shape and family (a grid point, a store row)."""
    return Shape.of(p)


def cached_estimates(todo: list[dict], recipe: Recipe, d: DeviceFacts) -> tuple[dict, str]:
    """Dry-run estimates for `todo` (key -> bytes: device bytes on CUDA, tracked on the CPU), in the warm estimator
    process (a crash there cannot take the sweep down) and kept in the dry run's cache, so that a resumed plan does not
    recompute them. A failure gives ({}, why)."""
    from gpt.errors import ConfigError
    from vramfit.dryrun.cache import EstimateCache
    from vramfit.dryrun.estimate import EstimateRequest, parse_capability, target_bytes
    from vramfit.dryrun.estimator import Estimator

    cuda = d.device_type == "cuda"
    try:
        cap = parse_capability(d.compute_capability) if d.compute_capability else (8, 0)
        reqs = [EstimateRequest(Shape.of(p).model_config(), int(p["batch_size"]), recipe, d.device_type, cap,
                                headline_only=True) for p in todo]
        with Estimator("warm", cache=EstimateCache.user()) as estimator:
            done = estimator.estimate(reqs)
    except (VramfitError, ConfigError) as exc:
        return {}, str(exc)
    return {point_key(p): float(target_bytes(e, "nvml" if cuda else "tracked")) for p, e in zip(todo, done,
                                                                                                   strict=True)}, ""
