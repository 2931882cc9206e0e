"""The feature columns term by term, on small synthetic shapes (milliseconds each): each column against the physics
it counts, worked out by hand here (the switches' checkpointed blocks and recompute peak, each optimizer's state,
nanochat's untied head, GQA K/V width, value embeddings, masked windows and Muon's stacks), and the frame
helpers' edge cases. The fast file `scripts/mutation.py` runs against `vramfit/fit/features.py`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gpt.config import GPTConfig, count_params
from vramfit.errors import VramfitError
from vramfit.fit.features import (
    FAMILY,
    PHYSICS,
    RECIPE_PHYSICS,
    STEP,
    columns,
    family_features,
    features,
    frame_features,
    frame_recipes,
    has_families,
    model_facts,
    optimizer_dtype,
    point_features,
    recipe_of,
    recompute_columns,
    shape_key,
    switch_columns,
)
from vramfit.recipe import Recipe
from vramfit.shape import GPT2, KEYS, Shape

# n_layer, n_head, n_embd, block_size, batch_size, vocab_size: every size distinct, so that no swapped or
# divided term can land on the right value
L, H, C, T, B, V = 5, 2, 16, 12, 3, 40
N = B * T


def test_physics_columns_are_the_step_terms_in_float64():
    f = features(L, H, C, T, B, V)
    assert set(f) == {*PHYSICS, "tokens"}
    assert f["params"][0] == count_params(L, C, T, V, True)
    assert f["tokens"][0] == N and f["logits"][0] == N * V and f["embed"][0] == N * C
    assert f["acts"][0] == N * L * C and f["attn"][0] == N * L * H * T
    assert features(L, H, C, T, B, V, bias=False)["params"][0] == count_params(L, C, T, V, False)
    big = features(4096, 4096, 131072, 2**20, 2**20, 2**24)  # int64 would overflow N*L*H*T; float64 does not
    assert all(v.dtype == np.float64 for v in big.values()) and big["attn"][0] == 2.0 ** 20 * 4096 ** 2 * 2 ** 40
    assert all(v.shape == (1,) for v in features(L, H, C, T, B, V).values())  # a scalar point is a 1-element array


def switched(every, accum=1, state=7.0, layers=L):
    """The switch columns of one shape (layers x C x T x batch B) under checkpoint interval(s) `every`."""
    e = np.atleast_1d(np.asarray(every, dtype=np.float64))
    sw = {"checkpoint_every": e, "grad_accum": accum, "state": state}
    return features(np.full(len(e), layers), H, C, T, B, V, switches=sw)


def test_checkpointed_blocks_keep_only_their_input():
    """Blocks 0, k, 2k, ... are checkpointed: ceil(L/k) of them keep an N*C input, the others their activations."""
    f = switched([0, 1, 2, 3, 4])  # L = 5: 0, 5 (all), 3 (0, 2, 4), 2 (0, 3), 2 (0, 4) checkpointed blocks
    ckpt = np.array([0, 5, 3, 2, 2])
    assert f["ckpt_inputs"].tolist() == (N * ckpt * C).tolist()
    assert f["acts"].tolist() == (N * (L - ckpt) * C).tolist()
    assert f["attn"].tolist() == (N * (L - ckpt) * H * T).tolist()
    assert f["recompute"].tolist() == [0, N * C, N * C, N * C, N * C]  # one block's recompute, where any
    assert f["embed"].tolist() == [N * C] * 5 and f["logits"].tolist() == [N * V] * 5  # outside the blocks
    assert set(f) == {*RECIPE_PHYSICS, "tokens", "recompute",
                      *(f"{c}_{at}" for c in ("grads", "inputs", "acts") for at in ("first", "deepest"))}


def test_state_is_the_bytes_given_and_accumulation_keeps_every_gradient():
    P = count_params(L, C, T, V)
    f = switched([0, 0, 0], accum=np.array([1, 2, 8]), state=np.array([3.0, 5.0, 11.0]))
    assert f["state"].tolist() == [3.0, 5.0, 11.0] and f["state"].flags.writeable  # a column of its own
    assert f["accum_grads"].tolist() == [0, P, P]  # one micro-step: nothing kept across; more: all of them
    assert switched(0, state=9.0)["state"].tolist() == [9.0]  # a scalar broadcast to the points


def test_the_recompute_piece_at_block_0_and_at_the_deepest_checkpointed_block():
    """Without accumulation: at block 0 (recomputed last) every gradient but its own and the position table's is
    alive; at the deepest checkpointed block (recomputed first) the head's and the later blocks' gradients, the
    other block inputs and the plain blocks before it. Both peak in the MLP's backward, beside its output
    projection's gradient (4C x C + C); with accumulation the tied head's new V x C part is there too."""
    P = count_params(L, C, T, V)
    block, proj = (P - count_params(0, C, T, V)) / L, 4 * C * C + C
    f = switched([0, 1, 2, 3])  # L = 5: deepest checkpointed block -, 4, 4, 3
    assert f["grads_first"].tolist() == [0] + [P - block - T * C + proj] * 3
    assert f["grads_deepest"].tolist() == [0, P - 5 * block - T * C + proj, P - 5 * block - T * C + proj,
                                           P - 4 * block - T * C + proj]
    assert f["inputs_first"].tolist() == f["acts_first"].tolist() == [0, 0, 0, 0]
    assert f["inputs_deepest"].tolist() == [0, 4 * N * C, 2 * N * C, 1 * N * C]  # its own input is in `recompute`
    assert f["acts_deepest"].tolist() == [0, 0, 2 * N * C, 2 * N * C]  # k = 2: blocks 1, 3; k = 3: blocks 1, 2
    for accum in (2, 4):  # accumulation: every gradient alive at both, and the head's new part
        acc = switched([0, 2], accum=accum)
        assert acc["grads_first"].tolist() == acc["grads_deepest"].tolist() == [0, P + V * C + proj]


def test_one_checkpointed_block_and_a_one_block_model():
    """k >= L checkpoints block 0 alone (its recompute still happens); a 1-layer model's block is all of its layer
    parameters; without biases, the block counts none."""
    f = switched([5, 9], layers=5)
    assert f["ckpt_inputs"].tolist() == [N * C, N * C] and f["recompute"].tolist() == [N * C, N * C]
    one = features(1, H, C, T, B, V, switches={"checkpoint_every": 1, "grad_accum": 1, "state": 2})
    P1, proj = count_params(1, C, T, V), 4 * C * C + C  # the MLP output projection's gradient, alive at the peak
    assert one["grads_first"].tolist() == [P1 - (P1 - count_params(0, C, T, V)) - T * C + proj]
    assert one["inputs_deepest"].tolist() == [0]  # its one checkpointed block's input is in `recompute` only
    nb = features(L, H, C, T, B, V, bias=False, switches={"checkpoint_every": 1, "grad_accum": 1, "state": 2})
    P0 = count_params(L, C, T, V, False)
    assert nb["grads_first"].tolist() == [P0 - (P0 - count_params(0, C, T, V, False)) / L - T * C + proj]
    ints = features(L, H, C, T, B, V, switches={"checkpoint_every": 0, "grad_accum": 2, "state": 7})
    assert ints["state"].dtype == np.float64 and ints["state"].tolist() == [7.0]  # integer inputs, float64 out


def test_recompute_columns_elementwise():
    every, accum = np.array([1.0, 2.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0, 2.0])
    Ls, Ns = np.array([3.0, 6.0, 6.0, 3.0]), np.array([10.0, 20.0, 30.0, 40.0])
    r = recompute_columns(Ls, 4.0, 2.0, 5.0, Ns, 1000.0, 100.0, every, accum)  # C 4, T 2, V 5, P 1000, block 100
    proj = 4 * 4 * 4 + 4  # the MLP output projection's gradient
    assert r["grads_first"].tolist() == [1000 - 100 - 8 + proj, 1000 - 100 - 8 + proj, 0, 1000 + 5 * 4 + proj]
    assert r["grads_deepest"].tolist() == [1000 - 300 - 8 + proj, 1000 - 500 - 8 + proj, 0,  # block 2, block 4
                                           1000 + 5 * 4 + proj]  # accumulation: all of them and the head's new
    assert r["inputs_deepest"].tolist() == [10 * 4 * 2, 20 * 4 * 2, 0, 40 * 4 * 2]  # the other checkpointed ones
    assert r["acts_deepest"].tolist() == [0, 20 * 4 * 2, 0, 0]  # blocks 1 and 3 before block 4
    assert r["inputs_first"].shape == r["acts_first"].shape == (4,) and not r["inputs_first"].any()


def test_switch_columns_price_each_recipe_once_per_model():
    shapes = np.array([[L, H, C, T, B, V], [2, H, C, T, 1, V], [L, H, C, T, 9, V]])  # rows 0 and 2: one model
    one = switch_columns(shapes, Recipe(optimizer="sgd", grad_accum=3, checkpoint="2"))
    sgd = [4 * count_params(*m) for m in ((L, C, T, V), (2, C, T, V), (L, C, T, V))]  # one momentum per param
    assert one["state"].tolist() == sgd and one["state"].dtype == np.float64
    assert one["grad_accum"].tolist() == [3, 3, 3] and one["checkpoint_every"].tolist() == [2, 2, 2]
    assert one["grad_accum"].dtype == one["checkpoint_every"].dtype == np.float64
    nobias = switch_columns(shapes[:1], Recipe(optimizer="sgd"), bias=False)
    assert nobias["state"].tolist() == [4 * count_params(L, C, T, V, False)]
    rows = [Recipe(optimizer="auto"), Recipe(optimizer="sgd", checkpoint="all"), Recipe(optimizer="adafactor")]
    many = switch_columns(shapes, rows)
    adafactor = sum(GPTConfig(L, H, C, T, V).optimizer_state_bytes("adafactor").values())
    assert many["state"].tolist() == [8 * count_params(L, C, T, V), sgd[1], adafactor]  # auto: AdamW's m and v
    assert adafactor < sgd[0]  # the factored second moment: rows + cols per matrix, not rows x cols
    assert many["checkpoint_every"].tolist() == [0, 1, 0] and many["grad_accum"].tolist() == [1, 1, 1]
    assert switch_columns(list(shapes[0]), Recipe(optimizer="sgd"))["state"].tolist() == sgd[:1]  # one row
    floats = shapes.astype(np.float64)  # a frame's sizes turn float where a column ever held a NaN
    assert switch_columns(floats, Recipe(optimizer="sgd"))["state"].tolist() == sgd


def test_frame_recipes_read_each_rows_recipe():
    text = json.dumps({"optimizer": "sgd", "grad_accum": 2})
    df = pd.DataFrame({"recipe": [text, None, text, json.dumps({"checkpoint": "all"})]})
    got = frame_recipes(df)
    assert got == [Recipe(optimizer="sgd", grad_accum=2), Recipe(), Recipe(optimizer="sgd", grad_accum=2),
                   Recipe(checkpoint="all")]


CHAT = {"n_layer": 4, "n_head": 4, "n_embd": 64, "block_size": 256, "batch_size": 2, "vocab_size": 100}


def chat_shape(arch="nanochat", **kw) -> Shape:
    return Shape(**({**CHAT, **kw} | {"arch": arch}))


def test_model_facts_of_gpt2_under_adamw_are_its_parameters():
    s = Shape(L, H, C, T, B, V)
    P = count_params(L, C, T, V)
    f = model_facts(s)
    assert f == {"state": float(P), "grads": float(P), "chat": 0.0, "kv": 0.0, "hidden": 4.0 * C, "mlp": 0.0,
                 "ve": 0.0, "masked": 0.0, "muon_stack": 0.0, "muon_square": 0.0, "adam_largest": 0.0}
    assert model_facts(s, "sgd")["state"] == P * 8 / 12  # weights + one momentum buffer, in units of 12 B
    assert model_facts(s, "fused", "bfloat16") == f  # GPT-2 keeps fp32 master weights and state


def test_model_facts_of_nanochat():
    """nanochat (4 layers, C = 64, 4 heads of 16, vocab 100 padded to 128, context 256, SSSL windows of 128):
    untied head, GQA K/V width, relu^2 saved twice, value embeddings on layers 1 and 3, three masked layers."""
    s = chat_shape("nanochat:n_kv_head=1")
    cfg = s.model_config()
    P, Vp, kv = cfg.n_params(), 128, 16
    rotary = 2 * 10 * 256 * 8 * 4  # cos and sin, 10 x the context, half of head_dim 16, fp32
    f = model_facts(s, "fused")
    assert f["state"] * 12 == P * 4 + 8 * P + rotary and f["grads"] * 4 == P * 4
    assert (f["chat"], f["kv"], f["hidden"], f["mlp"]) == (1.0, kv, 256.0, 256.0 * 2)
    assert f["ve"] == 2 * kv and f["masked"] == 3.0  # layers 1, 3 | the three S layers (128 < 256)
    assert f["muon_stack"] == f["muon_square"] == f["adam_largest"] == 0.0  # AdamW: no Muon transients
    low = model_facts(s, "fused", "bfloat16")  # bf16: token and value embeddings in 2 B, rotary tables too
    tables = Vp * 64 + 2 * Vp * kv
    assert low["grads"] * 4 == P * 4 - 2 * tables and low["state"] * 12 == (P * 4 - 2 * tables) * 3 + rotary // 2
    assert model_facts(chat_shape("nanochat:mlp=swiglu"))["mlp"] == (8 * 64 // 3) * 4  # SwiGLU: 3 tensors + gate
    assert model_facts(chat_shape("nanochat:value_embeds=false"))["ve"] == 0.0
    assert model_facts(chat_shape())["ve"] == 2 * 4 * 16  # 4 K/V heads of 16 on layers 1 and 3
    assert model_facts(chat_shape("nanochat:window_pattern=L"))["masked"] == 0.0
    assert model_facts(chat_shape(block_size=128))["masked"] == 0.0  # the short window is the whole context


def test_model_facts_muon_stacks_and_the_largest_adamw_tensor():
    """Muon's largest stack: count x rows x cols over same-shape groups; its Gram matrices k x min(r, c)^2; the
    largest tensor MuonAdamW updates with AdamW (a vector counts rows as 1)."""
    s = chat_shape("nanochat:n_kv_head=1,mlp=swiglu")  # per layer: 2 (64,64), 2 (16,64), 2 (170,64), 1 (64,170)
    f = model_facts(s, "muon")
    assert f["muon_stack"] == 8 * 170 * 64 and f["muon_square"] == 8 * 64 ** 2
    assert f["adam_largest"] == 128 * 64  # the embedding and the untied head: 128 x 64
    wide = chat_shape("nanochat:value_embeds=false,resid_scalars=false,smear=false,backout=false", vocab_size=1,
                      n_layer=1)  # vocab 1 -> 64 rows: the largest AdamW tensor is 64 x 64
    assert model_facts(wide, "muon")["adam_largest"] == 64 * 64
    full = model_facts(chat_shape(), "muon")  # K/V as wide as Q: (64,64) x 16, (64,256) x 4, (256,64) x 4, all
    assert full["muon_stack"] == 16 * 64 * 64 and full["muon_square"] == 16 * 64 ** 2  # 65536 elements: the first
    gpt2 = model_facts(Shape(2, 2, 32, 8, 1, 10), "muon")  # (96, 32) x2, (32,32) x2, (128,32) x2, (32,128) x2
    assert gpt2["muon_stack"] == 2 * 128 * 32 and gpt2["muon_square"] == 2 * 32 ** 2
    assert gpt2["adam_largest"] == 10 * 32  # wte; wpe 8 x 32, the vectors 128 (rows 0 -> 1)
    vec = model_facts(Shape(1, 1, 8, 1, 1, 1), "muon")  # wte 1 x 8, wpe 1 x 8, c_fc's bias 32 x 1 is the largest
    assert vec["adam_largest"] == 32


def test_family_features_per_point():
    """A mixed array of points: GPT-2 rows keep PHYSICS, nanochat rows their own terms; each distinct model once."""
    sizes = {"n_layer": [2, 4, 4, 2], "n_head": [2, 4, 4, 2], "n_embd": [32, 64, 64, 32],
             "block_size": [16, 256, 256, 16], "batch_size": [3, 2, 5, 1], "vocab_size": [50, 100, 100, 50]}
    arch = np.array([GPT2, "nanochat:n_kv_head=1", "nanochat:n_kv_head=1", GPT2], dtype=object)
    f = family_features(sizes, arch, "muon", "float32")
    assert set(f) == {*FAMILY, *STEP, "tokens", "layer", "chat_layer"}
    g = features(*(sizes[k] for k in KEYS))
    chat = model_facts(chat_shape("nanochat:n_kv_head=1"), "muon")
    small = model_facts(Shape(2, 2, 32, 16, 1, 50), "muon")
    Ns = np.array([48, 512, 1280, 16])
    assert f["tokens"].tolist() == Ns.tolist()
    for k in ("logits", "acts", "attn", "embed"):
        assert f[k].tolist() == [g[k][0], 0, 0, g[k][3]]
    assert f["params"].tolist() == [small["state"], chat["state"], chat["state"], small["state"]]
    assert f["grads"].tolist() == [small["grads"], chat["grads"], chat["grads"], small["grads"]]
    assert f["chat_logits"].tolist() == [0, 512 * 100, 1280 * 100, 0]
    assert f["chat_acts"].tolist() == [0, 512 * 4 * 64, 1280 * 4 * 64, 0]
    assert f["kv_acts"].tolist() == [0, 512 * 4 * 16, 1280 * 4 * 16, 0]
    assert f["mlp_acts"].tolist() == [0, 512 * 4 * 512, 1280 * 4 * 512, 0]
    assert f["ve_acts"].tolist() == [0, 512 * 32, 1280 * 32, 0]
    assert f["chat_embed"].tolist() == [0, 512 * 64, 1280 * 64, 0]
    assert f["chat_attn"].tolist() == [0, 256 * 256 * 3, 256 * 256 * 3, 0]
    assert f["layer"].tolist() == [48 * 32, 0, 0, 16 * 32]
    assert f["chat_layer"].tolist() == [0, 512 * 256, 1280 * 256, 0]
    for k in ("muon_stack", "muon_square", "adam_largest"):
        assert f[k].tolist() == [small[k], chat[k], chat[k], small[k]] and chat[k] != small[k]
    one = family_features({k: v[1:3] for k, v in sizes.items()}, "nanochat:n_kv_head=1", "muon", "float32")
    assert all(one[k].tolist() == f[k][1:3].tolist() for k in f)  # one family for every point, as text
    assert family_features({k: v[0] for k, v in sizes.items()})["params"].tolist() == [g["params"][0]]  # defaults


def test_family_features_default_to_gpt2_under_adamw_in_fp32():
    sizes = dict(zip(KEYS, (L, H, C, T, B, V), strict=True))
    f = family_features(sizes)
    assert f["params"][0] == f["grads"][0] == count_params(L, C, T, V)  # AdamW fp32: 16 B/param in units of 12 B
    assert f["muon_stack"][0] == 0 and f["chat_logits"][0] == 0
    assert family_features(sizes, GPT2, "sgd")["params"][0] == count_params(L, C, T, V) * 8 / 12  # 8 B/param
    chat = {k: np.array([v]) for k, v in CHAT.items()}
    bf16 = family_features(chat, "nanochat", "fused", "bfloat16")
    assert bf16["params"][0] == model_facts(chat_shape(), "fused", "bfloat16")["state"]
    assert bf16["params"][0] < family_features(chat, "nanochat", "fused")["params"][0]


def test_has_families():
    assert not has_families(pd.DataFrame({"n_layer": [1]}))
    assert not has_families(pd.DataFrame({"arch": [GPT2, None]}))
    assert has_families(pd.DataFrame({"arch": [GPT2, "nanochat"]}))
    assert has_families(pd.DataFrame({"arch": [None, "nanochat"]}))


@pytest.mark.parametrize("recipe, expected", [
    (None, ("fused", "float32")), ("not json", ("fused", "float32")), ("[1, 2]", ("fused", "float32")),
    ({}, ("fused", "float32")), ({"optimizer": None, "dtype": ""}, ("fused", "float32")),
    ({"optimizer": "auto", "dtype": "auto"}, ("fused", "float32")), ({"optimizer": "loop"}, ("fused", "float32")),
    ({"optimizer": "foreach", "dtype": "bfloat16"}, ("fused", "bfloat16")),
    (json.dumps({"optimizer": "muon", "dtype": "float16"}), ("muon", "float16")),
    ({"optimizer": "adafactor"}, ("adafactor", "float32")), ({"optimizer": "sgd"}, ("sgd", "float32")),
])
def test_optimizer_dtype(recipe, expected):
    assert optimizer_dtype(recipe) == expected


def test_recipe_of_reads_the_first_rows_recipe():
    df = pd.DataFrame({"recipe": [json.dumps({"optimizer": "muon", "dtype": "bfloat16"}), "{}"]})
    assert recipe_of(df) == ("muon", "bfloat16")
    assert recipe_of(df.iloc[:0]) == ("fused", "float32") and recipe_of(pd.DataFrame({"x": [1]})) == ("fused",
                                                                                                     "float32")


def test_columns_and_point_features_pick_the_feature_set():
    sizes = {k: np.array([v, v]) for k, v in zip(KEYS, (L, H, C, T, B, V), strict=True)}
    plain = columns(sizes)
    assert set(plain) == {*PHYSICS, "tokens"} and plain["acts"].tolist() == [N * L * C] * 2
    fam = columns(sizes, np.array([GPT2, GPT2], dtype=object), ("sgd", "float32"))
    assert fam["params"].tolist() == [count_params(L, C, T, V) * 8 / 12] * 2  # sgd: 8 B/param in units of 12 B
    assert columns(sizes, GPT2, ("fused", "float32"))["grads"].tolist() == [count_params(L, C, T, V)] * 2
    pts = [dict(zip(KEYS, (L, H, C, T, B, V), strict=True)), {**CHAT, "arch": "nanochat"}]
    assert set(point_features(pts)) == {*PHYSICS, "tokens"}
    assert point_features(pts)["params"].tolist() == [count_params(L, C, T, V),
                                                      count_params(4, 64, 256, 100)]  # PHYSICS ignores the family
    fp = point_features(pts, families=True, recipe={"optimizer": "sgd"})
    assert fp["params"][0] == count_params(L, C, T, V) * 8 / 12 and fp["chat_logits"].tolist() == [0, 512 * 100]
    assert fp["params"][1] == model_facts(chat_shape(), "sgd")["state"]
    assert point_features(pts, True)["params"][1] == model_facts(chat_shape())["state"]
    assert point_features([{k: str(v) for k, v in pts[0].items()}])["tokens"].tolist() == [N]  # text sizes


def points_frame(rows: list[dict], recipe: dict | None = None) -> pd.DataFrame:
    df = pd.DataFrame(rows, index=[7, 3, 5][:len(rows)])
    return df.assign(recipe=json.dumps(recipe or {}))


def test_frame_features_pick_physics_families_or_switches():
    g2 = dict(zip(KEYS, (L, H, C, T, B, V), strict=True))
    df = points_frame([g2, {**g2, "batch_size": 1}])
    plain = frame_features(df)
    assert list(plain.index) == [7, 3] and list(plain.columns) == [*PHYSICS[:1], "tokens", *PHYSICS[1:]]
    assert plain["acts"].tolist() == [N * L * C, T * L * C]
    assert plain["params"].tolist() == [count_params(L, C, T, V, True)] * 2  # nanoGPT's biases by default
    assert frame_features(df, bias=False)["params"].tolist() == [count_params(L, C, T, V, False)] * 2
    sw = frame_features(df.assign(recipe=json.dumps({"optimizer": "sgd", "checkpoint": "all"})), switches=True)
    assert sw["state"].tolist() == [4 * count_params(L, C, T, V)] * 2 and sw["acts"].tolist() == [0, 0]
    nb = frame_features(df.assign(recipe=json.dumps({"optimizer": "sgd"})), bias=False, switches=True)
    assert nb["state"].tolist() == [4 * count_params(L, C, T, V, False)] * 2  # the bias reaches the state too
    assert "state" not in frame_features(df.iloc[:0], switches=True).columns  # no rows: nothing to price
    fam = frame_features(df, families=True)  # no arch column: every point GPT-2's
    assert "chat_logits" in fam.columns and fam["grads"].tolist() == [count_params(L, C, T, V)] * 2
    mixed = points_frame([g2, {**CHAT, "arch": "nanochat"}], {"optimizer": "muon"}).assign(arch=[None, "nanochat"])
    auto = frame_features(mixed)  # families by default where any point is not GPT-2's, under the points' recipe
    assert list(auto.index) == [7, 3] and auto["params"].tolist() == [
        model_facts(Shape(L, H, C, T, B, V), "muon")["state"], model_facts(chat_shape(), "muon")["state"]]
    assert "chat_logits" not in frame_features(mixed, families=False).columns
    with pytest.raises(VramfitError, match="^the switch features are GPT-2's: these points include other families$"):
        frame_features(mixed, switches=True)
    with pytest.raises(KeyError, match="points lack columns: n_layer, vocab_size"):
        frame_features(df.drop(columns=["vocab_size", "n_layer"]))


def test_shape_key_names_the_model_and_its_family():
    g2 = dict(zip(KEYS, (L, H, C, T, B, V), strict=True))
    df = pd.DataFrame([g2, {**g2, "batch_size": 1}])
    assert shape_key(df).tolist() == ["5x2x16/v40", "5x2x16/v40"]  # the batch is not the model
    assert shape_key(df.assign(arch=[GPT2, None])).tolist() == ["5x2x16/v40"] * 2
    mixed = df.assign(arch=[None, "nanochat"])
    assert shape_key(mixed).tolist() == ["5x2x16/v40/gpt2", "5x2x16/v40/nanochat"]
