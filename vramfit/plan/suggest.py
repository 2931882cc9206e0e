"""Search a space of GPT configs vectorised, keep those that fit a budget with margin, rank by an objective."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from vramfit.errors import VramfitError
from vramfit.fit.memmodel import MemoryModel
from vramfit.shape import DEFAULT_VOCAB, GPT2, KEYS, MODEL_KEYS, Shape

OBJECTIVES = ("trainable", "params", "tokens", "balanced")
DEFAULT_OBJECTIVE = "trainable"
# `trainable` (the default): distinct models ranked by size among those that train on at least TOKENS_FLOOR tokens
# per step (nanoGPT's shakespeare_char batch, 64 x 256; GPT-2 124M trains on 12 x 1024), at a block between
# nanoGPT's two (256 for characters, 1024 for GPT-2) unless --block-size is given, and, for a prepared corpus, at most
# PARAMS_PER_CORPUS_TOKEN parameters per training token: repeated data stops helping after ~16 epochs
# (Muennighoff et al. 2023, R* ~ 15), so beyond that a model gets less than one useful token per parameter.
# The token floor halves while fewer than `top` models reach it or while halving it lets a model RELAX_GAIN times
# larger fit (a 50k vocabulary's logits make 16k tokens cost ~8 GiB); the corpus cap doubles until `top` models
# pass. F = 16384 with gain 4 was chosen by experiments/rank_defaults.py (results/bench/rank-defaults-*.md): the only
# candidate with no batch 1, no larger model at under half the reference's tokens, and both references covered.
# Each model is shown at the longest block where its batch is still BATCH_PREF sequences (else its largest batch).
TOKENS_FLOOR = 16384
BLOCK_RANGE = (256, 1024)
RELAX_GAIN = 4.0
TRAINABLE_VALUE = "params w/o pos. emb."  # the model's size as nanoGPT counts it (a longer block adds no capacity)
BATCH_PREF = 8  # each model at its longest block that still takes this many sequences a step (or the most it can)
PARAMS_PER_CORPUS_TOKEN = 16
# how `suggest --hours` ranks what fits (D: tokens processed in the hours, P: parameters):
#   optimal     maximise min(D, 20 P): the tokens that count toward compute-optimal training (Hoffmann et al.
#               2022); grows with P while D > 20 P and with D while D < 20 P, so it peaks at D = 20 P; ties: more D
#   chinchilla  minimise L = 1.69 + 406.4/P^0.34 + 410.7/D^0.28 (Hoffmann et al.'s published fit)
#   loss        minimise the loss law fitted to this corpus's stored runs (`vramfit fit --loss`)
TIME_RANKS = ("optimal", "chinchilla", "loss")
HEAD_DIMS = (32, 64, 128)
DEFAULT_SPACE = {
    "n_layer": [1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 36, 40, 48],
    "n_embd": list(range(64, 1025, 64)) + [1280, 1536, 1600, 1792, 2048, 2560, 3072, 4096],
    "block_size": [64, 128, 256, 512, 1024, 2048, 4096],
    "batch_size": list(range(1, 33)) + list(range(40, 129, 8)) + list(range(160, 513, 32)),
    "vocab_size": [DEFAULT_VOCAB],
}
MAX_HEADS = 64
MAX_SPACE_POINTS = 10_000_000  # (shape, batch) points of one search: ~1.3 GB at the measured ~125 B a point
SPACE_BYTES_PER_POINT = 200  # features, prediction, need and ranking per point (measured ~125 B: 2.8M in 350 MB)
# width/depth between 16 and 256: Kaplan et al. (2020) found loss nearly flat for aspect ratios ~20-200
ASPECT = (16, 256)


RECIPE_FIELDS = ("label", "grad_accum", "checkpoint", "optimizer", "ms_per_step", "tflop_per_step")


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
    # with a time budget (suggest --hours): the throughput model's speed and what the budget buys
    ms_per_iter: float | None = None
    tokens_per_s: float | None = None
    tokens_in_budget: float | None = None  # tokens processed in the hours given
    hours_to_optimal: float | None = None  # hours to reach 20 x params tokens (compute-optimal)
    predicted_loss: float | None = None  # at the end of the budget (rank chinchilla or loss)
    score: float | None = None  # the value the ranking sorted by (see Ranked.ranking["value"])
    extrapolated: list = field(default_factory=list)  # axes (and params, tokens) outside the measured ranges
    label: str | None = None  # suggest --like: what was searched close to the config (like.LABELS)
    nanochat: dict | None = None  # suggest --like "<base_train command>": nanochat's own command, depth, device
    # batch, gradient accumulation, total batch and GPUs (`plan.nanochat`)
    # suggest --tokens-per-step (plan.recipes): the recipe of the row; batch_size is the micro-batch and
    # tokens_per_step the whole optimizer step's (micro-batch x grad_accum x block)
    grad_accum: int | None = None
    checkpoint: str | None = None
    optimizer: str | None = None
    ms_per_step: float | None = None  # a profile's throughput model, per optimizer step
    tflop_per_step: float | None = None  # with the recompute of checkpointed blocks (the dry run ranks by it)
    arch: str = GPT2  # the model family and its options (`vramfit.shape.Shape.arch`)

    @property
    def shape(self) -> Shape:
        return Shape.of(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("nanochat", *RECIPE_FIELDS):  # only the rows of a nanochat or recipe plan carry them
            if d[key] is None:
                del d[key]
        if d["arch"] == GPT2:  # a GPT-2 row as before families existed
            del d["arch"]
        return d


@dataclass(frozen=True)
class TimeBudget:
    """`suggest --hours`: the time, how what it buys is ranked (TIME_RANKS), the loss law for rank `loss`, and
    the profile's throughput model (ms/iter)."""

    hours: float | str
    rank: str = "optimal"
    loss_law: object | None = None
    throughput: object | None = None


