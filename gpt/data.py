"""Text -> tokens -> memmapped splits, random-window batches, and synthetic tokens.

A prepared corpus is a folder with `train.bin`, `val.bin` (uint16, or uint32 when the vocab exceeds 65536)
and `meta.json` (tokenizer, vocab size, dtype, and for char-level the vocabulary itself). A folder prepared by
nanoGPT (`meta.pkl`, or no meta at all for GPT-2 BPE) reads as it is: see `gpt.meta`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt.errors import DataError
from gpt.files import Protected, check_output, output_path, write_bytes, write_text
from gpt.meta import load_meta

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TOKENIZERS = ("char", "gpt2")
CORPUS_FILES = ("train.bin", "val.bin", "meta.json", "meta.pkl")


def gpt2_encoding():  # -> tiktoken.Encoding
    """GPT-2 BPE from tiktoken (its files are fetched once from the network, then cached)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # network, DNS, proxy, cache errors all surface differently
        raise DataError(
            f"could not load the GPT-2 BPE files (tiktoken needs network access once): {type(exc).__name__}"
        ) from None


class Tokenizer:
    """Encode/decode for a prepared corpus, built from its meta dict."""

    def __init__(self, meta: dict, encoding=None) -> None:
        self.kind = meta["tokenizer"]
        self.vocab_size = int(meta["vocab_size"])
        if self.kind == "char":
            self.itos = meta["chars"]
            self.stoi = {c: i for i, c in enumerate(self.itos)}
            self._enc = None
        elif self.kind == "gpt2":
            self._enc = encoding or gpt2_encoding()
        elif self.kind == "none":
            raise DataError(f"{meta.get('source', 'the corpus')} holds only a vocabulary size (no itos/stoi): "
                            "it cannot encode or decode text")
        else:
            raise DataError(f"unknown tokenizer {self.kind!r}; choose one of {', '.join(TOKENIZERS)}")

    def encode(self, text: str) -> list[int]:
        if self._enc is not None:
            return self._enc.encode_ordinary(text)
        missing = sorted(set(text) - self.stoi.keys())
        if missing:
            raise DataError(f"characters not in the corpus vocabulary: {''.join(missing)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        if self._enc is not None:
            return self._enc.decode(ids)
        return "".join(self.itos[i] for i in ids)


def _token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def prepare_text(
    text: str,
    out_dir: str | Path,
    tokenizer: str = "char",
    encoding=None,
    val_fraction: float = 0.1,
    protected: Protected | None = None,
) -> dict:
    """Tokenize `text`, split it 90/10 and write train.bin, val.bin and meta.json (each atomically, none over a
    `protected` file: {label: path}); returns the meta dict.

    `encoding` (a tiktoken.Encoding) replaces the downloaded GPT-2 BPE, e.g. in tests.
    """
    if tokenizer not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    if not text.strip():
        raise DataError("the corpus is empty")
    if tokenizer == "char":
        chars = "".join(sorted(set(text)))
        meta = {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
        lut = {c: i for i, c in enumerate(chars)}
        ids = np.fromiter((lut[c] for c in text), dtype=np.int64, count=len(text))
    else:
        enc = encoding or gpt2_encoding()
        tokens = enc.encode_ordinary(text)
        tokens.append(enc.eot_token)  # one document: end it with <|endoftext|>
        meta = {"tokenizer": "gpt2", "vocab_size": enc.n_vocab, "encoding": enc.name}
        ids = np.asarray(tokens, dtype=np.int64)
    n_val = max(1, int(len(ids) * val_fraction))
    if len(ids) - n_val < 2:
        raise DataError(f"the corpus is too short ({len(ids)} tokens) to split into train and val")
    dtype = _token_dtype(meta["vocab_size"])
    meta["dtype"] = np.dtype(dtype).name
    meta["train_tokens"] = int(len(ids) - n_val)
    meta["val_tokens"] = int(n_val)
    files = corpus_outputs(out_dir, protected)
    for name, data in (("train.bin", ids[:-n_val]), ("val.bin", ids[-n_val:])):
        with output_path(files[name], "--data-dir") as target:
            data.astype(dtype).tofile(target)
    write_text(files["meta.json"], json.dumps(meta, indent=1), "--data-dir")
    return meta


def corpus_outputs(out_dir: str | Path, protected: Protected | None = None) -> dict[str, Path]:
    """The files `prepare_text` writes in `out_dir`, each checked against the `protected` ones."""
    return {name: check_output(Path(out_dir) / name, protected or {}, "--data-dir") for name in CORPUS_FILES[:3]}


def prepare_file(input_path: str | Path, out_dir: str | Path, tokenizer: str = "char", encoding=None) -> dict:
    """`prepare_text` on a UTF-8 text file (never written over: refused before it is read)."""
    path = Path(input_path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    corpus_outputs(out_dir, {"the input": path})
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    return prepare_text(text, out_dir, tokenizer=tokenizer, encoding=encoding, protected={"the input": path})


def download_shakespeare(dest: str | Path, url: str = SHAKESPEARE_URL, timeout: float = 30.0) -> Path:
    """Download tiny-shakespeare to `dest` (kept if already there)."""
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"could not download tiny-shakespeare (offline?): {reason}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to put there
    return write_bytes(dest, data, "download")


@dataclass
class Corpus:
    """A prepared corpus on disk, read through memmaps."""

    data_dir: Path
    meta: dict

    @classmethod
    def open(cls, data_dir: str | Path) -> Corpus:
        meta = load_meta(data_dir)
        try:
            itemsize = np.dtype(meta.get("dtype", "uint16")).itemsize
        except TypeError:
            raise DataError(f"{data_dir}: unknown token dtype {meta.get('dtype')!r}") from None
        for split in ("train", "val"):
            path = Path(data_dir) / f"{split}.bin"
            if not path.is_file():
                raise DataError(f"missing {split}.bin in {data_dir}")
            size = path.stat().st_size
            if size == 0 or size % itemsize:
                raise DataError(f"{path} is {size:,} bytes: not a whole number of {meta.get('dtype', 'uint16')} "
                                "tokens (truncated or not a prepared split)")
        return cls(Path(data_dir), meta)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def files(self) -> list[Path]:
        """The corpus's files on disk (what no output may overwrite)."""
        return [self.data_dir / name for name in CORPUS_FILES if (self.data_dir / name).exists()]

    def tokens(self, split: str) -> np.memmap:
        # a fresh memmap per call avoids the memory leak nanoGPT notes for long-lived memmaps
        return np.memmap(self.data_dir / f"{split}.bin", dtype=np.dtype(self.meta["dtype"]), mode="r")

    def check_block_size(self, block_size: int) -> None:
        for split in ("train", "val"):
            n = len(self.tokens(split))
            if n <= block_size:
                raise DataError(
                    f"block_size {block_size} is longer than the {split} split ({n} tokens) of {self.data_dir}"
                )

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: x = tokens[i:i+T], y = tokens[i+1:i+T+1]."""
        data = self.tokens(split)
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
        x = torch.from_numpy(np.stack([data[i : i + block_size].astype(np.int64) for i in ix]))
        y = torch.from_numpy(np.stack([data[i + 1 : i + 1 + block_size].astype(np.int64) for i in ix]))
        top = int(max(x.max(), y.max()))
        if top >= self.vocab_size:  # the embedding would index out of range (a CUDA assert, or an IndexError)
            raise DataError(f"token id {top} in {self.data_dir / (split + '.bin')} is outside the vocabulary "
                            f"({self.vocab_size} tokens): the split does not match its meta")
        return _to_device(x, y, device)


def synthetic_batch(
    batch_size: int,
    block_size: int,
    vocab_size: int,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random tokens of any vocab size: memory does not depend on the text."""
    xy = torch.randint(vocab_size, (batch_size, block_size + 1), generator=generator)
    return _to_device(xy[:, :-1].contiguous(), xy[:, 1:].contiguous(), device)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
