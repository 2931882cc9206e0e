"""Search a space of GPT configs vectorised, keep those that fit a budget with margin, rank by an objective."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from vramfit.errors import VramfitError
from vramfit.features import features
from vramfit.memmodel import MemoryModel

OBJECTIVES = ("params", "tokens", "balanced")
HEAD_DIMS = (32, 64, 128)
DEFAULT_SPACE = {
    "n_layer": [1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 36, 40, 48],
    "n_embd": list(range(64, 1025, 64)) + [1280, 1536, 1600, 1792, 2048, 2560, 3072, 4096],
    "block_size": [64, 128, 256, 512, 1024, 2048, 4096],
    "batch_size": list(range(1, 33)) + list(range(40, 129, 8)) + list(range(160, 513, 32)),
    "vocab_size": [50304],
}
MAX_HEADS = 64
# width/depth between 16 and 256: Kaplan et al. (2020) found loss nearly flat for aspect ratios ~20-200
ASPECT = (16, 256)


@dataclass
class Suggestion:
    rank: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int
    params: int
    tokens_per_step: int
    predicted_bytes: int
    margin_bytes: int
    headroom_bytes: int
    regime: str
    breakdown: dict = field(default_factory=dict)
    command: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _as_list(value, default: list[int]) -> list[int]:
    if value is None:
        return default
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


def enumerate_space(n_layer=None, n_head=None, n_embd=None, block_size=None, batch_size=None,
                    vocab_size=None, head_dims: tuple[int, ...] = HEAD_DIMS,
                    aspect: tuple[int, int] | None = ASPECT) -> dict[str, np.ndarray]:
    """All (shape, batch) combinations as flat arrays, batch innermost. Heads: n_embd / head_dim unless fixed.

    `aspect` bounds n_embd / n_layer when neither is fixed by the caller (None: no bound)."""
    layers = _as_list(n_layer, DEFAULT_SPACE["n_layer"])
    widths = _as_list(n_embd, DEFAULT_SPACE["n_embd"])
    blocks = _as_list(block_size, DEFAULT_SPACE["block_size"])
    batches = sorted(set(_as_list(batch_size, DEFAULT_SPACE["batch_size"])))
    vocabs = _as_list(vocab_size, DEFAULT_SPACE["vocab_size"])
    fixed_heads = _as_list(n_head, []) if n_head is not None else None
    pairs = []  # (n_head, n_embd)
    for c in widths:
        heads = fixed_heads if fixed_heads is not None else sorted({c // d for d in head_dims if c % d == 0})
        pairs += [(h, c) for h in heads if 1 <= h <= MAX_HEADS and c % h == 0]
    if not pairs:
        raise VramfitError("no valid (n_head, n_embd) pair in the search space (n_embd must divide by n_head)")
    if min(layers + blocks + batches + vocabs) < 1:
        raise VramfitError("every size in the search space must be >= 1")
    if aspect is None or n_layer is not None or n_embd is not None:
        aspect = (0, math.inf)
    shapes = np.array([(L, h, c, T, V) for L in layers for h, c in pairs for T in blocks for V in vocabs
                       if aspect[0] <= c / L <= aspect[1]], dtype=np.int64)
    if not len(shapes):
        raise VramfitError("the search space is empty (check --n-layer / --n-embd)")
    S, NB = len(shapes), len(batches)
    out = {k: np.repeat(shapes[:, i], NB) for i, k in enumerate(("n_layer", "n_head", "n_embd", "block_size",
                                                                     "vocab_size"))}
    out["batch_size"] = np.tile(np.asarray(batches, dtype=np.int64), S)
    out["_n_batches"] = NB
    return out


def predict_space(model: MemoryModel, space: dict[str, np.ndarray]) -> tuple[dict, np.ndarray]:
    feats = features(space["n_layer"], space["n_head"], space["n_embd"], space["block_size"],
                     space["batch_size"], space["vocab_size"])
    return feats, model.predict(feats)


def suggest(model: MemoryModel, margin_rel: float, budget_bytes: int, objective: str = "params",
            top: int = 10, min_batch: int = 1, command=None, **space_args) -> list[Suggestion]:
    """Configs whose prediction + margin fits `budget_bytes`, one per shape (its largest fitting batch), ranked."""
    if objective not in OBJECTIVES:
        raise VramfitError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if budget_bytes <= 0:
        raise VramfitError("the budget must be positive (is --reserve larger than --vram?)")
    floor = model.intercept_ * (1 + margin_rel)
    if budget_bytes <= floor:
        raise VramfitError(f"a budget of {budget_bytes / 2**30:.2f} GiB is below this device's constant "
                           f"({floor / 2**30:.2f} GiB with margin): nothing can fit")
    space = enumerate_space(**space_args)
    NB = space.pop("_n_batches")
    feats, pred = predict_space(model, space)
    need = pred * (1 + margin_rel)
    fits = (need <= budget_bytes) & (space["batch_size"] >= min_batch)
    if not fits.any():
        return []
    # per shape: the largest batch that fits (batch is the innermost axis)
    fits2 = fits.reshape(-1, NB)
    last = NB - 1 - np.argmax(fits2[:, ::-1], axis=1)
    any_fit = fits2.any(axis=1)
    idx = (np.nonzero(any_fit)[0] * NB + last[any_fit])
    P, N, cost = feats["params"][idx], feats["tokens"][idx], need[idx]
    odd_heads = np.abs(space["n_embd"][idx] / space["n_head"][idx] - 64)  # ties: prefer head_dim 64
    primary = {"params": (-N, -P), "tokens": (-P, -N), "balanced": (-(np.log(P) + np.log(N)),)}[objective]
    order = np.lexsort((odd_heads, cost, *primary))  # lexsort: the last key is the primary one
    chosen, seen = [], set()
    for i in idx[order]:  # one row per (layers, width, block, vocab): head count barely changes memory
        key = (space["n_layer"][i], space["n_embd"][i], space["block_size"][i], space["vocab_size"][i])
        if key not in seen:
            seen.add(key)
            chosen.append(i)
            if len(chosen) == top:
                break
    chosen = np.asarray(chosen, dtype=np.int64)
    sub = {k: v[chosen] for k, v in feats.items()}
    parts = model.breakdown(sub)
    out = []
    for rank, (i, part) in enumerate(zip(chosen, parts, strict=True), start=1):
        s = Suggestion(
            rank=rank, **{k: int(space[k][i]) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                                          "vocab_size")},
            params=int(feats["params"][i]), tokens_per_step=int(feats["tokens"][i]),
            predicted_bytes=int(pred[i]), margin_bytes=int(pred[i] * margin_rel),
            headroom_bytes=int(budget_bytes - need[i]), regime=part.pop("regime"),
            breakdown={k: int(v) for k, v in part.items()},
        )
        s.command = command(s) if command else ""
        out.append(s)
    return out


def smallest_need(model: MemoryModel, margin_rel: float, **space_args) -> tuple[int, dict]:
    """The least memory (prediction + margin) any config in the space needs, and that config."""
    space = enumerate_space(**space_args)
    space.pop("_n_batches")
    _, pred = predict_space(model, space)
    i = int(np.argmin(pred))
    return int(math.ceil(pred[i] * (1 + margin_rel))), {k: int(v[i]) for k, v in space.items()}
