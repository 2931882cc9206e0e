"""Synthetic measurements from known coefficients, for planner tests (no sweep needed)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd

from vramfit.fit.features import features

TRUE = {"const": 3.0e8, "params": 12.0, "logits": 12.0, "acts": 40.0, "attn": 0.5, "embed": 8.0, "layer": 24.0,
        "step_const": 3.0e8, "step_params": 20.0}


def true_memory(L, H, C, T, B, V):
    """Common state + the larger transient (at the loss, or inside a block), or the optimizer step."""
    f = features(L, H, C, T, B, V)
    common = TRUE["const"] + sum(TRUE[k] * f[k] for k in ("params", "acts", "attn"))
    transient = np.maximum(TRUE["logits"] * f["logits"] + TRUE["embed"] * f["embed"], TRUE["layer"] * f["embed"])
    return np.maximum(common + transient, TRUE["step_const"] + TRUE["step_params"] * f["params"])


def synthetic_points(noise: float = 0.002, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for L, C, T, B, V in itertools.product([2, 4, 8], [128, 256, 512], [128, 256], [1, 4, 16], [512, 8192]):
        H = C // 64
        y = float(true_memory(L, H, C, T, B, V)[0]) * (1 + rng.normal(0, noise))
        rows.append(dict(n_layer=L, n_head=H, n_embd=C, block_size=T, batch_size=B, vocab_size=V, status="ok",
                         nvml_bytes=y, device_type="cuda", device_name="Synthetic GPU", recipe_key="r1",
                         recipe=json.dumps({"dtype": "bfloat16", "compile": True}), total_memory_bytes=8 * 2**30))
    return pd.DataFrame(rows)


SYNTHETIC_GPU = {"device_type": "cuda", "device_name": "Synthetic GPU", "total_memory_bytes": 8 * 2**30,
                 "gpu_uuid": "GPU-synthetic", "torch_version": "test"}


def synthetic_db(path, points: pd.DataFrame | None = None):
    """A vramfit database of `points` (default: all of `synthetic_points()`) on the synthetic GPU, bf16 compiled."""
    from vramfit.recipe import Recipe
    from vramfit.store import Store

    with Store(path) as store:
        env = store.environment(SYNTHETIC_GPU, Recipe(dtype="bfloat16", compile=True, optimizer="fused"))
        for rec in (synthetic_points() if points is None else points).to_dict("records"):
            store.insert_point(rec, env, None)
    return path
