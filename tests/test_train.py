import math

import pytest
import torch

from gpt.config import GPTConfig, load_config, make_config
from gpt.data import Corpus
from gpt.errors import CheckpointError, ConfigError
from gpt.sample import Sampler, interactive
from gpt.train import Trainer, load_checkpoint, train

SMALL = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16, eval_iters=5, log_interval=10,
             warmup_iters=10, device="cpu", learning_rate=2e-3)


def quiet(_msg: str) -> None:
    pass


def test_training_beats_uniform_guess(char_corpus, tmp_path):
    cfg = make_config(dict(SMALL, data_dir=str(char_corpus), out_dir=str(tmp_path), max_iters=250,
                           eval_interval=250))
    result = train(cfg, log=quiet)
    vocab = Corpus.open(char_corpus).vocab_size
    uniform = math.log(vocab)
    final_val = result.evals[-1][2]
    assert final_val < 0.65 * uniform, (final_val, uniform)
    assert result.tokens_per_s > 0 and result.ms_per_iter > 0
    ckpt = torch.load(result.ckpt_path, weights_only=True)
    assert ckpt["iter_num"] == 250 and ckpt["model_args"]["vocab_size"] == vocab


def test_resume_reproduces_uninterrupted_run(char_corpus, tmp_path):
    base = dict(SMALL, data_dir=str(char_corpus), eval_interval=10, log_interval=1, lr_decay_iters=20,
                n_embd=32, block_size=32, batch_size=8)
    full = train(make_config(dict(base, out_dir=str(tmp_path / "a"), max_iters=20)), log=quiet)
    train(make_config(dict(base, out_dir=str(tmp_path / "b"), max_iters=10)), log=quiet)
    resumed = train(make_config(dict(base, out_dir=str(tmp_path / "b"), max_iters=20, init_from="resume")), log=quiet)
    tail_full = [loss for it, loss in full.losses if it > 10]
    tail_resumed = [loss for it, loss in resumed.losses]
    assert len(tail_resumed) == 10
    assert tail_resumed == pytest.approx(tail_full, rel=1e-5, abs=1e-6)
    assert resumed.iter_num == 20


def test_checkpoint_samples_and_interactive_loop(char_corpus, corpus_text, tmp_path):
    cfg = make_config(dict(SMALL, data_dir=str(char_corpus), out_dir=str(tmp_path), max_iters=5, eval_interval=5))
    train(cfg, log=quiet)
    sampler = Sampler(tmp_path / "ckpt.pt", device="cpu")
    first, second = corpus_text[:6], corpus_text[100:105]  # prompts made of the corpus's own characters
    out = sampler.complete(first, max_new_tokens=20)[0]
    assert out.startswith(first) and len(out) == len(first) + 20
    prompts = iter([first, second, ""])
    written: list[str] = []
    n = interactive(sampler, read=lambda _p: next(prompts), write=written.append, max_new_tokens=5)
    assert n == 2 and written[0].startswith(first) and written[1].startswith(second)
    prompts = iter(["\u2603 not in the vocabulary", ""])  # an unknown character: an error line, the loop goes on
    n = interactive(sampler, read=lambda _p: next(prompts), write=written.append, max_new_tokens=5)
    assert n == 0 and written[-1].startswith("error: characters not in the corpus vocabulary")


def test_nanogpt_checkpoint_loads_and_samples(tmp_path):
    """A checkpoint in nanoGPT's own format: compiled-model keys, model_args, best_val_loss as a tensor."""
    from gpt.model import GPT

    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=257, dropout=0.0)
    model = GPT(GPTConfig(**args))
    ckpt = {
        "model": {"_orig_mod." + k: v for k, v in model.state_dict().items()},
        "optimizer": {},
        "model_args": args,
        "iter_num": 5000,
        "best_val_loss": torch.tensor(1.47),
        "config": {"dataset": "shakespeare_char", "batch_size": 64},
    }
    torch.save(ckpt, tmp_path / "ckpt.pt")
    sampler = Sampler(tmp_path, device="cpu", encoding=_byte_encoding())
    loaded = sampler.model.state_dict()
    assert set(loaded) == set(model.state_dict())  # the `_orig_mod.` prefix is gone
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v), k
    (text,) = sampler.complete("", max_new_tokens=7)
    ids = model.eval().generate(torch.zeros(1, 1, dtype=torch.long), 7, temperature=0.8, top_k=200,
                                generator=torch.Generator().manual_seed(1337))[0, 1:]
    assert sampler.tokenizer.decode(ids.tolist()) == text  # the same tokens as the original model samples


def _byte_encoding():
    import tiktoken

    return tiktoken.Encoding(name="b", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": 256})


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a GPT checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_lr_schedule_warmup_then_cosine():
    cfg = make_config(dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, max_iters=200))
    trainer = Trainer(cfg, GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10), device="cpu")
    lrs = [trainer.lr_at(i) for i in range(200)]
    assert lrs[0] < lrs[5] < lrs[9] and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111], strict=True))
    assert lrs[110] == lrs[199] == pytest.approx(0.1)


def test_toml_config_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('max_iters = 7\n[model]\nn_layer = 3\nn_head = 2\nn_embd = 64\n[recipe]\ndtype = "bfloat16"\n')
    cfg = load_config(p, {"batch_size": "5", "compile": "false", "lr_decay_iters": "none"})
    assert (cfg.max_iters, cfg.n_layer, cfg.dtype, cfg.batch_size, cfg.compile) == (7, 3, "bfloat16", 5, False)
    assert cfg.lr_decay_iters is None
    bad = tmp_path / "bad.toml"
    bad.write_text("max_iters = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, {"n_layers": "3"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(None, {"max_iters": "3.5"})
    with pytest.raises(ConfigError, match="dtype"):
        load_config(None, {"dtype": "fp8"})
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "none.toml")


def test_bf16_autocast_step_on_cpu():
    from gpt.data import synthetic_batch

    cfg = make_config(dict(SMALL, dtype="bfloat16", max_iters=3))
    trainer = Trainer(cfg, GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=97))
    gen = torch.Generator().manual_seed(0)
    losses = [trainer.step(lambda: synthetic_batch(4, 64, 97, gen)).item() for _ in range(3)]
    assert trainer.iter_num == 3 and all(math.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # AMP keeps fp32 master weights
