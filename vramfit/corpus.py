"""Prepared corpora as the planner sees them: identity and vocabulary, read from files (no torch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gpt.meta import corpus_vocab  # (vocabulary size, its source) of a prepared folder, or None

__all__ = ["corpus_id", "corpus_tokens", "corpus_vocab"]


def corpus_id(data_dir: str | Path) -> str | None:
    """A prepared corpus's identity: the first 12 hex digits of the sha256 of its meta.json, or of nanoGPT's
    meta.pkl (its bytes, never unpickled) where there is no meta.json; None if neither is there."""
    for name in ("meta.json", "meta.pkl"):
        meta = Path(data_dir) / name
        if meta.is_file():
            return hashlib.sha256(meta.read_bytes()).hexdigest()[:12]
    return None


def corpus_tokens(data_dir: str | Path) -> int | None:
    """Training tokens of a prepared corpus: meta.json's `train_tokens`, else the size of train.bin (uint16 ids up
    to a 65,536-token vocabulary, uint32 above; nanoGPT's folders are uint16); None where there is no corpus."""
    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    n = meta.get("train_tokens") if isinstance(meta, dict) else None
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    found = corpus_vocab(data_dir)
    try:
        size = (Path(data_dir) / "train.bin").stat().st_size
    except OSError:
        return None
    return size // (2 if found is None or found[0] <= 2**16 else 4) or None
