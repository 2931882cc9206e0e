"""Point -> physical feature vector: the one place that knows the physics of a training step's memory.

For a nanoGPT step with AdamW (N = batch*block tokens, L layers, C width, H heads, T block, V vocab, P params):
- `params`  P        weights + grads + Adam m, v (~16 B/param in fp32; bf16 autocast adds weight copies)
- `logits`  N*V      logits, log-softmax and their gradients (~10-14 B per token per vocab entry)
- `acts`    N*L*C    per-layer activations saved for backward (~30-65 B per token per layer per channel)
- `attn`    N*L*H*T  attention score matrices: ~0 with flash/efficient kernels, large on the math path
- `embed`   N*C      embeddings, final LayerNorm and lm_head input, outside the layers
plus a constant (context, workspaces, allocator slack). The naive baseline uses (params, tokens) only.

A profile of GPT-2 points whose recipes vary the switches (gradient accumulation, activation checkpointing, the
optimizer) fits RECIPE_PHYSICS: the same terms with the switches in them (`features(..., switches=...)`):
- `state`        the optimizer's state in bytes, exactly (`GPTConfig.optimizer_state_bytes`: AdamW's m and v,
                 SGD's momentum, Adafactor's row and column factors, Muon's buffers); ~1 x, held from step 1 on
- `accum_grads`  P when grad_accum > 1: every gradient is kept across the micro-steps, so the later micro-steps'
                 forward and backward run with all of them alive (~4 B/param in fp32)
- `acts`, `attn` only the blocks that are not checkpointed
- `ckpt_inputs`  N*C per checkpointed block: the block input that `torch.utils.checkpoint` keeps
- `recompute`    where blocks are checkpointed, the recompute of one block in backward is a piece of its own
                 beside the optimizer step (REBLOCK: c0 + weights + state + one block's activations and its input,
                 N*C, + the gradients alive, the other block inputs and plain blocks' activations held where it
                 peaks, in its MLP's backward): at block 0 (recomputed last: every gradient but its own and the
                 position table's alive, nothing else held) or at the deepest checkpointed block (recomputed first:
                 every block input and the plain blocks before it held, only the later blocks' and the tied head's
                 gradients alive), whichever holds more (`recompute_columns`); with accumulation every gradient is
                 alive at both, and the head's new part beside them (CPU dry run: within 4 KiB of every such peak)
All functions work elementwise on numpy arrays, so `suggest` evaluates whole search spaces at once.

Points of both families (`vramfit.shape.Shape.arch`: GPT-2 and nanochat's block, each with any optimizer) take the
`FAMILY` features. `params` counts the exact bytes that live through the step (weights, optimizer state and
buffers, from `GPTConfig.param_bytes` / `optimizer_state_bytes`) in units of 12 B, and `grads` the gradients' in
units of 4 B: both exactly P for GPT-2 under AdamW in fp32; Muon's one state, the untied head, the value-embedding
tables and the rotary tables are in them. The GPT-2 terms above are zero on nanochat rows, which have their own
(zero on GPT-2 rows; kv = n_kv_head * head_dim, F the MLP's hidden width):
- `chat_logits` N*V      soft-capped logits in fp32, log-softmax and their gradients
- `chat_acts`   N*L*C    residual-width tensors saved per layer (parameter-free norms, rotary, QK-norm, scalars)
- `kv_acts`     N*L*kv   K and V at their width under grouped-query attention
- `mlp_acts`    N*L*F*k  the MLP's hidden tensors saved for backward: ReLU^2 F = 4C, k = 2; SwiGLU 8C/3, k = 4
- `ve_acts`     N*E*kv   value-embedding lookups and their gated sums on the E layers that have them
- `chat_embed`  N*C      token embedding, its norm, x0 and the final norm, outside the layers
- `chat_attn`   T*T*S    the explicit masks of the S layers whose short window is shorter than the context (kept
                         for backward; one per layer, whatever the batch: the CPU's SDPA takes the mask as it is)
`layer` (N*C on GPT-2 rows, as in PHYSICS) and `chat_layer` (N*F on nanochat rows) size the in-layer transient, and
the optimizer step's transients are `muon_stack` (Muon orthogonalises each group of same-shape matrices as one
stack: the largest stack's elements), `muon_square` (that stack's Gram matrices of the Newton-Schulz iterations, k x
min(rows, cols)^2) and `adam_largest` (MuonAdamW updates each other tensor through fp32 temporaries: the largest
one's elements), zero under an optimizer without them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from gpt.config import ADAMW, ROTARY_CACHE, GPTConfig, checkpoint_every, count_params
from vramfit.errors import VramfitError
from vramfit.shape import GPT2, KEYS, Shape

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: predicting from a model file needs no pandas

PHYSICS = ("params", "logits", "acts", "attn", "embed")
CHAT = ("grads", "chat_logits", "chat_acts", "kv_acts", "mlp_acts", "ve_acts", "chat_embed", "chat_attn")
STEP = ("grads", "muon_stack", "muon_square", "adam_largest")  # the step regime's features beside `params` (FAMILY)
FAMILY = (*PHYSICS, *CHAT)  # points of both families (any point not GPT-2's)
SWITCH_FEATURES = ("state", "accum_grads", "ckpt_inputs")
# the recompute piece (checkpointing): shared columns, then the columns of the block where it peaks (RECOMPUTE_AT)
REBLOCK = ("params", "state", "recompute", "grads", "inputs", "acts")
RECOMPUTE_AT = ("first", "deepest")  # block 0 (recomputed last) | the deepest checkpointed block (recomputed first)
RECIPE_PHYSICS = PHYSICS + SWITCH_FEATURES  # GPT-2 points whose recipes vary the switches
NAIVE = ("params", "tokens")
SWITCHES = ("grad_accum", "checkpoint", "optimizer")  # the Recipe fields a RECIPE_PHYSICS profile prices
MLP_SAVED = {"gelu": 2, "relu2": 2, "swiglu": 4}  # hidden-width tensors an MLP saves for backward
UNITS = {
    "params": "B/param",
    "logits": "B per token per vocab entry",
    "acts": "B per token per layer per channel",
    "attn": "B per token per layer per head per position",
    "embed": "B per token per channel",
    "tokens": "B/token",
    "grads": "B per gradient element",
    "chat_acts": "B per token per layer per channel (nanochat)",
    "chat_embed": "B per token per channel (nanochat)",
    "chat_attn": "B per query-key pair per masked layer",
    "kv_acts": "B per token per layer per K/V channel",
    "mlp_acts": "B per token per layer per saved hidden channel",
    "ve_acts": "B per token per value-embedding layer per K/V channel",
    "chat_logits": "B per token per vocab entry (nanochat)",
    "muon_stack": "B per element of the largest Muon stack",
    "muon_square": "B per element of its Gram matrices (k x min(rows, cols)^2)",
    "adam_largest": "B per element of the largest MuonAdamW AdamW tensor",
    "estimate": "x dry-run estimate",
    "state": "x optimizer-state bytes",
    "accum_grads": "B/param (gradients kept across micro-steps)",
    "ckpt_inputs": "B per token per checkpointed block per channel",
    "recompute": "B per token per channel (a block recomputed in backward)",
    "inputs": "B per token per channel per block input held at the recompute peak",
}
# which terms of the physics model make up each part of a prediction's breakdown
BREAKDOWN = {"params+optimizer": ("params", "grads", "state", "accum_grads"), "logits": ("logits", "chat_logits"),
             "activations": ("acts", "embed", "chat_acts", "kv_acts", "mlp_acts", "ve_acts", "chat_embed",
                             "ckpt_inputs"),
             "attention": ("attn", "chat_attn")}
LOSS_TERMS = {PHYSICS: ("logits", "embed"), RECIPE_PHYSICS: ("logits", "embed"),
              FAMILY: ("logits", "embed", "chat_logits", "chat_embed")}
LAYER_TERMS = {PHYSICS: ("embed",), RECIPE_PHYSICS: ("embed",), FAMILY: ("layer", "chat_layer")}  # in-layer transient


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
            **recompute_columns(L, C, T, V, N, P, block, every, accum)}


def recompute_columns(L, C, T, V, N, P, block, every, accum) -> dict:
    """The columns of the recompute piece at each block where it can peak (`<column>_<RECOMPUTE_AT>`), 0 where no
    block is checkpointed; the recomputed block's own input is in `recompute`, `inputs` are the other checkpointed
    blocks' inputs still held. The peak is in the recomputed block's MLP backward (CPU dry run: at gelu_backward
    or at the output projection's weight-gradient mm), where that projection's gradient (4C x C + C) exists too.
    Gradients alive: without accumulation, the tied head's (computed first; it waits in autograd's input buffer
    of the embedding's AccumulateGrad until the embedding's backward adds its part: torch/csrc/autograd/engine.cpp
    evaluate_function, `not_ready.emplace(...)`) and those of the blocks after it, the position table's last; with
    accumulation every gradient (the earlier micro-steps') plus the head's new V x C part in that buffer, and the
    projection's new weight gradient is a tensor of its own until AccumulateGrad adds it (`variable_grad +=
    new_grad`, torch/csrc/autograd/functions/accumulate_grad.h, pytorch/pytorch@ec2a19d L58-65)."""
    on, k = every > 0, np.maximum(every, 1)
    ckpt = on * np.ceil(L / k)
    deepest = k * np.floor((L - 1) / k)  # the deepest checkpointed block (0, k, 2k, ...)
    projection = 4 * C * C + C  # the MLP's output projection (weight and bias)

    def grads(done_blocks):
        return on * (np.where(accum > 1, P + V * C, P - done_blocks * block - T * C) + projection)

    return {"grads_first": grads(1.0), "inputs_first": 0.0 * N, "acts_first": 0.0 * N,
            "grads_deepest": grads(deepest + 1), "inputs_deepest": on * N * C * (ckpt - 1),
            "acts_deepest": on * N * C * (deepest - (ckpt - 1))}


def switch_columns(shapes, recipes, bias: bool = True) -> dict:
    """{grad_accum, checkpoint_every, state} per row of `shapes` (rows in KEYS order) under `recipes` (one
    `vramfit.recipe.Recipe`, or a list of one per row): the optimizer state's bytes come from
    `GPTConfig.optimizer_state_bytes` (the one place that knows each kind), once per distinct model and recipe."""
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
    from vramfit.recipe import Recipe

    memo = {t: Recipe.from_dict(json.loads(t) if isinstance(t, str) else {}) for t in df["recipe"].unique()}
    return [memo[t] for t in df["recipe"]]


def model_facts(shape: Shape, optimizer: str = "fused", dtype: str = "float32") -> dict[str, float]:
    """What the family features need of one model (torch-free, from `GPTConfig`'s own counts): its state in
    AdamW-fp32 parameters (weight + optimizer-state + buffer bytes / 12), its gradients (bytes / 4), the K/V
    width, the MLP's saved hidden width, the value-embedding layers, and the largest tensors the optimizer step
    works on."""
    cfg = shape.model_config()
    counts, width = cfg.param_counts(), cfg.param_bytes(dtype)
    weights = sum(counts[g] * width[g] for g in counts)
    state = weights + sum(cfg.optimizer_state_bytes(optimizer, dtype).values())
    chat = cfg.arch == "nanochat"
    if chat:  # the rotary tables: cos and sin for ROTARY_CACHE x the context, half the head dimension each
        state += 2 * ROTARY_CACHE * cfg.block_size * cfg.head_dim // 2 * (2 if dtype == "bfloat16" else 4)
    muon = optimizer == "muon"
    shapes = cfg.param_shapes()
    (rows, cols), k = max(cfg.muon_stacks().items(), key=lambda s: s[1] * s[0][0] * s[0][1])
    return {
        "state": state / 12,
        "grads": weights / 4,
        "chat": float(chat),
        "kv": cfg.n_kv_head * cfg.head_dim if chat else 0.0,
        "hidden": float(cfg.mlp_hidden()),
        "mlp": cfg.mlp_hidden() * MLP_SAVED[cfg.mlp] if chat else 0.0,
        "ve": float(len(cfg.value_embed_layers()) * cfg.n_kv_head * cfg.head_dim) if chat else 0.0,
        "masked": float(sum(w < cfg.block_size for w in cfg.window_sizes())) if chat else 0.0,
        "muon_stack": float(k * rows * cols) if muon else 0.0,
        "muon_square": float(k * min(rows, cols) ** 2) if muon else 0.0,
        "adam_largest": float(max((max(r, 1) * c for g, sh in shapes.items() if g != "matrices" for r, c in sh),
                                  default=0)) if muon else 0.0,
    }


def family_features(sizes: Mapping[str, np.ndarray], arch: np.ndarray | str = GPT2, optimizer: str = "fused",
                    dtype: str = "float32") -> dict[str, np.ndarray]:
    """The `FAMILY` and `STEP` columns of points given as arrays of the KEYS sizes and their `arch` texts, under
    one optimizer and dtype (a profile's recipe): `model_facts` once per distinct model, then per point."""
    L, H, C, T, B, V = np.broadcast_arrays(*(np.atleast_1d(np.asarray(sizes[k], dtype=np.float64)) for k in KEYS))
    N = B * T
    if isinstance(arch, str):  # one family for every point (a search space)
        names, codes = np.array([arch]), np.zeros(N.shape)
    else:
        names, codes = np.unique(np.broadcast_to(np.asarray(arch, dtype=object), N.shape).astype(str),
                                 return_inverse=True)
    models, where = np.unique(np.column_stack([L, H, C, T, V, codes.reshape(N.shape)]), axis=0, return_inverse=True)
    table = [model_facts(Shape(*(int(v) for v in m[:4]), 1, int(m[4]), names[int(m[5])]), optimizer, dtype)
             for m in models]
    facts = {name: np.array([t[name] for t in table])[where.reshape(N.shape)] for name in table[0]}
    chat = facts["chat"]
    gpt2 = 1.0 - chat
    base = {k: v * gpt2 if k in PHYSICS else v for k, v in features(L, H, C, T, B, V).items()}
    return {**base, "params": facts["state"], "grads": facts["grads"], "chat_logits": chat * N * V,
            "chat_acts": chat * N * L * C, "kv_acts": N * L * facts["kv"], "mlp_acts": N * L * facts["mlp"],
            "ve_acts": N * facts["ve"],
            "chat_embed": chat * N * C, "chat_attn": T * T * facts["masked"],
            "layer": gpt2 * N * C, "chat_layer": chat * N * facts["hidden"],
            "muon_stack": facts["muon_stack"], "muon_square": facts["muon_square"],
            "adam_largest": facts["adam_largest"]}


def has_families(df: pd.DataFrame) -> bool:
    """Whether any of the points is not GPT-2's (then the fit takes the `FAMILY` features)."""
    return "arch" in df.columns and bool((df["arch"].fillna(GPT2) != GPT2).any())


def optimizer_dtype(recipe: Mapping | str | None) -> tuple[str, str]:
    """(optimizer, dtype) of a resolved recipe (a dict or its JSON) as the features count them: the AdamW
    implementations are one ('fused'); unknown: 'fused' and 'float32'."""
    try:
        recipe = json.loads(recipe) if isinstance(recipe, str) else recipe
    except json.JSONDecodeError:
        recipe = None
    recipe = recipe if isinstance(recipe, Mapping) else {}
    optimizer, dtype = recipe.get("optimizer") or "fused", recipe.get("dtype") or "float32"
    return (optimizer if optimizer not in ("auto", *ADAMW) else "fused"), (dtype if dtype != "auto" else "float32")


def recipe_of(df: pd.DataFrame) -> tuple[str, str]:
    """(optimizer, dtype) of the points' resolved recipe (one recipe per fit)."""
    return optimizer_dtype(df["recipe"].iloc[0] if "recipe" in df.columns and len(df) else None)


def columns(sizes: Mapping[str, np.ndarray], arch: np.ndarray | str = GPT2,
            family: tuple[str, str] | None = None) -> dict[str, np.ndarray]:
    """Feature columns of points given as arrays of the KEYS sizes: PHYSICS, or with `family` (a FAMILY model's
    (optimizer, dtype): `MemoryModel.family_`) the FAMILY and STEP columns of the points' `arch`."""
    if family is None:
        return features(*(sizes[k] for k in KEYS))
    return family_features(sizes, arch, *family)


def point_features(points: Sequence[Mapping], families: bool = False,
                   recipe: Mapping | None = None) -> dict[str, np.ndarray]:
    """Feature columns of points given as mappings of the KEYS sizes (and `arch` where not GPT-2): PHYSICS, or
    with `families` the FAMILY and STEP columns under `recipe` (a resolved recipe: its optimizer and dtype)."""
    sizes = {k: np.array([int(p[k]) for p in points], dtype=np.float64) for k in KEYS}
    arch = np.array([Shape.of(p).arch for p in points], dtype=object)
    return columns(sizes, arch, optimizer_dtype(recipe) if families else None)


def frame_features(df: pd.DataFrame, bias: bool = True, families: bool | None = None,
                   switches: bool = False) -> pd.DataFrame:
    """Feature columns for a DataFrame of points (with the KEYS columns; `arch` and `recipe` where they have
    them). `families` (default: `has_families`) adds the FAMILY and STEP columns, under the points' recipe;
    `switches` the RECIPE_PHYSICS columns of each row's recipe (GPT-2 points only)."""
    import pandas as pd

    missing = [c for c in KEYS if c not in df.columns]
    if missing:
        raise KeyError(f"points lack columns: {', '.join(missing)}")
    if families if families is not None else has_families(df):
        if switches:
            raise VramfitError("the switch features are GPT-2's: these points include other families")
        arch = df["arch"].fillna(GPT2).to_numpy() if "arch" in df.columns else np.full(len(df), GPT2, dtype=object)
        feats = family_features({k: df[k].to_numpy() for k in KEYS}, arch, *recipe_of(df))
    else:
        sw = switch_columns(df[list(KEYS)].to_numpy(), frame_recipes(df), bias) if switches and len(df) else None
        feats = features(*(df[c].to_numpy() for c in KEYS), bias=bias, switches=sw)
    return pd.DataFrame(feats, index=df.index)


def shape_key(df: pd.DataFrame) -> pd.Series:
    """A model-shape id per row (layers, heads, width, vocab, and the family where it is not GPT-2's): the groups
    for extrapolation CV."""
    key = df["n_layer"].astype(str) + "x" + df["n_head"].astype(str) + "x" + df["n_embd"].astype(str) + \
        "/v" + df["vocab_size"].astype(str)
    if has_families(df):
        key = key + "/" + df["arch"].fillna(GPT2).astype(str)
    return key
