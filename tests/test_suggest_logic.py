"""suggest's search and ranking against brute force, with hand-set models (no fitting): the space, the largest
fitting batch per shape, the ranking keys and their ties, the time scores, the one-line errors."""

import math

import numpy as np
import pytest

from vramfit.errors import VramfitError
from vramfit.fit.features import features
from vramfit.fit.losslaw import LossLaw, chinchilla
from vramfit.fit.memmodel import MemoryModel
from vramfit.fit.throughput import ThroughputModel
from vramfit.plan.suggest import (
    MAX_HEADS,
    Ranked,
    TimeBudget,
    check_hours,
    enumerate_space,
    predict_space,
    ranking_text,
    smallest_need,
    suggest,
    time_frontier,
    time_scores,
)
from vramfit.shape import KEYS

MIB = 2**20
# memory = 64 MiB + 16 B/param + 2 KiB/token: heads do not change it, so ties between head counts are exact
MODEL = MemoryModel.from_dict({"features": ["params", "tokens"], "regimes": 1, "intercept": 64.0 * MIB,
                               "coef": [16.0, 2048.0]})
# ms/iter = 2 + 1e-9 * FLOPs
SPEED = ThroughputModel.from_dict({"features": ["flops"], "intercept": 2.0, "coef": [1e-9], "slowdown": 1.5,
                                   "delta": 0.05})
SPACE = dict(n_layer=[1, 2, 4], n_embd=[64, 128, 256], block_size=[32, 128], batch_size=[1, 2, 4, 8, 16, 32],
             vocab_size=[256])


def need(s) -> float:
    f = features(s["n_layer"], s["n_head"], s["n_embd"], s["block_size"], s["batch_size"], s["vocab_size"])
    return float(MODEL.predict(f)[0])


def brute_force(budget, margin, min_batch=1):
    """Per (shape, heads): the largest batch with need * (1 + margin) <= budget."""
    sp = enumerate_space(**SPACE)
    sp.pop("_n_batches")
    best = {}
    for i in range(len(sp["n_layer"])):
        s = {k: int(sp[k][i]) for k in KEYS}
        if s["batch_size"] >= min_batch and need(s) * (1 + margin) <= budget:
            key = tuple(s[k] for k in KEYS if k != "batch_size")
            best[key] = max(best.get(key, 0), s["batch_size"])
    return best


# ------------------------------------------------------------------------------------------------ the space


def test_space_is_every_shape_with_batch_innermost():
    sp = enumerate_space(n_layer=[2, 1], n_embd=[64], block_size=[32], batch_size=[4, 2, 2], vocab_size=[100, 50])
    assert sp.pop("_n_batches") == 2
    rows = list(zip(*(sp[k].tolist() for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                                 "batch_size")), strict=True))
    # heads of width 64: 64/64 = 1 and 64/32 = 2 (head dims 32, 64, 128); batches sorted, duplicates dropped
    assert rows == [(L, h, 64, 32, V, b) for L in (2, 1) for h in (1, 2) for V in (100, 50) for b in (2, 4)]
    assert all(v.dtype == np.int64 for v in sp.values())


@pytest.mark.parametrize("widths, heads, expected", [
    ([96], None, [(3, 96)]),                               # 96/32 only
    ([128], None, [(1, 128), (2, 128), (4, 128)]),         # 128, 64 and 32 wide heads, sorted
    ([4096], None, [(32, 4096), (64, 4096)]),               # 128 heads of 32 exceed MAX_HEADS
    ([64, 100], [4], [(4, 64), (4, 100)]),                  # fixed heads: any width they divide
    ([64, 100], [3, 4], [(4, 64), (4, 100)]),
    ([64], [64], [(64, 64)]), ([128], [65], "limit"), ([64], [0], None),
])
def test_head_choice(widths, heads, expected):
    kwargs = dict(n_layer=[1], n_embd=widths, block_size=[8], batch_size=[1], vocab_size=[8], n_head=heads)
    if expected == "limit":  # named as the limit it is, not blamed on n_embd % n_head (issue 31)
        with pytest.raises(VramfitError, match=r"^--n-head: 65 is beyond the search's limit of 64 heads"):
            enumerate_space(**kwargs)
        return
    if expected is None:
        with pytest.raises(VramfitError, match=r"^no valid \(n_head, n_embd\) pair in the search space"):
            enumerate_space(**kwargs)
        return
    sp = enumerate_space(**kwargs)
    assert list(zip(sp["n_head"].tolist(), sp["n_embd"].tolist(), strict=True)) == expected
    assert MAX_HEADS == 64


def test_aspect_bounds_only_the_default_depth_and_width():
    sp = enumerate_space(block_size=[64], batch_size=[1])
    ratio = sp["n_embd"] / sp["n_layer"]
    assert ratio.min() == 16 and ratio.max() == 256  # both ends reached: the bound is inclusive
    for fixed in (dict(n_layer=[48]), dict(n_embd=[64])):
        sp = enumerate_space(block_size=[64], batch_size=[1], **fixed)
        assert (sp["n_embd"] / sp["n_layer"]).min() < 16  # 64 wide at 48 layers, or 64 wide at 40 layers
    sp = enumerate_space(block_size=[64], batch_size=[1], aspect=None)
    assert (sp["n_embd"] / sp["n_layer"]).max() > 256
    with pytest.raises(VramfitError, match=r"^the search space is empty \(check --n-layer / --n-embd\)$"):
        enumerate_space(block_size=[64], batch_size=[1], aspect=(5000, 6000))


