"""`suggest --like "nanochat --depth 20 ..."`: a nanochat `scripts/base_train.py` command line planned for a card.

What nanochat's users ask (its `--device-batch-size` help: "reduce to 16,8,4,... if you OOM"): at this depth the
largest device batch that fits, at this device batch the deepest model that fits, and the gradient accumulation
that keeps the total batch. The command is read as data (`gpt.basetrain.read_base_train`: depth -> width by the
aspect ratio and head dim, the total batch); each candidate is a dry-run estimate for the target GPU (nanochat's
recipe: bf16, compiled, Muon + AdamW; its attention kernels, FA3 where it loads) plus the dry run's planning
margin, per GPU under nanochat's ZeRO-2 sharding for --gpus N (`plan.ddp.zero2_state_bytes`, NCCL's constant,
no DDP buckets). A device batch must divide total / (max_seq_len x GPUs) (base_train asserts it), so the
candidates are those divisors; the searches bisect them (memory grows with the batch and with the depth).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from vramfit.errors import VramfitError

FIRST_WORDS = ("nanochat", "torchrun", "python", "python3", "scripts.base_train", "base_train")
MAX_DEPTH = 64  # the deepest model searched (nanochat's runs go to d32; its scaling runs to d50)
LABELS = ("largest device batch", "deepest model")


def is_base_train(text: str | Path) -> bool:
    """A base_train command line rather than a file: no such file, and it starts with nanochat, torchrun, python,
    base_train or a --flag."""
    s = str(text).strip()
    if not s or Path(s).exists():
        return False
    first = s.split()[0]
    return first in FIRST_WORDS or first.startswith("--")


def device_batches(total: int, seq_len: int, world: int) -> list[int]:
    """The device batch sizes base_train accepts: the divisors of total / (seq_len x world), ascending."""
    per = total // (seq_len * world) if total % (seq_len * world) == 0 else 0
    return [b for b in range(1, per + 1) if per % b == 0]


def largest(candidates: Sequence[int], fits: Callable[[int], bool], start: int | None = None) -> int | None:
    """The largest candidate that fits (`fits` is monotone: if a candidate fits, every smaller one does); None if
    none does. From `start` (a candidate) it gallops up, doubling the step while they fit, then bisects: few
    estimates of models far larger than the one asked about."""
    lo, hi = 0, len(candidates)  # candidates[:lo] fit, candidates[hi:] do not
    if start is not None and start in candidates:
        at = candidates.index(start)
        if not fits(candidates[at]):
            hi = at
        else:
            lo, step = at + 1, 1
            while lo < hi:
                probe = min(at + step, hi - 1)
                if not fits(candidates[probe]):
                    hi = probe
                    break
                lo, step = probe + 1, step * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            lo = mid + 1
        else:
            hi = mid
    return candidates[lo - 1] if lo else None


@dataclass
class Candidate:
    """One (depth, device batch) of a run: the run at that depth, its per-GPU need with the margin."""

    run: object  # gpt.basetrain.NanochatRun
    need: int  # bytes per GPU, estimate (+ ZeRO-2 terms)
    margin: int
    estimate: object  # the dry run's Estimate


class NanochatPlanner:
    """Estimates for one base_train run on one target: `need(depth, batch)` is cached per candidate."""

    def __init__(self, run, budget: int, margin: float, estimator, recipe, capability: tuple[int, int],  # noqa: ANN001
                 gpus: int) -> None:
        self.run, self.budget, self.margin, self.estimator = run, budget, margin, estimator
        self.recipe, self.capability, self.gpus = recipe, capability, gpus
        self._seen: dict[tuple[int, int], Candidate] = {}

    def at_depth(self, depth: int):  # noqa: ANN201 - a NanochatRun
        """The run at another depth (its width, heads and auto total batch recomputed as base_train does)."""
        from gpt.basetrain import read_base_train

        flags = {**self.run.flags, "depth": depth, "device_batch_size": 1}  # 1 divides any total base_train takes
        run = read_base_train([f"--{k.replace('_', '-')}={v}" for k, v in flags.items()], self.run.config.vocab_size)
        return replace(run, world_size=self.gpus, ignored=self.run.ignored)

    def need(self, depth: int, batch: int) -> Candidate:
        """The per-GPU bytes of (depth, device batch): the dry run's device figure, on N GPUs less the optimizer
        states the other ranks keep, plus NCCL's buffers; and the margin over it."""
        if (depth, batch) not in self._seen:
            from vramfit.dryrun.estimate import device_bytes
            from vramfit.plan.ddp import NCCL_BYTES_ASSUMED, zero2_state_bytes

            run = replace(self.at_depth(depth), device_batch_size=batch)
            mc = run.config
            est = self.estimator.estimate([run_request(run, self.recipe, "cuda", self.capability, True)])[0]
            need = device_bytes(est)
            if self.gpus > 1:
                dtype = est.dtype
                need += zero2_state_bytes(mc, self.gpus, dtype) - zero2_state_bytes(mc, 1, dtype) + NCCL_BYTES_ASSUMED
            self._seen[(depth, batch)] = Candidate(run, need, int(need * self.margin), est)
        return self._seen[(depth, batch)]

    def fits(self, depth: int, batch: int) -> bool:
        c = self.need(depth, batch)
        return c.need + c.margin <= self.budget

    def largest_batch(self, depth: int) -> int | None:
        """The largest device batch base_train accepts at `depth` that fits."""
        run = self.at_depth(depth)
        batches = device_batches(run.total_batch_size, run.config.block_size, self.gpus)
        return largest(batches, lambda b: self.fits(depth, b), start=self.run.device_batch_size)

    def deepest(self, batch: int) -> int | None:
        """The deepest model (up to MAX_DEPTH) that fits at device batch `batch` (depths whose total batch it
        divides)."""
        def accepts(d: int) -> bool:
            run = self.at_depth(d)
            return batch in device_batches(run.total_batch_size, run.config.block_size, self.gpus)

        return largest([d for d in range(1, MAX_DEPTH + 1) if accepts(d)], lambda d: self.fits(d, batch),
                       start=self.run.config.n_layer)


