"""The `vramfit suggest` and `vramfit predict` workflows: budget, the corpus's vocabulary, the model (a profile's
model file, or the dry-run model for a GPU never profiled), the search, the multi-GPU term, the check by dry run,
and the JSON document that `train --suggestion N` reads. The CLI only parses and prints."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vramfit.corpus import corpus_tokens, corpus_vocab
from vramfit.errors import VramfitError
from vramfit.fit.profile import Profile
from vramfit.plan.profiles import plan_line, plan_profile
from vramfit.plan.request import PlanRequest, as_is, fill, parse_int_options, time_args
from vramfit.plan.suggest import TimeBudget
from vramfit.shape import DEFAULT_VOCAB, GPT2, KEYS, Shape
from vramfit.units import parse_size

__all__ = ["PlanRequest", "Recommendation", "parse_int_options", "predict_one", "recommend", "time_args"]

if TYPE_CHECKING:
    from vramfit.plan.like import Like


@dataclass
class Recommendation:
    """The outcome: the document (`suggest --json`), the ranked suggestions, and what to tell the user."""

    doc: dict
    items: list
    model_path: Path
    notes: list[str] = field(default_factory=list)  # informational lines
    warnings: list[str] = field(default_factory=list)  # for stderr
    time: TimeBudget | None = None  # suggest --hours
    nothing_fits: tuple[int, dict] | None = None  # (bytes the smallest config needs, that config)
    vram_label: str = ""  # the budget as the user named it: a size, or a card with its NVML total
    plan_line: str = ""  # the first line: what the plan is for (device, recipe, profile or dry run)
    like_line: str = ""  # with --like: the config as it is, and whether it fits


def _plan_vocab(req: PlanRequest, space: dict, notes: list[str]) -> None:
    """Plan for the corpus the printed commands train on (its vocabulary), unless --vocab says otherwise."""
    found = corpus_vocab(req.data_dir)
    if found is None:
        return
    vocab, source = found
    if space["vocab_size"] is None:
        space["vocab_size"] = [vocab]
        notes.append(f"vocab {vocab}: from {source} (--vocab to override)")
    elif min(space["vocab_size"]) < vocab:
        raise VramfitError(f"--vocab {min(space['vocab_size'])} is smaller than the vocabulary of --data-dir "
                           f"{req.data_dir} ({vocab}): training would fail")


def _time_budget(req: PlanRequest) -> TimeBudget | None:
    """--hours / --rank / --loss-law validated (None without --hours)."""
    if req.hours is None:
        return None
    time = time_args(req.hours, req.rank, req.loss_law, req.data_dir)
    if req.no_profile:
        raise VramfitError("--hours needs a profiled device (its sweep measures speed); drop --no-profile")
    if req.gpus > 1:
        raise VramfitError("--hours plans one GPU for now; drop --gpus or --hours")
    return time


@dataclass
class Plan:
    """What the search runs on: the space of the flags, the time budget, the profile and where it came from, the
    dry-run planner (None with a profile), and with --like the file and the config as it is."""

    space: dict
    time: TimeBudget | None
    profile: Profile
    path: Path
    planner: object | None = None
    like: Like | None = None
    as_is: Shape | None = None

    def searches(self, req: PlanRequest) -> dict[str | None, dict]:
        """The searches by label (None: the one plain search): space and objective of each."""
        from vramfit.plan.like import like_searches

        if self.like is None:
            family = req.family
            rule = {} if family == GPT2 else {"arch": family, "rule": (req.aspect_ratio, req.head_dim)}
            return {None: dict(self.space, objective=req.objective, **rule)}
        return like_searches(self.as_is, req.objective, by_time=self.time is not None)


def recommend(req: PlanRequest) -> Recommendation:
    """Configs that fit `req.vram - req.reserve` with the model's margin, ranked, each with its train command;
    with `req.like`, the config as it is and what fits close to it (`plan.like.like_searches`)."""
    from vramfit.plan.budget import resolve_vram
    from vramfit.plan.like import read_like
    from vramfit.plan.nanochat import is_base_train, plan_base_train

    if req.like is not None and is_base_train(req.like):  # a nanochat command line: planned by the dry run
        return plan_base_train(req, str(req.like))
    if req.family != GPT2:
        _check_family_request(req)
    if req.tokens_per_step is not None:
        from vramfit.plan.recipes import recommend_recipes

        return recommend_recipes(req)
    if req.checkpoint is not None or req.optimizer is not None:
        raise VramfitError("--checkpoint and --optimizer are searched for a --tokens-per-step: give it too")
    if req.recipe == "fixed":  # today's search keeps one recipe anyway
        req = replace(req, recipe=None)
    (vram_b, card, vram_label), reserve_b = resolve_vram(req.vram, req.device), parse_size(req.reserve)
    like = read_like(req.like) if req.like is not None else None
    req = fill(req, like)
    space = {k: req.space.get(k) for k in KEYS}
    if like is not None and space["vocab_size"] is None:
        space["vocab_size"] = [like.shape.vocab_size]  # its own, else its corpus's, else GPT-2's
    notes: list[str] = []
    warnings: list[str] = []
    _plan_vocab(req, space, notes)
    if req.family != GPT2:
        if space["vocab_size"] is None:
            space["vocab_size"] = [NANOCHAT_VOCAB]
            notes.append(f"vocab {NANOCHAT_VOCAB}: nanochat's tokenizer (--vocab or --data-dir to override)")
        notes.append(f"{req.family}: width = depth x {req.aspect_ratio} rounded up to a multiple of {req.head_dim}, "
                     f"heads = width / {req.head_dim} (nanochat's rule; --aspect-ratio, --head-dim)")
    config = as_is(like, space) if like is not None else None
    time = _time_budget(req)
    from vramfit.validation import parse_margin

    override = parse_margin(req.margin) if req.margin is not None else None  # a bad value fails before any work
    path, profile, planner = plan_profile(req, like, (space["vocab_size"] or [DEFAULT_VOCAB])[0], warnings)
    line = plan_line(req, profile, path, vram_b - reserve_b, getattr(planner, "loop", "vramfit"))
    margin_source = planner.margin.describe() if planner is not None and planner.margin is not None else None
    if override is not None:
        margin_source = f"margin {override:.1%}: --margin (instead of {profile.margin_rel:.1%})"
        profile = replace(profile, margin_rel=override)
    if margin_source:
        notes.append(margin_source)
    if req.within_measured:
        notes.append(_within_note(profile.ranges))
    try:
        out = _search(req, Plan(space, time, profile, path, planner, like, config), vram_b, reserve_b,
                      (card, vram_label))
    finally:
        if planner is not None:
            planner.__exit__(None, None, None)
            warnings += planner.warnings
            notes.append(planner.summary())
    out.notes, out.warnings, out.plan_line = notes + out.notes, warnings + out.warnings, line
    out.doc["plan"] = line
    if margin_source:
        out.doc["margin_source"] = margin_source
    if planner is not None:
        out.doc["dry_run"] = planner.counts()
    return out


NANOCHAT_VOCAB = 32768  # nanochat's tokenizer (`gpt.basetrain.read_base_train`'s default)


def _check_family_request(req: PlanRequest) -> None:
    """What planning another family from a profile does not take: one VramfitError naming it."""
    given = [f"--{k.replace('_', '-')}" for k in ("n_head", "n_embd") if req.space.get(k) is not None]
    if given:
        raise VramfitError(f"--arch {req.family}: the width and heads follow nanochat's rule from the depth "
                           f"(--n-layer): set --aspect-ratio and --head-dim instead of {given[0]}")
    for flag, value in (("--like", req.like), ("--tokens-per-step", req.tokens_per_step)):
        if value is not None:
            raise VramfitError(f"--arch {req.family} does not take {flag} (GPT-2's); for a nanochat run, --like "
                               "\"nanochat --depth N\" plans it by the dry run")
    if req.gpus > 1:
        raise VramfitError(f"--arch {req.family} plans one GPU (vramfit trains Muon in one process); on N GPUs, --like "
                           "\"torchrun --nproc_per_node=N -m scripts.base_train ...\" plans nanochat's ZeRO-2")
    if req.aspect_ratio < 1 or req.head_dim < 1:
        raise VramfitError("--aspect-ratio and --head-dim must be >= 1")


def _within_note(ranges: dict | None) -> str:
    if not ranges:
        raise VramfitError("--within-measured: this model has no measured ranges (fit it again with this vramfit, "
                           "or plan with the dry run)")
    return "within the measured ranges: " + ", ".join(
        f"{k} {ranges[k][0]:g}-{ranges[k][1]:g}" for k in (*KEYS, "params", "tokens"))


def _within_measured(space: dict, ranges: dict) -> str | None:
    """Restrict each axis of the search space to the range the model was measured on (`fit.coverage`); the error
    when an axis has no value left, else None."""
    from vramfit.plan.suggest import DEFAULT_SPACE

    for k in KEYS:
        lo, hi = ranges[k]
        default = {"n_head": list(range(int(lo), int(hi) + 1)), "vocab_size": [int(hi)]}.get(k) or DEFAULT_SPACE[k]
        values = [v for v in (space.get(k) or default) if lo <= v <= hi]
        if not values:
            return f"--within-measured: no {k} of the search space lies in the measured {lo:g}-{hi:g}"
        space[k] = values
    return None


def _flag_extrapolations(items: list, ranges: dict | None, margin: float, budget: int) -> list[str]:
    """Mark suggestions outside the measured ranges (per axis, params, tokens): the widened margin they need and
    whether they still fit with it; the lines that say so."""
    from vramfit.fit.coverage import check

    lines = []
    for s in items:
        ext = check(ranges, s.shape.as_dict())
        s.extrapolated = sorted(ext.outside)
        if ext.inside:
            continue
        need = s.predicted_bytes * (1 + ext.widened_margin(margin))
        verdict = "fits" if need <= budget else "may NOT fit"
        lines.append(f"#{s.rank} is an extrapolation ({ext.describe()}): with the margin widened to "
                     f"{ext.widened_margin(margin):.1%} it {verdict}; check it first: {_check_command(s.shape)}")
    return lines


def _check_command(shape: Shape) -> str:
    """The command that checks a config before training it: its dry run (GPT-2), or a measured point (a family the
    `estimate` flags do not name)."""
    if shape.arch == GPT2:
        return "vramfit estimate " + " ".join(shape.flags())
    return f"vramfit sweep {' '.join(shape.flags())} --arch {shape.arch}"


def _timed(items: list, model, margin: float, budget: int, time) -> list:  # noqa: ANN001 - a memory model
    """`items` with what the time buys each (the search at its exact shape, ranked by time)."""
    from vramfit.plan.suggest import suggest

    for s in items:
        t = suggest(model, margin, budget, top=1, time=time, arch=s.arch,
                    **{k: [v] for k, v in s.shape.as_dict().items()})[0]
        s.ms_per_iter, s.tokens_per_s, s.tokens_in_budget = t.ms_per_iter, t.tokens_per_s, t.tokens_in_budget
        s.hours_to_optimal, s.predicted_loss, s.score = t.hours_to_optimal, t.predicted_loss, t.score
    return items


def _found(req: PlanRequest, plan: Plan, model, budget: int, time) -> tuple[list, dict, dict]:  # noqa: ANN001
    """Each search's suggestions (labelled, re-checked by the dry run where there is one), in search order; the
    ranking (the last search's) and the space of the first search (for `smallest_need`)."""
    from vramfit.plan.suggest import suggest

    items, ranking, first = [], {}, None
    for label, search in plan.searches(req).items():
        search = dict(search)
        objective = search.pop("objective")
        if req.within_measured and (why := _within_measured(search, plan.profile.ranges)) is not None:
            if label is None:
                raise VramfitError(why)
            continue  # nothing of this search close to the config lies inside what was measured
        if "rule" in search:  # another family: its models from the depths by its own rule
            from vramfit.plan.nanochat import rule_models
            from vramfit.plan.suggest import DEFAULT_SPACE

            widths, _ = search.pop("n_embd"), search.pop("n_head")
            search["models"] = rule_models(search.pop("n_layer") or DEFAULT_SPACE["n_layer"], *search.pop("rule"),
                                           search["arch"], widths if req.within_measured else None)
        first = search if first is None else first
        timed = time if label in (None, "largest model", "model close to it") else None
        found = suggest(model, plan.profile.margin_rel, budget, objective=objective, top=req.top,
                        min_batch=req.min_batch, time=timed, corpus_tokens=corpus_tokens(req.data_dir), **search)
        ranking = found.ranking
        if plan.planner is not None:
            found = plan.planner.verify(found, budget, plan.profile.margin_rel)
        if time is not None and timed is None:
            found = _timed(found, model, plan.profile.margin_rel, budget, time)
        for s in found:
            s.label = label
        items += found
    return items, ranking, first if first is not None else dict(plan.space)


def _search(req: PlanRequest, plan: Plan, vram_b: int, reserve_b: int, vram_info: tuple) -> Recommendation:
    """The searches, the dry run's re-check, the multi-GPU term, the commands and the document."""
    from vramfit.plan.ddp import for_strategy, multi_gpu
    from vramfit.plan.like import like_command
    from vramfit.plan.suggest import smallest_need
    from vramfit.plan.workflows import train_command

    profile, like = plan.profile, plan.like
    margin, recipe_d, budget = profile.margin_rel, profile.recipe, vram_b - reserve_b
    card, vram_label = vram_info
    time = plan.time
    if time is not None:
        time = replace(time, throughput=profile.throughput.model if profile.throughput is not None else None)
    mm = for_strategy(profile.model, req.gpus, req.strategy, device_type=profile.kind)
    items, ranking, first = _found(req, plan, mm, budget, time)
    _rank(items)
    extrapolations = _flag_extrapolations(items, profile.ranges, margin, budget)
    if req.within_measured:  # each axis is inside; drop combinations beyond the measured params or tokens
        items, extrapolations = _rank([s for s in items if not s.extrapolated]), []
    for s in items:
        s.command = (like_command(s, like, recipe_d, req.data_dir) if like is not None and like.config
                     else train_command(s, recipe_d, req.data_dir))
        if s.arch != GPT2:  # and nanochat's own command, where base_train builds this model
            from vramfit.plan.nanochat import base_train_row

            s.nanochat = base_train_row(s.shape, req.aspect_ratio, req.head_dim, int(recipe_d.get("grad_accum", 1)))
    items = multi_gpu(items, req.gpus)
    result = {"vram_bytes": vram_b, "card": card.name if card else None, "reserve_bytes": reserve_b,
              "budget_bytes": budget, "objective": req.objective, "ranking": ranking, "model_file": str(plan.path),
              "device": profile.device, "recipe_key": profile.recipe_key, "recipe": recipe_d,
              "target": profile.target, "margin_rel": margin, "data_dir": req.data_dir,
              "gpus": req.gpus, "strategy": req.strategy or ("ddp" if req.gpus > 1 else None)}
    if req.family != GPT2:
        result.update(arch=req.family, aspect_ratio=req.aspect_ratio, head_dim=req.head_dim)
    out = Recommendation(result, items, plan.path, time=time, vram_label=vram_label)
    if like is not None:
        result["like"], result["as_is"] = str(like.path), _as_is_doc(plan.as_is, mm, margin, budget)
        out.like_line = _as_is_line(like, result["as_is"])
    result["suggestions"] = [s.to_dict() for s in items]
    if time is not None:
        law = time.loss_law
        result.update(hours=time.hours, rank=time.rank,
                      loss_law=law.to_dict() if law is not None and time.rank == "loss" else None)
    out.warnings += extrapolations
    if not items:
        out.nothing_fits = smallest_need(mm, margin, **first)
    return out


def _rank(items: list) -> list:
    for rank, s in enumerate(items, start=1):
        s.rank = rank
    return items


def _as_is_doc(shape: Shape, model, margin: float, budget: int) -> dict:  # noqa: ANN001 - a memory model
    """The config as it is: its sizes, prediction, margin, whether it fits and its headroom (negative: short)."""
    pred = float(model.predict(model.columns(shape.as_dict(), shape.arch))[0])
    need = pred * (1 + margin)
    return {**shape.as_dict(), "predicted_bytes": int(pred), "margin_bytes": int(pred * margin),
            "fits": bool(need <= budget), "headroom_bytes": int(budget - need)}


def _as_is_line(like: Like, a: dict) -> str:
    from vramfit.units import format_size

    return (f"{like.path} as it is: {Shape.of(a).text()}: predicted {format_size(a['predicted_bytes'])} + margin "
            f"{format_size(a['margin_bytes'])}: " + (f"fits, headroom {format_size(a['headroom_bytes'])}"
                                                     if a["fits"] else "does NOT fit"))


def predict_one(shape: Shape, model: Path | None, switches: dict | None = None, like: Like | None = None,
                loop: str | None = None) -> dict:
    """The predicted peak of one config with its breakdown, margin and the naive line, from a profile (--model,
    else `plan.workflows.open_profile`'s choice); `switches` (grad_accum, checkpoint, optimizer: those given) price
    the profile's recipe with them, and the time of an optimizer step where the profile has a throughput model.
    `like` (--like's file): its micro-steps as the grad_accum switch where the profile prices switches (else a
    warning), and its loop (`loop`: --loop over it): what that loop keeps alive beyond vramfit's step is added
    (`plan.like.loop_terms`)."""
    from gpt.config import check_batch_size
    from vramfit.fit.coverage import check
    from vramfit.plan.like import loop_terms
    from vramfit.plan.profiles import check_family
    from vramfit.plan.workflows import open_profile

    shape.model_config()
    check_batch_size(shape.batch_size)
    loop = like.loop_for(loop) if like is not None else loop or "vramfit"
    path, profile = check_family(*open_profile(model, families=shape.arch != GPT2), shape.arch)
    switches = {k: v for k, v in (switches or {}).items() if v is not None}
    warnings = []
    if like is not None and like.grad_accum > 1 and "grad_accum" not in switches:
        if profile.switches:
            switches["grad_accum"] = like.grad_accum
        else:
            warnings.append(f"warning: {like.path} trains {like.grad_accum} micro-steps; this profile was fitted on "
                            "one recipe and prices 1 (sweep grad_accum and fit again, or `vramfit estimate --like`)")
    own = profile.recipe_of().resolved(profile.kind)
    recipe = replace(own, **switches) if switches else None
    f = profile._columns(shape, recipe)  # the profile's own recipe where no switch is given
    terms = loop_terms(loop, shape, own.dtype)
    pred = float(profile.model.predict(f)[0]) + sum(terms.values())
    part = profile.model.breakdown(f)[0] | terms
    extra = check(profile.ranges, shape.as_dict())
    out = {"predicted": pred, "margin": pred * profile.margin_rel, "extrapolation": extra,
           "widened_margin": pred * extra.widened_margin(profile.margin_rel),
           "naive": float(profile.baseline.predict(f)[0]) if profile.baseline is not None else float("nan"),
           "regime": part.pop("regime"), "breakdown": part, "model_file": path, "model": profile, "loop": loop,
           "warnings": warnings}
    if recipe is not None:
        ms = profile.step_ms(shape, recipe)
        out.update(recipe={k: getattr(recipe, k) for k in ("grad_accum", "checkpoint", "optimizer")},
                   ms_per_step=float(ms[0]) if ms is not None else None)
    return out
