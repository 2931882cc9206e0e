"""Dry-run estimates: a training step's peak memory with no GPU (`vramfit estimate`).

The real `Trainer.step` runs twice (so AdamW state exists) under `FakeTensorMode` on fake CPU tensors with a
live-storage tracker; for a CUDA target the GPU's attention kernel, autocast policy, optimizer implementation and
512-byte allocator rounding are emulated (see `vramfit.dryrun.fake_step`). The result is what
`torch.cuda.max_memory_allocated()` would report after two steps. For a CUDA target the step's allocation trace is
replayed through a model of the caching allocator (`vramfit.dryrun.allocator`: peak reserved) and the CUDA context
is added from a table of measured sizes (`vramfit.dryrun.context`): the whole-device figure nvidia-smi shows.

The types every caller shares (the rest of vramfit goes through `vramfit.dryrun.estimator.Estimator`):
- `EstimateRequest`: what to estimate (model and batch, recipe, target, compute capability);
- `Estimate`: the result; `estimate_step(request)` makes one in this process (the engine);
- `device_bytes(estimate)`: peak reserved plus the CUDA context, what nvidia-smi shows (`suggest --no-profile`);
- `target_bytes(estimate, target)`: the figure that matches a fit target (nvml, reserved, allocated, tracked).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gpt.config import ADAMW, LOOPS, GPTConfig, check_batch_size, resolve_recipe
from vramfit.errors import VramfitError
from vramfit.recipe import Recipe
from vramfit.units import format_size

TARGETS = ("cuda", "cpu")
# the dry run replays every layer's ops under fake tensors (~0.3-0.7 s a layer on a 2-core VM): 512 layers (5x
# GPT-3's 96) stay within minutes; deeper is refused at once rather than running past the child's timeout
MAX_DRYRUN_LAYERS = 512

CUDA_CONTEXT_BYTES = 512 * 2**20
"""Fallback for an estimate without an allocator replay (e.g. made by an older vramfit): context + workspaces as
one constant. Current estimates use `vramfit.dryrun.context` (a table with a source per row)."""

ALLOCATOR_SLACK = 0.05
"""Fallback reserved-over-allocated fraction for an estimate without an allocator replay."""


@dataclass
class Estimate:
    """A dry-run estimate of one training point's peak memory (bytes)."""

    peak_bytes: int
    peak_phase: str  # data | forward | backward | optimizer
    peak_op: str  # aten op, and the module (forward) or autograd node (backward) that ran it
    peak_step: int  # 1 or 2: the first step allocates AdamW state, the second starts with it
    breakdown: dict[str, int]  # bytes live at the peak per category; sums to peak_bytes
    step_peaks: list[int]
    steady_bytes: int  # live after the steps: parameters + optimizer state
    target: str
    compute_capability: tuple[int, int] | None
    dtype: str
    optimizer: str
    attention: str  # the SDPA kernel emulated (cuda) or requested (cpu)
    rounding: int
    model_config: dict
    batch_size: int
    recipe: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    allocator: dict = field(default_factory=dict)  # cuda: the caching-allocator replay (peaks, ratio, conf)
    process: dict = field(default_factory=dict)  # cuda: reserved + context = device bytes, with the context's source
    compiled: bool = False  # the figures above are the torch.compile emulation's (the recipe compiles)
    modes: dict = field(default_factory=dict)  # "eager" and, when compiled, "compiled": peak, phase, op, reserved
    cuda_build: dict = field(default_factory=dict)  # cuda: the CUDA / cuDNN versions the SDPA kernel choice followed
    loop: str = "vramfit"  # the training loop stepped (EstimateRequest.loop)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Estimate:
        names = {f.name for f in fields(cls)}
        out = {k: v for k, v in d.items() if k in names}
        if out.get("compute_capability") is not None:
            out["compute_capability"] = tuple(out["compute_capability"])
        return cls(**out)


@dataclass(frozen=True)
class EstimateRequest:
    """One dry-run estimate to make: the model and batch, the recipe, the target ('cuda': emulated, or 'cpu') and
    its compute capability. `loop`: the training loop stepped (vramfit's `Trainer.step`, nanoGPT's train.py:
    `gpt.nanogpt_loop`, or nanochat's base_train.py: `gpt.nanochat_loop`). `headline_only` skips the eager run
    beside a compiled one (planners use only the headline figure: half the time). Checked when made: a bad
    request fails in the caller's process."""

    model: GPTConfig
    batch_size: int
    recipe: Recipe = Recipe()
    target: str = "cuda"
    capability: tuple[int, int] = (8, 0)
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1
    headline_only: bool = False
    loop: str = "vramfit"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capability", parse_capability(self.capability))
        if self.target not in TARGETS:
            raise VramfitError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        check_loop(self.loop, self.model, self.recipe, self.target, self.capability)
        check_batch_size(self.batch_size)
        if self.model.n_layer > MAX_DRYRUN_LAYERS:
            raise VramfitError(f"n_layer {self.model.n_layer} is beyond the dry run's limit of {MAX_DRYRUN_LAYERS} "
                               "layers (it replays every layer); `vramfit predict` takes any depth")
        from vramfit.dryrun.allocator import parse_alloc_conf

        parse_alloc_conf(self.recipe.alloc_conf)  # a bad PYTORCH_CUDA_ALLOC_CONF is the caller's error, said here

    def to_dict(self) -> dict:
        """Plain JSON types: the child process's request and the cache's key."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**d, "model": self.model.to_dict(), "recipe": self.recipe.to_dict(),
                "capability": list(self.capability)}

    @classmethod
    def from_dict(cls, d: dict) -> EstimateRequest:
        return cls(**{**d, "model": GPTConfig.from_dict(d["model"]), "recipe": Recipe.from_dict(d["recipe"]),
                      "capability": tuple(d["capability"])})

    def key(self) -> str:
        """The request as canonical JSON (equal requests, equal keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)


