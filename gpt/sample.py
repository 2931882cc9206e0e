"""Generation from a checkpoint, and an interactive prompt loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gpt.config import GPTConfig
from gpt.data import Tokenizer, load_meta
from gpt.errors import DataError
from gpt.model import GPT, clean_state_dict
from gpt.train import load_checkpoint, resolve_device


class Sampler:
    """A model loaded from a checkpoint plus the tokenizer of its corpus."""

    def __init__(self, ckpt_path: str | Path, device: str = "auto", seed: int = 1337, encoding=None) -> None:
        self.device = resolve_device(device)
        ckpt = load_checkpoint(ckpt_path, map_location=self.device)
        self.model = GPT(GPTConfig.from_dict(ckpt["model_args"]))
        self.model.load_state_dict(clean_state_dict(ckpt["model"]))
        self.model.to(self.device).eval()
        meta = ckpt.get("meta")
        if meta is None:  # a nanoGPT checkpoint: its config names the dataset folder
            data_dir = (ckpt.get("config") or {}).get("data_dir")
            meta = load_meta(data_dir) if data_dir and Path(data_dir, "meta.json").is_file() else {
                "tokenizer": "gpt2", "vocab_size": 50257}
        self.tokenizer = Tokenizer(meta, encoding=encoding)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def complete(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = 200, num_samples: int = 1) -> list[str]:
        """Completions of `prompt` (the prompt included), decoded to text."""
        ids = self.tokenizer.encode(prompt) if prompt else [0]
        if not ids:
            raise DataError("the prompt encodes to no tokens")
        x = torch.tensor([ids] * num_samples, dtype=torch.long, device=self.device)
        y = self.model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, generator=self.generator)
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
