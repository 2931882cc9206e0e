"""`suggest --no-profile`'s model: physics fitted to dry-run estimates, then every byte term scaled by the allocator
slack and the CUDA context added. The estimates are faked with a known physics formula (milliseconds, no dry run)."""

import types

import numpy as np
import pytest
from planner_data import true_memory

import vramfit.dryrun.estimate as estimate_mod
from vramfit.fit.features import PHYSICS, features
from vramfit.fit.memmodel import MIN_MARGIN, MemoryModel
from vramfit.plan.workflows import NO_PROFILE_DESIGN, no_profile_model
from vramfit.recipe import Recipe


@pytest.fixture
def fake_estimates(monkeypatch):
    calls = []

    def estimate_step(mc, batch, recipe, target, capability):
        calls.append((mc.n_layer, mc.n_head, mc.n_embd, mc.block_size, batch, mc.vocab_size, target, capability))
        y = true_memory(mc.n_layer, mc.n_head, mc.n_embd, mc.block_size, batch, mc.vocab_size)[0]
        return types.SimpleNamespace(peak_bytes=int(y))

    monkeypatch.setattr(estimate_mod, "estimate_step", estimate_step)
    return calls


@pytest.mark.parametrize("vocab", [64, 50304])  # 64: the in-layer transient is the peak; 50304: the loss
@pytest.mark.parametrize("target, context", [("cuda", estimate_mod.CUDA_CONTEXT_BYTES), ("cpu", 0)])
def test_every_term_is_scaled_by_the_slack_and_the_context_added(fake_estimates, vocab, target, context):
    model, margin, recipe = no_profile_model(Recipe(dtype="bfloat16"), (8, 0), vocab, target=target)
    assert len(fake_estimates) == 16 and {c[5] for c in fake_estimates} == {vocab}
    assert {c[6:] for c in fake_estimates} == {(target, (8, 0))}
    rows = np.array([c[:6] for c in fake_estimates]).T
    raw = MemoryModel(PHYSICS, regimes=2).fit(features(*rows), np.array([int(true_memory(*r)[0]) for r in rows.T],
                                                                         dtype=np.float64))
    if vocab == 64:
        assert raw.layer_coef_ > 0  # the case the scale was missing for
    scale = 1 + estimate_mod.ALLOCATOR_SLACK
    probe = features([2, 8, 4, 12], [4, 12, 8, 12], [256, 768, 512, 768], [256, 1024, 512, 1024], [1, 8, 4, 2],
                     [vocab] * 4)
    np.testing.assert_allclose(model.predict(probe), scale * raw.predict(probe) + context, rtol=1e-12)
    assert model.layer_coef_ == pytest.approx(scale * raw.layer_coef_)
    assert margin == MIN_MARGIN and recipe == Recipe(dtype="bfloat16").resolved(target, (8, 0)).to_dict()


def test_the_design_is_the_documented_16_configs(fake_estimates):
    no_profile_model(Recipe(), (9, 0), 256)
    L, C, T, B = (sorted({c[i] for c in fake_estimates}) for i in (0, 2, 3, 4))
    assert (tuple(L), tuple(C), tuple(T), tuple(B)) == tuple(NO_PROFILE_DESIGN.values())
    assert all(c[1] == c[2] // 64 for c in fake_estimates)  # 64-wide heads
