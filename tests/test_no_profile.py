"""`suggest --no-profile`'s model: the physics model fitted to the estimator's whole-device figures on the
calibration design. The figures are faked with a known physics formula plus a context (milliseconds, no dry run),
so every term, the in-layer transient's included, must be recovered: the model predicts what the estimator would
say, also off the design."""

import numpy as np
import pytest
from planner_data import TRUE, true_memory

from vramfit.fit.features import features
from vramfit.plan.noprofile import DESIGN, calibrated_model, design_shapes

CONTEXT = 381 * 2**20  # a CUDA context as the estimator's table gives it (any constant will do)


def device_figures(shapes):
    return [int(true_memory(*s)[0]) + CONTEXT for s in shapes]


@pytest.mark.parametrize("vocab", [64, 50304])  # 64: the in-layer transient is the peak; 50304: the loss
def test_the_calibrated_model_predicts_the_estimators_figures_off_the_design(vocab):
    shapes = design_shapes(vocab)
    model = calibrated_model(shapes, device_figures(shapes))
    off = [(3, 6, 384, 512, 4, vocab), (6, 8, 512, 256, 2, vocab), (4, 10, 640, 768, 6, vocab)]
    pred = model.predict(features(*np.asarray(off).T))
    assert pred == pytest.approx(device_figures(off), rel=0.03)
    assert model.intercept_ == pytest.approx(TRUE["const"] + CONTEXT, rel=0.05)  # the context is in the constant
    if vocab == 64:  # the char-level peak sits inside a block's backward: its coefficient must carry it
        assert model.layer_coef_ == pytest.approx(TRUE["layer"], rel=0.1)


def test_the_design_is_the_documented_16_configs():
    shapes = design_shapes(50304)
    assert len(shapes) == 16 == np.prod([len(v) for v in DESIGN.values()])
    assert {s[2] // s[1] for s in shapes} == {64} and {s[5] for s in shapes} == {50304}
