"""Which profile a plan uses: the file `--model` names, else the most recently fitted one of the device kind
planned for (`vramfit.fit.profile.latest`), else for a GPU one calibrated on dry-run estimates; and the line that
says what the plan is for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vramfit.errors import VramfitError
from vramfit.fit.profile import Profile, latest
from vramfit.plan.request import DEFAULT_RECIPE, PlanRequest
from vramfit.shape import GPT2

if TYPE_CHECKING:
    from vramfit.plan.like import Like


DEVICES = ("auto", "cuda", "cpu")


def _recipe_text(recipe: dict) -> str:
    parts = [str(recipe.get("dtype") or "dtype auto")]
    if recipe.get("optimizer"):
        parts.append(f"{recipe['optimizer']} AdamW")
    if recipe.get("compile") is not None:
        parts.append("compiled" if recipe["compile"] else "eager")
    if int(recipe.get("grad_accum", 1)) > 1:
        parts.append(f"{recipe['grad_accum']} micro-steps")
    return ", ".join(parts)


def local_gpu_capability() -> str | None:
    """The first GPU's compute capability as NVML reports it, None without a GPU (or NVML)."""
    from vramfit.measure.devices import nvml_devices

    gpus, _ = nvml_devices()
    return gpus[0].compute_capability if gpus else None


def choose_model(req: PlanRequest, models_dir: Path | None = None) -> tuple[Path, Profile] | None:
    """The profile to plan with, or None for the dry run: --model; else the most recently fitted GPU profile in
    `models_dir` (--target auto|cuda) or CPU one (--target cpu) (`vramfit.fit.profile.latest`). Without a GPU
    profile, auto and cuda plan for a GPU by the dry run: a CPU profile measures RAM, not a card."""
    from vramfit.plan.workflows import MODELS_DIR

    if req.device not in DEVICES:
        raise VramfitError(f"unknown --target {req.device!r}; choose {', '.join(DEVICES)}")
    family = req.family
    if req.model:
        return check_family(Path(req.model), Profile.load(req.model), family)
    folder = Path(models_dir or MODELS_DIR)
    found = latest(folder, "cpu" if req.device == "cpu" else "cuda", families=family != GPT2)
    if found is not None:
        return found
    if family != GPT2:
        raise VramfitError(f"--arch {family}: no {'CPU' if req.device == 'cpu' else 'GPU'} profile with "
                           f"{family.split(':')[0]} points in {folder} (run `vramfit sweep --arch "
                           f"{family.split(':')[0]} ...` then `vramfit fit`; or plan by the dry run: --like "
                           "\"nanochat --depth N\")")
    if req.device == "cpu":
        raise VramfitError(f"no CPU profile in {folder} (run `vramfit sweep --device cpu` then `vramfit fit`)")
    return None


def check_family(path: Path, profile: Profile, family: str) -> tuple[Path, Profile]:
    """(path, profile) where the profile plans `family` (GPT-2 always; another family only where it was swept with
    its points); else one VramfitError."""
    if family != GPT2 and not profile.plans_families:
        name = family.split(":")[0]
        raise VramfitError(f"--arch {family}: {path.name} was fitted on GPT-2 points only; sweep {name} points "
                           f"into it (`vramfit sweep --arch gpt2,{name} ...`) and fit again")
    return path, profile


