"""Point -> physical feature vector: the one place that knows the physics of a training step's memory.

For a nanoGPT step with AdamW (N = batch*block tokens, L layers, C width, H heads, T block, V vocab, P params):
- `params`  P        weights + grads + Adam m, v (~16 B/param in fp32; bf16 autocast adds weight copies)
- `logits`  N*V      logits, log-softmax and their gradients (~10-14 B per token per vocab entry)
- `acts`    N*L*C    per-layer activations saved for backward (~30-65 B per token per layer per channel)
- `attn`    N*L*H*T  attention score matrices: ~0 with flash/efficient kernels, large on the math path
- `embed`   N*C      embeddings, final LayerNorm and lm_head input, outside the layers
plus a constant (context, workspaces, allocator slack). The naive baseline uses (params, tokens) only.

A profile whose points vary the recipe's switches (gradient accumulation, activation checkpointing, the
optimizer) fits RECIPE_PHYSICS: the same terms with the switches in them (`features(..., switches=...)`):
- `state`        the optimizer's state in bytes, exactly (`GPTConfig.optimizer_state_bytes`: AdamW's m and v,
                 SGD's momentum, Adafactor's row and column factors, Muon's buffers); ~1 x, held from step 1 on
- `accum_grads`  P when grad_accum > 1: every gradient is kept across the micro-steps, so the later micro-steps'
                 forward and backward run with all of them alive (~4 B/param in fp32)
- `acts`, `attn` only the blocks that are not checkpointed
- `ckpt_inputs`  N*C per checkpointed block: the block input that `torch.utils.checkpoint` keeps
- `recompute`    where blocks are checkpointed, the recompute of one block in backward is a piece of its own
                 beside the optimizer step (REBLOCK: c0 + weights + state + one block's activations, N*C, + the
                 gradients alive, the block inputs and plain blocks' activations held where it peaks): at block 0
                 (recomputed last: every gradient but its own and the position table's alive, nothing else held)
                 or at the deepest checkpointed block (recomputed first: every block input and the plain blocks
                 before it held, only the later blocks' and the tied head's gradients alive), whichever holds more
                 (`recompute_columns`); with accumulation every gradient is alive at both
All functions work elementwise on numpy arrays, so `suggest` evaluates whole search spaces at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gpt.config import count_params
from vramfit.shape import KEYS

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: predicting from a model file needs no pandas

PHYSICS = ("params", "logits", "acts", "attn", "embed")
SWITCH_FEATURES = ("state", "accum_grads", "ckpt_inputs")
# the recompute piece (checkpointing): shared columns, then the columns of the block where it peaks (RECOMPUTE_AT)
REBLOCK = ("params", "state", "recompute", "grads", "inputs", "acts")
RECOMPUTE_AT = ("first", "deepest")  # block 0 (recomputed last) | the deepest checkpointed block (recomputed first)
RECIPE_PHYSICS = PHYSICS + SWITCH_FEATURES
NAIVE = ("params", "tokens")
SWITCHES = ("grad_accum", "checkpoint", "optimizer")  # the Recipe fields a RECIPE_PHYSICS profile prices
UNITS = {
    "params": "B/param",
    "logits": "B per token per vocab entry",
    "acts": "B per token per layer per channel",
    "attn": "B per token per layer per head per position",
    "embed": "B per token per channel",
    "tokens": "B/token",
    "estimate": "x dry-run estimate",
    "state": "x optimizer-state bytes",
    "accum_grads": "B/param (gradients kept across micro-steps)",
    "ckpt_inputs": "B per token per checkpointed block per channel",
    "recompute": "B per token per channel (a block recomputed in backward)",
    "grads": "B per gradient alive at the recompute peak",
    "inputs": "B per token per channel per block input held at the recompute peak",
}
# which terms of the physics model make up each part of a prediction's breakdown
BREAKDOWN = {"params+optimizer": ("params", "state", "accum_grads"), "logits": ("logits",),
             "activations": ("acts", "embed", "ckpt_inputs"), "attention": ("attn",)}


def features(n_layer, n_head, n_embd, block_size, batch_size, vocab_size, bias: bool = True,
             switches: dict | None = None) -> dict:
    """All feature columns (physics and naive) for one point or for arrays of points, as float64.

    `switches` ({grad_accum, checkpoint_every, state}: arrays or scalars, see `switch_columns`) adds the
    RECIPE_PHYSICS columns and counts only the blocks that are not checkpointed in `acts` and `attn`."""
    L, H, C, T, B, V = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in
                                             (n_layer, n_head, n_embd, block_size, batch_size, vocab_size)))
    N = B * T
    P = np.asarray(count_params(L, C, T, V, bias), dtype=np.float64)
    out = {"params": P, "tokens": N, "logits": N * V, "acts": N * L * C, "attn": N * L * H * T, "embed": N * C}
    if switches is None:
        return out

    def col(name: str) -> np.ndarray:
        return np.broadcast_to(np.asarray(switches[name], dtype=np.float64), L.shape)

    every, accum = col("checkpoint_every"), col("grad_accum")
    ckpt = np.where(every > 0, np.ceil(L / np.maximum(every, 1)), 0.0)  # blocks 0, k, 2k, ... are checkpointed
    block = (P - np.asarray(count_params(0, C, T, V, bias), dtype=np.float64)) / np.maximum(L, 1)  # one block's
    return {**out, "acts": N * (L - ckpt) * C, "attn": N * (L - ckpt) * H * T, "state": col("state").copy(),
            "accum_grads": P * (accum > 1), "ckpt_inputs": N * ckpt * C, "recompute": N * C * (ckpt > 0),
            **recompute_columns(L, C, T, N, P, block, every, accum)}


def recompute_columns(L, C, T, N, P, block, every, accum) -> dict:
    """The columns of the recompute piece at each block where it can peak (`<column>_<RECOMPUTE_AT>`), 0 where no
    block is checkpointed. Gradients alive: with accumulation all (the earlier micro-steps'); without, the tied
    head's (computed first) and those of the blocks after it; the position table's come last."""
    on, k = every > 0, np.maximum(every, 1)
    ckpt = on * np.ceil(L / k)
    deepest = k * np.floor((L - 1) / k)  # the deepest checkpointed block (0, k, 2k, ...)

    def grads(done_blocks):
        return on * np.where(accum > 1, P, P - done_blocks * block - T * C)

    return {"grads_first": grads(1.0), "inputs_first": 0.0 * N,  # block 0's own input is in `recompute`
            "acts_first": 0.0 * N, "grads_deepest": grads(deepest + 1),
            "inputs_deepest": on * N * C * ckpt, "acts_deepest": on * N * C * (deepest - (ckpt - 1))}


def switch_columns(shapes, recipes, bias: bool = True) -> dict:
    """{grad_accum, checkpoint_every, state} per row of `shapes` (rows in KEYS order) under `recipes` (one
    `vramfit.recipe.Recipe`, or a list of one per row): the optimizer state's bytes come from
    `GPTConfig.optimizer_state_bytes` (the one place that knows each kind), once per distinct model and recipe."""
    from gpt.config import GPTConfig, checkpoint_every

    shapes = np.atleast_2d(np.asarray(shapes, dtype=np.int64))
    many = isinstance(recipes, list | tuple)
    rows = list(recipes) if many else [recipes]
    models = np.delete(shapes, KEYS.index("batch_size"), axis=1)  # the state does not depend on the batch
    if not many:  # one recipe (a search space): each distinct model once
        models, back = np.unique(models, axis=0, return_inverse=True)
    state = np.empty(len(models))
    for i, (L, H, C, T, V) in enumerate(models.tolist()):
        r = rows[i if many else 0]
        opt = "fused" if r.optimizer == "auto" else r.optimizer
        state[i] = sum(GPTConfig(L, H, C, T, V, bias=bias).optimizer_state_bytes(opt, r.dtype).values())
    if not many:
        state, rows = state[np.ravel(back)], rows * len(shapes)
    return {"grad_accum": np.array([r.grad_accum for r in rows], dtype=np.float64),
            "checkpoint_every": np.array([checkpoint_every(r.checkpoint) for r in rows], dtype=np.float64),
            "state": state}


def frame_recipes(df: pd.DataFrame) -> list:
    """The `vramfit.recipe.Recipe` of each row of a points frame (its `recipe` JSON column)."""
    import json

    from vramfit.recipe import Recipe

    memo = {t: Recipe.from_dict(json.loads(t) if isinstance(t, str) else {}) for t in df["recipe"].unique()}
    return [memo[t] for t in df["recipe"]]


def frame_features(df: pd.DataFrame, bias: bool = True, switches: bool = False) -> pd.DataFrame:
    """Feature columns for a DataFrame of points (with the KEYS columns); `switches`: with the RECIPE_PHYSICS
    columns of each row's recipe (its `recipe` JSON column)."""
    import pandas as pd

    missing = [c for c in KEYS if c not in df.columns]
    if missing:
        raise KeyError(f"points lack columns: {', '.join(missing)}")
    sw = switch_columns(df[list(KEYS)].to_numpy(), frame_recipes(df), bias) if switches and len(df) else None
    feats = features(*(df[c].to_numpy() for c in KEYS), bias=bias, switches=sw)
    return pd.DataFrame(feats, index=df.index)


def shape_key(df: pd.DataFrame) -> pd.Series:
    """A model-shape id per row (layers, heads, width, vocab): the groups for extrapolation CV."""
    return df["n_layer"].astype(str) + "x" + df["n_head"].astype(str) + "x" + df["n_embd"].astype(str) + \
        "/v" + df["vocab_size"].astype(str)
