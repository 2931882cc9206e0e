"""The `vramfit suggest` and `vramfit predict` workflows: budget, the corpus's vocabulary, the model (a profile's
model file, or the dry-run model for a GPU never profiled), the search, the multi-GPU term, the check by dry run,
and the JSON document that `train --suggestion N` reads. The CLI only parses and prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vramfit.corpus import corpus_tokens, corpus_vocab
from vramfit.errors import VramfitError
from vramfit.shape import DEFAULT_VOCAB, KEYS
from vramfit.units import parse_size


def parse_int_options(**options: str | None) -> dict[str, list[int] | None]:
    """`--n-layer 4,8`-style options as lists of positive ints (None where not given)."""
    out: dict[str, list[int] | None] = {}
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if value is None:
            out[name] = None
            continue
        try:
            values = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise VramfitError(f"{flag}: expected integers like 4 or 4,8, got {value!r}") from None
        if not values or min(values) < 1:
            raise VramfitError(f"{flag}: sizes must be >= 1, got {value!r}")
        out[name] = values
    return out


def time_args(hours: str, rank: str, loss_law: Path | None, data_dir: str) -> dict:
    """Validated --hours / --rank / --loss-law (for suggest and plot)."""
    from vramfit.fit.losslaw import law_for_corpus, load_law
    from vramfit.plan.suggest import TIME_RANKS, check_hours

    h = check_hours(hours)
    if rank not in ("auto", *TIME_RANKS):
        raise VramfitError(f"unknown --rank {rank!r}; choose auto, {', '.join(TIME_RANKS)}")
    law = load_law(loss_law) if loss_law else law_for_corpus(data_dir)
    if rank == "auto":
        rank = "loss" if law is not None else "optimal"
    if rank == "loss" and law is None:
        raise VramfitError(f"--rank loss: no loss law for {data_dir} (run `vramfit fit --loss` after 3+ `vramfit "
                           "train` runs on it, or pass --loss-law FILE)")
    return {"hours": h, "rank": rank, "loss_law": law}


@dataclass
class SuggestRequest:
    """What `vramfit suggest` was asked (sizes as the user wrote them)."""

    vram: str
    reserve: str = "0"
    objective: str = "trainable"
    space: dict = field(default_factory=dict)  # shape axis -> list of ints or None (see parse_int_options)
    min_batch: int = 1
    top: int = 10
    model: Path | None = None
    data_dir: str = "data/shakespeare_char"
    no_profile: bool = False
    recipe: str = "dtype=bfloat16,optimizer=fused"
    capability: str | None = None  # with the dry run: this GPU's (NVML) where there is one, else 8.0
    hours: str | None = None
    rank: str = "auto"
    loss_law: Path | None = None
    gpus: int = 1
    strategy: str | None = None
    device: str = "auto"  # auto | cuda | cpu: what to plan for (see choose_model)
    cache_dir: Path | None = None  # the dry run's cache (default: the user cache directory)
    use_cache: bool = True
    within_measured: bool = False  # keep every axis inside the ranges the model was measured on


@dataclass
class Recommendation:
    """The outcome: the document (`suggest --json`), the ranked suggestions, and what to tell the user."""

    doc: dict
    items: list
    model_path: Path
    notes: list[str] = field(default_factory=list)  # informational lines
    warnings: list[str] = field(default_factory=list)  # for stderr
    time_args: dict = field(default_factory=dict)
    nothing_fits: tuple[int, dict] | None = None  # (bytes the smallest config needs, that config)
    vram_label: str = ""  # the budget as the user named it: a size, or a card with its NVML total
    plan_line: str = ""  # the first line: what the plan is for (device, recipe, profile or dry run)


def _plan_vocab(req: SuggestRequest, space: dict, notes: list[str]) -> None:
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


DEVICES = ("auto", "cuda", "cpu")
GPU_TARGETS = ("nvml", "allocated", "reserved")


def _recipe_text(recipe: dict) -> str:
    parts = [str(recipe.get("dtype") or "dtype auto")]
    if recipe.get("optimizer"):
        parts.append(f"{recipe['optimizer']} AdamW")
    if recipe.get("compile") is not None:
        parts.append("compiled" if recipe["compile"] else "eager")
    return ", ".join(parts)


def _is_gpu(doc: dict) -> bool:
    return doc.get("device_type") == "cuda" or (doc.get("device_type") is None and doc["target"] in GPU_TARGETS)


def local_gpu_capability() -> str | None:
    """The first GPU's compute capability as NVML reports it, None without a GPU (or NVML)."""
    from vramfit.measure.devices import nvml_devices

    gpus, _ = nvml_devices()
    return gpus[0].compute_capability if gpus else None


