"""Generation from a checkpoint, and an interactive prompt loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gpt.config import GPTConfig
from gpt.data import Tokenizer
from gpt.errors import DataError
from gpt.meta import find_meta_pkl, load_meta, meta_from_pkl, read_meta_pkl
from gpt.model import GPT
from gpt.train import load_checkpoint, load_weights, resolve_device


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
        self.device = resolve_device(device)
        ckpt = load_checkpoint(ckpt_path, map_location=self.device)
        self.model = GPT(GPTConfig.from_dict(ckpt["model_args"]))
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
        x = torch.tensor([ids] * num_samples, dtype=torch.long, device=self.device)
        y = self.model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, generator=self.generator,
                                vocab_size=self.tokenizer.vocab_size)
        start = 0 if prompt else 1
        return [self.tokenizer.decode(row[start:].tolist()) for row in y]


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
