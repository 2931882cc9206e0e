"""Generation from a checkpoint, and an interactive prompt loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gpt.config import MAX_SEED, GPTConfig
from gpt.data import Tokenizer
from gpt.errors import ConfigError, DataError
from gpt.limits import check_memory
from gpt.meta import find_meta_pkl, load_meta, meta_from_pkl, read_meta_pkl
from gpt.model import build_model
from gpt.train import load_checkpoint, load_weights, resolve_device

MAX_TOKENS = 2**20  # samples or new tokens per sample: a typo of 10**9 is refused, not hours of silence


def checkpoint_meta(ckpt: dict, ckpt_path: str | Path, data_dir: str | Path | None = None) -> dict:
    """The vocabulary of a checkpoint's corpus: its own `meta` (vramfit), else nanoGPT's meta.pkl beside the
    checkpoint, in `data/<dataset>` named by its config, or in `data_dir`; else that folder's meta.json (vramfit
    config's data_dir, then `data_dir`); else GPT-2 BPE, as nanoGPT's sample.py assumes."""
    if ckpt.get("meta") is not None:
        return ckpt["meta"]
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    dataset = config.get("dataset") if isinstance(config.get("dataset"), str) else None
    pkl = find_meta_pkl(ckpt_path, dataset, data_dir)
    if pkl is not None:
        return meta_from_pkl(read_meta_pkl(pkl), pkl)
    for folder in (config.get("data_dir"), data_dir):
        if folder and Path(folder, "meta.json").is_file():
            return load_meta(folder)
    return {"tokenizer": "gpt2", "vocab_size": 50257}


class Sampler:
    """A model loaded from a checkpoint (vramfit's or nanoGPT's) plus the tokenizer of its corpus."""

    def __init__(self, ckpt_path: str | Path, device: str = "auto", seed: int = 1337, encoding=None,
                 data_dir: str | Path | None = None) -> None:
        if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
            raise ConfigError(f"seed must be in [0, {MAX_SEED:,}] (2**32 - 1), got {seed}")
        self.device = resolve_device(device)
        ckpt = load_checkpoint(ckpt_path, map_location=self.device)
        self.model = build_model(GPTConfig.from_dict(ckpt["model_args"]))
        load_weights(self.model, ckpt["model"])
        self.model.to(self.device).eval()
        self.tokenizer = Tokenizer(checkpoint_meta(ckpt, ckpt_path, data_dir), encoding=encoding)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def complete(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = 200, num_samples: int = 1) -> list[str]:
        """Completions of `prompt` (the prompt included), decoded to text."""
        ids = self.tokenizer.encode(prompt) if prompt else [0]
        if not ids:
            raise DataError("the prompt encodes to no tokens")
        self.check_request(len(ids), max_new_tokens, num_samples)
        x = torch.tensor([ids] * num_samples, dtype=torch.long, device=self.device)
        y = self.model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, generator=self.generator,
                                vocab_size=self.tokenizer.vocab_size)
        start = 0 if prompt else 1
        return [self.tokenizer.decode(row[start:].tolist()) for row in y]


    def check_request(self, prompt_tokens: int, max_new_tokens: int, num_samples: int) -> None:
        """Refuse, before generating, counts beyond MAX_TOKENS or a generation whose memory (the token ids of
        every sample and one forward pass over the last block) exceeds what this device has available."""
        for name, n in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens)):
            if not 1 <= n <= MAX_TOKENS:
                raise ConfigError(f"{name} must be in [1, {MAX_TOKENS:,}], got {n:,}")
        c = self.model.config
        T = min(prompt_tokens + max_new_tokens, c.block_size)
        need = num_samples * (8 * (prompt_tokens + max_new_tokens)  # the ids, int64, kept for every sample
                              + 4 * T * (16 * c.n_embd + c.n_head * T)  # one forward's activations and scores
                              + 12 * c.vocab_size)  # logits, probabilities, top-k
        what = f"sampling {num_samples:,} x {max_new_tokens:,} tokens"
        if self.device.startswith("cuda"):
            check_memory(need, what, torch.cuda.mem_get_info(torch.device(self.device))[0], self.device)
        else:
            check_memory(need, what)


def interactive(sampler: Sampler, read: Callable[[str], str] = input, write: Callable[[str], None] = print,
                **kwargs) -> int:
    """Prompt, complete, repeat until EOF or an empty line; returns the number of completions."""
    n = 0
    while True:
        try:
            prompt = read("prompt> ")
        except (EOFError, KeyboardInterrupt):
            break
        if not prompt.strip():
            break
        try:
            write(sampler.complete(prompt, **kwargs)[0])
        except DataError as exc:
            write(f"error: {exc}")
            continue
        n += 1
    return n
