"""Planning for a GPU that was never profiled (`suggest --no-profile`): the physics model calibrated on dry-run
estimates of a small design, the top suggestions re-checked by the estimator, both kept in a user cache.

The cache holds one JSON file per key (everything that changes an estimate: torch version, capability, the
resolved recipe, the vocabulary, the target, the code of the estimator and of the calibration, the context
table's version and the design) with the calibrated model, its 16 estimates and the re-checked configs. A second
call with the same key runs no estimate for calibration; a corrupt file is reported and rebuilt."""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from vramfit.dryrun.sdpa import BUILD_ENV
from vramfit.plan.estimate_pool import EstimatorPool, Job
from vramfit.shape import Shape

CACHE_FORMAT = 1
# the design the physics model is calibrated on: 2 x 2 x 2 x 2 = 16 dry-run estimates, head dim 64
DESIGN = {"n_layer": (2, 8), "n_embd": (256, 768), "block_size": (256, 1024), "batch_size": (1, 8)}
# source files whose code decides an estimate or the calibrated model: a change to any of them misses the cache
CODE_FILES = ("vramfit/dryrun/__init__.py", "vramfit/dryrun/estimate.py", "vramfit/dryrun/fake_step.py",
              "vramfit/dryrun/compiled.py", "vramfit/dryrun/allocator.py", "vramfit/dryrun/context.py",
              "vramfit/dryrun/sdpa.py", "vramfit/measure/probe.py",
              "gpt/config.py", "gpt/model.py", "gpt/train.py", "vramfit/recipe.py", "vramfit/fit/features.py",
              "vramfit/fit/memmodel.py", "vramfit/fit/stats.py", "vramfit/plan/noprofile.py")
ROOT = Path(__file__).resolve().parents[2]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $VRAMFIT_CACHE_DIR, else the user cache directory: platformdirs' where it is installed
    (it is needed by nothing else: a sweep runs without it), else $XDG_CACHE_HOME/vramfit or ~/.cache/vramfit."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("VRAMFIT_CACHE_DIR"):
        return Path(os.environ["VRAMFIT_CACHE_DIR"])
    try:
        import platformdirs
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vramfit"
    return Path(platformdirs.user_cache_dir("vramfit", appauthor=False))


def code_version(files: tuple[str, ...] = CODE_FILES) -> str:
    """A hash of the estimator's and the calibration's source (any edit changes it; a missing file too)."""
    h = hashlib.sha256()
    for rel in files:
        path = ROOT / rel
        h.update(rel.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:16]


def context_version() -> str:
    """The version of the estimator's device-memory terms outside the step (CUDA context, allocator slack): its
    own `CONTEXT_TABLE_VERSION` where it publishes one, else the values of those terms."""
    from vramfit.dryrun import estimate

    version = getattr(estimate, "CONTEXT_TABLE_VERSION", None)
    if version is not None:
        return str(version)
    return f"context={getattr(estimate, 'CUDA_CONTEXT_BYTES', None)},slack={getattr(estimate, 'ALLOCATOR_SLACK', None)}"


