"""A profile: the memory model of one device + recipe + target, written and read through this one class.

`vramfit fit` makes one per device and recipe of a database (`fit.memmodel.fit_points`) and saves it as
`results/models/<device>-<recipe>.json`; `suggest`, `predict`, `plot` and `report` read it back as the same type.
A GPU never profiled gets a profile too, calibrated on dry-run estimates (`source` "dry-run", never saved here).

Which file a command plans with when `--model` is not given (`latest`): among the profiles in the models folder
(files that are not a vramfit profile are skipped), those of the device kind planned for (GPU or CPU), the most
recently fitted by the fit time each records (`fitted_at`, UTC); a file fitted before vramfit recorded it counts as
the oldest; ties go to the file name that sorts last. File times (mtime) play no part: copying or touching a file
does not change the choice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramfit.errors import VramfitError
from vramfit.fit.memmodel import MemoryModel
from vramfit.paths import Protected, check_output, write_text
from vramfit.shape import Shape

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from vramfit.fit.throughput import ThroughputReport
    from vramfit.recipe import Recipe

SCHEMA = 1
GPU_TARGETS = ("nvml", "allocated", "reserved")
KINDS = ("cuda", "cpu")


def now() -> str:
    """The current UTC time as a profile records its fit time (ISO 8601, microseconds: sortable as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, eq=False)
