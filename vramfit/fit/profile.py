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

if TYPE_CHECKING:
    import pandas as pd

    from vramfit.fit.throughput import ThroughputReport

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
        }

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
            source=str(d.get("source") or "sweep"))

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


def latest(models_dir: str | Path, kind: str | None = None) -> tuple[Path, Profile] | None:
    """The profile to plan with when none is named (the rule in the module docstring): the most recently fitted
    one in `models_dir` of `kind` (cuda | cpu; None: any); None where there is none."""
    found = []
    for path in sorted(Path(models_dir).glob("*.json")):
        try:
            profile = Profile.load(path)
        except VramfitError:
            continue
        if kind is None or profile.kind == kind:
            found.append((profile.fitted_at or "", path.name, path, profile))
    if not found:
        return None
    *_, path, profile = max(found, key=lambda f: f[:2])
    return path, profile