def run_request(run, recipe, target: str, capability: tuple[int, int],  # noqa: ANN001, ANN201
                headline_only: bool = False):
    """The dry run's request for one GPU's step of a base_train run in nanochat's loop (`gpt.nanochat_loop`): its
    model at its device batch, its micro-steps (`grad_accum_steps`, unless the recipe sets its own), no gradient
    clipping (base_train has none); the recipe's 'auto' optimizer is nanochat's Muon."""
    from vramfit.dryrun.estimate import EstimateRequest

    accum = recipe.grad_accum if recipe.grad_accum > 1 else run.grad_accum_steps
    return EstimateRequest(run.config, run.device_batch_size, replace(recipe, grad_accum=accum), target, capability,
                           grad_clip=0.0, headline_only=headline_only, loop="nanochat")


def check_loop(loop: str | None) -> None:
    """A base_train command line is trained by base_train's loop: --loop is nanochat's or not given."""
    if loop not in (None, "nanochat"):
        raise VramfitError(f"--loop {loop}: a nanochat command line is trained by nanochat's base_train.py loop "
                           "(--loop nanochat, the default for it)")


def base_train_request(like_text: str, recipe, target: str, capability: tuple[int, int],  # noqa: ANN001, ANN201
                       loop: str | None = None):
    """`estimate --like "<base_train command>"`: `run_request` of the command line's run."""
    from gpt.basetrain import read_base_train
    from gpt.errors import ConfigError

    check_loop(loop)
    try:
        run = read_base_train(like_text)
    except ConfigError as exc:
        raise VramfitError(f"--like: {exc}") from None
    return run_request(run, recipe, target, capability)


def rule_models(depths: Sequence[int], aspect_ratio: int, head_dim: int, arch: str,
                widths: Sequence[int] | None = None) -> list[tuple[int, int, int]]:
    """The (n_layer, n_head, n_embd) of each depth under nanochat's shape rule (`gpt.config.nanochat_config`: width =
    depth x aspect ratio rounded up to a multiple of head_dim, heads = width / head_dim), where `arch`'s options
    allow it (n_kv_head must divide the heads) and, with `widths`, the width lies within their range."""
    from gpt.config import nanochat_config
    from gpt.errors import ConfigError
    from vramfit.shape import Shape

    out = []
    for depth in depths:
        try:
            mc = nanochat_config(int(depth), aspect_ratio=aspect_ratio, head_dim=head_dim, max_seq_len=64,
                                 vocab_size=64)
            Shape(mc.n_layer, mc.n_head, mc.n_embd, 64, 1, 64, arch).model_config()  # the options allow it
        except (ConfigError, VramfitError):
            continue
        if widths is None or min(widths) <= mc.n_embd <= max(widths):
            out.append((mc.n_layer, mc.n_head, mc.n_embd))
    if not out:
        raise VramfitError(f"--arch {arch}: no depth of the search gives a valid model under nanochat's rule (aspect "
                           f"ratio {aspect_ratio}, head dim {head_dim})")
    return out