class Profile:
    """A fitted memory model with what it is for and how far to trust it.

    Coefficients are in the model (`model.coefficients()` gives each with its unit); `margin_rel` is the safety
    margin (the worst cross-validated under-prediction, at least 1 %); `ranges` the measured [min, max] per shape
    axis, params and tokens (`fit.coverage`); `data_hash` identifies the points it was fitted on."""

    model: MemoryModel
    target: str  # what it predicts: nvml | allocated | reserved (a GPU) or rss | tracked (CPU RAM)
    device: str
    recipe_key: str
    recipe: dict
    margin_rel: float
    baseline: MemoryModel | None = None  # the naive params + tokens line, for comparison
    metrics: dict = field(default_factory=dict)  # {"ours": {"loo", "grouped", "train"}, "naive": ...}
    data_hash: str = ""
    n_points: int = 0
    oom_violations: list = field(default_factory=list)
    dryrun: MemoryModel | None = None  # y = c0 + k * dry-run estimate, when fitted (`fit --dry-run`)
    throughput: ThroughputReport | None = None  # when the points carry ms/iter
    ranges: dict = field(default_factory=dict)
    device_type: str | None = None  # cuda | cpu: what the profile measured (GPU memory or CPU RAM)
    total_memory_bytes: int | None = None  # the card's memory (or the emulated cap) the points ran under
    compute_capability: str | None = None
    fitted_at: str | None = None  # UTC, ISO 8601 (`now()`); None in files fitted before it was recorded
    source: str = "sweep"  # sweep: fitted to measured points | dry-run: calibrated on dry-run estimates
    cv: pd.DataFrame | None = None  # per point: measured, CV predictions (not saved)
    # the switch values measured ({grad_accum, checkpoint, optimizer} each) when the points varied them: the model
    # then prices them (RECIPE_PHYSICS) and `recipe` is the family's (`Recipe.family`); [] for one recipe
    switches: list = field(default_factory=list)

    def recipe_of(self) -> Recipe:
        """The profile's own recipe (a switch profile's family: no accumulation, no checkpointing)."""
        from vramfit.recipe import Recipe

        return Recipe.from_dict(self.recipe)

    def check_recipe(self, recipe: Recipe) -> Recipe:
        """`recipe` resolved for this profile's device, where the profile can price it; else one VramfitError
        saying why: a profile of one recipe prices that recipe only; a switch profile prices any accumulation and
        checkpointing of its family, with an optimizer it measured."""
        from vramfit.fit.features import SWITCHES

        own = self.recipe_of()
        r = recipe.resolved(self.kind)
        if not self.switches:
            if any(getattr(r, k) != getattr(own, k) for k in SWITCHES) and r.family() == own.family():
                raise VramfitError(f"this profile ({self.recipe_key}) was fitted on one recipe (grad_accum "
                                   f"{own.grad_accum}, checkpoint {own.checkpoint}, optimizer {own.optimizer}): it "
                                   "cannot price other switches; sweep them (a grid's [recipe] lists) and fit again")
            if r != own:
                raise VramfitError(f"this profile's recipe is {own.to_dict()}, not {r.to_dict()}")
            return r
        if r.family() != own.family():
            raise VramfitError(f"this profile's recipe family is {own.to_dict()}, not {r.family().to_dict()}")
        kinds = sorted({m["optimizer"] for m in self.switches})
        if r.optimizer not in kinds:
            raise VramfitError(f"this profile measured the optimizers {', '.join(kinds)}, not {r.optimizer}")
        return r

    def _columns(self, shapes: Shape | dict, recipe: Recipe | None, time: bool = False) -> dict:
        """Feature columns of `shapes` (a Shape, or a dict of KEYS arrays and optionally `arch`) under `recipe`
        (None: the profile's)."""
        import numpy as np

        from vramfit.fit.features import features, switch_columns
        from vramfit.fit.throughput import time_features
        from vramfit.shape import GPT2, KEYS

        r = self.check_recipe(recipe) if recipe is not None else self.recipe_of()
        cols = [np.atleast_1d(np.asarray(shapes.as_dict()[k] if isinstance(shapes, Shape) else shapes[k]))
                for k in KEYS]
        if not time and not self.switches:  # the model's own columns (FAMILY ones where it was fitted on them)
            arch = shapes.arch if isinstance(shapes, Shape) else shapes.get("arch", GPT2)
            return self.model.columns(dict(zip(KEYS, cols, strict=True)), arch)
        sw = None
        arch = shapes.arch if isinstance(shapes, Shape) else shapes.get("arch", GPT2)
        if self.switches:
            if np.any(np.asarray(arch) != GPT2):
                raise VramfitError("this profile prices the switches of GPT-2 models, not of another family")
            sw = switch_columns(np.column_stack(np.broadcast_arrays(*cols)), r)
            sw["optimizer"] = r.optimizer
        if time:
            return time_features(*cols, switches=sw, arch=arch)
        return features(*cols, switches=sw)

    def memory(self, shapes: Shape | dict, recipe: Recipe | None = None) -> np.ndarray:
        """Predicted peak bytes (the model's, without the margin) of `shapes` (a Shape, or a dict of KEYS arrays:
        a search space) trained with `recipe` (None: the profile's own; its switches as `check_recipe` allows)."""
        return self.model.predict(self._columns(shapes, recipe))

    def step_ms(self, shapes: Shape | dict, recipe: Recipe | None = None) -> np.ndarray | None:
        """Predicted typical ms per optimizer step (every micro-step, the recompute and the optimizer step) of
        `shapes` under `recipe`, as `memory`; None without a throughput model."""
        import numpy as np

        if self.throughput is None:
            return None
        return np.maximum(self.throughput.model.predict(self._columns(shapes, recipe, time=True)), 1e-3)

    @property
    def plans_families(self) -> bool:
        """Whether its points included another model family than GPT-2's (nanochat): the fit then took the FAMILY
        features, and only such a profile plans that family."""
        return self.model.family_ is not None

    @property
    def kind(self) -> str:
        """cuda (a GPU's memory) or cpu (RAM): the device type, else what the target measures."""
        if self.device_type in KINDS:
            return self.device_type
        return "cuda" if self.target in GPU_TARGETS else "cpu"

    def to_json(self) -> dict:
        """The model file's document (the report page's calculator reads `model` and `margin_rel`)."""
        return {
            "schema": SCHEMA, "device": self.device, "recipe_key": self.recipe_key, "recipe": self.recipe,
            "target": self.target, "model": self.model.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "coefficients": self.model.coefficients(), "metrics": self.metrics, "margin_rel": self.margin_rel,
            "data_hash": self.data_hash, "n_points": self.n_points, "oom_violations": self.oom_violations,
            "dryrun": self.dryrun.to_dict() if self.dryrun is not None else None,
            "throughput": self.throughput.to_json() if self.throughput is not None else None,
            "ranges": self.ranges,
            "device_type": self.device_type, "total_memory_bytes": self.total_memory_bytes,
            "compute_capability": self.compute_capability, "fitted_at": self.fitted_at, "source": self.source,
        } | ({"switches": self.switches} if self.switches else {})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Profile:
        """A profile from its document (`to_json`); KeyError, TypeError or ValueError where it is not one."""
        from vramfit.fit.throughput import load_throughput

        if not isinstance(d, dict):
            raise TypeError("not an object")
        margin = float(d["margin_rel"])
        if not (math.isfinite(margin) and 0 <= margin <= 100):
            raise ValueError(f"its margin_rel is {margin}, not a finite number in [0, 100]")
        total = d.get("total_memory_bytes")
        return cls(
            model=MemoryModel.from_dict(d["model"]), target=str(d["target"]), device=str(d["device"]),
            recipe_key=str(d["recipe_key"]), recipe=dict(d.get("recipe") or {}), margin_rel=margin,
            baseline=MemoryModel.from_dict(d["baseline"]) if d.get("baseline") else None,
            metrics=d.get("metrics") or {}, data_hash=str(d.get("data_hash") or ""),
            n_points=int(d.get("n_points") or 0), oom_violations=list(d.get("oom_violations") or []),
            dryrun=MemoryModel.from_dict(d["dryrun"], nonneg=False) if d.get("dryrun") else None,
            throughput=load_throughput(d.get("throughput")),  # None in files fitted before it existed
            ranges=d.get("ranges") or {}, device_type=d.get("device_type"),
            total_memory_bytes=int(total) if total is not None else None,
            compute_capability=d.get("compute_capability"), fitted_at=d.get("fitted_at"),
            source=str(d.get("source") or "sweep"), switches=list(d.get("switches") or []))

    def save(self, path: str | Path, protected: Protected | None = None) -> Path:
        """The model file, atomically, never over a `protected` file ({label: path})."""
        return write_text(check_output(path, protected or {}, "--out"), json.dumps(self.to_json(), indent=1),
                          "--out")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """A saved model file; one `VramfitError` line where it is missing or not a vramfit profile."""
        path = Path(path)
        if not path.is_file():
            raise VramfitError(f"no model file at {path} (run `vramfit fit` first)")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VramfitError(f"{path} is not a vramfit model file") from None
        try:
            return cls.from_json(d)
        except (KeyError, TypeError, AttributeError):
            raise VramfitError(f"{path} is not a vramfit model file") from None
        except (ValueError, OverflowError) as exc:
            raise VramfitError(f"{path} is not a usable vramfit model file: {exc}") from None


def latest(models_dir: str | Path, kind: str | None = None, families: bool = False) -> tuple[Path, Profile] | None:
    """The profile to plan with when none is named (the rule in the module docstring): the most recently fitted
    one in `models_dir` of `kind` (cuda | cpu; None: any), with `families` one that `plans_families`; None where
    there is none."""
    found = []
    for path in sorted(Path(models_dir).glob("*.json")):
        try:
            profile = Profile.load(path)
        except VramfitError:
            continue
        if (kind is None or profile.kind == kind) and (profile.plans_families or not families):
            found.append((profile.fitted_at or "", path.name, path, profile))
    if not found:
        return None
    *_, path, profile = max(found, key=lambda f: f[:2])
    return path, profile
