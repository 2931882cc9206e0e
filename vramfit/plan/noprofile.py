"""Planning for a GPU that was never profiled (`suggest --no-profile`): the physics model calibrated on dry-run
estimates of a small design, the top suggestions re-checked by the estimator.

The estimates run in a pool of warm workers and are kept in the dry run's one cache
(`vramfit.dryrun.cache.EstimateCache`, valid while torch and the source of the estimator and of this calibration are
unchanged), the calibrated model beside them: a second call with the same recipe, capability, vocabulary and
target runs no estimate and fits nothing."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import replace
from pathlib import Path

from vramfit.dryrun.cache import EstimateCache
from vramfit.dryrun.estimate import EstimateRequest, device_bytes
from vramfit.dryrun.estimator import Estimator
from vramfit.shape import Shape

# the design the physics model is calibrated on: 2 x 2 x 2 x 2 = 16 dry-run estimates, head dim 64
DESIGN = {"n_layer": (2, 8), "n_embd": (256, 768), "block_size": (256, 1024), "batch_size": (4, 64)}


def design_shapes(vocab_size: int) -> list[tuple[int, int, int, int, int, int]]:
    """The calibration design's configs (KEYS order), head dim 64."""
    return [(L, C // 64, C, T, B, vocab_size) for L, C, T, B in itertools.product(*DESIGN.values())]


def calibrated_model(shapes: list[tuple], device_bytes: list[int]):
    """The physics MemoryModel fitted to the estimator's device figures (`vramfit.dryrun.estimate.device_bytes`:
    the step's peak with the estimator's allocator and CUDA-context terms), so it predicts what the estimator
    would say for any config."""
    import numpy as np

    from vramfit.fit.features import PHYSICS, features
    from vramfit.fit.memmodel import MemoryModel

    X = features(*np.asarray(shapes, dtype=np.int64).T)
    return MemoryModel(PHYSICS, regimes=2).fit(X, np.asarray(device_bytes, dtype=np.float64))


def secant(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    """Bytes per sample along the line through two (batch, bytes) estimates; None if it does not rise."""
    (b0, n0), (b1, n1) = a, b
    slope = (n0 - n1) / (b0 - b1) if b0 != b1 else 0.0
    return slope if slope > 0 else None


def fitting_batch(batch: int, need: int, budget: int, slope: float | None) -> int:
    """The largest batch below `batch` expected to fit `budget` when `batch` needs `need` bytes: along `slope`
    bytes per sample, or (no slope) in proportion, which overshoots by the batch-independent bytes. A slope that
    would cut more than half the batch (a flat stretch of the allocator's rounding between two estimates) is not
    trusted: the proportional step is taken instead."""
    b = int(batch * budget / need)
    if slope and slope > 0:
        along = batch - math.ceil((need - budget) / slope)
        b = along if batch - along <= batch / 2 else b
    return max(1, min(batch - 1, b))


class DryRunPlanner:
    """The no-profile model and re-checks for one (recipe, capability, vocabulary, target), through an `Estimator`
    (default: a pool of `workers` with the user cache in `cache_dir`; `use_cache=False`: memory only). Counts what
    it ran."""

    def __init__(self, recipe, capability: tuple[int, int], vocab_size: int, target: str = "cuda",
                 cache_dir: str | Path | None = None, use_cache: bool = True, workers: int | None = None,
                 estimator: Estimator | None = None, loop: str = "vramfit", grad_clip: float = 1.0) -> None:
        self.recipe, self.capability, self.vocab_size, self.target = recipe, capability, vocab_size, target
        self.loop, self.grad_clip = loop, grad_clip  # the training loop estimated (EstimateRequest.loop) and clipping
        self.resolved = recipe.resolved(target, capability, loop)
        self.estimator = estimator or Estimator("pool", workers=workers,
                                                cache=EstimateCache.user(cache_dir) if use_cache else None)
        self._model_hits = 0  # design estimates not needed: the calibrated model came from the cache
        self._model = None  # the calibrated MemoryModel, once model() ran
        self.margin = None  # vramfit.validation.Margin, once model() ran

    def __enter__(self) -> DryRunPlanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.estimator.close()

    @property
    def ran(self) -> int:
        return self.estimator.ran

    @property
    def cached(self) -> int:
        return self.estimator.cached + self._model_hits

    @property
    def warnings(self) -> list[str]:
        return self.estimator.cache.warnings

    def _requests(self, shapes: list[tuple]) -> list[EstimateRequest]:
        """The estimator's request for each shape (KEYS order), the recipe resolved ('auto' and the settings
        it resolves to are one request)."""
        from gpt.config import GPTConfig

        return [EstimateRequest(GPTConfig(int(L), int(H), int(C), int(T), int(V)), int(B), self.resolved, self.target,
                                self.capability, grad_clip=self.grad_clip, headline_only=True, loop=self.loop)
                for L, H, C, T, B, V in shapes]

    def _estimates(self, shapes: list[tuple]) -> list[int]:
        """Device bytes of each shape, estimated in parallel where the cache has none."""
        return [device_bytes(e) for e in self.estimator.estimate(self._requests(shapes))]

    def estimates_of(self, points: list[tuple]) -> list:
        """The estimate of each (Shape, Recipe), the recipe resolved for this target, run in parallel where the
        cache has none (`suggest --tokens-per-step`: plan.recipes)."""
        from gpt.config import GPTConfig

        reqs = [EstimateRequest(GPTConfig(s.n_layer, s.n_head, s.n_embd, s.block_size, s.vocab_size), s.batch_size,
                                r.resolved(self.target, self.capability), self.target, self.capability,
                                headline_only=True) for s, r in points]
        return self.estimator.estimate(reqs)

    def model(self):
        """(MemoryModel, margin, resolved recipe dict): the model calibrated on the design's estimates, kept in the
        estimator's cache beside them (refitting would import pandas and scikit-learn on every warm call); the
        margin is the public validation set's (`vramfit.validation.planning_margin`, kept in `self.margin`)."""
        from vramfit.fit.memmodel import MemoryModel
        from vramfit.validation import planning_margin

        self.margin = planning_margin()
        shapes = design_shapes(self.vocab_size)
        cache = self.estimator.cache
        key = hashlib.sha256("\n".join(r.key() for r in self._requests(shapes)).encode()).hexdigest()
        doc = cache.get_doc("calibrated-model", key)
        if doc is not None:
            try:
                self._model = MemoryModel.from_dict(doc)
                self._model_hits += len(shapes)
                return self._model, self.margin.rel, self.resolved.to_dict()
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                cache.warnings.append(f"warning: ignoring a corrupt calibrated model in the cache "
                                      f"({type(exc).__name__}); fitting it again")
        self._model = calibrated_model(shapes, self._estimates(shapes))
        cache.put_doc("calibrated-model", key, self._model.to_dict())
        return self._model, self.margin.rel, self.resolved.to_dict()

    def slope(self, shape: tuple) -> float | None:
        """The calibrated model's bytes per sample at `shape` (KEYS order): every term but the parameters' grows
        with the tokens, so the model is a line in the batch at a fixed shape (per regime); None before model()."""
        if self._model is None or shape[4] < 2:
            return None
        import numpy as np

        from vramfit.fit.features import features

        pair = np.asarray([shape, (*shape[:4], 1, *shape[5:])], dtype=np.int64)
        big, one = self._model.parts(features(*pair.T))[0]  # the piece on every feature (the other: parameters)
        return secant((shape[4], float(big)), (1, float(one)))

    def _cut(self, last: tuple[int, int] | None, now: tuple[int, int], limit: int, shape: tuple) -> int:
        """The next batch to estimate for a config whose estimate at `now` (batch, bytes) is over `limit`: along
        the calibrated model's slope the first time (`last` None), then on the line through the two estimates; where
        they cost the same bytes (a stretch of batches the allocator rounds to one segment size) twice as far below
        as the last step, to get past the stretch (a step in proportion would move one batch at a time)."""
        b, need = now
        if last is None:
            return fitting_batch(b, need, limit, self.slope(shape))
        slope = secant(last, now)
        if slope is None and last[1] == need:
            return max(1, b - 2 * max(1, last[0] - b))
        return fitting_batch(b, need, limit, slope)

    def verify(self, items: list, budget: int, margin: float = 0.0) -> list:
        """Re-predict suggestions by the estimator (its device figure): a suggestion fits when its estimate raised
        by `margin` (the plan's: the validation set's, or --margin) is within `budget`. One that does not gets the
        batch the estimate says fits (at most 3 more estimates: the calibrated model can be a few % low at the
        edge), else it is dropped; rank the rest. The first smaller batch is along the calibrated model's bytes per
        sample (`slope`), the next ones on the line through the config's last two estimates (`fitting_batch`), past a
        flat stretch of the allocator's rounding by doubling steps (`_cut`); a cut that fits is followed by the next
        batch up while one below a batch that did not fit is left (the allocator's rounding makes stretches of
        batches cost the same), within the same 3 rounds."""
        limit = int(budget / (1 + margin))  # the largest estimate that fits with the margin

        def fits(need: int) -> bool:
            return need * (1 + margin) <= budget

        def shape(s) -> tuple:
            return Shape.of(s).as_tuple()

        def smaller(s, b: int):  # noqa: ANN001, ANN202 - the Suggestion at batch b
            return replace(s, batch_size=b, tokens_per_step=s.tokens_per_step // s.batch_size * b,
                           command=re.sub(r"--batch-size \d+", f"--batch-size {b}", s.command))

        items = list(items)
        needs = self._estimates([shape(s) for s in items])
        before: dict[int, tuple[int, int]] = {}  # item -> (batch, need) of its last estimate over the budget
        best: dict[int, tuple] = {}  # item -> (Suggestion, need) at the largest batch that fits so far
        over: dict[int, int] = {}  # item -> the smallest batch that does not fit

        def keep(i: int) -> None:
            if fits(needs[i]) and (i not in best or items[i].batch_size > best[i][0].batch_size):
                best[i] = (items[i], needs[i])

        for _ in range(3):  # in rounds: each round's re-estimates run in parallel
            redo = []
            for i, s in enumerate(items):
                b, need = s.batch_size, needs[i]
                keep(i)
                if fits(need):
                    nb = b + 1  # cut below a batch that did not fit: on a flat stretch the next one up fits too
                elif b > 1:
                    over[i] = min(over.get(i, b), b)
                    nb = self._cut(before.get(i), (b, need), limit, shape(s))
                    before[i] = (b, need)
                    nb = max(nb, best[i][0].batch_size + 1 if i in best else 1)
                else:
                    continue
                if nb < over.get(i, 0):
                    items[i] = smaller(s, nb)
                    redo.append(i)
            if not redo:
                break
            for i, need in zip(redo, self._estimates([shape(items[i]) for i in redo]), strict=True):
                needs[i] = need
        kept = []
        for i in range(len(items)):
            keep(i)
            if i in best:
                s, need = best[i]
                s.predicted_bytes, s.margin_bytes = need, int(need * margin)
                s.headroom_bytes = budget - need - s.margin_bytes
                kept.append(s)
        for rank, s in enumerate(kept, start=1):
            s.rank = rank
        return kept

    def counts(self) -> dict:
        """Estimates run here and taken from the cache, the cache file (None: off) and the workers."""
        path, workers = self.estimator.cache.path, self.estimator.workers
        return {"estimates_run": self.ran, "from_cache": self.cached, "workers": workers,
                "cache_file": str(path) if path is not None else None}

    def summary(self) -> str:
        path, workers = self.estimator.cache.path, self.estimator.workers
        where = f"cache {path}" if path is not None else "cache off"
        return (f"dry run: {self.ran} estimates run, {self.cached} from the cache ({where}; "
                f"{workers} worker{'s' if workers != 1 else ''})")
