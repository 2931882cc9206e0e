"""Plans from a config the user already has: a nanoGPT (or vramfit) config file, or a checkpoint.

`resolve_shape` fills predict's and estimate's six sizes from `--like FILE` / `--ckpt PATH` under any flag given;
`suggest_like` answers `suggest --like FILE`: the config as it is, and the largest batch, the longest block and
the largest model close to it that fit.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from gpt.config import TrainConfig, load_config
from gpt.meta import GPT2_VOCAB, corpus_vocab
from vramfit.errors import VramfitError
from vramfit.fit.features import features
from vramfit.plan.suggest import Suggestion, suggest
from vramfit.shape import KEYS

MAX_BATCH, MAX_BLOCK = 4096, 8192


def config_vocab(cfg: TrainConfig) -> int:
    """The vocabulary a config trains with: its own, else its corpus's (meta.json / meta.pkl), else GPT-2's
    padded 50304 (nanoGPT's default)."""
    if cfg.vocab_size:
        return cfg.vocab_size
    found = corpus_vocab(cfg.data_dir)
    return found[0] if found else GPT2_VOCAB


def like_shape(path: str | Path) -> dict:
    """The six sizes of a config file (nanoGPT `.py` or vramfit TOML), and its dtype, data_dir and config."""
    cfg = load_config(path)
    shape = {k: getattr(cfg, k) for k in KEYS if k != "vocab_size"}
    return {**shape, "vocab_size": config_vocab(cfg), "dropout": cfg.dropout, "bias": cfg.bias, "dtype": cfg.dtype,
            "data_dir": cfg.data_dir, "config": cfg}


def ckpt_shape(path: str | Path) -> dict:
    """The sizes of a checkpoint (vramfit's or nanoGPT's): model_args, and the batch size of its config."""
    from gpt.train import load_checkpoint

    ckpt = load_checkpoint(path)
    args = ckpt["model_args"]
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    out = {k: args.get(k) for k in (*KEYS, "dropout", "bias") if k != "batch_size"}
    out["batch_size"] = config.get("batch_size")
    return out


def resolve_shape(explicit: dict, like: str | Path | None = None, ckpt: str | Path | None = None,
                  extras: bool = False) -> dict:
    """The six sizes: each flag given (not None) over the checkpoint's, over the config file's; with `extras`,
    also the file's or checkpoint's dropout and bias where it has them (they change the dry-run step)."""
    if like is not None and ckpt is not None:
        raise VramfitError("give --like FILE or --ckpt PATH, not both")
    base = like_shape(like) if like is not None else ckpt_shape(ckpt) if ckpt is not None else {}
    out = {k: explicit.get(k) if explicit.get(k) is not None else base.get(k) for k in KEYS}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in missing)
        raise VramfitError(f"missing {flags} (or --like CONFIG / --ckpt CHECKPOINT to take the sizes from)")
    more = {k: base[k] for k in ("dropout", "bias") if extras and base.get(k) is not None}
    return {k: int(v) for k, v in out.items()} | more


def _like_command(s: Suggestion, like: dict, path: str | Path, recipe: dict) -> str:
    """`vramfit train --config FILE` with the sizes that differ from the file and the model's recipe."""
    args = ["vramfit", "train", "--config", str(path)]
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size"):
        if getattr(s, k) != like[k]:
            args += [f"--{k.replace('_', '-')}", str(getattr(s, k))]
    for key in ("dtype", "compile", "optimizer", "attn_kernel"):
        if recipe.get(key) is not None:
            value = recipe[key]
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return shlex.join(args + ["--out-dir", f"out/like-{s.rank}"])


def suggest_like(model, margin_rel: float, budget: int, path: str | Path, recipe: dict, check=None) -> dict:
    """The config of `path` as it is (predicted, fits or not) and, each found by the vectorised search with the
    rest of the config fixed: the largest batch for its shape and block; the longest block (a multiple of 64, or
    its own) for its shape and batch; the largest model with its head size, width/depth within 2x of its own,
    at its block and batch. `check(suggestions)` may drop finds (the dry-run re-check of `--no-profile`)."""
    like = like_shape(path)
    L, H, C, T, B, V = (like[k] for k in KEYS)
    f = features(L, H, C, T, B, V)
    pred = float(model.predict(f)[0])
    need = pred * (1 + margin_rel)
    shape = dict(n_layer=[L], n_head=[H], n_embd=[C], vocab_size=[V])
    ratio, head_dim = C / L, C // H
    searches = {  # one shape: every batch up to 4096, and every block in steps of 64 up to 8192
        "largest batch": dict(shape, block_size=[T], batch_size=list(range(1, MAX_BATCH + 1)), objective="tokens"),
        "longest block": dict(shape, block_size=sorted({*range(64, MAX_BLOCK + 1, 64), T}), batch_size=[B],
                              objective="tokens"),
        "largest model": dict(block_size=[T], batch_size=[B], vocab_size=[V], head_dims=(head_dim,),
                              aspect=(ratio / 2, ratio * 2), objective="params"),
    }
    found: list[tuple[str, Suggestion]] = []
    for label, args in searches.items():
        items = suggest(model, margin_rel, budget, top=1, **args)
        if items:
            found.append((label, items[0]))
    if check is not None:  # one at a time: the check may lower a find's batch (a new object) or drop it
        found = [(label, checked[0]) for label, s in found if (checked := check([s]))]
    for rank, (_, s) in enumerate(found, start=1):
        s.rank = rank
        s.command = _like_command(s, like, path, recipe)
    return {"like": str(path), "data_dir": like["data_dir"], "as_is": {
        **{k: like[k] for k in KEYS}, "predicted_bytes": int(pred), "margin_bytes": int(pred * margin_rel),
        "fits": bool(need <= budget), "headroom_bytes": int(budget - need)}, "found": found}