def choose_model(req: SuggestRequest, models_dir: Path | None = None) -> tuple[Path, dict] | None:
    """The profile to plan with, or None for the dry run: --model; else the newest GPU profile in `models_dir`
    (--device auto|cuda) or the newest CPU one (--device cpu). Without a GPU profile, auto and cuda plan for a
    GPU by the dry run: a CPU profile measures RAM, not a card."""
    from vramfit.fit.memmodel import load_model
    from vramfit.plan.workflows import MODELS_DIR, open_model

    if req.device not in DEVICES:
        raise VramfitError(f"unknown --device {req.device!r}; choose {', '.join(DEVICES)}")
    if req.model:
        return open_model(req.model)
    folder = Path(models_dir or MODELS_DIR)
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            doc = load_model(path)
        except VramfitError:
            continue
        if _is_gpu(doc) == (req.device != "cpu"):
            return path, doc
    if req.device == "cpu":
        raise VramfitError(f"no CPU profile in {folder} (run `vramfit sweep --device cpu` then `vramfit fit`)")
    return None


def _plan_line(req: SuggestRequest, doc: dict, path: Path, budget: int, dry_capability: str | None) -> str:
    """The first line: what the plan is for, and what to do when that is not the card meant."""
    from vramfit.units import format_size

    if dry_capability is not None:
        why = "" if req.no_profile else " (no GPU profile in results/models; --device cpu plans for this CPU's RAM)"
        return (f"plan for a CUDA GPU of compute capability {dry_capability}, {_recipe_text(doc['recipe'])}, by "
                f"the dry run{why}: estimates, not measurements; `vramfit sweep` on the GPU measures it")
    recipe = _recipe_text(doc.get("recipe") or {})
    if not _is_gpu(doc):
        return (f"plan for CPU RAM: {path.name} profiles {doc['device']} ({recipe}), not a GPU. For a GPU, run "
                f"`vramfit sweep` on it, or plan by the dry run: `vramfit suggest --vram {req.vram} --no-profile "
                "--capability 8.6` (your card's capability)")
    line = f"plan for {doc['device']} ({recipe}) from its profile {path.name}"
    total = doc.get("total_memory_bytes")
    if total and budget > total:
        line += (f"; the budget {format_size(budget)} is more than this card's {format_size(total)}: profile the "
                 "card you mean, or plan by the dry run (--no-profile --capability X)")
    elif total:
        line += f" (card memory {format_size(total)})"
    return line


def _model(req: SuggestRequest, space: dict, warnings: list[str], budget: int):
    """(memory model, margin, recipe dict, model path, model document, dry-run planner or None, plan line)."""
    chosen = None if req.no_profile else choose_model(req)
    if chosen is None and req.hours is not None:
        raise VramfitError("--hours needs a profiled device (its sweep measures speed): no GPU profile in "
                           "results/models (pass --model FILE, or --device cpu for a CPU profile)")
    if chosen is not None:
        path, doc = chosen
        return (doc["model"], doc["margin_rel"], doc.get("recipe") or {}, path, doc, None,
                _plan_line(req, doc, path, budget, None))
    from vramfit.dryrun.estimate import parse_capability, parse_recipe
    from vramfit.plan.noprofile import DryRunPlanner
    from vramfit.recipe import Recipe

    cap_text = req.capability or local_gpu_capability() or "8.0"
    rec, cap = parse_recipe(req.recipe), parse_capability(cap_text)
    warnings.append("warning: no profile of this device: predictions are dry-run estimates (allocator replay + a "
                    "published CUDA context size), not measurements (run `vramfit sweep` on the GPU)")
    planner = DryRunPlanner(rec, cap, (space["vocab_size"] or [DEFAULT_VOCAB])[0], cache_dir=req.cache_dir,
                            use_cache=req.use_cache)
    mm, margin, recipe_d = planner.model()
    doc = {"device": f"CUDA sm{cap[0]}{cap[1]} (not profiled)", "recipe_key": Recipe(**recipe_d).key(),
           "target": "nvml", "recipe": recipe_d}
    path = Path("(dry-run, no profile)")
    return mm, margin, recipe_d, path, doc, planner, _plan_line(req, doc, path, budget, f"{cap[0]}.{cap[1]}")


