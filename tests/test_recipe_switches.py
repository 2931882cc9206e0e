"""The recipe's switches in the trainer: gradient accumulation, activation checkpointing, SGD and Adafactor.

Each is checked for what it must do: accumulation over two micro-batches trains exactly like one batch twice the
size (nanoGPT's loss / accum, one optimizer step), checkpointing gives the gradients of the plain step while saving
fewer activations for backward, and every optimizer steps with the state bytes `GPTConfig.optimizer_state_bytes`
counts (SGD: one fp32 momentum buffer; Adafactor: a row and a column factor per matrix; AdamW: two moments).
"""

from __future__ import annotations

import pytest
import torch

from gpt.config import GPTConfig, TrainConfig, checkpoint_every, load_config, make_config
from gpt.data import synthetic_batch
from gpt.errors import ConfigError
from gpt.train import Trainer

SHAPE = dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=97)
NANOCHAT = dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=97, arch="nanochat", bias=False)


def trainer(batch: int, **kw: object) -> Trainer:
    shape = {**SHAPE, **{k: v for k, v in kw.items() if k in NANOCHAT}}
    rest = {k: v for k, v in kw.items() if k not in NANOCHAT}
    cfg = TrainConfig(**shape, batch_size=batch, device="cpu", dtype="float32", compile=False, warmup_iters=2,
                      max_iters=6, **rest)
    return Trainer(cfg, cfg.model_config())


def batches(n: int, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [synthetic_batch(batch, SHAPE["block_size"], SHAPE["vocab_size"], gen, "cpu") for _ in range(n)]


@pytest.mark.parametrize("optimizer", ["fused", "sgd", "adafactor", "muon"])
def test_accumulating_two_micro_batches_trains_like_one_batch_twice_the_size(optimizer):
    data = batches(3, 8)
    whole, halves = trainer(8, optimizer=optimizer), trainer(4, gradient_accumulation_steps=2, optimizer=optimizer)
    micro = iter([(x[i:i + 4], y[i:i + 4]) for x, y in data for i in (0, 4)])
    it = iter(data)
    a = [float(whole.step(lambda: next(it))) for _ in data]
    b = [float(halves.step(lambda: next(micro))) for _ in data]
    assert a == pytest.approx(b, rel=1e-5)
    assert len(set(a)) == len(a)  # three different steps
    for p, q in zip(whole.model.parameters(), halves.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)  # (Muon's orthogonalisation amplifies rounding)
    # one optimizer step per call, not one per micro-batch
    assert whole.iter_num == halves.iter_num == len(data)
    assert halves.tokens_per_iter == whole.tokens_per_iter


def saved_bytes_and_grads(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """The bytes autograd saves for backward outside checkpointed blocks, and the gradients of one step."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(5)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = t.model(x, y)[1]
    loss.backward()
    return saved, [p.grad.clone() for p in t.model.parameters()]


@pytest.mark.parametrize("shape", [dict(dropout=0.1), dict(NANOCHAT)], ids=["gpt2-dropout", "nanochat"])
def test_checkpointed_gradients_equal_plain_ones_with_less_saved(shape):
    (x, y), = batches(1, 4)
    results = {}
    for mode in ("none", "2", "all"):
        t = trainer(4, checkpoint=mode, **shape)
        assert t.model.checkpoint_every == checkpoint_every(mode)
        results[mode] = saved_bytes_and_grads(t, x, y)
    plain_saved, plain = results["none"]
    for mode in ("2", "all"):
        saved, grads = results[mode]
        for g, h in zip(plain, grads, strict=True):
            torch.testing.assert_close(g, h, rtol=0, atol=0)  # same ops, same RNG replay: bit for bit
    # every other block (0 and 2 of 3) saves less than none, all blocks less still
    assert results["all"][0] < results["2"][0] < plain_saved


def test_checkpoint_values():
    assert [checkpoint_every(v) for v in ("none", "all", "3", 2, "1")] == [0, 1, 3, 2, 1]
    for bad in ("some", "-1", "1.5"):
        with pytest.raises(ConfigError, match="checkpoint must be"):
            TrainConfig(checkpoint=bad)
    assert make_config({"checkpoint": 4}).checkpoint == "4"  # a TOML integer


def test_recipe_table_in_a_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[recipe]\noptimizer = "adafactor"\ncheckpoint = 2\ngrad_accum = 4\n')
    cfg = load_config(path)
    assert (cfg.optimizer, cfg.checkpoint, cfg.gradient_accumulation_steps) == ("adafactor", "2", 4)
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        make_config({"optimizer": "lion"})


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (step counters left out)."""
    return sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items()
               if isinstance(v, torch.Tensor) and k != "step")


@pytest.mark.parametrize("optimizer,per_param", [("sgd", 4), ("fused", 8), ("foreach", 8), ("adafactor", None),
                                                 ("muon", None)])
@pytest.mark.parametrize("shape", [{}, NANOCHAT], ids=["gpt2", "nanochat"])
def test_each_optimizer_steps_with_the_state_it_is_counted_with(optimizer, per_param, shape):
    t = trainer(4, optimizer=optimizer, **shape)
    mc: GPTConfig = t.model_config
    before = [p.detach().clone() for p in t.model.parameters()]
    (x, y), = batches(1, 4)
    losses = [float(t.step(lambda: (x, y))) for _ in range(6)]
    assert losses[-1] < losses[0], losses  # it learns the fixed batch
    moved = [not torch.equal(p, q) for p, q in zip(before, t.model.parameters(), strict=True)]
    assert all(moved) if not shape else sum(moved) > len(moved) // 2  # nanochat: zero-init gates see no grad yet
    counted = mc.optimizer_state_bytes(optimizer)
    assert state_bytes(t.optimizer) == sum(counted.values())
    n = mc.n_params()
    if per_param is not None:
        assert sum(counted.values()) == per_param * n
    if optimizer == "adafactor":  # factored: far less than one value per parameter
        assert sum(counted.values()) < 4 * n / 2
        assert sum(len(s) for s in mc.param_shapes().values()) == len(list(t.model.parameters()))
        assert sum(r * c if r else c for s in mc.param_shapes().values() for r, c in s) == n


@pytest.mark.parametrize("optimizer", ["sgd", "adafactor"])
def test_vramfit_train_passes_the_switches(capsys, tmp_path, char_corpus, optimizer):
    from vramfit.cli import main

    rc = main(["train", "--data-dir", str(char_corpus), "--out-dir", str(tmp_path), "--n-layer", "2", "--n-head",
               "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--grad-accum", "2", "--checkpoint",
               "all", "--optimizer", optimizer, "--max-iters", "3", "--eval-iters", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "done: 3 iterations" in out
    assert "tokens/iter 128" in out  # 4 x 16 x 2 micro-batches
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert (ckpt["config"]["optimizer"], ckpt["config"]["checkpoint"]) == (optimizer, "all")
    assert ckpt["config"]["gradient_accumulation_steps"] == 2
    assert all("momentum_buffer" in s or "row_var" in s or "variance" in s
               for s in ckpt["optimizer"]["state"].values())


@pytest.mark.parametrize("args,message", [(["--checkpoint", "some"], "checkpoint must be"),
                                          (["--optimizer", "lion"], "optimizer must be one of"),
                                          (["--grad-accum", "0"], "gradient_accumulation_steps must be >= 1")])
def test_vramfit_train_bad_switch_is_one_line(capsys, args, message):
    from vramfit.cli import main

    rc = main(["train", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and message in err and "Traceback" not in err