def torch_version() -> str:
    """The installed torch's version, read without importing it."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cache_key(recipe: dict, capability: tuple[int, int], vocab_size: int, target: str = "cuda") -> dict:
    """Everything that changes the estimates behind a no-profile plan (`recipe`: the resolved recipe's dict)."""
    return {"format": CACHE_FORMAT, "torch": torch_version(), "capability": list(capability),
            "recipe": dict(sorted(recipe.items())), "vocab_size": int(vocab_size), "target": target,
            "estimator": code_version(), "context_table": context_version(),
            "cuda_build": {k: os.environ.get(k, "") for k in BUILD_ENV},  # the user's SDPA build override
            "design": {k: list(v) for k, v in DESIGN.items()}}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def shape_id(shape: tuple[int, ...]) -> str:
    return ",".join(str(int(v)) for v in shape)


@dataclass
class CacheEntry:
    """One key's file: the calibrated model (MemoryModel.to_dict), its estimates, and re-checks by shape id."""

    path: Path | None
    key: dict
    model: dict | None = None
    margin_rel: float | None = None
    estimates: dict[str, int] = field(default_factory=dict)  # design point (shape id) -> device bytes
    checks: dict[str, int] = field(default_factory=dict)  # suggested config (shape id) -> device bytes
    dirty: bool = False

    @classmethod
    def open(cls, root: Path | None, key: dict, warnings: list[str]) -> CacheEntry:
        """The entry for `key` under `root` (None: no cache); a corrupt file is ignored with a warning."""
        if root is None:
            return cls(None, key)
        path = root / "noprofile" / f"{key_digest(key)}.json"
        if not path.is_file():
            return cls(path, key)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d["key"] != key:
                raise ValueError("its key does not match its name")
            entry = cls(path, key, d["model"], d["margin_rel"], {str(k): int(v) for k, v in d["estimates"].items()},
                        {str(k): int(v) for k, v in d["checks"].items()})
            if entry.model is not None:
                from vramfit.fit.memmodel import MemoryModel

                MemoryModel.from_dict(entry.model)
                float(entry.margin_rel)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
                AttributeError) as exc:
            warnings.append(f"warning: ignoring a corrupt cache entry {path} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); rebuilding it")
            return cls(path, key, dirty=True)
        return entry

    def save(self, warnings: list[str]) -> None:
        """Write the entry atomically (a cache that cannot be written is a warning, never an error)."""
        if self.path is None or not self.dirty:
            return
        doc = {"key": self.key, "model": self.model, "margin_rel": self.margin_rel, "estimates": self.estimates,
               "checks": self.checks}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
            tmp.replace(self.path)
            self.dirty = False
        except OSError as exc:
            warnings.append(f"warning: cannot write the cache {self.path} ({exc.strerror or exc}); continuing")


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
    """The no-profile model and re-checks for one (recipe, capability, vocabulary, target), through the cache
    (`cache_dir=None` and `use_cache=False`: no cache) and a pool of estimator workers. Counts what it ran."""

    def __init__(self, recipe, capability: tuple[int, int], vocab_size: int, target: str = "cuda",
                 cache_dir: str | Path | None = None, use_cache: bool = True, workers: int | None = None,
                 runner=None) -> None:
        self.recipe, self.capability, self.vocab_size, self.target = recipe, capability, vocab_size, target
        self.resolved = recipe.resolved(target, capability)
        self.key = cache_key(self.resolved.to_dict(), capability, vocab_size, target)
        self.warnings: list[str] = []
        self.entry = CacheEntry.open(cache_root(cache_dir) if use_cache else None, self.key, self.warnings)
        self.pool = EstimatorPool(workers)
        self._runner = runner  # tests: a stand-in for EstimatorPool.run
        self.ran = 0
        self.cached = 0
        self.margin = None  # vramfit.validation.Margin, once model() ran

    def __enter__(self) -> DryRunPlanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.close()
        self.entry.save(self.warnings)

    def _estimates(self, shapes: list[tuple], store: dict[str, int]) -> list[int]:
        """Device bytes of each shape: from `store` where present, the rest estimated (in parallel) and stored."""
        missing = [s for s in dict.fromkeys(shapes) if shape_id(s) not in store]
        jobs = [Job(Shape(*s), tuple(sorted(self.recipe.to_dict().items())), self.target,
                    self.capability) for s in missing]
        peaks = (self._runner or self.pool.run)(jobs)
        for s, p in zip(missing, peaks, strict=True):
            store[shape_id(s)] = int(p)
        if missing:
            self.entry.dirty = True
        self.ran += len(missing)
        self.cached += len(shapes) - len(missing)
        return [store[shape_id(s)] for s in shapes]

    def model(self):
        """(MemoryModel, margin, resolved recipe dict): the calibrated model, from the cache when it holds one; the
        margin is the public validation set's (`vramfit.validation.planning_margin`, kept in `self.margin`)."""
        from vramfit.fit.memmodel import MemoryModel
        from vramfit.validation import planning_margin

        self.margin = planning_margin()
        shapes = design_shapes(self.vocab_size)
        if self.entry.model is not None:
            self.cached += len(shapes)
            return MemoryModel.from_dict(self.entry.model), self.margin.rel, self.resolved.to_dict()
        model = calibrated_model(shapes, self._estimates(shapes, self.entry.estimates))
        self.entry.model, self.entry.margin_rel, self.entry.dirty = model.to_dict(), self.margin.rel, True
        return model, self.margin.rel, self.resolved.to_dict()

    def verify(self, items: list, budget: int) -> list:
        """Re-predict suggestions by the estimator (its device figure); a suggestion over budget gets the batch the
        estimate says fits (at most 3 more estimates: the calibrated model can be a few % low at the edge), else
        it is dropped; rank the rest. The first smaller batch is in proportion to the excess, the next ones on the
        line through the config's last two estimates (`fitting_batch`)."""
        def shape(s) -> tuple:
            return Shape.of(s).as_tuple()

        def smaller(s, b: int):  # noqa: ANN001, ANN202 - the Suggestion at batch b
            return replace(s, batch_size=b, tokens_per_step=s.tokens_per_step // s.batch_size * b,
                           command=re.sub(r"--batch-size \d+", f"--batch-size {b}", s.command))

        items = list(items)
        needs = self._estimates([shape(s) for s in items], self.entry.checks)
        before: dict[int, tuple[int, int]] = {}  # item -> (batch, need) of its previous estimate
        for _ in range(3):  # in rounds: each round's re-estimates run in parallel
            redo = [i for i, s in enumerate(items) if needs[i] > budget and s.batch_size > 1]
            if not redo:
                break
            for i in redo:
                b, need = items[i].batch_size, needs[i]
                slope = secant(before[i], (b, need)) if i in before else None
                before[i] = (b, need)
                items[i] = smaller(items[i], fitting_batch(b, need, budget, slope))
            for i, need in zip(redo, self._estimates([shape(items[i]) for i in redo], self.entry.checks),
                               strict=True):
                needs[i] = need
        kept = []
        for s, need in zip(items, needs, strict=True):
            if need <= budget:
                s.predicted_bytes, s.margin_bytes, s.headroom_bytes = need, 0, budget - need
                kept.append(s)
        for rank, s in enumerate(kept, start=1):
            s.rank = rank
        return kept

    def counts(self) -> dict:
        """Estimates run here and taken from the cache, the cache file (None: off) and the workers."""
        return {"estimates_run": self.ran, "from_cache": self.cached, "workers": self.pool.workers,
                "cache_file": str(self.entry.path) if self.entry.path is not None else None}

    def summary(self) -> str:
        where = f"cache {self.entry.path}" if self.entry.path is not None else "cache off"
        return (f"dry run: {self.ran} estimates run, {self.cached} from the cache ({where}; "
                f"{self.pool.workers} worker{'s' if self.pool.workers != 1 else ''})")
