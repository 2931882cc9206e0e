"""Point -> physical feature vector: the one place that knows the physics of a training step's memory.

For a nanoGPT step with AdamW (N = batch*block tokens, L layers, C width, H heads, T block, V vocab, P params):
- `params`  P        weights + grads + Adam m, v (~16 B/param in fp32; bf16 autocast adds weight copies)
- `logits`  N*V      logits, log-softmax and their gradients (~10-14 B per token per vocab entry)
- `acts`    N*L*C    per-layer activations saved for backward (~30-65 B per token per layer per channel)
- `attn`    N*L*H*T  attention score matrices: ~0 with flash/efficient kernels, large on the math path
- `embed`   N*C      embeddings, final LayerNorm and lm_head input, outside the layers
plus a constant (context, workspaces, allocator slack). The naive baseline uses (params, tokens) only.
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
NAIVE = ("params", "tokens")
UNITS = {
    "params": "B/param",
    "logits": "B per token per vocab entry",
    "acts": "B per token per layer per channel",
    "attn": "B per token per layer per head per position",
    "embed": "B per token per channel",
    "tokens": "B/token",
    "estimate": "x dry-run estimate",
}
# which terms of the physics model make up each part of a prediction's breakdown
BREAKDOWN = {"params+optimizer": ("params",), "logits": ("logits",), "activations": ("acts", "embed"),
             "attention": ("attn",)}


def features(n_layer, n_head, n_embd, block_size, batch_size, vocab_size, bias: bool = True) -> dict:
    """All feature columns (physics and naive) for one point or for arrays of points, as float64."""
    L, H, C, T, B, V = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in
                                             (n_layer, n_head, n_embd, block_size, batch_size, vocab_size)))
    N = B * T
    return {
        "params": np.asarray(count_params(L, C, T, V, bias), dtype=np.float64),
        "tokens": N,
        "logits": N * V,
        "acts": N * L * C,
        "attn": N * L * H * T,
        "embed": N * C,
    }


def frame_features(df: pd.DataFrame, bias: bool = True) -> pd.DataFrame:
    """Feature columns for a DataFrame of points (with the KEYS columns)."""
    import pandas as pd

    missing = [c for c in KEYS if c not in df.columns]
    if missing:
        raise KeyError(f"points lack columns: {', '.join(missing)}")
    feats = features(*(df[c].to_numpy() for c in KEYS), bias=bias)
    return pd.DataFrame(feats, index=df.index)


def shape_key(df: pd.DataFrame) -> pd.Series:
    """A model-shape id per row (layers, heads, width, vocab): the groups for extrapolation CV."""
    return df["n_layer"].astype(str) + "x" + df["n_head"].astype(str) + "x" + df["n_embd"].astype(str) + \
        "/v" + df["vocab_size"].astype(str)