def plan_line(req: PlanRequest, profile: Profile, path: Path, budget: int, loop: str = "vramfit") -> str:
    """The first line: what the plan is for (`loop`: the training loop the dry run estimates), and what to do when
    that is not the card meant."""
    from vramfit.units import format_size

    recipe = _recipe_text(profile.recipe) + (", nanoGPT's train.py loop" if loop == "nanogpt" else "")
    if profile.source == "dry-run":
        why = "" if req.no_profile else " (no GPU profile in results/models; --target cpu plans for this CPU's RAM)"
        return (f"plan for a CUDA GPU of compute capability {profile.compute_capability}, {recipe}, by "
                f"the dry run{why}: estimates, not measurements; `vramfit sweep` on the GPU measures it")
    if profile.kind != "cuda":
        return (f"plan for CPU RAM: {path.name} profiles {profile.device} ({recipe}), not a GPU. For a GPU, run "
                f"`vramfit sweep` on it, or plan by the dry run: `vramfit suggest --vram {req.vram} --no-profile "
                "--capability 8.6` (your card's capability)")
    line = f"plan for {profile.device} ({recipe}) from its profile {path.name}"
    total = profile.total_memory_bytes
    if total and budget > total:
        line += (f"; the budget {format_size(budget)} is more than this card's {format_size(total)}: profile the "
                 "card you mean, or plan by the dry run (--no-profile --capability X)")
    elif total:
        line += f" (card memory {format_size(total)})"
    return line


def _dry_run_recipe(req: PlanRequest, like: Like | None):  # noqa: ANN202 - a Recipe
    """--recipe, else the dtype and compile --like's file sets over DEFAULT_RECIPE; the file's micro-steps either
    way, unless --recipe sets grad_accum."""
    from vramfit.dryrun.estimate import parse_recipe

    base = parse_recipe(req.recipe or DEFAULT_RECIPE)
    return like.recipe_over(base, given=bool(req.recipe)) if like is not None else base


def plan_profile(req: PlanRequest, like: Like | None, vocab: int, warnings: list[str]) -> tuple[Path, Profile, object]:
    """(model path, profile, dry-run planner or None): the chosen profile, else one calibrated on dry-run
    estimates for the GPU (a `DryRunPlanner` that re-checks the suggestions)."""
    from gpt.config import LOOPS

    loop = like.loop_for(req.loop) if like is not None else (req.loop or "vramfit")
    if loop not in LOOPS:
        raise VramfitError(f"unknown --loop {loop!r}; choose one of {', '.join(LOOPS)}")
    if req.family != GPT2 and req.no_profile:
        raise VramfitError(f"--arch {req.family} plans from a profile with its points; without one, plan nanochat by "
                           "the dry run: --like \"nanochat --depth N\"")
    chosen = None if req.no_profile else choose_model(req)
    if chosen is None and req.hours is not None:
        raise VramfitError("--hours needs a profiled device (its sweep measures speed): no GPU profile in "
                           "results/models (pass --model FILE, or --target cpu for a CPU profile)")
    if chosen is not None:
        if loop == "nanogpt":
            warnings.append("warning: the profile measured vramfit's training loop; nanoGPT's train.py also keeps "
                            "the logits (batch x block x vocab) alive through backward: --no-profile plans "
                            "nanoGPT's loop by the dry run")
        return *chosen, None
    from vramfit.dryrun.estimate import parse_capability
    from vramfit.plan.noprofile import DryRunPlanner
    from vramfit.recipe import Recipe

    cap_text = req.capability or local_gpu_capability() or "8.0"
    rec, cap = _dry_run_recipe(req, like), parse_capability(cap_text)
    warnings.append("warning: no profile of this device: predictions are dry-run estimates (allocator replay + a "
                    "published CUDA context size), not measurements (run `vramfit sweep` on the GPU)")
    planner = DryRunPlanner(rec, cap, vocab, cache_dir=req.cache_dir, use_cache=req.use_cache, loop=loop,
                            grad_clip=like.grad_clip if like is not None else 1.0)
    mm, margin, recipe_d = planner.model()
    profile = Profile(model=mm, target="nvml", device=f"CUDA sm{cap[0]}{cap[1]} (not profiled)",
                      recipe_key=Recipe(**recipe_d).key(), recipe=recipe_d, margin_rel=margin, device_type="cuda",
                      compute_capability=f"{cap[0]}.{cap[1]}", source="dry-run")
    return Path("(dry-run, no profile)"), profile, planner