@pytest.mark.parametrize("bad", [dict(n_layer=[0]), dict(block_size=[0]), dict(batch_size=[1, 0]),
                                 dict(vocab_size=[0])])
def test_sizes_below_one_are_refused(bad):
    with pytest.raises(VramfitError, match="^every size in the search space must be >= 1$"):
        enumerate_space(**{**SPACE, **bad})


def test_scalars_and_tuples_are_lists_and_defaults_fill_the_rest():
    sp = enumerate_space(n_layer=2, n_embd=(64,), block_size=32, batch_size=1)
    assert set(sp["n_layer"]) == {2} and set(sp["vocab_size"]) == {50304} and sp["_n_batches"] == 1
    sp = enumerate_space(n_layer=2, n_embd=64, block_size=32, vocab_size=8)
    assert sp["_n_batches"] == 56 and sp["batch_size"][:3].tolist() == [1, 2, 3] and sp["batch_size"][-1] == 512


def test_predict_space_is_the_model_on_the_features():
    sp = enumerate_space(**SPACE)
    sp.pop("_n_batches")
    feats, pred = predict_space(MODEL, sp)
    i = 7
    assert feats["params"][i] == features(*(sp[k][i] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                               "batch_size", "vocab_size")))["params"][0]
    assert pred[i] == pytest.approx(64 * MIB + 16 * feats["params"][i] + 2048 * feats["tokens"][i])


# ------------------------------------------------------------------------------------------------ fitting


@pytest.mark.parametrize("budget, margin, min_batch", [(200 * MIB, 0.1, 1), (120 * MIB, 0.0, 1),
                                                       (500 * MIB, 0.25, 4), (90 * MIB, 0.05, 1)])
def test_each_shape_gets_its_largest_fitting_batch(budget, margin, min_batch):
    expected = brute_force(budget, margin, min_batch)
    items = suggest(MODEL, margin, budget, objective="tokens", top=1000, min_batch=min_batch, **SPACE)
    got = {(s.n_layer, s.n_head, s.n_embd, s.block_size, s.vocab_size): s.batch_size for s in items}
    # one row per (layers, width, block, vocab): the head count of each row is one of its variants
    by_shape = {(L, C, T, V): b for (L, h, C, T, V), b in expected.items()}
    assert {(L, C, T, V): b for (L, h, C, T, V), b in got.items()} == by_shape
    assert len(items) == len(by_shape)
    for s in items:
        n = need(s.__dict__)
        assert s.predicted_bytes == int(n) and s.margin_bytes == int(n * margin)
        assert s.headroom_bytes == int(budget - n * (1 + margin)) and s.headroom_bytes >= 0
        assert s.params == int(features(s.n_layer, s.n_head, s.n_embd, s.block_size, 1, 256)["params"][0])
        assert s.tokens_per_step == s.batch_size * s.block_size
        assert s.regime == "backward" and s.breakdown["constant"] == 64 * MIB


def test_exactly_at_the_budget_fits():
    s = {"n_layer": 1, "n_head": 1, "n_embd": 64, "block_size": 32, "batch_size": 4, "vocab_size": 256}
    budget = need(s)
    (item,) = suggest(MODEL, 0.0, budget, n_layer=1, n_head=1, n_embd=64, block_size=32, batch_size=[2, 4, 8],
                      vocab_size=256)
    assert item.batch_size == 4 and item.headroom_bytes == 0
    (item,) = suggest(MODEL, 0.0, budget - 1, n_layer=1, n_head=1, n_embd=64, block_size=32, batch_size=[2, 4, 8],
                      vocab_size=256)
    assert item.batch_size == 2


@pytest.mark.parametrize("objective, key", [
    ("params", lambda s: (s.params, s.tokens_per_step)),
    ("tokens", lambda s: (s.tokens_per_step, s.params)),
    ("balanced", lambda s: (math.log(s.params) + math.log(s.tokens_per_step),)),
])
def test_ranking_by_objective_then_cheaper_first(objective, key):
    items = suggest(MODEL, 0.1, 300 * MIB, objective=objective, top=1000, **SPACE)
    ranked = [(*key(s), -(s.predicted_bytes + s.margin_bytes)) for s in items]
    assert ranked == sorted(ranked, reverse=True)
    assert [s.rank for s in items] == list(range(1, len(items) + 1))
    assert len(suggest(MODEL, 0.1, 300 * MIB, objective=objective, top=3, **SPACE)) == 3


def test_head_count_ties_prefer_64_wide_heads():
    items = suggest(MODEL, 0.0, 1000 * MIB, n_layer=2, n_embd=[128, 256], block_size=32, vocab_size=256)
    assert {(s.n_embd, s.n_head) for s in items} == {(128, 2), (256, 4)}
    items = suggest(MODEL, 0.0, 1000 * MIB, n_layer=2, n_embd=[96], block_size=32, vocab_size=256)
    assert [(s.n_embd, s.n_head) for s in items] == [(96, 3)]  # the only head count of width 96


