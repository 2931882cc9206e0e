"""`--like`: a config the user already has (a nanoGPT config `.py`, a vramfit TOML, or a checkpoint) as a shape.

`read_like` reads it (never executing it) into a `Like`; `resolve_shape` fills predict's and estimate's sizes
from it under the flags given; for `suggest --like`, `like_searches` turns it into the searches of the one plan
path (`plan.recommend`): the largest batch for its shape and block, the longest block for its shape and batch, and
the largest model close to it (its head size, width/depth within 2x of its own, at its block and batch).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from vramfit.errors import VramfitError
from vramfit.shape import DEFAULT_VOCAB, KEYS, MODEL_KEYS, Shape

MAX_BATCH, MAX_BLOCK = 4096, 8192
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
LABELS = ("largest batch", "longest block", "largest model", "model close to it")


@dataclass(frozen=True)
class Like:
    """A config file or checkpoint as the planner sees it: its shape, and what it says of data and recipe."""

    path: Path
    shape: Shape
    data_dir: str | None = None  # the corpus it trains on (a config's dataset, a checkpoint's config)
    recipe: dict | None = None  # the recipe keys the file sets (dtype, compile), where it sets them
    dropout: float | None = None  # these change the dry-run step (estimate), not the memory model
    bias: bool | None = None
    config: bool = True  # a config file (`vramfit train --config FILE` trains it), not a checkpoint
    loop: str = "vramfit"  # the loop that trains it: "nanogpt" for a nanoGPT config or checkpoint
    grad_accum: int = 1  # micro-steps per optimizer step (gradient_accumulation_steps)
    grad_clip: float = 1.0  # clip_grad_norm_'s max norm; 0: no clipping
    device: str | None = None  # "cpu" or "cuda" where the file says which
    vramfit_keys: tuple[str, ...] = ()  # keys of a nanoGPT config that vramfit's trainer reads and train.py does not

    def loop_for(self, loop: str | None) -> str:
        """The loop to estimate: `loop` (--loop) or the file's. nanoGPT's loop with a key only vramfit reads is
        refused: train.py would train without it."""
        loop = loop or self.loop
        if loop == "nanogpt" and self.vramfit_keys:
            raise VramfitError(f"{self.path}: {', '.join(self.vramfit_keys)} is not a setting of nanoGPT's train.py "
                               "(it would run without it): remove it, or estimate vramfit's loop (--loop vramfit)")
        return loop

    def recipe_over(self, base, given: bool = False):  # noqa: ANN001, ANN201 - a vramfit.recipe.Recipe
        """`base` with what the file sets: its dtype and compile unless `base` was `given` (--recipe), and its
        micro-steps unless `base` sets its own."""
        from dataclasses import replace

        accum = {"grad_accum": self.grad_accum} if self.grad_accum > 1 and base.grad_accum == 1 else {}
        return replace(base, **({} if given else self.recipe or {}), **accum)


def is_checkpoint(path: str | Path) -> bool:
    """A checkpoint (a folder holding ckpt.pt, or a .pt file), not a config file."""
    p = Path(path)
    return p.is_dir() or p.suffix in CHECKPOINT_SUFFIXES


def _config_vocab(vocab: int | None, data_dir: str | None) -> int:
    """A config's vocabulary: its own, else its corpus's (meta.json / meta.pkl), else GPT-2's (nanoGPT's)."""
    from vramfit.corpus import corpus_vocab

    if vocab:
        return int(vocab)
    found = corpus_vocab(data_dir) if data_dir else None
    return found[0] if found else DEFAULT_VOCAB


def _device(value: object, path: Path) -> str | None:
    """'cpu' or 'cuda' from a file's device ('cuda:1' is 'cuda'; 'auto' or none: None); another is refused."""
    text = str(value or "auto").split(":")[0]
    if text not in ("auto", "cpu", "cuda"):
        raise VramfitError(f"{path}: device {value!r}: vramfit estimates a CUDA GPU or the CPU (--target cuda|cpu)")
    return None if text == "auto" else text