def recommend(req: SuggestRequest) -> Recommendation:
    """Configs that fit `req.vram - req.reserve` with the model's margin, ranked, each with its train command."""
    from vramfit.plan.budget import resolve_vram

    (vram_b, card, vram_label), reserve_b = resolve_vram(req.vram, req.device), parse_size(req.reserve)
    space = {k: req.space.get(k) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                           "vocab_size")}
    notes: list[str] = []
    warnings: list[str] = []
    _plan_vocab(req, space, notes)
    targs: dict = {}
    if req.hours is not None:
        targs = time_args(req.hours, req.rank, req.loss_law, req.data_dir)
        if req.no_profile:
            raise VramfitError("--hours needs a profiled device (its sweep measures speed); drop --no-profile")
    if req.gpus > 1 and targs:
        raise VramfitError("--hours plans one GPU for now; drop --gpus or --hours")
    mm, margin, recipe_d, path, doc, planner, plan_line = _model(req, space, warnings, vram_b - reserve_b)
    if req.within_measured:
        _within_measured(space, doc.get("ranges"), notes)
    try:
        out = _search(req, space, targs, (mm, margin, recipe_d, path, doc), planner, vram_b, reserve_b,
                      (card, vram_label))
    finally:
        if planner is not None:
            planner.__exit__(None, None, None)
            warnings += planner.warnings
            notes.append(planner.summary())
    out.notes, out.warnings, out.plan_line = notes + out.notes, warnings + out.warnings, plan_line
    out.doc["plan"] = plan_line
    if planner is not None:
        out.doc["dry_run"] = planner.counts()
    return out


def _within_measured(space: dict, ranges: dict | None, notes: list[str]) -> None:
    """Restrict each axis of the search space to the range the model was measured on (`fit.coverage`)."""
    from vramfit.plan.suggest import DEFAULT_SPACE

    if not ranges:
        raise VramfitError("--within-measured: this model has no measured ranges (fit it again with this vramfit, "
                           "or plan with the dry run)")
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size"):
        lo, hi = ranges[k]
        default = {"n_head": list(range(int(lo), int(hi) + 1)), "vocab_size": [int(hi)]}.get(k) or DEFAULT_SPACE[k]
        values = [v for v in (space[k] or default) if lo <= v <= hi]
        if not values:
            raise VramfitError(f"--within-measured: no {k} of the search space lies in the measured {lo:g}-{hi:g}")
        space[k] = values
    notes.append("within the measured ranges: " + ", ".join(
        f"{k} {ranges[k][0]:g}-{ranges[k][1]:g}" for k in (*KEYS, "params", "tokens")))


def _flag_extrapolations(items: list, ranges: dict | None, margin: float, budget: int) -> list[str]:
    """Mark suggestions outside the measured ranges (per axis, params, tokens): the widened margin they need and
    whether they still fit with it; the lines that say so."""
    from vramfit.fit.coverage import check

    lines = []
    for s in items:
        ext = check(ranges, {k: getattr(s, k) for k in KEYS})
        s.extrapolated = sorted(ext.outside)
        if ext.inside:
            continue
        need = s.predicted_bytes * (1 + ext.widened_margin(margin))
        verdict = "fits" if need <= budget else "may NOT fit"
        lines.append(f"#{s.rank} is an extrapolation ({ext.describe()}): with the margin widened to "
                     f"{ext.widened_margin(margin):.1%} it {verdict}; check it first: vramfit estimate "
                     + " ".join(f"--{k.replace('_', '-')} {getattr(s, k)}" for k in KEYS))
    return lines