def test_commands_come_from_the_callback():
    items = suggest(MODEL, 0.0, 300 * MIB, top=2, command=lambda s: f"train #{s.rank} L{s.n_layer}", **SPACE)
    assert [s.command for s in items] == [f"train #1 L{items[0].n_layer}", f"train #2 L{items[1].n_layer}"]
    assert suggest(MODEL, 0.0, 300 * MIB, top=1, **SPACE)[0].command == ""


def test_budget_errors_and_nothing_fitting():
    with pytest.raises(VramfitError, match=r"^the budget must be positive \(is --reserve larger than --vram\?\)$"):
        suggest(MODEL, 0.1, 0, **SPACE)
    with pytest.raises(VramfitError, match=r"^a budget of 0\.07 GiB is below this device's constant \(0\.07 GiB "
                                           r"with margin\): nothing can fit$"):
        suggest(MODEL, 0.1, int(64 * MIB * 1.1), **SPACE)
    assert suggest(MODEL, 0.1, int(64 * MIB * 1.1) + 1, **SPACE) == []  # above the constant, below every config
    with pytest.raises(VramfitError,
                       match="^unknown objective 'speed'; choose one of trainable, params, tokens, balanced$"):
        suggest(MODEL, 0.1, 300 * MIB, objective="speed", **SPACE)


def test_smallest_need_is_the_cheapest_config_with_margin_rounded_up():
    n, cfg = smallest_need(MODEL, 0.1, **SPACE)
    assert cfg == {"n_layer": 1, "n_head": 1, "n_embd": 64, "block_size": 32, "vocab_size": 256, "batch_size": 1}
    assert n == math.ceil(need(cfg) * 1.1)
    assert all(type(v) is int for v in cfg.values())


# ------------------------------------------------------------------------------------------------ time


@pytest.mark.parametrize("text, hours", [("6", 6.0), ("1.5", 1.5), (" 2h ", 2.0), (3, 3.0), ("0.01", 0.01)])
def test_check_hours_accepts(text, hours):
    assert check_hours(text) == hours


@pytest.mark.parametrize("text", ["0", "-1", "inf", "nan", "x", "", "6hh", "h"])
def test_check_hours_refuses(text):
    with pytest.raises(VramfitError, match=r"^--hours must be a positive number of hours \(e\.g\. 6 or 1\.5\), got "):
        check_hours(text)


def scores(rank, hours=2.0, law=None):
    sp = enumerate_space(**SPACE)
    sp.pop("_n_batches")
    feats, _ = predict_space(MODEL, sp)
    idx = np.array([0, 5, 40])
    return sp, feats, idx, time_scores(TimeBudget(hours, rank, law, SPEED), sp, idx, feats)


def test_time_scores_are_what_the_hours_buy():
    sp, feats, idx, out = scores("optimal")
    flops = np.array([6 * features(*(sp[k][i] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                                          "vocab_size")))["params"][0] for i in idx])
    ms = out["ms_per_iter"]
    assert (ms > 1.5 * 2.0).all()  # slowdown x (overhead + FLOPs term)
    N, P = feats["tokens"][idx], feats["params"][idx]
    assert out["tokens_per_s"] == pytest.approx(N / (ms / 1000))
    assert out["tokens"] == pytest.approx(out["tokens_per_s"] * 2 * 3600)
    assert out["hours_to_optimal"] == pytest.approx(20 * P / out["tokens_per_s"] / 3600)
    assert out["score"] == pytest.approx(-np.minimum(out["tokens"], 20 * P))
    assert out["loss"] == pytest.approx(chinchilla().predict(P, out["tokens"]))
    assert len(flops) == 3
    _, _, _, ch = scores("chinchilla")
    assert ch["score"] == pytest.approx(ch["loss"])
    law = LossLaw(1.0, 10.0, 100.0, 0.3, 0.3)
    _, _, _, lo = scores("loss", law=law)
    assert lo["score"] == pytest.approx(law.predict(P, lo["tokens"]))


def test_time_score_errors():
    with pytest.raises(VramfitError, match="^unknown --rank 'fast'; choose one of optimal, chinchilla, loss$"):
        scores("fast")
    with pytest.raises(VramfitError, match=r"^--rank loss needs a fitted loss law"):
        scores("loss")


def test_suggest_with_hours():
    with pytest.raises(VramfitError, match="^this model file has no throughput model"):
        suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget(2), **SPACE)
    with pytest.raises(VramfitError, match="^--hours must be a positive number"):
        suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget("0", throughput=SPEED), **SPACE)
    items = suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget("2", throughput=SPEED), top=1000, **SPACE)
    useful = [(-min(s.tokens_in_budget, 20 * s.params)) for s in items]
    assert useful == sorted(useful) and all(s.predicted_loss is None for s in items)
    s = items[0]
    assert s.tokens_in_budget == pytest.approx(s.tokens_per_s * 2 * 3600)
    assert s.ms_per_iter == pytest.approx(s.tokens_per_step / s.tokens_per_s * 1000)
    ch = suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget(2, "chinchilla", None, SPEED), top=1000, **SPACE)
    losses = [s.predicted_loss for s in ch]
    assert losses == sorted(losses) and losses[0] == pytest.approx(
        chinchilla().predict(ch[0].params, ch[0].tokens_in_budget))


