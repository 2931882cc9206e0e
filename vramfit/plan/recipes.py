"""`suggest --tokens-per-step N`: plan the recipe, not only the shape.

For each model shape, N tokens per optimizer step split into micro-batch x gradient accumulation x block; each
(shape, checkpointing, optimizer) keeps its largest micro-batch that fits the budget with the margin (memory rises
with the micro-batch, so a bisection finds it: each round prices one micro-batch of every open combination in one
call, which the dry run runs in parallel). What fits is ranked by predicted time per optimizer step (a profile's
throughput model), by what `--hours` buys, or, by the dry run (no measured speed), by the compute a step costs
(FLOPs, with the recompute of checkpointed blocks), then by fewer micro-steps.

The dry run estimates gradient accumulation at `min(grad_accum, ACCUM_STEADY)` micro-steps: from the third on, a
step's peak no longer changes (the gradients kept across micro-steps are all there from the second;
tests/test_recipe_plan.py checks it byte for byte), so 128 micro-steps cost the estimate of 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gpt.config import MAX_SIZES, OPTIMIZERS, count_params
from vramfit.errors import VramfitError
from vramfit.recipe import Recipe
from vramfit.shape import DEFAULT_VOCAB, KEYS, MODEL_KEYS, Shape

DEFAULT_CHECKPOINTS = ("none", "all")
ACCUM_STEADY = 3  # a step's peak is the same for every grad_accum >= this (module docstring)
MAX_DRYRUN_SHAPES = 8  # model shapes the dry run prices (each costs a few estimates per recipe)


@dataclass(frozen=True)
class RecipeAxes:
    """What `--tokens-per-step`, `--checkpoint` and `--optimizer` ask to search."""

    tokens_per_step: int
    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    optimizers: tuple[str, ...] = ()  # empty: the recipe's own optimizer
    micro_batches: tuple[int, ...] = ()  # --batch-size: the micro-batches tried (empty: every divisor)


def _items(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def recipe_axes(tokens_per_step: str | int, checkpoint: str | None = None, optimizer: str | None = None) -> RecipeAxes:
    """Validated axes: a positive token count; checkpoint values none | all | k; optimizers of gpt.config."""
    text = str(tokens_per_step).replace(",", "").replace("_", "").strip()
    if not text.isdigit() or int(text) < 1:
        raise VramfitError(f"--tokens-per-step must be a positive whole number of tokens, got {tokens_per_step!r}")
    checkpoints = []
    for value in _items(checkpoint) or DEFAULT_CHECKPOINTS:
        try:
            checkpoints.append(Recipe(checkpoint=value).checkpoint)
        except VramfitError:
            raise VramfitError(f"--checkpoint takes none, all or a block interval k, got {value!r}") from None
    optimizers = _items(optimizer)
    bad = [o for o in optimizers if o not in OPTIMIZERS or o == "auto"]
    if bad:
        raise VramfitError(f"--optimizer {bad[0]!r}: choose from {', '.join(o for o in OPTIMIZERS if o != 'auto')}")
    return RecipeAxes(int(text), tuple(dict.fromkeys(checkpoints)), tuple(dict.fromkeys(optimizers)))


def splits(tokens_per_step: int, block_size: int) -> list[tuple[int, int]]:
    """(micro-batch, grad_accum) pairs with micro-batch x grad_accum x block = tokens_per_step, smallest micro-batch
    first; empty where the block does not divide the tokens."""
    if tokens_per_step % block_size:
        return []
    seqs = tokens_per_step // block_size
    limit = MAX_SIZES["batch_size"]
    return [(b, seqs // b) for b in range(1, min(seqs, limit) + 1) if seqs % b == 0 and seqs // b <= limit]


@dataclass(frozen=True)
class Point:
    """One candidate: the shape (its batch is the micro-batch) and the recipe (its grad_accum, checkpointing and
    optimizer)."""

    shape: Shape
    recipe: Recipe

    @property
    def tokens_per_step(self) -> int:
        return self.shape.batch_size * self.shape.block_size * self.recipe.grad_accum


def candidate_groups(shapes: Sequence[Shape], axes: RecipeAxes, base: Recipe) -> list[list[Point]]:
    """Per (model shape, checkpointing, optimizer): its points by rising micro-batch (the shapes' batch is ignored).
    Checkpointing every k-th block with k >= the layers is left out (it equals k = layers)."""
    groups = []
    optimizers = axes.optimizers or (base.optimizer,)
    for shape in dict.fromkeys(shapes):
        pairs = [(b, a) for b, a in splits(axes.tokens_per_step, shape.block_size)
                 if not axes.micro_batches or b in axes.micro_batches]
        for ck in axes.checkpoints:
            if ck not in ("none", "all") and int(ck) > shape.n_layer:
                continue
            for opt in optimizers:
                recipe = replace(base, checkpoint=ck, optimizer=opt)
                groups.append([Point(shape.with_(batch_size=b), replace(recipe, grad_accum=a)) for b, a in pairs])
    return [g for g in groups if g]


def largest_fitting(groups: list[list[Point]], need: Callable[[list[Point]], Sequence[float]],
                    budget: float) -> list[tuple[int, float] | None]:
    """Per group (memory rising along it): (index, need) of its last point whose need fits `budget`, None where
    none fits; by bisection, each round pricing one point of every open group in one `need` call."""
    lo, hi = [-1] * len(groups), [len(g) for g in groups]
    needs: dict[tuple[int, int], float] = {}
    while open_ := [i for i in range(len(groups)) if hi[i] - lo[i] > 1]:
        mids = [(i, (lo[i] + hi[i]) // 2) for i in open_]
        for (i, m), n in zip(mids, need([groups[i][m] for i, m in mids]), strict=True):
            needs[i, m] = float(n)
            if n <= budget:
                lo[i] = m
            else:
                hi[i] = m
    return [(lo[i], needs[i, lo[i]]) if lo[i] >= 0 else None for i in range(len(groups))]


def step_tflop(point: Point) -> float:
    """TFLOP of one optimizer step: nanoGPT's 6 P N + 12 L C T N (`fit.throughput.time_features`) plus one more
    forward of each checkpointed block (2 x its parameters + 4 C T per token) in backward."""
    from gpt.config import checkpoint_every
    from vramfit.fit.throughput import time_features

    s, every = point.shape, checkpoint_every(point.recipe.checkpoint)
    tokens = point.tokens_per_step
    flops = float(time_features(*Shape.with_(s, batch_size=s.batch_size * point.recipe.grad_accum).as_tuple())
                  ["flops"][0])
    if every:
        per_block = count_params(1, s.n_embd, s.block_size, s.vocab_size) - count_params(0, s.n_embd, s.block_size,
                                                                                          s.vocab_size)
        blocks = -(-s.n_layer // every)  # blocks 0, k, 2k, ...
        flops += blocks * tokens * (2 * per_block + 4 * s.n_embd * s.block_size)
    return flops / 1e12


def model_shapes(space: dict) -> list[Shape]:
    """The model shapes of a `suggest` space (`plan.suggest.enumerate_space`; its batch axis is ignored)."""
    from vramfit.plan.suggest import enumerate_space

    grid = enumerate_space(**{**space, "batch_size": [1]})
    grid.pop("_n_batches")
    rows = zip(*(grid[k] for k in MODEL_KEYS), strict=True)
    return [Shape(**dict(zip(MODEL_KEYS, map(int, r), strict=True)), batch_size=1) for r in rows]


def check_shapes(shapes: list[Shape], tokens_per_step: int, dry_run: bool) -> None:
    """One clear line where no block divides the tokens, or where the dry run would price too many shapes."""
    if not any(tokens_per_step % s.block_size == 0 for s in shapes):
        blocks = sorted({s.block_size for s in shapes})
        raise VramfitError(f"--tokens-per-step {tokens_per_step:,} is not a multiple of any block size searched "
                           f"({', '.join(map(str, blocks[:6]))}{', ...' if len(blocks) > 6 else ''})")
    if dry_run and len(shapes) > MAX_DRYRUN_SHAPES:
        raise VramfitError(f"--tokens-per-step by the dry run prices each shape by estimates: {len(shapes):,} model "
                           f"shapes is more than {MAX_DRYRUN_SHAPES}; fix --n-layer, --n-head, --n-embd and "
                           "--block-size (a GPU profile searches the whole space)")


@dataclass
class Pricer:
    """How a plan prices its points: `need` (bytes with the margin) and `ms` (per optimizer step, None: no
    measured speed), with the margin and, for the dry run, the planner that counts its estimates."""

    need: Callable[[list[Point]], Sequence[float]]
    ms: Callable[[list[Point]], np.ndarray] | None
    margin_rel: float
    planner: object | None = None
    knows: Callable[[Recipe], bool] = lambda recipe: True  # the recipes it can price
    covers: Callable[[Shape], bool] = lambda shape: True  # the micro-step shapes searched (--within-measured)
    detail: Callable[[Point], tuple[str, dict]] | None = None  # the peak's regime and its breakdown by part


def dry_run_pricer(planner, margin_rel: float) -> Pricer:  # noqa: ANN001 - a plan.noprofile.DryRunPlanner
    """The dry run's device bytes of each point (accumulation at min(grad_accum, ACCUM_STEADY)) with the margin;
    the regime is the estimate's peak phase, its breakdown in the memory model's parts (the allocator's slack and
    the CUDA context in the constant)."""
    from vramfit.dryrun.estimate import device_bytes

    def estimates(points: list[Point]) -> list:
        return planner.estimates_of([(p.shape, replace(p.recipe, grad_accum=min(p.recipe.grad_accum, ACCUM_STEADY)))
                                     for p in points])

    def detail(point: Point) -> tuple[str, dict]:
        (est,) = estimates([point])
        b = est.breakdown
        parts = {"params+optimizer": ("parameters", "gradients", "optimizer_state", "weight_copies"),
                 "logits": ("logits_loss",), "activations": ("activations", "inputs"), "attention": ()}
        out = {part: sum(b.get(k, 0) for k in keys) for part, keys in parts.items()}
        return ("optimizer step" if est.peak_phase == "optimizer" else est.peak_phase,
                {"constant": device_bytes(est) - sum(out.values()), **out})

    return Pricer(lambda points: [device_bytes(e) * (1 + margin_rel) for e in estimates(points)], None, margin_rel,
                  planner, detail=detail)


def profile_pricer(profile) -> Pricer:  # noqa: ANN001 - a vramfit.fit.profile.Profile
    """A fitted profile's memory and time per optimizer step (`Profile.memory`, `Profile.step_ms`) with its margin;
    it knows the recipes `Profile.check_recipe` accepts (one profile of varied switches: any accumulation and
    checkpointing, the optimizers it measured; a profile of one recipe: that recipe)."""
    def knows(recipe: Recipe) -> bool:
        try:
            profile.check_recipe(recipe)
        except VramfitError:
            return False
        return True

    def by_recipe(predict: Callable) -> Callable[[list[Point]], np.ndarray]:  # one call per recipe of the points
        def price(points: list[Point]) -> np.ndarray:
            out = np.empty(len(points))
            for recipe in dict.fromkeys(p.recipe for p in points):
                rows = [i for i, p in enumerate(points) if p.recipe == recipe]
                shapes = {k: np.array([getattr(points[i].shape, k) for i in rows]) for k in KEYS}
                out[rows] = predict(shapes, recipe)
            return out
        return price

    def detail(point: Point) -> tuple[str, dict]:
        part = profile.model.breakdown(profile._columns(point.shape, point.recipe))[0]
        return part.pop("regime"), {k: int(v) for k, v in part.items()}

    memory = by_recipe(profile.memory)
    return Pricer(lambda points: memory(points) * (1 + profile.margin_rel),
                  by_recipe(profile.step_ms) if profile.throughput is not None else None, profile.margin_rel,
                  knows=knows, detail=detail)


def priced_groups(shapes: Sequence[Shape], axes: RecipeAxes, base: Recipe, pricer: Pricer) -> list[list[Point]]:
    """`candidate_groups` with only the points whose recipe the pricer knows."""
    groups = ([p for p in g if pricer.knows(p.recipe) and pricer.covers(p.shape)]
              for g in candidate_groups(shapes, axes, base))
    return [g for g in groups if g]


def search(shapes: Sequence[Shape], axes: RecipeAxes, base: Recipe, pricer: Pricer, budget: int,
           top: int, hours: float | None = None, gpus: int = 1) -> list:
    """The ranked suggestions (plan.suggest.Suggestion, without commands): per (shape, checkpointing, optimizer)
    its largest micro-batch that fits, ranked by ms per step (or what `hours` buys: the tokens of all `gpus`), else
    by TFLOP per step; ties: fewer micro-steps, less memory."""
    from vramfit.fit.losslaw import TOKENS_PER_PARAM
    from vramfit.plan.suggest import Suggestion

    groups = priced_groups(shapes, axes, base, pricer)
    found = [(g[f[0]], f[1]) for g, f in zip(groups, largest_fitting(groups, pricer.need, budget), strict=True) if f]
    if not found:
        return []
    points = [p for p, _ in found]
    ms = pricer.ms(points) if pricer.ms is not None else None
    tflop = np.array([step_tflop(p) for p in points])
    params = np.array([count_params(p.shape.n_layer, p.shape.n_embd, p.shape.block_size, p.shape.vocab_size)
                       for p in points], dtype=np.float64)
    tokens = np.array([p.tokens_per_step * gpus for p in points], dtype=np.float64)
    need = np.array([n for _, n in found])
    accum = np.array([p.recipe.grad_accum for p in points])
    if ms is not None and hours is not None:
        buys = -np.minimum(tokens / (ms / 1000) * hours * 3600, TOKENS_PER_PARAM * params)
        order = np.lexsort((need, accum, ms, buys))
    else:
        order = np.lexsort((need, accum, tflop) if ms is None else (need, accum, ms))
    out = []
    for rank, i in enumerate(order[:top], start=1):
        p, pred = points[i], need[i] / (1 + pricer.margin_rel)
        regime, parts = pricer.detail(p) if pricer.detail is not None else ("", {})
        out.append(Suggestion(
            rank=rank, **p.shape.as_dict(), params=int(params[i]), tokens_per_step=p.tokens_per_step,
            predicted_bytes=int(pred), margin_bytes=int(need[i] - pred), headroom_bytes=int(budget - need[i]),
            regime=regime, breakdown={k: int(v) for k, v in parts.items()}, grad_accum=p.recipe.grad_accum,
            checkpoint=p.recipe.checkpoint, optimizer=p.recipe.optimizer,
            ms_per_step=float(ms[i]) if ms is not None else None, tflop_per_step=float(tflop[i]),
            score=float(ms[i] if ms is not None else tflop[i])))
    return out


def _dry_run(req, vocab: int, notes: list[str], warnings: list[str]) -> tuple[Recipe, Pricer, str, str]:  # noqa: ANN001
    """(recipe, pricer, plan line, device) for a GPU never profiled: the dry run's estimates with the validation
    margin."""
    from vramfit.dryrun.estimate import parse_capability
    from vramfit.plan.noprofile import DryRunPlanner
    from vramfit.plan.profiles import _dry_run_recipe, local_gpu_capability
    from vramfit.validation import parse_margin, planning_margin

    cap = parse_capability(req.capability or local_gpu_capability() or "8.0")
    base = _dry_run_recipe(req, None).resolved("cuda", cap)
    margin = planning_margin()
    rel = parse_margin(req.margin) if req.margin is not None else margin.rel
    notes.append(f"margin {rel:.1%}: --margin" if req.margin is not None else margin.describe())
    warnings.append("warning: no profile of this device: predictions are dry-run estimates (allocator replay + a "
                    "published CUDA context size), not measurements (run `vramfit sweep` on the GPU)")
    planner = DryRunPlanner(base, cap, vocab, cache_dir=req.cache_dir, use_cache=req.use_cache)
    return base, dry_run_pricer(planner, rel), (
        f"plan for a CUDA GPU of compute capability {cap[0]}.{cap[1]}, {base.dtype}, "
        f"{'compiled' if base.compile else 'eager'}, by the dry run: estimates, not measurements; `vramfit sweep` "
        "on the GPU measures it"), f"CUDA sm{cap[0]}{cap[1]} (not profiled)"


def recommend_recipes(req):  # noqa: ANN001, ANN201 - a PlanRequest -> a plan.recommend.Recommendation
    """`suggest --tokens-per-step`: the recipes that reach the tokens per step within the budget, ranked (module
    docstring), each with its train command; `--recipe fixed` searches only the recipe's own checkpointing and
    optimizer."""
    from vramfit.plan.budget import resolve_vram
    from vramfit.plan.profiles import choose_model, plan_line
    from vramfit.plan.recommend import Recommendation, _plan_vocab
    from vramfit.plan.request import fill
    from vramfit.units import parse_size

    if req.like is not None:
        raise VramfitError("--tokens-per-step plans the shape flags: drop --like")
    fixed = req.recipe == "fixed"
    req = fill(replace(req, recipe=None if fixed else req.recipe), None)
    axes = replace(recipe_axes(req.tokens_per_step, req.checkpoint, req.optimizer),
                   micro_batches=tuple(req.space.get("batch_size") or ()))
    if axes.tokens_per_step % req.gpus:
        raise VramfitError(f"--tokens-per-step {axes.tokens_per_step:,} does not split evenly over --gpus "
                           f"{req.gpus} (each GPU takes the same micro-batch x accumulation)")
    per_gpu = replace(axes, tokens_per_step=axes.tokens_per_step // req.gpus)
    (vram_b, card, vram_label), reserve_b = resolve_vram(req.vram, req.device), parse_size(req.reserve)
    budget = vram_b - reserve_b
    if budget <= 0:
        raise VramfitError("the budget must be positive (is --reserve larger than --vram?)")
    space, notes, warnings = {k: req.space.get(k) for k in KEYS}, [], []
    _plan_vocab(req, space, notes)
    chosen = None if req.no_profile else choose_model(req)
    if chosen is None:
        if req.hours is not None:
            raise VramfitError("--hours needs a profiled device (its sweep measures speed): plan with a profile")
        if req.within_measured:
            raise VramfitError("--within-measured needs a profile (what a sweep measured); the dry run measures "
                               "nothing")
        base, pricer, line, device = _dry_run(req, (space["vocab_size"] or [DEFAULT_VOCAB])[0], notes, warnings)
        path, target, kind = Path("(dry-run, no profile)"), "nvml", "cuda"
    else:
        path, profile = chosen
        base, pricer = profile.recipe_of().resolved(profile.kind), profile_pricer(profile)
        line, device, target, kind = plan_line(req, profile, path, budget), profile.device, profile.target, \
            profile.kind
        if req.within_measured:
            pricer = _within_measured(pricer, space, profile.ranges, notes)
    if req.gpus > 1:
        pricer = _ddp(pricer, kind, notes)
    if fixed:
        per_gpu = replace(per_gpu, checkpoints=(base.checkpoint,), optimizers=(base.optimizer,))
    try:
        items, hours, smallest = _searched(req, per_gpu, base, pricer, (space, budget, notes), chosen)
    finally:
        if pricer.planner is not None:
            pricer.planner.__exit__(None, None, None)
            warnings += pricer.planner.warnings
            notes.append(pricer.planner.summary())
    by = ("what the hours buy" if hours is not None else "predicted ms per optimizer step") \
        if pricer.ms is not None else "TFLOP per optimizer step (no measured speed), then fewer micro-steps"
    doc = {"vram_bytes": vram_b, "card": card.name if card else None, "reserve_bytes": reserve_b,
           "budget_bytes": budget, "objective": "time", "model_file": str(path),
           "ranking": {"objective": "time", "value": by, "text": f"{axes.tokens_per_step:,} tokens per step, by {by}"},
           "device": device, "recipe_key": base.key(), "recipe": base.to_dict(), "target": target,
           "margin_rel": pricer.margin_rel, "data_dir": req.data_dir, "gpus": req.gpus,
           "strategy": "ddp" if req.gpus > 1 else None,
           "tokens_per_step": axes.tokens_per_step, "plan": line, "suggestions": [s.to_dict() for s in items]}
    doc.update({"hours": hours} if hours is not None else {})
    doc.update({"dry_run": pricer.planner.counts()} if pricer.planner is not None else {})
    return Recommendation(doc, items, path, notes=notes, warnings=warnings, vram_label=vram_label, plan_line=line,
                          nothing_fits=smallest)


def _within_measured(pricer: Pricer, space: dict, ranges: dict | None, notes: list[str]) -> Pricer:
    """`--within-measured`: each shape axis restricted to what the profile measured, and the micro-steps too (their
    micro-batch, tokens and parameters: `fit.coverage.check`)."""
    from vramfit.fit.coverage import check
    from vramfit.plan.recommend import _within_measured as restrict
    from vramfit.plan.recommend import _within_note

    notes.append(_within_note(ranges))
    batch = space.pop("batch_size", None)  # the micro-batches: every divisor of the tokens, then checked
    if (why := restrict(space, ranges)) is not None:
        raise VramfitError(why)
    space["batch_size"] = batch
    return replace(pricer, covers=lambda shape: check(ranges, shape.as_dict()).inside)


def _ddp(pricer: Pricer, kind: str, notes: list[str]) -> Pricer:
    """Per GPU under DDP (`--gpus N`: each GPU runs micro-batch x accumulation of the tokens / N): the single-GPU
    price + the DDP term (`plan.ddp.DdpTerm` for the device: gradient buckets per parameter, NCCL's constant)."""
    from vramfit.plan.ddp import DdpTerm

    term = DdpTerm.for_device(kind)
    notes.append(f"per GPU: + {term.bytes_per_param:g} B per parameter ({term.source}) + "
                 f"{term.comm_bytes / 2**20:,.0f} MiB ({term.comm_source}); time per step: one GPU's share, "
                 "communication not priced")

    def ddp(p: Point) -> float:
        s = p.shape
        return term.bytes_per_param * count_params(s.n_layer, s.n_embd, s.block_size, s.vocab_size) + term.comm_bytes

    def need(points: list[Point]) -> np.ndarray:
        extra = np.array([ddp(p) for p in points])
        return np.asarray(pricer.need(points), dtype=np.float64) + extra * (1 + pricer.margin_rel)

    def detail(point: Point) -> tuple[str, dict]:
        regime, parts = pricer.detail(point) if pricer.detail is not None else ("", {})
        return regime, {**parts, "ddp": int(ddp(point))}

    return replace(pricer, need=need, detail=detail)


def _searched(req, axes: RecipeAxes, base: Recipe, pricer: Pricer, where: tuple, chosen) -> tuple:  # noqa: ANN001
    """(the search's suggestions with their train commands, the hours ranked by or None, and where nothing fits
    what the least demanding point needs); `where`: the space, the budget and the notes to add to."""
    from vramfit.plan.ddp import multi_gpu
    from vramfit.plan.request import time_args
    from vramfit.plan.workflows import train_command

    space, budget, notes = where
    if pricer.planner is not None and base.compile and set(axes.checkpoints) - {"none"}:
        notes.append("checkpointing under torch.compile is not emulated by the dry run: searched without it "
                     "(--recipe ...,compile=false searches it eager)")
        axes = replace(axes, checkpoints=("none",))
    shapes = model_shapes(space)
    check_shapes(shapes, axes.tokens_per_step, pricer.planner is not None)
    groups = candidate_groups(shapes, axes, base)
    if not groups:
        raise VramfitError(f"no --batch-size given divides the {axes.tokens_per_step:,} tokens per step into whole "
                           "micro-steps of a block searched")
    unknown = [p.recipe for g in groups for p in g if not pricer.knows(p.recipe)]
    if unknown:
        why = _why_unknown(chosen[1], unknown[0])
        if not priced_groups(shapes, axes, base, pricer):
            raise VramfitError(f"{why}; no point of --tokens-per-step {axes.tokens_per_step:,} is left (or plan by "
                               "the dry run: --no-profile)")
        notes.append(f"not searched: {why}")
    hours = time_args(req.hours, req.rank, req.loss_law, req.data_dir).hours if req.hours is not None else None
    items = search(shapes, axes, base, pricer, budget, req.top, hours, req.gpus)
    for s in items:
        recipe = replace(base, optimizer=s.optimizer, grad_accum=s.grad_accum, checkpoint=s.checkpoint)
        s.command = train_command(s, recipe.to_dict(), req.data_dir)
    items = multi_gpu(items, req.gpus)  # tokens per step of all GPUs, the command launched with --nproc
    return items, hours, None if items else _smallest(shapes, axes, base, pricer)


def _why_unknown(profile, recipe: Recipe) -> str:  # noqa: ANN001 - a Profile
    try:
        profile.check_recipe(recipe)
    except VramfitError as exc:
        return str(exc)
    return ""


def _smallest(shapes: Sequence[Shape], axes: RecipeAxes, base: Recipe, pricer: Pricer) -> tuple[int, dict]:
    """The least memory any recipe searched needs (at micro-batch 1) and its point."""
    points = [g[0] for g in priced_groups(shapes, axes, base, pricer)]
    needs = list(pricer.need(points))
    point = points[needs.index(min(needs))]
    need = int(math.ceil(min(needs)))
    return need, {**point.shape.as_dict(), "grad_accum": point.recipe.grad_accum, "checkpoint": point.recipe.checkpoint,
                  "optimizer": point.recipe.optimizer}