def _no_profile_doc(path: str | Path, recipe: str | None, capability: str) -> tuple[str, dict]:
    """A model document for a GPU never profiled, calibrated on dry-run estimates at the config's vocabulary
    (through `plan.noprofile.DryRunPlanner`: its cache and estimator pool); "planner" re-checks the finds."""
    from vramfit.dryrun.estimate import parse_capability, parse_recipe
    from vramfit.plan.noprofile import DryRunPlanner
    from vramfit.recipe import Recipe

    rec, cap = parse_recipe(recipe), parse_capability(capability)
    planner = DryRunPlanner(rec, cap, like_shape(path)["vocab_size"])
    mm, margin, recipe_d = planner.model()
    return "(dry-run, no profile)", {"model": mm, "margin_rel": margin, "recipe": recipe_d, "target": "nvml",
                                     "device": f"CUDA sm{cap[0]}{cap[1]} (not profiled)",
                                     "recipe_key": Recipe(**recipe_d).key(), "planner": planner}


def run_suggest_like(path: str | Path, budget: int, model_file: str | Path | None, save: str | Path,
                     json_out: bool = False, vram: str = "", reserve_b: int = 0,
                     no_profile: tuple[str | None, str] | None = None) -> tuple[list[str], bool]:
    """`suggest --like FILE`: (lines to print, whether anything fits); the finds saved for `train --suggestion N`.
    `no_profile` = (recipe, capability): plan from dry-run estimates, the finds re-checked by the estimator."""
    import json

    from vramfit.plan.workflows import open_model, save_suggestions
    from vramfit.units import format_size

    mpath, doc = _no_profile_doc(path, *no_profile) if no_profile else open_model(model_file)
    recipe = doc.get("recipe") or {}
    planner = doc.get("planner")
    try:
        check = (lambda items: planner.verify(items, budget)) if planner is not None else None
        res = suggest_like(doc["model"], doc["margin_rel"], budget, path, recipe, check)
    finally:
        if planner is not None:
            planner.__exit__(None, None, None)
    items = [{**s.to_dict(), "label": label} for label, s in res["found"]]
    out = {"vram_bytes": budget + reserve_b, "reserve_bytes": reserve_b, "budget_bytes": budget,
           "objective": "like", "model_file": str(mpath), "device": doc["device"], "recipe_key": doc["recipe_key"],
           "recipe": recipe, "target": doc["target"], "margin_rel": doc["margin_rel"], "data_dir": res["data_dir"],
           "gpus": 1, "strategy": None, "like": res["like"], "as_is": res["as_is"], "suggestions": items}
    if items:
        save_suggestions(out, save)
    if json_out:
        return [json.dumps(out, indent=1)], bool(items)
    a = res["as_is"]
    sizes = lambda d: " ".join(f"{k}={d[k]}" for k in KEYS)  # noqa: E731
    lines = ["warning: no profile of this device: predictions are dry-run estimates (allocator replay + a "
             "published CUDA context size), not measurements", planner.summary()] if planner is not None else []
    lines += [f"budget: {format_size(budget)} {('(' + vram + ')') if vram else ''} · model {Path(mpath).name} "
             f"({doc['device']}, margin {doc['margin_rel']:.1%})",
             f"{path} as it is: {sizes(a)}: predicted {format_size(a['predicted_bytes'])} + margin "
             f"{format_size(a['margin_bytes'])}: " + ("fits, headroom " + format_size(a["headroom_bytes"])
                                                      if a["fits"] else "does NOT fit")]
    for item in items:
        lines.append(f"#{item['rank']} {item['label']}: {sizes(item)}, {item['params'] / 1e6:.1f}M params, "
                     f"predicted {format_size(item['predicted_bytes'])}, "
                     f"headroom {format_size(item['headroom_bytes'])}")
    lines += [f"#{item['rank']}: {item['command']}" for item in items]
    lines.append(f"saved to {save}: train one with `vramfit train --suggestion N`" if items else
                 f"nothing close to {path} fits in {format_size(budget)}")
    return lines, bool(items)