def test_time_frontier_lists_every_fitting_shape():
    out = time_frontier(MODEL, 0.1, 300 * MIB, TimeBudget(2.0, throughput=SPEED), **SPACE)
    expected = brute_force(300 * MIB, 0.1)
    got = {tuple(int(out[k][i]) for k in KEYS if k != "batch_size"): int(out["batch_size"][i])
           for i in range(len(out["n_layer"]))}
    assert got == expected
    assert set(out) >= {"ms_per_iter", "tokens", "score", "loss", *KEYS}


# ------------------------------------------------------------------------------------------------ edges mutmut found


def one_shape(**kw):
    return dict(n_layer=1, n_head=1, n_embd=64, block_size=32, batch_size=[1, 2, 4, 8], vocab_size=256) | kw


def test_a_budget_exactly_at_the_constant_is_refused():
    with pytest.raises(VramfitError, match="below this device's constant"):
        suggest(MODEL, 0.0, 64 * MIB, **SPACE)  # nothing can fit in exactly the constant
    with pytest.raises(VramfitError, match="below this device's constant"):
        suggest(MODEL, 0.1, 1, **SPACE)  # a positive budget: the constant is the problem, not the sign


def test_min_batch_is_inclusive_and_defaults_to_one():
    s4 = {"n_layer": 1, "n_head": 1, "n_embd": 64, "block_size": 32, "batch_size": 4, "vocab_size": 256}
    budget = need(s4)  # batch 4 fits exactly, 8 does not
    (item,) = suggest(MODEL, 0.0, budget, min_batch=4, **one_shape())
    assert item.batch_size == 4
    s1 = {**s4, "batch_size": 1}
    (item,) = suggest(MODEL, 0.0, need(s1), **one_shape())  # only batch 1 fits: still a suggestion
    assert item.batch_size == 1
    out = time_frontier(MODEL, 0.0, need(s1), TimeBudget(1.0, throughput=SPEED), **one_shape())
    assert out["batch_size"].tolist() == [1]


def test_default_top_is_ten():
    assert len(suggest(MODEL, 0.1, 2000 * MIB, objective="params", **SPACE)) == 10


def test_suggestion_to_dict():
    (s,) = suggest(MODEL, 0.0, 1000 * MIB, top=1, **SPACE)
    d = s.to_dict()
    assert d["rank"] == 1 and d["n_layer"] == s.n_layer and d["breakdown"] == s.breakdown and d["ms_per_iter"] is None


def test_default_block_sizes_and_depths_wider_than_the_model():
    sp = enumerate_space(n_layer=2, n_embd=64, batch_size=1, vocab_size=8)
    assert sorted(set(sp["block_size"].tolist())) == [64, 128, 256, 512, 1024, 2048, 4096]
    sp = enumerate_space(n_layer=[48], n_embd=[32], block_size=8, batch_size=1, vocab_size=8)
    assert sp["n_embd"].tolist() == [32]  # 48 layers of width 32: fixed by the caller, no aspect bound


def test_predict_space_passes_the_heads():
    physics = MemoryModel.from_dict({"features": ["params", "logits", "acts", "attn", "embed"], "regimes": 1,
                                     "intercept": 0.0, "coef": [0.0, 0.0, 0.0, 1.0, 0.0]})
    sp = enumerate_space(n_layer=2, n_head=[1, 4], n_embd=64, block_size=32, batch_size=2, vocab_size=8)
    sp.pop("_n_batches")
    feats, pred = predict_space(physics, sp)
    assert pred.tolist() == [2 * 32 * 2 * h * 32 for h in (1, 4)]  # attention scores grow with the heads


def test_smallest_need_finds_the_minimum_anywhere_in_the_space():
    n, cfg = smallest_need(MODEL, 0.0, n_layer=[4, 1], n_embd=64, block_size=32, batch_size=[8, 1], vocab_size=256)
    assert cfg["n_layer"] == 1 and cfg["batch_size"] == 1 and n == math.ceil(need(cfg))


def test_a_loss_law_ranks_suggest_and_the_frontier():
    law = LossLaw(1.0, 10.0, 100.0, 0.3, 0.3)
    items = suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget(2, "loss", law, SPEED), top=5, **SPACE)
    assert [s.predicted_loss for s in items] == pytest.approx([float(law.predict(s.params, s.tokens_in_budget))
                                                               for s in items])
    out = time_frontier(MODEL, 0.1, 300 * MIB, TimeBudget(2.0, "loss", law, SPEED), **SPACE)
    assert out["score"] == pytest.approx(law.predict(out["params"], out["tokens"]))