def base_train_row(shape, aspect_ratio: int, head_dim: int, grad_accum: int = 1) -> dict | None:  # noqa: ANN001
    """nanochat's own base_train command for a planned nanochat Shape, where base_train builds that very model (its
    depth rule, the window pattern, nanochat's defaults for every other option, its tokenizer's vocabulary) and
    trains the same tokens per step (total batch = device batch x context x grad_accum); else None."""
    from gpt.basetrain import read_base_train
    from gpt.errors import ConfigError
    from vramfit.shape import arch_options

    window = arch_options(shape.arch).get("window_pattern", "SSSL")
    total = shape.batch_size * shape.block_size * grad_accum
    flags = [f"--depth={shape.n_layer}", f"--aspect-ratio={aspect_ratio}", f"--head-dim={head_dim}",
             f"--max-seq-len={shape.block_size}", f"--window-pattern={window}",
             f"--device-batch-size={shape.batch_size}", f"--total-batch-size={total}"]
    try:
        run = read_base_train(flags)
    except ConfigError:
        return None
    if run.config != shape.model_config():
        return None
    return {"command": run.command(), "depth": shape.n_layer, "device_batch_size": shape.batch_size,
            "grad_accum_steps": run.grad_accum_steps, "total_batch_size": total, "gpus": 1, "window_pattern": window}


def train_command(run, data_dir: str, recipe: dict, rank: int) -> str:  # noqa: ANN001 - a NanochatRun
    """vramfit's command for the run on one GPU: `vramfit train --arch nanochat` with its sizes, device batch,
    gradient accumulation and recipe."""
    mc = run.config
    args = ["vramfit", "train", "--arch", "nanochat", "--n-layer", mc.n_layer, "--n-head", mc.n_head,
            "--n-embd", mc.n_embd, "--block-size", mc.block_size, "--vocab-size", mc.vocab_size,
            "--window-pattern", mc.window_pattern, "--batch-size", run.device_batch_size,
            "--grad-accum", run.grad_accum_steps]
    for key in ("dtype", "compile", "optimizer"):
        if recipe.get(key) is not None:
            value = recipe[key]
            args += [f"--{key}", str(value).lower() if isinstance(value, bool) else value]
    return shlex.join(str(a) for a in [*args, "--data-dir", data_dir, "--out-dir", f"out/nanochat-{rank}"])


def _suggestion(c: Candidate, label: str, rank: int, budget: int, data_dir: str, recipe: dict, gpus: int):  # noqa: ANN202
    from vramfit.plan.suggest import Suggestion

    run, mc = c.run, c.run.config
    command = train_command(run, data_dir, recipe, rank) if gpus == 1 else run.command(run.device_batch_size)
    nanochat = {"command": run.command(run.device_batch_size), "depth": mc.n_layer,
                "device_batch_size": run.device_batch_size, "grad_accum_steps": run.grad_accum_steps,
                "total_batch_size": run.total_batch_size, "gpus": gpus, "window_pattern": mc.window_pattern}
    return Suggestion(rank, mc.n_layer, mc.n_head, mc.n_embd, mc.block_size, run.device_batch_size, mc.vocab_size,
                      mc.n_params(), run.total_batch_size, c.need, c.margin, budget - c.need - c.margin,
                      "optimizer step" if c.estimate.peak_phase == "optimizer" else "backward",
                      breakdown(c), command, label=label, nanochat=nanochat)


def breakdown(c: Candidate) -> dict[str, int]:
    """The estimate's bytes at its peak in the parts of a fitted model's breakdown (`fit.features.BREAKDOWN`, and
    the constant: the allocator's reserve over the peak, the CUDA context, ZeRO-2's and NCCL's terms)."""
    b = c.estimate.breakdown
    parts = {"params+optimizer": b["parameters"] + b["gradients"] + b["optimizer_state"], "logits": b["logits_loss"],
             "activations": b["activations"] + b["weight_copies"] + b["inputs"] + b["temporaries"],
             "attention": b["workspace"]}
    return {"constant": c.need - sum(parts.values()), **parts}