def _read_config(path: Path) -> Like:
    from dataclasses import fields

    from gpt.config import TrainConfig, load_config
    from gpt.pyconfig import foreign_keys

    cfg = load_config(path)
    recipe = {k: v for k, v in (("dtype", cfg.dtype), ("compile", cfg.compile)) if v not in (None, "auto")}
    shape = Shape(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size,
                  _config_vocab(cfg.vocab_size, cfg.data_dir))
    nanogpt = path.suffix == ".py"
    known = {f.name for f in fields(TrainConfig)}
    ours = tuple(k for k in foreign_keys(path) if k in known) if nanogpt else ()
    return Like(path, shape, cfg.data_dir, recipe or None, cfg.dropout, cfg.bias, loop="nanogpt" if nanogpt
                else "vramfit", grad_accum=cfg.gradient_accumulation_steps, grad_clip=cfg.grad_clip,
                device=_device(cfg.device, path), vramfit_keys=ours)


def _read_checkpoint(path: Path, batch_size: int | None) -> Like:
    """A checkpoint's model_args, and the batch of its config (`batch_size` where it has none)."""
    from gpt.train import load_checkpoint

    ckpt = load_checkpoint(path)
    args = ckpt["model_args"]
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    sizes = {k: args.get(k) for k in MODEL_KEYS} | {"batch_size": config.get("batch_size") or batch_size}
    missing = [k for k, v in sizes.items() if v is None]
    if missing:
        raise VramfitError(f"{path}: the checkpoint does not say its {', '.join(missing)} (give it as a flag)")
    data_dir = config.get("data_dir") or (f"data/{config['dataset']}" if config.get("dataset") else None)
    nanogpt = "dataset" in config and "data_dir" not in config  # nanoGPT's train.py saves its globals
    recipe = {k: config[k] for k in ("dtype", "compile") if nanogpt and config.get(k) not in (None, "auto")}
    try:
        accum, clip = int(config.get("gradient_accumulation_steps") or 1), float(config.get("grad_clip", 1.0))
    except (TypeError, ValueError):
        raise VramfitError(f"{path}: the checkpoint's gradient_accumulation_steps or grad_clip is not a "
                           "number") from None
    return Like(path, Shape(**{k: int(v) for k, v in sizes.items()}), data_dir, recipe or None, args.get("dropout"),
                args.get("bias"), config=False, loop="nanogpt" if nanogpt else "vramfit", grad_accum=accum,
                grad_clip=clip, device=_device(config.get("device"), path))


def read_like(path: str | Path, batch_size: int | None = None) -> Like:
    """The config file or checkpoint at `path` (`batch_size`: a checkpoint's batch where its config has none)."""
    path = Path(path)
    return _read_checkpoint(path, batch_size) if is_checkpoint(path) else _read_config(path)


def resolve_shape(explicit: dict, like: str | Path | None = None,
                  ckpt: str | Path | None = None) -> tuple[Shape, Like | None]:
    """The shape of predict and estimate: each size flag given (not None) over the checkpoint's or the config
    file's; without either, the vocabulary defaults to GPT-2's. Also the `Like` read, where there is one."""
    if like is not None and ckpt is not None:
        raise VramfitError("give --like FILE or --ckpt PATH, not both")
    source = like if like is not None else ckpt
    found = read_like(source, explicit.get("batch_size")) if source is not None else None
    base = found.shape.as_dict() if found is not None else {"vocab_size": DEFAULT_VOCAB}
    sizes = {k: explicit.get(k) if explicit.get(k) is not None else base.get(k) for k in KEYS}
    missing = [k for k, v in sizes.items() if v is None]
    if missing:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in missing)
        raise VramfitError(f"missing {flags} (or --like CONFIG / --ckpt CHECKPOINT to take the sizes from)")
    return Shape(**{k: int(v) for k, v in sizes.items()}), found