def test_error_messages_in_full():
    with pytest.raises(VramfitError, match=r"^this model file has no throughput model \(fitted before `--hours` "
                                           r"existed, or its points have no ms/iter\): re-run `vramfit fit`$"):
        suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget(2), **SPACE)
    with pytest.raises(VramfitError, match=r"^--rank loss needs a fitted loss law \(run `vramfit fit --loss` after a "
                                           r"few `vramfit train` runs on this corpus\)$"):
        scores("loss")


def test_ties_go_to_the_head_width_nearest_64():
    # 1386 wide: 22 heads of 63 or 21 heads of 66, the same memory under MODEL; 63 is nearer 64
    (s,) = suggest(MODEL, 0.0, 10000 * MIB, n_layer=1, n_head=[21, 22], n_embd=1386, block_size=32, vocab_size=256)
    assert (s.n_head, s.n_embd // s.n_head) == (22, 63)


# ------------------------------------------------------------------------------------------------ trainable


def candidates(budget, margin, space):
    """Per (layers, heads, width, block, vocab): its largest batch whose need * (1 + margin) fits, by brute force."""
    sp = enumerate_space(**space)
    sp.pop("_n_batches")
    best = {}
    for i in range(len(sp["n_layer"])):
        s = {k: int(sp[k][i]) for k in KEYS}
        if need(s) * (1 + margin) <= budget:
            key = tuple(s[k] for k in KEYS if k != "batch_size")
            if s["batch_size"] > best.get(key, {"batch_size": 0})["batch_size"]:
                best[key] = s
    return list(best.values())


def trainable_by_hand(budget, margin, space, top, corpus_tokens=None):
    """The `trainable` ranking in plain Python (see suggest.TOKENS_FLOOR): the block range (where anything is in
    it), the token floor halved while fewer than `top` models reach it or while halving it lets a 4 x larger model
    in, the corpus cap (16 params per token) doubled until `top` models pass; then the largest model (without its
    position embeddings), its batch up to 8, the longest block, heads nearest 64 wide, more tokens, cheaper; one
    row per model."""
    rows = candidates(budget, margin, space)
    for s in rows:
        s["N"] = s["batch_size"] * s["block_size"]
        s["size"] = need_params(s) - s["block_size"] * s["n_embd"]
        s["model"] = (s["n_layer"], s["n_embd"], s["vocab_size"])
    fixed = space.get("block_size") is not None
    ok = [s for s in rows if fixed or 256 <= s["block_size"] <= 1024] or rows

    def models(xs):
        return len({s["model"] for s in xs})

    def largest(xs):
        return max((s["size"] for s in xs), default=0.0)

    want, floor = min(top, models(ok)), 16384
    while floor > 1 and (models([s for s in ok if s["N"] >= floor]) < want or largest(
            [s for s in ok if s["N"] >= floor // 2]) > 4 * largest([s for s in ok if s["N"] >= floor])):
        floor //= 2
    ok = [s for s in ok if s["N"] >= floor]
    cap = None
    if corpus_tokens:
        cap = 16 * corpus_tokens
        while models([s for s in ok if s["size"] <= cap]) < want:
            cap *= 2
        ok = [s for s in ok if s["size"] <= cap]
    ok.sort(key=lambda s: (-s["size"], -min(s["batch_size"], 8), -s["block_size"],
                           abs(s["n_embd"] / s["n_head"] - 64), -s["N"], need(s) * (1 + margin)))
    out, seen = [], set()
    for s in ok:
        if s["model"] not in seen and len(out) < top:
            seen.add(s["model"])
            out.append(s)
    return out, floor, cap


def need_params(s) -> int:
    return int(features(s["n_layer"], s["n_head"], s["n_embd"], s["block_size"], 1, s["vocab_size"])["params"][0])


TRAIN_SPACE = dict(n_layer=[1, 2, 4], n_embd=[64, 128, 192], block_size=[128, 256, 512, 1024, 2048],
                   batch_size=[1, 2, 4, 8, 16, 32, 64, 128], vocab_size=[256])


@pytest.mark.parametrize("budget_mib, top, corpus, space", [
    (300, 5, None, TRAIN_SPACE), (300, 3, None, TRAIN_SPACE), (120, 5, None, TRAIN_SPACE),
    (90, 5, None, TRAIN_SPACE), (600, 9, None, TRAIN_SPACE), (300, 5, 20_000, TRAIN_SPACE),
    (600, 4, 1_000, TRAIN_SPACE), (600, 2, 30_000, TRAIN_SPACE),
    (300, 5, None, {**TRAIN_SPACE, "block_size": None}), (300, 5, None, {**TRAIN_SPACE, "block_size": [64, 128]}),
    (2000, 6, None, {**TRAIN_SPACE, "block_size": [256, 1024, 2048]}),
])
def test_trainable_matches_the_ranking_by_hand(budget_mib, top, corpus, space):
    space = {k: v for k, v in space.items() if v is not None}
    budget = budget_mib * MIB
    expected, floor, cap = trainable_by_hand(budget, 0.1, {**space, "block_size": space.get("block_size")}, top,
                                             corpus)
    items = suggest(MODEL, 0.1, budget, top=top, corpus_tokens=corpus, **space)
    got = [(s.n_layer, s.n_head, s.n_embd, s.block_size, s.batch_size) for s in items]
    assert got == [(s["n_layer"], s["n_head"], s["n_embd"], s["block_size"], s["batch_size"]) for s in expected]
    assert [s.score for s in items] == [s["size"] for s in expected]  # params without the position table
    fixed = "block_size" in space
    assert items.ranking == {"objective": "trainable", "value": "params w/o pos. emb.", "tokens_floor": floor,
                             "block_range": None if fixed else [256, 1024], "max_params": cap,
                             "corpus_tokens": corpus, "text": items.ranking["text"]}


def test_trainable_boundaries_are_inclusive():
    """A model at exactly the token floor, the block range's ends and the corpus cap is kept."""
    one = dict(n_layer=2, n_head=2, n_embd=128, vocab_size=256)
    for T, B in ((256, 64), (1024, 16)):  # 16384 tokens either way: exactly the floor, at each end of the range
        budget = need({**one, "block_size": T, "batch_size": B})  # the next block up does not fit
        (s,) = suggest(MODEL, 0.0, budget, top=1, batch_size=[B], **one)
        assert (s.block_size, s.tokens_per_step) == (T, 16384) and s.score == need_params(s.__dict__) - T * 128
        assert suggest(MODEL, 0.0, 10_000 * MIB, top=1, batch_size=[B], block_size=[T], **one).ranking[
            "tokens_floor"] == 16384
    size = need_params({**one, "block_size": 256}) - 256 * 128
    assert size % 16 == 0
    (s,) = suggest(MODEL, 0.0, 10_000 * MIB, top=1, batch_size=[64], block_size=[256], corpus_tokens=size // 16,
                   **one)
    assert s.score == size and s.to_dict()["score"] == size  # at exactly the cap: kept, the cap not doubled
    assert suggest(MODEL, 0.0, 10_000 * MIB, top=1, batch_size=[64], block_size=[256], corpus_tokens=size // 16,
                   **one).ranking["max_params"] == size
    r = suggest(MODEL, 0.0, 10_000 * MIB, top=1, batch_size=[64], block_size=[256], corpus_tokens=size // 16 - 1,
                **one).ranking
    assert r["max_params"] == 2 * (size - 16)  # one token short: doubled once


def test_trainable_halves_the_floor_for_a_model_four_times_larger():
    """At 98 MiB only 1 x 64 reaches 16384 tokens (batch 64); 8 x 64, 6.3 x its size, fits at batch 32 (8192
    tokens): the floor halves for it. 2 x 64 is under 4 x larger: the floor stays and 1 x 64 is the answer."""
    space = dict(n_head=1, block_size=[256], batch_size=[8, 16, 32, 64], vocab_size=[256])
    items = suggest(MODEL, 0.0, 98 * MIB, top=1, n_layer=[1, 8], n_embd=[64, 512], **space)
    assert items.ranking["tokens_floor"] == 8192
    assert [(s.n_layer, s.n_embd, s.batch_size) for s in items] == [(8, 64, 32)]
    items = suggest(MODEL, 0.0, 98 * MIB, top=1, n_layer=[1, 2], n_embd=[64], **space)
    assert items.ranking["tokens_floor"] == 16384
    assert [(s.n_layer, s.n_embd, s.batch_size) for s in items] == [(1, 64, 64)]


def test_ranking_text():
    floors = {"objective": "trainable", "tokens_floor": 16384, "block_range": [256, 1024], "max_params": 1_650_000,
              "corpus_tokens": 103_125}
    assert ranking_text(floors) == ("params w/o pos. emb., among models with >= 16,384 tokens per step, block "
                                    "256-1024, <= 1.6M params (0.10M corpus tokens)")
    assert ranking_text({**floors, "block_range": None, "max_params": None, "tokens_floor": 512}) == (
        "params w/o pos. emb., among models with >= 512 tokens per step")
    assert ranking_text({**floors, "max_params": 12_345_678_000, "corpus_tokens": 771_604_875}) .endswith(
        ", <= 12,345.7M params (771.60M corpus tokens)")
    assert [ranking_text({"objective": o}) for o in ("params", "tokens", "balanced", "hours")] == [
        "params (largest model)", "tokens per step", "params x tokens per step", "hours"]
    assert ranking_text({}) == "None"


@pytest.mark.parametrize("objective, value, text", [
    ("params", "params", "params (largest model)"), ("tokens", "tokens/step", "tokens per step"),
    ("balanced", "params x tokens/step", "params x tokens per step"),
])
def test_each_objective_says_what_it_ranked_by(objective, value, text):
    items = suggest(MODEL, 0.1, 300 * MIB, objective=objective, top=3, **SPACE)
    assert items.ranking == {"objective": objective, "value": value, "text": text}
    score = {"params": lambda s: s.params, "tokens": lambda s: s.tokens_per_step,
             "balanced": lambda s: s.params * s.tokens_per_step}[objective]
    assert [s.score for s in items] == [score(s) for s in items]
    assert suggest(MODEL, 0.1, int(64 * MIB * 1.1) + 1, objective=objective, **SPACE).ranking == {
        "objective": objective}  # nothing fits: still says what it would have ranked by


@pytest.mark.parametrize("rank, value", [("optimal", "tokens toward 20 x params"), ("chinchilla", "predicted loss")])
def test_the_hours_say_what_they_ranked_by(rank, value):
    items = suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget(2, rank, None, SPEED), top=3, **SPACE)
    assert items.ranking == {"objective": "hours", "value": value, "rank": rank}
    if rank == "optimal":
        assert [s.score for s in items] == [min(s.tokens_in_budget, 20 * s.params) for s in items]
    else:
        assert [s.score for s in items] == [s.predicted_loss for s in items]
    tokens = [s.tokens_in_budget for s in suggest(MODEL, 0.1, 300 * MIB, time=TimeBudget(2, rank, None, SPEED),
                                                  top=1000, n_layer=1, n_embd=64, block_size=32, vocab_size=256)]
    assert tokens == sorted(tokens, reverse=True)  # the same useful tokens: more tokens first
    assert suggest(MODEL, 0.1, int(64 * MIB * 1.1) + 1, time=TimeBudget(2, rank, None, SPEED), **SPACE).ranking == {
        "objective": "hours"}


def test_ranked_is_a_list_with_its_ranking():
    assert Ranked() == [] and Ranked().ranking == {} and Ranked([1], {"a": 1}).ranking == {"a": 1}
    assert Ranked(None, None).ranking == {}


def test_to_dict_keeps_the_recipe_fields_of_a_recipe_row():
    (s,) = suggest(MODEL, 0.0, 1000 * MIB, top=1, **SPACE)
    assert "grad_accum" not in s.to_dict() and "nanochat" not in s.to_dict()
    s.grad_accum, s.checkpoint = 2, "all"
    d = s.to_dict()
    assert (d["grad_accum"], d["checkpoint"]) == (2, "all") and "optimizer" not in d


def test_the_space_size_limit_is_inclusive(monkeypatch):
    import vramfit.plan.suggest as mod

    monkeypatch.setattr(mod, "MAX_SPACE_POINTS", 24)
    sp = enumerate_space(n_layer=[1, 2], n_head=1, n_embd=64, block_size=[8, 16, 32], batch_size=[1, 2],
                         vocab_size=[5, 6])
    assert len(sp["n_layer"]) == 24
    with pytest.raises(VramfitError, match=r"^the search space has 36 \(shape, batch\) points, beyond the limit of "
                                           r"24: give fewer values to --n-layer, --n-head, --n-embd, --block-size or "
                                           r"--batch-size$"):
        enumerate_space(n_layer=[1, 2, 3], n_head=1, n_embd=64, block_size=[8, 16, 32], batch_size=[1, 2],
                        vocab_size=[5, 6])
    with pytest.raises(VramfitError, match=r"^the search space has 36 "):  # every axis counts, batches too
        enumerate_space(n_layer=[1, 2], n_head=1, n_embd=64, block_size=[8, 16, 32], batch_size=[1, 2, 3],
                        vocab_size=[5, 6])
    with pytest.raises(VramfitError, match=r"^the search space has 36 "):
        enumerate_space(n_layer=[1, 2], n_head=1, n_embd=64, block_size=[8, 16, 32], batch_size=[1, 2],
                        vocab_size=[5, 6, 7])
    with pytest.raises(VramfitError, match=r"^the search space has 32 "):
        enumerate_space(n_layer=[1, 2], n_head=1, n_embd=64, block_size=[8, 16, 32, 64], batch_size=[1, 2],
                        vocab_size=[5, 6])
    with pytest.raises(VramfitError, match=r"^the search space has 48 "):
        enumerate_space(n_layer=[1, 2], n_head=[1, 2], n_embd=64, block_size=[8, 16, 32], batch_size=[1, 2],
                        vocab_size=[5, 6])


def test_the_space_must_fit_in_memory(monkeypatch):
    import gpt.limits

    seen = []
    monkeypatch.setattr(gpt.limits, "check_memory", lambda n, what: seen.append((n, what)))
    enumerate_space(n_layer=[1, 2], n_head=1, n_embd=64, block_size=8, batch_size=[1, 2, 3], vocab_size=5)
    assert seen == [(6 * 200, "a search space of 6 (shape, batch) points")]


def test_sixty_four_heads_is_within_the_limit():
    with pytest.raises(VramfitError, match=r"^no valid \(n_head, n_embd\) pair"):  # 64 heads do not divide 96
        enumerate_space(n_layer=1, n_head=[64], n_embd=96, block_size=8, batch_size=1, vocab_size=8)


def test_space_arrays_are_int64_even_when_empty_of_large_values():
    sp = enumerate_space(n_layer=1, n_head=1, n_embd=64, block_size=8, batch_size=[3], vocab_size=8)
    assert sp["batch_size"].dtype == np.int64 and sp["n_layer"].dtype == np.int64


def test_per_model_rows_are_one_per_model_and_per_shape_rows_one_per_block():
    items = suggest(MODEL, 0.0, 1000 * MIB, top=100, n_layer=2, n_embd=128, block_size=[256, 512],
                    batch_size=[8, 64], vocab_size=256)
    assert len(items) == 1 and items[0].block_size == 512  # trainable: one row per model, its longest block
    items = suggest(MODEL, 0.0, 1000 * MIB, objective="params", top=100, n_layer=2, n_embd=128,
                    block_size=[256, 512], batch_size=[8, 64], vocab_size=256)
    assert sorted(s.block_size for s in items) == [256, 512]


def test_the_block_range_keeps_a_model_at_exactly_256():
    """32 x 64 fits at block 256 (batch 64) and no longer; 1 x 64 at 512: both are in the range, the larger first."""
    items = suggest(MODEL, 0.0, int(129.6 * MIB), top=2, n_layer=[1, 32], n_head=1, n_embd=64, batch_size=[64],
                    vocab_size=256)
    assert [(s.n_layer, s.block_size) for s in items] == [(32, 256), (1, 512)]


def test_outside_the_block_range_only_the_range_is_dropped():
    """Where no block in 256-1024 fits, the ranking takes the blocks that do (here 128 at batch 1)."""
    one = dict(n_layer=1, n_head=1, n_embd=64, batch_size=[1], vocab_size=256)
    items = suggest(MODEL, 0.0, need({**one, "batch_size": 1, "block_size": 128}), top=3, **one)
    assert [s.block_size for s in items] == [128] and items.ranking["block_range"] == [256, 1024]


def test_a_model_outside_the_block_range_neither_counts_nor_relaxes_the_floor():
    """48 x 64 fits only at block 128 (8192 tokens, 36 x the size of 1 x 64, which takes 16384 tokens at 256): it
    is not among the models the floor waits for, nor the larger model halving would let in."""
    items = suggest(MODEL, 0.0, 117 * MIB, top=2, n_layer=[1, 48], n_head=1, n_embd=64, batch_size=[64],
                    vocab_size=256)
    assert [(s.n_layer, s.block_size) for s in items] == [(1, 256)] and items.ranking["tokens_floor"] == 16384


def test_the_floor_halves_down_to_one_token():
    """Block 1: 32 x 64 fits at batch 1 only, 1 x 64 at batch 2; the larger model wins the last halving."""
    big = dict(n_layer=32, n_head=1, n_embd=64, block_size=1, batch_size=1, vocab_size=256)
    items = suggest(MODEL, 0.0, need(big), top=1, n_layer=[1, 32], n_head=1, n_embd=64, block_size=[1],
                    batch_size=[1, 2], vocab_size=256)
    assert [(s.n_layer, s.batch_size) for s in items] == [(32, 1)] and items.ranking["tokens_floor"] == 1


def test_exactly_four_times_larger_does_not_halve_the_floor():
    """7 x 64 and 1 x 64 at vocab 779: 399872 and 99968 params without the position table, exactly 4 x. Halving
    takes a model more than RELAX_GAIN times larger."""
    one = dict(n_head=1, n_embd=64, block_size=[256], vocab_size=779)
    assert need_params({**one, "n_layer": 7, "block_size": 256}) - 256 * 64 == 4 * (
        need_params({**one, "n_layer": 1, "block_size": 256}) - 256 * 64)
    budget = need({**one, "n_layer": 1, "block_size": 256, "batch_size": 64})  # 7 x 64 fits at batch 32 only
    items = suggest(MODEL, 0.0, budget, top=1, n_layer=[1, 7], batch_size=[32, 64], **one)
    assert [(s.n_layer, s.batch_size) for s in items] == [(1, 64)] and items.ranking["tokens_floor"] == 16384


def test_halving_looks_at_half_the_floor_exactly():
    """24 x 64 (18 x the size of 1 x 64) fits at batch 24 (6144 tokens), under half the floor: it does not relax
    it; 1 x 64 takes the 16384 tokens."""
    one = dict(n_head=1, n_embd=64, block_size=[256], vocab_size=256)
    budget = need({**one, "n_layer": 1, "block_size": 256, "batch_size": 64})
    items = suggest(MODEL, 0.0, budget, top=1, n_layer=[1, 24], batch_size=[24, 32, 64], **one)
    assert [(s.n_layer, s.batch_size) for s in items] == [(1, 64)] and items.ranking["tokens_floor"] == 16384


def test_the_corpus_cap_keeps_the_other_floors():
    """A corpus large enough not to cap anything: 48 x 64, which fits only at block 128, stays out of the range."""
    items = suggest(MODEL, 0.0, 117 * MIB, top=2, n_layer=[1, 48], n_head=1, n_embd=64, batch_size=[64],
                    vocab_size=256, corpus_tokens=10**9)
    assert [(s.n_layer, s.block_size) for s in items] == [(1, 256)] and items.ranking["max_params"] == 16 * 10**9


def test_ranking_text_rounds_millions():
    text = ranking_text({"objective": "trainable", "tokens_floor": 8, "block_range": None, "max_params": 1_050_001,
                         "corpus_tokens": 1_015_001})
    assert text.endswith(", <= 1.1M params (1.02M corpus tokens)")  # 1.050001 and 1.015001 million