def _search(req: SuggestRequest, space: dict, targs: dict, model: tuple, planner, vram_b: int,
            reserve_b: int, vram_info: tuple) -> Recommendation:
    """The search, the dry run's re-check, the multi-GPU term and the document."""
    from vramfit.plan.ddp import for_strategy, multi_gpu
    from vramfit.plan.suggest import smallest_need, suggest
    from vramfit.plan.workflows import train_command

    mm, margin, recipe_d, path, doc = model
    budget = vram_b - reserve_b
    card, vram_label = vram_info
    if targs:
        targs["throughput"] = doc["throughput"].model if doc.get("throughput") is not None else None
    mm = for_strategy(mm, req.gpus, req.strategy, device_type="cuda" if _is_gpu(doc) else "cpu")
    items = suggest(mm, margin, budget, objective=req.objective, top=req.top, min_batch=req.min_batch,
                    command=lambda s: train_command(s, recipe_d, req.data_dir),
                    corpus_tokens=corpus_tokens(req.data_dir), **targs, **space)
    ranking = items.ranking
    if planner is not None:
        items = planner.verify(items, budget)
    items = multi_gpu(items, req.gpus)
    extrapolations = _flag_extrapolations(items, doc.get("ranges"), margin, budget)
    if req.within_measured:  # each axis is inside; drop combinations beyond the measured params or tokens
        items = [s for s in items if not s.extrapolated]
        for rank, s in enumerate(items, start=1):
            s.rank = rank
        extrapolations = []
    result = {"vram_bytes": vram_b, "card": card.name if card else None, "reserve_bytes": reserve_b,
              "budget_bytes": budget, "objective": req.objective, "ranking": ranking, "model_file": str(path),
              "device": doc["device"], "recipe_key": doc["recipe_key"], "recipe": recipe_d, "target": doc["target"],
              "margin_rel": margin, "data_dir": req.data_dir,
              "gpus": req.gpus, "strategy": req.strategy or ("ddp" if req.gpus > 1 else None),
              "suggestions": [s.to_dict() for s in items]}
    if targs:
        law = targs["loss_law"]
        result.update(hours=targs["hours"], rank=targs["rank"],
                      loss_law=law.to_dict() if law is not None and targs["rank"] == "loss" else None)
    out = Recommendation(result, items, path, time_args=targs, vram_label=vram_label)
    out.warnings += extrapolations
    if not items:
        out.nothing_fits = smallest_need(mm, margin, **space)
    return out


def predict_one(shape: dict, model: Path | None) -> dict:
    """The predicted peak of one config (`shape`: the six KEYS) with its breakdown, margin and the naive
    line, from a model file."""
    from gpt.config import GPTConfig
    from vramfit.fit.coverage import check
    from vramfit.fit.features import features
    from vramfit.plan.workflows import open_model

    GPTConfig(shape["n_layer"], shape["n_head"], shape["n_embd"], shape["block_size"], shape["vocab_size"])
    path, doc = open_model(model)
    f = features(shape["n_layer"], shape["n_head"], shape["n_embd"], shape["block_size"], shape["batch_size"],
                 shape["vocab_size"])
    pred = float(doc["model"].predict(f)[0])
    part = doc["model"].breakdown(f)[0]
    extra = check(doc.get("ranges"), shape)
    return {"predicted": pred, "margin": pred * doc["margin_rel"], "extrapolation": extra,
            "widened_margin": pred * extra.widened_margin(doc["margin_rel"]),
            "naive": float(doc["baseline"].predict(f)[0]),
            "regime": part.pop("regime"), "breakdown": part, "model_file": path, "model": doc}