def estimate_request(explicit: dict, *, like: str | Path | None = None, ckpt: str | Path | None = None,
                     recipe: str | None = None, target: str | None = None, capability: str = "8.0",
                     loop: str | None = None):  # noqa: ANN201 - a vramfit.dryrun.estimate.EstimateRequest
    """`vramfit estimate`'s request: the shape (`resolve_shape`), and from the file what the flags leave open: its
    dropout and bias, its loop, recipe (dtype and compile unless `--recipe` is given; its micro-steps unless
    `--recipe` sets grad_accum), clipping and device (the target; else cuda)."""
    from gpt.config import GPTConfig
    from vramfit.dryrun.estimate import EstimateRequest, parse_capability, parse_recipe

    shape, found = resolve_shape(explicit, like=like, ckpt=ckpt)
    extras = {k: v for k, v in (("dropout", getattr(found, "dropout", None)), ("bias", getattr(found, "bias", None)))
              if v is not None}
    target = target or (found.device if found is not None else None) or "cuda"
    target = "cuda" if target == "auto" else target
    model = GPTConfig(shape.n_layer, shape.n_head, shape.n_embd, shape.block_size, shape.vocab_size, **extras)
    rec = parse_recipe(recipe)
    if found is None:
        return EstimateRequest(model, shape.batch_size, rec, target, parse_capability(capability),
                               loop=loop or "vramfit")
    return EstimateRequest(model, shape.batch_size, found.recipe_over(rec, given=bool(recipe)), target,
                           parse_capability(capability), grad_clip=found.grad_clip, loop=found.loop_for(loop))


def loop_terms(loop: str, shape: Shape, dtype: str) -> dict[str, int]:
    """Bytes that `loop` keeps alive at a backward peak beyond what vramfit's step (`Trainer.step`, what a profile
    measured) keeps, by name, for `predict`. nanoGPT's train.py (as `gpt.nanogpt_loop` steps it) holds the logits
    its forward returned (batch x block x vocab in the compute dtype: `logits, loss = model(X, Y)`, train.py
    L298-300) and has fetched the next batch (x and y, int64; L302-304) before backward, while the targets it
    rebound are freed once the loss's backward ran; vramfit's step holds its x and y to the end: one batch of
    tokens more. Checked against the dry run of both loops (tests/test_nanogpt_loop.py)."""
    if loop == "vramfit":
        return {}
    if loop != "nanogpt":
        raise VramfitError(f"predict prices vramfit's and nanoGPT's loops from a profile, not --loop {loop}: "
                           "`vramfit estimate` estimates it by the dry run")
    B, T, V = shape.batch_size, shape.block_size, shape.vocab_size
    return {"logits (nanoGPT's loop)": B * T * V * (4 if dtype == "float32" else 2),
            "next batch (nanoGPT's loop)": B * T * 8}


def like_searches(shape: Shape, objective: str, by_time: bool = False) -> dict[str, dict]:
    """The searches close to `shape` (the config as it is), by label: the search space and objective of each
    (`by_time`: the models close to it are ranked by what a time budget buys, not by `objective`)."""
    L, H, C, T, B, V = shape.as_tuple()
    fixed = dict(n_layer=[L], n_head=[H], n_embd=[C], vocab_size=[V])
    ratio = C / L
    model_label = "largest model" if objective == "params" and not by_time else "model close to it"
    return {  # one shape: every batch up to 4096, and every block in steps of 64 up to 8192
        "largest batch": dict(fixed, block_size=[T], batch_size=list(range(1, MAX_BATCH + 1)), objective="tokens"),
        "longest block": dict(fixed, block_size=sorted({*range(64, MAX_BLOCK + 1, 64), T}), batch_size=[B],
                              objective="tokens"),
        model_label: dict(block_size=[T], batch_size=[B], vocab_size=[V], head_dims=(C // H,),
                          aspect=(ratio / 2, ratio * 2), objective=objective),
    }


def like_command(s, like: Like, recipe: dict, data_dir: str | None) -> str:  # noqa: ANN001 - a Suggestion
    """`vramfit train --config FILE` with the sizes that differ from the file, the model's recipe and a
    `--data-dir` the user chose over the file's corpus."""
    args = ["vramfit", "train", "--config", str(like.path)]
    for k in KEYS:
        if getattr(s, k) != getattr(like.shape, k):
            args += [f"--{k.replace('_', '-')}", str(getattr(s, k))]
    for key in ("dtype", "compile", "optimizer", "attn_kernel"):
        if recipe.get(key) is not None:
            value = recipe[key]
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    if data_dir and data_dir != like.data_dir:
        args += ["--data-dir", data_dir]
    return shlex.join(args + ["--out-dir", f"out/like-{s.rank}"])
