"""Files made the way nanoGPT makes them (karpathy/nanoGPT: data/shakespeare_char/prepare.py, train.py,
config/train_shakespeare_char.py), for the tests of reading them. No nanoGPT code is run or copied."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from gpt.config import GPTConfig, TrainConfig
from gpt.model import GPT
from gpt.train import configure_optimizer


def prepare_shakespeare_char(text: str, data_dir: Path, with_meta: bool = True) -> dict:
    """prepare.py's steps: sorted chars, stoi/itos, a 90/10 split, uint16 .bin files, a pickled meta dict."""
    data_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted(list(set(text)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    train_ids = np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16)
    train_ids.tofile(data_dir / "train.bin")
    val_ids.tofile(data_dir / "val.bin")
    meta = {"vocab_size": len(chars), "itos": itos, "stoi": stoi}
    if with_meta:
        with open(data_dir / "meta.pkl", "wb") as f:
            pickle.dump(meta, f)
    return meta


# the shape of config/train_shakespeare_char.py: comments, strings, booleans, floats in e-notation
CHAR_CONFIG = """# train a miniature character-level shakespeare model
# good for debugging and playing on macbooks and such

out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10 # don't print too too often

# we expect to overfit on this small dataset, so only save when val improves
always_save_checkpoint = False

wandb_log = False # override via command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256 # context of up to 256 previous characters

# baby GPT model :)
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3 # with baby networks can afford to go a bit higher
max_iters = 5000
lr_decay_iters = 5000 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99 # make a bit bigger because number of tokens per iter is small

warmup_iters = 100 # not super necessary potentially

# on macbook also add
# device = 'cpu'  # run on cpu only
# compile = False # do not torch compile the model
"""


def nanogpt_checkpoint(path: Path, vocab_size: int, dataset: str = "shakespeare_char", compiled: bool = True,
                       n_layer: int = 1, n_head: int = 2, n_embd: int = 32, block_size: int = 32) -> dict:
    """A checkpoint dict with train.py's keys: `model` (with torch.compile's `_orig_mod.` prefixes when
    `compiled`), `optimizer`, `model_args` (its 7 keys, bias False as its default), `iter_num`, `best_val_loss`
    (a 0-d tensor: estimate_loss returns tensors) and `config` (the flat scalar globals, `dataset` among them)."""
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=False,
                      vocab_size=vocab_size, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_args))
    opt = configure_optimizer(model, TrainConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                                 block_size=block_size, device="cpu"), "cpu", "foreach")
    x = torch.randint(vocab_size, (2, block_size))
    model(x, x)[1].backward()
    opt.step()  # optimizer state exists, as after training
    state = model.state_dict()
    if compiled:
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    config = {"out_dir": str(path.parent), "eval_interval": 250, "eval_iters": 200, "log_interval": 10,
              "always_save_checkpoint": False, "init_from": "scratch", "wandb_log": False, "dataset": dataset,
              "gradient_accumulation_steps": 1, "batch_size": 12, "block_size": block_size, "n_layer": n_layer,
              "n_head": n_head, "n_embd": n_embd, "dropout": 0.0, "bias": False, "learning_rate": 1e-3,
              "max_iters": 5000, "backend": "nccl", "device": "cuda", "dtype": "bfloat16", "compile": True}
    ckpt = {"model": state, "optimizer": opt.state_dict(), "model_args": model_args, "iter_num": 250,
            "best_val_loss": torch.tensor(1.4697), "config": config}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return ckpt
