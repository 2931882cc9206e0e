import math

import pytest
import torch

from gpt.config import GPTConfig
from gpt.errors import ConfigError
from gpt.model import GPT, attention_kernel, clean_state_dict


@pytest.mark.parametrize("bias", [True, False])
def test_param_count_is_exact(bias):
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=32, vocab_size=101, bias=bias)
    model = GPT(cfg)
    assert model.get_num_params(non_embedding=False) == cfg.n_params()
    assert model.get_num_params(non_embedding=True) == cfg.n_params(non_embedding=True)
    assert cfg.n_params() - cfg.n_params(non_embedding=True) == 32 * 64


def test_gpt2_small_param_count():
    # GPT-2 124M with the 50257 vocab: the well-known 124,439,808 parameters (tied head)
    assert GPTConfig(vocab_size=50257).n_params() == 124_439_808


def test_flops_and_mfu():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    expected = 6 * cfg.n_params(non_embedding=True) + 12 * 2 * 2 * 16 * 16
    assert cfg.flops_per_token() == expected
    model = GPT(cfg)
    # 1000 tokens in 1 s against a peak of exactly that many FLOP/s -> MFU 1
    assert model.estimate_mfu(1000, 1.0, expected * 1000) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=65, n_head=4), "divisible"),
        (dict(n_layer=0), "n_layer"),
        (dict(block_size=-1), "block_size"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_invalid_shapes(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**kwargs)


def test_forward_shapes_and_tied_head():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(50, (3, 16))
    logits, loss = model(idx, torch.randint(50, (3, 16)))
    assert logits.shape == (3, 16, 50)
    assert abs(loss.item() - math.log(50)) < 0.3  # fresh init: close to uniform
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 50) and loss is None
    with pytest.raises(ConfigError):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_attention_kernels_agree():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    model = GPT(cfg).eval()
    idx = torch.randint(50, (2, 16))
    with attention_kernel("math"):
        ref = model(idx)[0]
    with attention_kernel("default"):
        out = model(idx)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        with attention_kernel("bogus"):
            pass


def test_generate_extends_and_crops_context():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=20)
    model = GPT(cfg).eval()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=12, top_k=5)
    assert out.shape == (2, 15)
    assert int(out.max()) < 20


def test_generate_samples_only_what_the_tokenizer_decodes():
    """A model whose vocabulary is padded past its tokenizer's (a char corpus of 5 symbols trained at --vocab-size
    64) never samples a padded id: `vramfit sample` would fail to decode it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=64)).eval()
    free = model.generate(torch.zeros(4, 1, dtype=torch.long), max_new_tokens=40, top_k=None)
    assert int(free.max()) >= 5  # an untrained model spreads over all 64 ids
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), max_new_tokens=40, top_k=None, vocab_size=5)
    assert int(out.max()) < 5


def test_nanogpt_state_dict_layout_loads():
    """A state dict laid out like a nanoGPT checkpoint (compiled: `_orig_mod.` prefix) loads into GPT."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=False)
    nano_keys = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "lm_head.weight"}
    for i in range(2):
        p = f"transformer.h.{i}."
        nano_keys |= {p + k for k in ("ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight", "ln_2.weight",
                                      "mlp.c_fc.weight", "mlp.c_proj.weight")}
    assert set(GPT(cfg).state_dict()) == nano_keys
    sd = {"_orig_mod." + k: v for k, v in GPT(cfg).state_dict().items()}
    sd["_orig_mod.transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16)  # old nanoGPT causal-mask buffer
    model = GPT(cfg)
    model.load_state_dict(clean_state_dict(sd))
