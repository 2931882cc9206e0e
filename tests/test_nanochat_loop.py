"""`--loop nanochat` (issue 28 item 5): the dry run steps nanochat's scripts/base_train.py loop
(`gpt.nanochat_loop`: its loss-only forward, its data loader's buffers, its micro-steps, no clipping), and
`--like "nanochat ..."` chooses it. The reference is karpathy/nanochat at 92d63d4 (scripts/base_train.py L246,
L331-333, L510-540; nanochat/dataloader.py L112-161; nanochat/gpt.py L518-522)."""

import pytest

from gpt.config import GPTConfig
from vramfit.cli import main
from vramfit.dryrun.estimate import EstimateRequest
from vramfit.dryrun.fake_step import run_step
from vramfit.errors import VramfitError
from vramfit.plan.nanochat import base_train_request
from vramfit.recipe import Recipe

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=128, arch="nanochat", n_kv_head=1,
                 window_pattern="SL")
EAGER = Recipe(compile=False, dtype="float32")


def test_the_fake_nanochat_step_equals_a_real_one():
    """The dry run's nanochat loop on fake tensors is byte-exact against the same loop on real CPU tensors (two
    micro-steps, Muon + AdamW, no clipping)."""
    req = EstimateRequest(TINY, 2, EAGER, "cpu", grad_clip=0.0, gradient_accumulation_steps=2, loop="nanochat")
    fake, real = run_step(req), run_step(req, fake=False)
    assert fake.peak_bytes == real.peak_bytes and fake.breakdown == real.breakdown
    assert fake.optimizer == "muon" and fake.step_peaks == real.step_peaks


@pytest.mark.parametrize(("target", "rounding"), [("cpu", 64), ("cuda", 512)])
def test_nanochats_loader_keeps_its_buffers(target, rounding):
    """base_train's batches live in the loader's buffers, made once: on the CPU the host row buffer
    (B x (T+1) tokens), the staging buffer and the device buffer (2 x B x T each); on a GPU only the device buffer
    is device memory. vramfit's step holds a fresh x and y instead (2 x B x T)."""
    B, T = 2, TINY.block_size
    recipe = Recipe(compile=False, dtype="float32" if target == "cpu" else "bfloat16")

    def up(n: int) -> int:
        return -(-n // rounding) * rounding

    theirs = run_step(EstimateRequest(TINY, B, recipe, target, grad_clip=0.0, loop="nanochat"))
    ours = run_step(EstimateRequest(TINY, B, recipe, target, grad_clip=0.0))
    host = up(B * (T + 1) * 8) + up(2 * B * T * 8) if target == "cpu" else 0
    assert theirs.breakdown["inputs"] == host + up(2 * B * T * 8)
    assert ours.breakdown["inputs"] == 2 * up(B * T * 8)


def test_a_base_train_line_estimates_nanochats_loop():
    """`estimate --like "<base_train line>"`: nanochat's loop, its micro-steps (total batch / (device batch x
    sequence length)), no clipping; --recipe grad_accum overrides the micro-steps."""
    req = base_train_request("nanochat --depth 2 --max-seq-len 64 --device-batch-size 2 --total-batch-size 512",
                             Recipe(), "cuda", (8, 0))
    assert (req.loop, req.grad_clip, req.recipe.grad_accum, req.batch_size) == ("nanochat", 0.0, 4, 2)
    assert req.model.arch == "nanochat" and req.model.n_layer == 2
    over = base_train_request("nanochat --depth 2 --max-seq-len 64 --device-batch-size 2 --total-batch-size 512",
                              Recipe(grad_accum=2), "cuda", (8, 0))
    assert over.recipe.grad_accum == 2
    with pytest.raises(VramfitError, match="nanochat's base_train.py loop"):
        base_train_request("nanochat --depth 2", Recipe(), "cuda", (8, 0), loop="nanogpt")


@pytest.mark.parametrize(("args", "msg"), [
    (["--like", "nanochat --depth 2", "--loop", "nanogpt"], "a nanochat command line is trained by nanochat's"),
    (["--like", "nanochat --depth 2", "--loop", "vramfit"], "a nanochat command line is trained by nanochat's"),
    (["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "2", "--vocab",
      "65", "--loop", "nanochat"], "nanochat's base_train.py trains nanochat's GPT, not arch 'gpt2'"),
])
def test_a_loop_that_cannot_train_the_model_is_refused_in_one_line(capsys, args, msg):
    assert main(["estimate", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err


@pytest.mark.slow
def test_the_compiled_nanochat_loop_returns_no_logits():
    """nanochat's compiled GPT returns the loss alone: the compiled head keeps no logits output alive, so its
    compiled step is smaller than vramfit's (whose compiled forward returns the logits) by at least a batch x
    block x vocab fp32 tensor (the soft-capped logits, saved for backward as an output there)."""
    B, T, V = 2, TINY.block_size, 2048
    mc = GPTConfig(**{**TINY.to_dict(), "vocab_size": V})
    recipe = Recipe(compile=True, dtype="bfloat16")
    theirs = run_step(EstimateRequest(mc, B, recipe, "cpu", grad_clip=0.0, headline_only=True, loop="nanochat"))
    ours = run_step(EstimateRequest(mc, B, recipe, "cpu", grad_clip=0.0, headline_only=True))
    assert theirs.compiled and ours.peak_bytes - theirs.peak_bytes >= B * T * V * 4
