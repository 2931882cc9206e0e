"""The memory model's pieces with hand-set coefficients (milliseconds each): its JSON read back with every field
checked, the breakdown of an optimizer-step point, the recompute piece of checkpointed blocks and its fit, the
feature columns it reads. The fast file beside test_memmodel_invariants.py in `scripts/mutation.py`'s memmodel run."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vramfit.fit.features import FAMILY, PHYSICS, REBLOCK, RECIPE_PHYSICS, STEP, features, point_features
from vramfit.fit.memmodel import MemoryModel, _fit_recompute, _recompute, _recompute_parts
from vramfit.shape import KEYS

FAMILY_MODEL = {"features": list(FAMILY), "regimes": 2, "intercept": 100.0, "coef": [1.0] * len(FAMILY),
                "layer_coef": [2.0, 3.0], "step_intercept": 100.0, "step_coef": 16.0,
                "step_extra": [4.0, 0.5, 0.25, 8.0], "family": ["muon", "bfloat16"]}
SWITCH_MODEL = {"features": list(RECIPE_PHYSICS), "regimes": 2, "intercept": 50.0,
                "coef": [1.0] * len(RECIPE_PHYSICS), "layer_coef": 0.0, "step_intercept": 50.0, "step_coef": 12.0,
                "step_state_coef": 1.0, "reblock_coef": [4.0, 1.0, 80.0, 4.0, 4.0, 64.0]}


def test_a_family_model_reads_back_every_field():
    m = MemoryModel.from_dict(FAMILY_MODEL)
    assert m.family_ == ("muon", "bfloat16") and m.step_features == STEP
    assert m.step_extra_.tolist() == [4.0, 0.5, 0.25, 8.0] and m.layer_.tolist() == [2.0, 3.0]
    assert m.to_dict() == FAMILY_MODEL and m.coef_.dtype == np.float64
    plain = MemoryModel.from_dict({"features": list(PHYSICS), "intercept": 1.0, "coef": [1, 2, 3, 4, 5]})
    assert plain.family_ is None and plain.step_extra_.shape == (0,) and plain.reblock_coef_.tolist() == [0.0] * 6
    assert plain.coef_.dtype == plain.layer_.dtype == plain.reblock_coef_.dtype == np.float64
    assert plain.step_state_coef_ == 0.0 and plain.regimes == 1 and "family" not in plain.to_dict()


def test_a_switch_model_reads_back_its_state_and_recompute_coefficients():
    m = MemoryModel.from_dict(SWITCH_MODEL)
    assert m.step_state_coef_ == 1.0 and m.reblock_coef_.tolist() == SWITCH_MODEL["reblock_coef"]
    assert m.to_dict() == SWITCH_MODEL
    zero = MemoryModel.from_dict({k: v for k, v in SWITCH_MODEL.items() if k not in ("step_state_coef",
                                                                                      "reblock_coef")})
    assert zero.step_state_coef_ == 0.0 and zero.reblock_coef_.tolist() == [0.0] * len(REBLOCK)
    fam = MemoryModel.from_dict({k: v for k, v in FAMILY_MODEL.items() if k != "step_extra"})
    assert fam.step_extra_.tolist() == [0.0] * len(STEP)


@pytest.mark.parametrize("change, message", [
    ({"family": "muon"}, "its family is 'muon', not [optimizer, dtype]"),
    ({"family": ["muon"]}, "its family is ['muon'], not [optimizer, dtype]"),
    ({"family": ["muon", "float32", "x"]}, "its family is ['muon', 'float32', 'x'], not [optimizer, dtype]"),
    ({"family": ["muon", 32]}, "its family is ['muon', 32], not [optimizer, dtype]"),
    ({"layer_coef": [1.0, 2.0, 3.0]}, "3 in-layer transient coefficients for these features"),
    ({"step_extra": [1.0]}, "4 step features but 1 step coefficients"),
    ({"coef": [1.0]}, f"{len(FAMILY)} features but 1 coefficients"),
    ({"reblock_coef": [1.0, 2.0]}, "6 recompute coefficients expected, got 2"),
    ({"step_state_coef": -1.0}, "its step_state_coef is -1.0, not a finite number in [0, 2**60]"),
    ({"intercept": -1.0}, "its intercept is -1.0, not a finite number in [0, 2**60]"),
    ({"step_intercept": -2.0}, "its step_intercept is -2.0, not a finite number in [0, 2**60]"),
    ({"step_coef": float("inf")}, "its step_coef is inf, not a finite number in [0, 2**60]"),
    ({"step_extra": [0.0, -1.0, 0.0, 0.0]}, "its step coef of muon_stack is -1.0, not a finite number in [0, 2**60]"),
    ({"coef": [0.0] * (len(FAMILY) - 1) + [-3.0]}, "its coef of chat_attn is -3.0, not a finite number in [0, 2**60]"),
    ({"layer_coef": [0.0, -1.0]}, "its layer_coef 1 is -1.0, not a finite number in [0, 2**60]"),
])
def test_a_bad_model_file_is_one_error_naming_the_field(change, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MemoryModel.from_dict({**FAMILY_MODEL, **change})


def test_negative_coefficients_only_where_asked():
    d = {**SWITCH_MODEL, "reblock_coef": [0.0, 0.0, -5.0, 0.0, 0.0, 0.0]}
    with pytest.raises(ValueError, match=r"^its recompute coef of recompute is -5.0, not a finite number in \[0, "):
        MemoryModel.from_dict(d)
    assert MemoryModel.from_dict(d, nonneg=False).reblock_coef_[2] == -5.0  # a plain least-squares baseline
    with pytest.raises(ValueError, match=r"^its intercept is -1e\+19, not a finite number in \[-1\.15292e\+18, "):
        MemoryModel.from_dict({**d, "intercept": -1e19}, nonneg=False)  # still within 2**60 bytes


def test_the_breakdown_of_an_optimizer_step_point():
    """A big model at batch 1 under the FAMILY model: the step piece holds params, the step transients and the
    constant; under the switch model everything above the constant (the state too) is params+optimizer."""
    pt = {"n_layer": 8, "n_head": 8, "n_embd": 512, "block_size": 8, "batch_size": 1, "vocab_size": 64,
          "arch": "nanochat"}
    m = MemoryModel.from_dict({**FAMILY_MODEL, "coef": [0.0] * len(FAMILY), "layer_coef": [0.0, 0.0]})
    X = point_features([pt], True, {"optimizer": "muon", "dtype": "bfloat16"})
    lin, step = m.parts(X)
    assert step[0] > lin[0]
    (b,) = m.breakdown(X)
    held = 16.0 * X["params"][0] + sum(c * X[f][0] for f, c in zip(STEP, FAMILY_MODEL["step_extra"], strict=True))
    assert b == {"regime": "optimizer step", "constant": 100.0, "params+optimizer": pytest.approx(held),
                 "logits": 0.0, "activations": 0.0, "attention": 0.0}
    assert b["constant"] + b["params+optimizer"] == pytest.approx(step[0])
    s = MemoryModel.from_dict({**SWITCH_MODEL, "coef": [0.0] * len(RECIPE_PHYSICS)})
    X = switch_point(every=0)
    (b,) = s.breakdown(X)
    assert b["regime"] == "optimizer step" and b["constant"] == 50.0
    assert b["params+optimizer"] == pytest.approx(12.0 * X["params"][0] + X["state"][0])


def switch_point(every: int, accum: int = 1, L: int = 6) -> dict:
    sw = {"checkpoint_every": every, "grad_accum": accum, "state": 1000.0}
    return features(L, 2, 64, 16, 2, 128, switches=sw)


def test_the_recompute_piece_is_the_larger_of_its_two_peaks():
    coef = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    X = {k: np.concatenate([switch_point(2)[k], switch_point(3)[k], switch_point(0)[k]])
         for k in switch_point(2)}
    first, deepest = (_recompute_parts(X, at) for at in ("first", "deepest"))
    assert first.shape == deepest.shape == (3, len(REBLOCK))
    assert first[:, 3].tolist() == X["grads_first"].tolist() and deepest[:, 5].tolist() == X["acts_deepest"].tolist()
    assert first[:, :3].tolist() == deepest[:, :3].tolist() == np.column_stack(
        [X["params"], X["state"], X["recompute"]]).tolist()
    assert _recompute(X, coef).tolist() == np.maximum(first @ coef, deepest @ coef).tolist()
    m = MemoryModel.from_dict({**SWITCH_MODEL, "coef": [0.0] * len(RECIPE_PHYSICS), "reblock_coef": coef.tolist()})
    step = m.parts(X)[1]
    plain = 50.0 + 12.0 * X["params"] + X["state"]
    assert step.tolist() == pytest.approx([max(plain[0], 50.0 + _recompute(X, coef)[0]),
                                           max(plain[1], 50.0 + _recompute(X, coef)[1]), plain[2]])


def test_the_recompute_fit_recovers_its_coefficients():
    """Points whose recompute peaks at block 0 for some and at the deepest block for others: the alternating
    NNLS finds which, and the coefficients that made them."""
    true = np.array([4.0, 1.0, 80.0, 4.0, 4.0, 64.0])
    rows = [switch_point(e, a, L) for e in (1, 2, 3) for a in (1, 2) for L in (3, 5, 8)]
    X = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    X = {k: v * (1 + 0.1 * np.arange(len(v)) % 3) if k == "state" else v for k, v in X.items()}
    y = _recompute(X, true)
    got = _fit_recompute(X, y, np.arange(len(y)), 64.0)  # the plain blocks' acts: the backward piece's coefficient
    assert got == pytest.approx(true, rel=1e-6)
    half = np.arange(0, len(y), 2)
    assert _fit_recompute(X, y, half, 64.0) == pytest.approx(true, rel=1e-6)  # the rows given only
    assert _fit_recompute(X, y, half, 70.0)[-1] == 70.0  # the acts coefficient is the one given, not fitted


def test_the_columns_a_model_reads():
    sizes = {k: np.array([v]) for k, v in zip(KEYS, (2, 2, 64, 32, 4, 100), strict=True)}
    assert set(MemoryModel().columns(sizes)) == {*PHYSICS, "tokens"}
    fam = MemoryModel.from_dict(FAMILY_MODEL).columns(sizes, "nanochat")
    assert fam["params"][0] == point_features([{**{k: int(v[0]) for k, v in sizes.items()}, "arch": "nanochat"}],
                                              True, {"optimizer": "muon", "dtype": "bfloat16"})["params"][0]
