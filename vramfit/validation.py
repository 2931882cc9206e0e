"""The public validation set of the dry-run estimator, and the no-profile planning margin it gives.

`data/public_readings.toml` holds GPU memory readings of nanoGPT-class training copied from public sources (each
with its config, torch version, GPU, what the number is, and a quoted citation); `data/public_estimates.csv` holds
the estimator's whole-device figure for each scored row, as `experiments/bench_public.py` last computed it (the
same run writes results/bench/public-gpu.md). A reading is scored when it is an exact nvidia-smi figure of a
config the estimator models.

The margin of a plan without a GPU profile (`suggest --no-profile`) is the worst under-prediction on that table,
as a fraction of the estimate ((reading - estimate) / estimate: what a plan must add to an estimate so that the
reading fits), plus `CUSHION`. The cushion is stated, not fitted: the scored readings are of one model size (GPT-2
124M) at step 9 of each run, so a shape outside the table, or a run that fragments later, may need more than the
worst row did; 2 points is above the compiled emulation's own error against real Inductor steps on the CPU
(0.25 %, results/bench/compile-cpu.csv) and the spread of the table's per-GPU context (docs/dry-run.md).
Plain data: no torch.
"""

from __future__ import annotations

import csv
import io
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from vramfit.errors import VramfitError

MIB = 2**20
DATA = Path(__file__).resolve().parent / "data"
READINGS = DATA / "public_readings.toml"
ESTIMATES = DATA / "public_estimates.csv"
CUSHION = 0.02
KINDS = ("nvidia-smi", "nvidia-smi-approx", "max_memory_allocated", "oom")
ESTIMATE_COLUMNS = ("id", "estimate_bytes", "reading_bytes", "estimator_batch_size", "estimator_micro_steps")


@dataclass(frozen=True)
class Reading:
    """One public reading, with its source's settings merged in (the reading's own fields win)."""

    id: str
    source: str
    url: str
    gpu: str
    kind: str
    quote: str
    value_mib: int | None = None  # exact nvidia-smi figures
    value: str | None = None  # approximate readings and OOM messages, as the source says them
    gpu_total_bytes: int | None = None
    capability: str | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    model: dict | None = None
    recipe: dict | None = None
    grad_clip: float = 1.0
    torch: str = ""
    unmodelled: str | None = None
    settings: dict = field(default_factory=dict)  # the source's descriptive fields (what, code, loop, title...)

    @property
    def modelled(self) -> bool:
        return (self.unmodelled is None and self.model is not None and self.recipe is not None
                and self.batch_size is not None and self.capability is not None)

    @property
    def scored(self) -> bool:
        """An exact nvidia-smi figure of a config the estimator models: it counts toward the margin."""
        return self.modelled and self.kind == "nvidia-smi" and self.value_mib is not None

    @property
    def reading_bytes(self) -> int | None:
        return None if self.value_mib is None else self.value_mib * MIB


def _total_bytes(d: dict) -> int | None:
    if "gpu_total_mib" in d:
        return int(d["gpu_total_mib"]) * MIB
    if "gpu_total_gib" in d:
        return int(float(d["gpu_total_gib"]) * 2**30)
    return None


def load_readings(path: Path = READINGS) -> list[Reading]:
    """Every reading of the table, in file order; one clear error for a file that breaks its rules."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VramfitError(f"cannot read the validation set {path}: {str(exc).splitlines()[0]}") from None
    sources, out, seen = doc.get("sources", {}), [], set()
    for i, r in enumerate(doc.get("reading", []), start=1):
        where = f"{path}: reading {i} ({r.get('id', '?')})"
        src = sources.get(r.get("source"))
        if src is None or "url" not in src:
            raise VramfitError(f"{where}: its source {r.get('source')!r} is not a [sources.X] table with a url")
        if r.get("kind") not in KINDS or not r.get("quote") or not r.get("id") or r["id"] in seen:
            raise VramfitError(f"{where}: needs a unique id, a quote and a kind in {', '.join(KINDS)}")
        if r["kind"] == "nvidia-smi" and not isinstance(r.get("value_mib"), int):
            raise VramfitError(f"{where}: an nvidia-smi reading needs value_mib (an integer, as printed)")
        seen.add(r["id"])
        merged = {**src, **r}
        lines = r.get("lines")
        url = src["url"] + (f"#L{lines[0]}-L{lines[-1]}" if lines else "")
        out.append(Reading(
            id=r["id"], source=r["source"], url=url, gpu=r.get("gpu", "?"), kind=r["kind"], quote=r["quote"],
            value_mib=r.get("value_mib"), value=r.get("value"), gpu_total_bytes=_total_bytes(merged),
            capability=merged.get("capability"), batch_size=merged.get("batch_size"),
            grad_accum=int(merged.get("grad_accum", 1)), model=merged.get("model"), recipe=merged.get("recipe"),
            grad_clip=float(merged.get("grad_clip", 1.0)), torch=str(merged.get("torch", "")),
            unmodelled=merged.get("unmodelled"),
            settings={k: v for k, v in src.items() if isinstance(v, str)}))
    if not out:
        raise VramfitError(f"{path}: no [[reading]] rows")
    return out


def load_estimates(path: Path = ESTIMATES) -> dict[str, int]:
    """Reading id -> the estimator's whole-device bytes, from the bench's last run ('#' lines are comments)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        rows = list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))
        return {r["id"]: int(r["estimate_bytes"]) for r in rows}
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise VramfitError(f"cannot read the validation estimates {path} ({type(exc).__name__}): run "
                           "experiments/bench_public.py") from None


def under_prediction(reading: int, estimate: int) -> float:
    """What a plan must add to `estimate`, as a fraction of it, for `reading` to fit (negative: over-predicted)."""
    return (reading - estimate) / estimate


@dataclass(frozen=True)
class Margin:
    """The planning margin, and the evidence it comes from."""

    rel: float
    worst_under: float  # the worst under-prediction on the table (0 if none is under)
    worst_id: str | None
    cushion: float
    scored: int  # readings compared

    def describe(self) -> str:
        worst = (f"worst under-prediction {self.worst_under:.1%} ({self.worst_id})" if self.worst_id
                 else "no reading under-predicted")
        return (f"margin {self.rel:.1%} = {worst} on {self.scored} public nvidia-smi readings "
                f"(vramfit/data/public_readings.toml, results/bench/public-gpu.md) + {self.cushion:.1%} cushion; "
                "--margin overrides")


def planning_margin(readings: Path = READINGS, estimates: Path = ESTIMATES, cushion: float = CUSHION) -> Margin:
    """The no-profile plan's margin: the worst under-prediction of the scored readings + `cushion`."""
    est = load_estimates(estimates)
    pairs = [(r.id, under_prediction(r.reading_bytes, est[r.id])) for r in load_readings(readings)
             if r.scored and r.id in est]
    if not pairs:
        raise VramfitError(f"no scored reading of {readings} has an estimate in {estimates}: run "
                           "experiments/bench_public.py")
    worst_id, worst = max(pairs, key=lambda p: p[1])
    if worst <= 0:
        worst_id, worst = None, 0.0
    return Margin(worst + cushion, worst, worst_id, cushion, len(pairs))


def parse_margin(text: str) -> float:
    """`--margin`: '5%' or a fraction '0.05'; 0 <= margin < 100 %."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise VramfitError(f"--margin: expected a percentage like 5% or a fraction like 0.05, got {text!r}") from None
    if not 0 <= value < 1:
        raise VramfitError(f"--margin must be at least 0 and below 100%, got {text!r}")
    return value