def plan_base_train(req, like_text: str):  # noqa: ANN001, ANN201 - a PlanRequest; a Recommendation
    """`suggest --like "<base_train command>"`: the run as it is, its largest device batch and its deepest model
    on `req.vram` (see the module docstring)."""
    from gpt.basetrain import read_base_train
    from gpt.errors import ConfigError
    from vramfit.dryrun.cache import EstimateCache
    from vramfit.dryrun.estimate import parse_capability, parse_recipe
    from vramfit.dryrun.estimator import Estimator
    from vramfit.plan.budget import resolve_vram
    from vramfit.plan.profiles import local_gpu_capability
    from vramfit.plan.recommend import Recommendation
    from vramfit.plan.workflows import DEFAULT_DATA_DIR
    from vramfit.recipe import Recipe
    from vramfit.units import format_size, parse_size
    from vramfit.validation import parse_margin, planning_margin

    try:
        run = read_base_train(like_text)
    except ConfigError as exc:
        raise VramfitError(f"--like: {exc}") from None
    if req.model is not None or req.hours is not None:
        raise VramfitError("--like with a nanochat command plans by the dry run: drop --model and --hours")
    check_loop(req.loop)
    vram_b, card, label = resolve_vram(req.vram, req.device)
    budget = vram_b - parse_size(req.reserve)
    gpus = req.gpus if req.gpus > 1 else run.world_size
    if run.total_batch_size % (run.device_batch_size * run.config.block_size * gpus):
        raise VramfitError(f"--like: the total batch {run.total_batch_size} is not a multiple of device batch "
                           f"{run.device_batch_size} x {run.config.block_size} tokens x {gpus} GPUs (base_train "
                           "asserts it)")
    cap = parse_capability(req.capability or local_gpu_capability() or "8.0")
    recipe = parse_recipe(req.recipe) if req.recipe else Recipe()
    recipe = replace(recipe, optimizer="muon" if recipe.optimizer == "auto" else recipe.optimizer).resolved("cuda", cap)
    margin = planning_margin()
    rel = parse_margin(req.margin) if req.margin is not None else margin.rel
    data_dir = req.data_dir or DEFAULT_DATA_DIR
    cache = EstimateCache.user(req.cache_dir) if req.use_cache else None
    with Estimator("pool", cache=cache) as estimator:
        planner = NanochatPlanner(replace(run, world_size=gpus), budget, rel, estimator, recipe, cap, gpus)
        depth, batch = run.config.n_layer, run.device_batch_size
        as_is = planner.need(depth, batch)
        found = [("largest device batch", depth, planner.largest_batch(depth)),
                 ("deepest model", planner.deepest(batch), batch)]
        items = [_suggestion(planner.need(d, b), name, 0, budget, data_dir, recipe.to_dict(), gpus)
                 for name, d, b in found if d is not None and b is not None]
        ran, cached = estimator.ran, estimator.cached
    for rank, s in enumerate(items, start=1):
        s.rank = rank
        if gpus == 1:
            s.command = s.command.replace("out/nanochat-0", f"out/nanochat-{rank}")
    fits = as_is.need + as_is.margin <= budget
    mc = as_is.run.config
    like_line = (f"{like_text} as it is: depth {mc.n_layer} (n_layer={mc.n_layer} n_head={mc.n_head} "
                 f"n_embd={mc.n_embd}), device batch {batch} x {mc.block_size} tokens, grad accum "
                 f"{as_is.run.grad_accum_steps} on {gpus} GPU{'s' if gpus > 1 else ''}: estimated "
                 f"{format_size(as_is.need)} + margin {format_size(as_is.margin)}: "
                 + (f"fits, headroom {format_size(budget - as_is.need - as_is.margin)}" if fits else "does NOT fit"))
    plan = (f"plan for a CUDA GPU of compute capability {cap[0]}.{cap[1]}, nanochat's recipe ({recipe.dtype}, "
            f"{'compiled' if recipe.compile else 'eager'}, {recipe.optimizer}, attention {as_is.estimate.attention}), "
            "by the dry run: estimates, not measurements"
            + (f"; per GPU of {gpus} under nanochat's ZeRO-2 sharding" if gpus > 1 else ""))
    doc = {"vram_bytes": vram_b, "card": card.name if card else None, "reserve_bytes": vram_b - budget,
           "budget_bytes": budget, "objective": "nanochat", "ranking": {"objective": "nanochat", "value": "nanochat"},
           "plan": plan, "model_file": "(dry-run)",
           "device": f"CUDA sm{cap[0]}{cap[1]} (not profiled)", "recipe_key": recipe.key(),
           "recipe": recipe.to_dict(), "target": "nvml", "margin_rel": rel, "margin_source": margin.describe(),
           "data_dir": data_dir, "gpus": gpus, "strategy": "zero2" if gpus > 1 else None, "like": like_text,
           "as_is": {**as_is.run.config.to_dict(), "batch_size": batch,
                     "grad_accum_steps": as_is.run.grad_accum_steps, "predicted_bytes": as_is.need,
                     "margin_bytes": as_is.margin, "fits": fits, "headroom_bytes": budget - as_is.need - as_is.margin},
           "dry_run": {"estimates_run": ran, "from_cache": cached},
           "suggestions": [s.to_dict() for s in items]}
    out = Recommendation(doc, items, Path("(dry-run, no profile)"), vram_label=label, plan_line=plan,
                         like_line=like_line)
    out.notes.append(f"margin {rel:.1%}" + (" (--margin)" if req.margin is not None else f": {margin.describe()}"))
    out.notes.append(f"dry run: {ran} estimates run, {cached} from the cache")
    if gpus > 1:
        out.notes.append("vramfit trains Muon in one process: the commands are nanochat's (torchrun)")
    if not items:
        out.nothing_fits = (as_is.need + as_is.margin, {"depth": 1, "device_batch_size": 1})
    return out
