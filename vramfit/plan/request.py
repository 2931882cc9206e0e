"""What `vramfit suggest` is asked: the flags as the user wrote them (`PlanRequest`), with what they leave open
filled from `--like` (a config file or checkpoint) or the defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vramfit.errors import VramfitError
from vramfit.plan.suggest import DEFAULT_OBJECTIVE, TimeBudget
from vramfit.plan.workflows import DEFAULT_DATA_DIR
from vramfit.shape import KEYS, Shape

if TYPE_CHECKING:
    from vramfit.plan.like import Like


def parse_int_options(**options: str | None) -> dict[str, list[int] | None]:
    """`--n-layer 4,8`-style options as lists of sizes within gpt.config.MAX_SIZES (None where not given)."""
    from gpt.config import MAX_SIZES
    from vramfit.sweep.grid import parse_int_list

    return {name: None if value is None else parse_int_list(value, f"--{name.replace('_', '-')}",
                                                            maximum=MAX_SIZES[name])
            for name, value in options.items()}


def time_args(hours: str, rank: str, loss_law: Path | None, data_dir: str) -> TimeBudget:
    """Validated --hours / --rank / --loss-law (for suggest and plot); the throughput model is the profile's."""
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
    return TimeBudget(h, rank, law)


DEFAULT_RECIPE = "dtype=bfloat16,optimizer=fused"  # the dry run's recipe when neither --recipe nor --like sets one
DEFAULT_TOP = 10  # with --like: 1 per search


@dataclass
class PlanRequest:
    """What `vramfit suggest` was asked (sizes as the user wrote them). `like` (a config file or checkpoint) fills
    what the flags leave open: the corpus, the recipe of the dry run, the shape the searches stay close to."""

    vram: str
    reserve: str = "0"
    objective: str | None = None  # None: trainable; with --like: params (the largest model close to it)
    space: dict = field(default_factory=dict)  # shape axis -> list of ints or None (see parse_int_options)
    min_batch: int = 1
    top: int | None = None  # None: DEFAULT_TOP; with --like: 1 per search
    model: Path | None = None
    data_dir: str | None = None  # None: --like's corpus, else DEFAULT_DATA_DIR
    no_profile: bool = False
    recipe: str | None = None  # the dry run's; None: --like's dtype/compile over DEFAULT_RECIPE
    capability: str | None = None  # with the dry run: this GPU's (NVML) where there is one, else 8.0
    hours: str | None = None
    rank: str = "auto"
    loss_law: Path | None = None
    gpus: int = 1
    strategy: str | None = None
    device: str = "auto"  # --target auto | cuda | cpu: what to plan for (see plan.profiles.choose_model)
    cache_dir: Path | None = None  # the dry run's cache (default: the user cache directory)
    use_cache: bool = True
    within_measured: bool = False  # keep every axis inside the ranges the model was measured on
    like: Path | None = None  # suggest --like: a nanoGPT config .py, a vramfit TOML or a checkpoint
    margin: str | None = None  # --margin: instead of the profile's CV margin or the dry run's validation margin
    loop: str | None = None  # --loop: the training loop the dry run estimates (None: --like's, else vramfit's)
    tokens_per_step: str | None = None  # plan the recipe for this many tokens per optimizer step (plan.recipes)
    checkpoint: str | None = None  # with tokens_per_step: the checkpointing values searched (none,all,k)
    optimizer: str | None = None  # with tokens_per_step: the optimizers searched (default: the recipe's)
    arch: str | None = None  # the model family planned (`vramfit.shape.Shape.arch`); None: GPT-2
    aspect_ratio: int = 64  # with a nanochat arch: nanochat's depth -> width rule (base_train's defaults)
    head_dim: int = 128

    @property
    def family(self) -> str:
        """The family planned ("gpt2", "nanochat", "nanochat:n_kv_head=1,mlp=swiglu", ...), checked; each
        planned shape canonicalises it (`vramfit.shape.Shape`: an option at its default is dropped)."""
        from vramfit.shape import GPT2, arch_options

        text = GPT2 if self.arch is None else self.arch.strip()
        if arch_options(text)["arch"] == GPT2 and text != GPT2:
            raise VramfitError(f"--arch {text}: GPT-2 has no options")
        return text


def fill(req: PlanRequest, like: Like | None) -> PlanRequest:
    """The request with what the flags left open taken from --like, else the defaults."""
    if like is None:
        return replace(req, objective=req.objective or DEFAULT_OBJECTIVE, top=req.top or DEFAULT_TOP,
                       data_dir=req.data_dir or DEFAULT_DATA_DIR)
    many = [k for k in KEYS if k != "vocab_size" and req.space.get(k) is not None and len(req.space[k]) > 1]
    if many:
        raise VramfitError(f"with --like, --{many[0].replace('_', '-')} takes one value (it replaces the config's)")
    return replace(req, objective=req.objective or "params", top=req.top or 1,
                   data_dir=req.data_dir or like.data_dir or DEFAULT_DATA_DIR)


def as_is(like: Like, space: dict) -> Shape:
    """The config as it is: the file's shape under the sizes given as flags (and the vocabulary planned for)."""
    return like.shape.with_(**{k: v[0] for k, v in space.items() if v is not None})