def check_loop(loop: str, model: GPTConfig, recipe: Recipe, target: str = "cuda",
               capability: tuple[int, int] | None = None) -> None:
    """A loop the dry run steps, with what that loop can run: nanoGPT's train.py trains its GPT-2 with the default
    attention and no activation checkpointing, and picks its optimizer itself (`gpt.config.nanogpt_recipe`)."""
    if loop not in LOOPS:
        raise VramfitError(f"unknown loop {loop!r}; choose one of {', '.join(LOOPS)}")
    if loop == "nanochat" and model.arch != "nanochat":
        raise VramfitError(f"nanochat's base_train.py trains nanochat's GPT, not arch {model.arch!r}: drop --loop "
                           "nanochat, or estimate vramfit's loop (--loop vramfit)")
    if loop != "nanogpt":
        return
    resolve_recipe(recipe.dtype, recipe.compile, recipe.optimizer, target, capability, loop=loop)
    refused = [(model.arch != "gpt2", f"arch {model.arch!r}"), (recipe.checkpoint != "none",
               f"checkpoint = {recipe.checkpoint!r}"), (recipe.attn_kernel != "default",
               f"attn_kernel = {recipe.attn_kernel!r}")]
    for bad, what in refused:
        if bad:
            raise VramfitError(f"nanoGPT's train.py has no {what} (its GPT-2, default attention, no activation "
                               "checkpointing): drop it, or estimate vramfit's loop (--loop vramfit)")


def parse_capability(text: str | tuple[int, int]) -> tuple[int, int]:
    """'8.0', '8,6', 'sm90', '90' or (8, 0) -> (major, minor)."""
    if isinstance(text, tuple):
        major, minor = text
    else:
        s = str(text).strip().lower().removeprefix("sm").removeprefix("_")
        try:
            if "." in s or "," in s:
                major, minor = (int(p) for p in s.replace(",", ".").split("."))
            elif s.isdigit() and len(s) >= 2:
                major, minor = int(s[:-1]), int(s[-1])
            else:
                raise ValueError
        except ValueError:
            raise VramfitError(f"cannot read compute capability {text!r} (examples: 8.0, 8.6, sm90)") from None
    if not (3 <= major <= 20 and 0 <= minor <= 9):
        raise VramfitError(f"compute capability {major}.{minor} is out of range")
    return major, minor


def parse_recipe(text: str | None) -> Recipe:
    """A recipe from a TOML/JSON file (top-level keys or a [recipe] table) or inline 'key=value,key=value'."""
    if not text:
        return Recipe()
    path = Path(text)
    if path.is_file():
        try:
            raw = path.read_text(encoding="utf-8")
            doc = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise VramfitError(f"cannot read recipe {path}: {str(exc).splitlines()[0]}") from None
        d = doc.get("recipe", doc) if isinstance(doc, dict) else None
        if not isinstance(d, dict):
            raise VramfitError(f"{path}: a recipe is a table of dtype, compile, optimizer, attn_kernel, alloc_conf")
        return Recipe.from_dict(d)
    if "=" not in text:
        raise VramfitError(f"no recipe file {text!r} (or give inline settings like dtype=bfloat16,optimizer=fused)")
    d: dict = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or not key:
            raise VramfitError(f"bad recipe setting {part!r} (expected key=value)")
        if key == "compile":
            low = value.lower()
            if low not in ("true", "false", "none", "auto", "1", "0"):
                raise VramfitError(f"recipe compile must be true, false or auto, got {value!r}")
            d[key] = None if low in ("none", "auto") else low in ("true", "1")
        else:
            d[key] = value
    return Recipe.from_dict(d)