@dataclass
class _Fit:
    """The search space, its features, predictions, needs (prediction + margin), per shape the position of its
    largest fitting batch (`idx`), and each point's parameter count (`params`: the features' `params` counts state
    bytes under a FAMILY model) and model size as the `trainable` objective counts it (`size`)."""

    space: dict
    feats: dict
    pred: np.ndarray
    need: np.ndarray
    idx: np.ndarray
    params: np.ndarray
    size: np.ndarray
    arch: str = GPT2


class Ranked(list):
    """Suggestions in rank order, with `ranking`: the objective, the value it sorts by and the floors it applied."""

    def __init__(self, items: list | None = None, ranking: dict | None = None) -> None:
        super().__init__(items or [])
        self.ranking = ranking or {}


def _as_list(value, default: list[int]) -> list[int]:
    if value is None:
        return default
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


def enumerate_space(n_layer=None, n_head=None, n_embd=None, block_size=None, batch_size=None,
                    vocab_size=None, head_dims: tuple[int, ...] = HEAD_DIMS,
                    aspect: tuple[int, int] | None = ASPECT,
                    models: list[tuple[int, int, int]] | None = None) -> dict[str, np.ndarray]:
    """All (shape, batch) combinations as flat arrays, batch innermost. Heads: n_embd / head_dim unless fixed.

    `aspect` bounds n_embd / n_layer when neither is fixed by the caller (None: no bound). `models`: the (n_layer,
    n_head, n_embd) triples to search instead of layers x widths x heads (a family's own shape rule)."""
    if models is not None:
        layers = sorted({m[0] for m in models})
        n_layer = n_head = n_embd = None
    else:
        layers = _as_list(n_layer, DEFAULT_SPACE["n_layer"])
    widths = _as_list(n_embd, DEFAULT_SPACE["n_embd"])
    blocks = _as_list(block_size, DEFAULT_SPACE["block_size"])
    batches = sorted(set(_as_list(batch_size, DEFAULT_SPACE["batch_size"])))
    vocabs = _as_list(vocab_size, DEFAULT_SPACE["vocab_size"])
    fixed_heads = _as_list(n_head, []) if n_head is not None else None
    pairs = [] if models is None else [(h, c) for _, h, c in models]  # (n_head, n_embd)
    for c in widths if models is None else ():
        heads = fixed_heads if fixed_heads is not None else sorted({c // d for d in head_dims if c % d == 0})
        pairs += [(h, c) for h in heads if 1 <= h <= MAX_HEADS and c % h == 0]
    if not pairs and fixed_heads and min(fixed_heads) > MAX_HEADS:
        raise VramfitError(f"--n-head: {min(fixed_heads)} is beyond the search's limit of {MAX_HEADS} heads")
    if not pairs:
        raise VramfitError("no valid (n_head, n_embd) pair in the search space (n_embd must divide by n_head)")
    if min(layers + blocks + batches + vocabs) < 1:
        raise VramfitError("every size in the search space must be >= 1")
    if aspect is None or n_layer is not None or n_embd is not None:
        aspect = (0, math.inf)
    triples = [(L, h, c) for L in layers for h, c in pairs] if models is None else list(models)
    check_space_size(len(triples) * len(blocks) * len(vocabs) * len(batches))
    shapes = np.array([(L, h, c, T, V) for L, h, c in triples for T in blocks for V in vocabs
                       if aspect[0] <= c / L <= aspect[1]], dtype=np.int64)
    if not len(shapes):
        raise VramfitError("the search space is empty (check --n-layer / --n-embd)")
    S, NB = len(shapes), len(batches)
    out = {k: np.repeat(shapes[:, i], NB) for i, k in enumerate(MODEL_KEYS)}
    out["batch_size"] = np.tile(np.asarray(batches, dtype=np.int64), S)
    out["_n_batches"] = NB
    return out


def check_space_size(n: int) -> None:
    """Refuse, before it is built, a search space beyond MAX_SPACE_POINTS (shape, batch) points or larger than
    the RAM available (SPACE_BYTES_PER_POINT each): one line naming the limit, not gigabytes of arrays."""
    from gpt.limits import check_memory

    if n > MAX_SPACE_POINTS:
        raise VramfitError(f"the search space has {n:,} (shape, batch) points, beyond the limit of "
                           f"{MAX_SPACE_POINTS:,}: give fewer values to --n-layer, --n-head, --n-embd, --block-size "
                           "or --batch-size")
    check_memory(n * SPACE_BYTES_PER_POINT, f"a search space of {n:,} (shape, batch) points")


def predict_space(model: MemoryModel, space: dict[str, np.ndarray], arch: str = GPT2) -> tuple[dict, np.ndarray]:
    feats = model.columns(space, arch)
    return feats, model.predict(feats)


def model_params(model: MemoryModel, space: dict[str, np.ndarray], feats: dict,
                 arch: str = GPT2) -> tuple[np.ndarray, np.ndarray]:
    """Per point of a space: the parameter count, and the model's size as `trainable` ranks it (GPT-2 without its
    position table, as nanoGPT counts it; nanochat has none). Under a FAMILY model `params` is not the count (it
    counts the state's bytes), so each distinct model is counted by `GPTConfig`."""
    if getattr(model, "family_", None) is None:
        P = feats["params"]
    else:
        keys = np.column_stack([space[k] for k in MODEL_KEYS])
        models, where = np.unique(keys, axis=0, return_inverse=True)
        counts = np.array([Shape(L, H, C, T, 1, V, arch).model_config().n_params() for L, H, C, T, V in
                           models.tolist()], dtype=np.float64)
        P = counts[np.ravel(where)]
    return P, P - (space["block_size"] * space["n_embd"] if arch == GPT2 else 0)


def check_hours(hours) -> float:
    """A positive, finite number of hours (accepts "6", "1.5"); anything else is a one-line error."""
    try:
        h = float(str(hours).strip().removesuffix("h"))
    except ValueError:
        raise VramfitError(f"--hours must be a positive number of hours (e.g. 6 or 1.5), got {hours!r}") from None
    if not math.isfinite(h) or h <= 0:
        raise VramfitError(f"--hours must be a positive number of hours (e.g. 6 or 1.5), got {hours!r}")
    return h


def time_scores(time: TimeBudget, space: dict, idx: np.ndarray, feats: dict, params: np.ndarray | None = None,
                arch: str = GPT2) -> dict[str, np.ndarray]:
    """Per candidate `idx`: ms/iter, tokens/s, tokens in the hours, hours to 20 x P, predicted loss, and the
    score the rank sorts by (lower is better); `params`: each point's count (default: the `params` feature)."""
    from vramfit.fit.losslaw import TOKENS_PER_PARAM, chinchilla
    from vramfit.fit.throughput import predict_ms

    params = feats["params"] if params is None else params
    hours, rank, loss_law = check_hours(time.hours), time.rank, time.loss_law
    if rank not in TIME_RANKS:
        raise VramfitError(f"unknown --rank {rank!r}; choose one of {', '.join(TIME_RANKS)}")
    if rank == "loss" and loss_law is None:
        raise VramfitError("--rank loss needs a fitted loss law (run `vramfit fit --loss` after a few "
                           "`vramfit train` runs on this corpus)")
    ms = predict_ms(time.throughput, *(space[k][idx] for k in KEYS), arch=arch)
    P, N = params[idx], feats["tokens"][idx]
    tps = N / (ms / 1000)
    D = tps * hours * 3600
    out = {"ms_per_iter": ms, "tokens_per_s": tps, "tokens": D, "params": P,
           "hours_to_optimal": TOKENS_PER_PARAM * P / tps / 3600}
    law = loss_law if rank == "loss" else chinchilla()
    out["loss"] = law.predict(P, D)
    out["score"] = -np.minimum(D, TOKENS_PER_PARAM * P) if rank == "optimal" else out["loss"]
    return out


def _fitting(model: MemoryModel, margin_rel: float, budget_bytes: int, min_batch: int, space_args: dict) -> _Fit:
    """The space searched (of the family `space_args["arch"]`, default GPT-2), and per shape the largest batch whose
    prediction + margin fits."""
    if budget_bytes <= 0:
        raise VramfitError("the budget must be positive (is --reserve larger than --vram?)")
    floor = model.intercept_ * (1 + margin_rel)
    if budget_bytes <= floor:
        raise VramfitError(f"a budget of {budget_bytes / 2**30:.2f} GiB is below this device's constant "
                           f"({floor / 2**30:.2f} GiB with margin): nothing can fit")
    arch = space_args.pop("arch", None) or GPT2
    space = enumerate_space(**space_args)
    NB = space.pop("_n_batches")
    feats, pred = predict_space(model, space, arch)
    need = pred * (1 + margin_rel)
    fits = (need <= budget_bytes) & (space["batch_size"] >= min_batch)
    fits2 = fits.reshape(-1, NB)
    last = NB - 1 - np.argmax(fits2[:, ::-1], axis=1)
    any_fit = fits2.any(axis=1)
    idx = (np.nonzero(any_fit)[0] * NB + last[any_fit])
    return _Fit(space, feats, pred, need, idx, *model_params(model, space, feats, arch), arch)


def time_frontier(model: MemoryModel, margin_rel: float, budget_bytes: int, time: TimeBudget,
                  min_batch: int = 1, **space_args) -> dict[str, np.ndarray]:
    """Every shape that fits (with its largest fitting batch) and what `time` buys it: for the frontier plot."""
    f = _fitting(model, margin_rel, budget_bytes, min_batch, space_args)
    return time_scores(time, f.space, f.idx, f.feats, f.params, f.arch) | {k: f.space[k][f.idx] for k in KEYS}


def _model_keys(space: dict, rows: np.ndarray) -> np.ndarray:
    """One integer per distinct model (layers, width, vocab) of `rows`."""
    keys = np.stack([space["n_layer"][rows], space["n_embd"][rows], space["vocab_size"][rows]], axis=1)
    return np.unique(keys, axis=0, return_inverse=True)[1].ravel()


def _trainable(f: _Fit, top: int, corpus_tokens: int | None, block_fixed: bool,
               odd_heads: np.ndarray) -> tuple[np.ndarray, tuple, dict]:
    """(rows, sort keys, floors applied, score) for the `trainable` objective (see TOKENS_FLOOR)."""
    space, idx = f.space, f.idx
    N, T = f.feats["tokens"][idx], space["block_size"][idx]
    size = f.size[idx]  # the model without its position embeddings
    model = _model_keys(space, idx)
    ok = np.ones(len(idx), dtype=bool) if block_fixed else (T >= BLOCK_RANGE[0]) & (T <= BLOCK_RANGE[1])
    if not ok.any():
        ok[:] = True

    def n_models(mask: np.ndarray) -> int:
        return len(np.unique(model[mask]))

    def best(mask: np.ndarray) -> float:
        return float(size[mask].max()) if mask.any() else 0.0

    want = min(top, n_models(ok))
    floor = TOKENS_FLOOR
    # halve the floor while fewer than `top` models reach it, or while halving it lets a model RELAX_GAIN x larger fit
    while floor > 1 and (n_models(ok & (N >= floor)) < want
                         or best(ok & (N >= floor // 2)) > RELAX_GAIN * best(ok & (N >= floor))):
        floor //= 2
    ok &= N >= floor
    cap = None
    if corpus_tokens:
        cap = PARAMS_PER_CORPUS_TOKEN * int(corpus_tokens)
        while n_models(ok & (size <= cap)) < want:
            cap *= 2
        ok &= size <= cap
    batch = np.minimum(space["batch_size"][idx], BATCH_PREF)
    keys = (-N, odd_heads, -T, -batch, -size)  # the largest model; its batch up to 8, longest block, head dim 64
    floors = {"tokens_floor": int(floor), "block_range": None if block_fixed else list(BLOCK_RANGE),
              "max_params": int(cap) if cap is not None else None, "corpus_tokens": corpus_tokens}
    return np.nonzero(ok)[0], keys, floors, size


def ranking_text(ranking: dict) -> str:
    """What a ranking sorted by, in words (the table's title)."""
    objective = ranking.get("objective")
    if objective != "trainable":
        return {"params": "params (largest model)", "tokens": "tokens per step",
                "balanced": "params x tokens per step"}.get(objective, str(objective))
    text = f"{TRAINABLE_VALUE}, among models with >= {ranking['tokens_floor']:,} tokens per step"
    if ranking.get("block_range"):
        text += f", block {ranking['block_range'][0]}-{ranking['block_range'][1]}"
    if ranking.get("max_params"):
        text += (f", <= {ranking['max_params'] / 1e6:,.1f}M params ({ranking['corpus_tokens'] / 1e6:,.2f}M corpus "
                 "tokens)")
    return text


def suggest(model: MemoryModel, margin_rel: float, budget_bytes: int, objective: str = DEFAULT_OBJECTIVE,
            top: int = 10, min_batch: int = 1, command=None, time: TimeBudget | None = None,
            corpus_tokens: int | None = None, **space_args) -> Ranked:
    """Configs whose prediction + margin fits `budget_bytes`, one per shape (its largest fitting batch), ranked by
    `objective` (`trainable`: one per model, see TOKENS_FLOOR), or with a `time` budget (and its ThroughputModel)
    by what the time buys under its rank (see TIME_RANKS). `.ranking` says what the order was. `space_args`: the
    values of each Shape axis to search (None: DEFAULT_SPACE), `head_dims` and `aspect` (`enumerate_space`)."""
    if objective not in OBJECTIVES:
        raise VramfitError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if time is not None:
        time = TimeBudget(check_hours(time.hours), time.rank, time.loss_law, time.throughput)
        if time.throughput is None:
            raise VramfitError("this model file has no throughput model (fitted before `--hours` existed, or its "
                               "points have no ms/iter): re-run `vramfit fit`")
    f = _fitting(model, margin_rel, budget_bytes, min_batch, space_args)
    space, feats, need, idx = f.space, f.feats, f.need, f.idx
    ranking = {"objective": objective if time is None else "hours"}
    if not len(idx):
        return Ranked([], ranking)
    P, N, cost = f.params[idx], feats["tokens"][idx], need[idx]
    odd_heads = np.abs(space["n_embd"][idx] / space["n_head"][idx] - 64)  # ties: prefer head_dim 64
    times, rows, per_model = None, np.arange(len(idx)), False
    if time is not None:
        rank = time.rank
        times = time_scores(time, space, idx, feats, f.params, f.arch)
        primary, score = (-times["tokens"], times["score"]), -times["score"] if rank == "optimal" else times["loss"]
        ranking.update(value="tokens toward 20 x params" if rank == "optimal" else "predicted loss", rank=rank)
    elif objective == "trainable":
        rows, primary, floors, score = _trainable(f, top, corpus_tokens, space_args.get("block_size") is not None,
                                                  odd_heads)
        ranking.update(value=TRAINABLE_VALUE, **floors)
        per_model = True
    else:
        primary = {"params": (-N, -P), "tokens": (-P, -N), "balanced": (-(np.log(P) + np.log(N)),)}[objective]
        score = {"params": P, "tokens": N, "balanced": P * N}[objective]
        ranking["value"] = {"params": "params", "tokens": "tokens/step", "balanced": "params x tokens/step"}[objective]
    if time is None:
        ranking["text"] = ranking_text(ranking)
    order = rows[np.lexsort(tuple(k[rows] for k in (odd_heads, cost, *primary)))]  # last key: the primary one
    chosen = _distinct(space, idx, order, top, per_model)
    return Ranked(_build(model, f, chosen, (margin_rel, budget_bytes), (times, time), score, command), ranking)


def _distinct(space: dict, idx: np.ndarray, order: np.ndarray, top: int, per_model: bool) -> list[int]:
    """The first `top` positions of `order` (into idx) with a new model (per_model) or a new shape: the head count
    barely changes memory, so one row per (layers, width, block, vocab), or per (layers, width, vocab)."""
    chosen, seen = [], set()
    for j in order:
        i = idx[j]
        key = (space["n_layer"][i], space["n_embd"][i], space["vocab_size"][i],
               None if per_model else space["block_size"][i])
        if key not in seen:
            seen.add(key)
            chosen.append(int(j))
            if len(chosen) == top:
                break
    return chosen


def _build(model: MemoryModel, f: _Fit, chosen: list[int], budget: tuple[float, int],
           timed: tuple[dict | None, TimeBudget | None], score: np.ndarray, command) -> list[Suggestion]:
    """Suggestion objects for positions `chosen` (into f.idx), with breakdown, score and command (`budget`: the
    margin and the bytes; `timed`: the time scores and the time budget, or Nones)."""
    (margin_rel, budget_bytes), (times, time) = budget, timed
    space, feats, pred, need = f.space, f.feats, f.pred, f.need
    rows = f.idx[np.asarray(chosen, dtype=np.int64)]
    parts = model.breakdown({k: v[rows] for k, v in feats.items()})
    out = []
    for rank_no, (j, i, part) in enumerate(zip(chosen, rows, parts, strict=True), start=1):
        s = Suggestion(
            rank=rank_no, **{k: int(space[k][i]) for k in KEYS},
            params=int(f.params[i]), tokens_per_step=int(feats["tokens"][i]),
            predicted_bytes=int(pred[i]), margin_bytes=int(pred[i] * margin_rel),
            headroom_bytes=int(budget_bytes - need[i]), regime=part.pop("regime"),
            breakdown={k: int(v) for k, v in part.items()}, score=float(score[j]),
            arch=Shape(*(int(space[k][i]) for k in KEYS), f.arch).arch,
        )
        if times is not None:
            s.ms_per_iter, s.tokens_per_s = float(times["ms_per_iter"][j]), float(times["tokens_per_s"][j])
            s.tokens_in_budget, s.hours_to_optimal = float(times["tokens"][j]), float(times["hours_to_optimal"][j])
            s.predicted_loss = float(times["loss"][j]) if time.rank != "optimal" else None
        s.command = command(s) if command else ""
        out.append(s)
    return out


def smallest_need(model: MemoryModel, margin_rel: float, **space_args) -> tuple[int, dict]:
    """The least memory (prediction + margin) any config in the space needs, and that config."""
    arch = space_args.pop("arch", None) or GPT2
    space = enumerate_space(**space_args)
    space.pop("_n_batches")
    _, pred = predict_space(model, space, arch)
    i = int(np.argmin(pred))
    return int(math.ceil(pred[i] * (1 + margin_rel))), {k: int(v[i]) for k, v in space.items()}