def estimate_step(request: EstimateRequest) -> Estimate:
    """Peak memory of two real `Trainer.step` calls under fake tensors, in this process: the engine behind every
    `vramfit.dryrun.estimator.Estimator` (in process, its child, its pool's workers).

    Any shape works (fake tensors hold no data). Raises `ConfigError`/`VramfitError` for invalid inputs."""
    from vramfit.dryrun.fake_step import run_step

    d = run_step(request).to_dict()
    keep = {f.name for f in fields(Estimate)}
    d = {k: v for k, v in d.items() if k in keep}
    cap = request.capability
    if request.target == "cuda" and d.get("allocator"):
        from vramfit.dryrun.context import process_memory

        d["process"] = process_memory(cap, d["allocator"]["peak_reserved"])
        for mode in d.get("modes", {}).values():  # each mode's whole-device figure, for side-by-side display
            if "peak_reserved" in mode:
                mode["device_bytes"] = process_memory(cap, mode["peak_reserved"])["device_bytes"]
    est = Estimate(**d, compute_capability=cap if request.target == "cuda" else None,
                   model_config=request.model.to_dict(), batch_size=request.batch_size, recipe=request.recipe.to_dict(),
                   loop=request.loop)
    return Estimate.from_dict(json.loads(json.dumps(est.to_dict())))  # plain JSON types: equal to a child's or cached


def device_bytes(estimate: Estimate) -> int:
    """What the device would show for this point (nvidia-smi): peak reserved + the CUDA context; the tracked peak
    on the CPU."""
    if estimate.target != "cuda":
        return estimate.peak_bytes
    if estimate.process:
        return int(estimate.process["device_bytes"])
    return int(estimate.peak_bytes * (1 + ALLOCATOR_SLACK)) + CUDA_CONTEXT_BYTES


def target_bytes(estimate: Estimate, target: str) -> int:
    """The estimate in the units of a fit target: nvml (whole device), reserved, allocated (the allocator's own
    count, with unsplit remainders), or the tracked peak (tracked, rss, and any target on the CPU)."""
    alloc = estimate.allocator if estimate.target == "cuda" else {}
    if target == "nvml":
        return device_bytes(estimate)
    if target == "reserved" and alloc:
        return int(alloc["peak_reserved"])
    if target == "allocated" and alloc:
        return int(alloc["peak_allocated"])
    return estimate.peak_bytes


def format_estimate(est: Estimate) -> str:
    """A short human-readable report."""
    mc = est.model_config
    where = (f"cuda sm{est.compute_capability[0]}{est.compute_capability[1]}" if est.compute_capability
             else est.target)
    optimizer = f"{est.optimizer} AdamW" if est.optimizer in ADAMW else est.optimizer
    accum = int(est.recipe.get("grad_accum", 1))
    steps = f" x {accum} micro-steps" if accum > 1 else ""
    loop = {"nanogpt": ", nanoGPT's train.py loop", "nanochat": ", nanochat's base_train.py loop"}.get(est.loop, "")
    lines = [
        f"GPT {mc['n_layer']}L {mc['n_head']}H {mc['n_embd']}C, block {mc['block_size']}, vocab {mc['vocab_size']}, "
        f"batch {est.batch_size}{steps} on {where}{loop}: {est.dtype}, {optimizer}, {est.attention} attention",
        f"peak {format_size(est.peak_bytes)} in {est.peak_phase} (step {est.peak_step}) at {est.peak_op}",
    ]
    for name, n in est.breakdown.items():
        if n:
            share = n / est.peak_bytes if est.peak_bytes else 0.0
            lines.append(f"  {name:<16} {format_size(n):>11}  {share:6.1%}")
    if est.target == "cuda" and est.allocator:
        a, p = est.allocator, est.process
        lines.append(f"caching allocator: peak allocated {format_size(a['peak_allocated'])}, peak reserved "
                     f"{format_size(a['peak_reserved'])} (reserved/allocated {a['ratio']:.3f}, {a['segments']} "
                     f"segments)")
        lines.append(f"device total (nvidia-smi) ~{format_size(device_bytes(est))} = reserved + "
                     f"{format_size(p['context_bytes'])} CUDA context ({p['context_source'].split(':')[0]})")
    elif est.target == "cuda":
        lines.append(f"device total ~{format_size(device_bytes(est))} (+{ALLOCATOR_SLACK:.0%} allocator slack, "
                     f"+{format_size(CUDA_CONTEXT_BYTES)} CUDA context and workspaces)")
    if len(est.modes) > 1:
        lines.append(_modes_table(est))
    lines.extend(f"note: {n}" for n in est.notes)
    lines.append(f"({est.seconds:.2f} s)")
    return "\n".join(lines)


def _modes_table(est: Estimate) -> str:
    """The eager and compiled steps side by side (peak, and on CUDA reserved and device totals)."""
    cuda = est.target == "cuda"
    head = f"  {'step':<9} {'peak':>11} {'reserved':>11} {'device':>11}  peak at" if cuda else \
        f"  {'step':<9} {'peak':>11}  peak at"
    rows = ["eager vs compiled (torch.compile emulated):", head]
    for name, m in est.modes.items():
        cols = f"  {name:<9} {format_size(m['peak_bytes']):>11}"
        if cuda:
            cols += f" {format_size(m.get('peak_reserved', 0)):>11} {format_size(m.get('device_bytes', 0)):>11}"
        rows.append(f"{cols}  {m['peak_phase']}: {m['peak_op']}")
    e, c = est.modes["eager"]["peak_bytes"], est.modes["compiled"]["peak_bytes"]
    rows.append(f"  compiled/eager {c / e:.3f}" if e else "")
    return "\n".join(rows)
