"""Prepared corpora as the planner sees them: identity and vocabulary, read from files (no torch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def corpus_id(data_dir: str | Path) -> str | None:
    """A prepared corpus's identity: the first 12 hex digits of the sha256 of its meta.json (None if absent)."""
    meta = Path(data_dir) / "meta.json"
    if not meta.is_file():
        return None
    return hashlib.sha256(meta.read_bytes()).hexdigest()[:12]


def corpus_vocab(data_dir: str | Path) -> int | None:
    """The vocabulary size of a prepared corpus (its meta.json), None where there is none or it is unreadable."""
    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    v = meta.get("vocab_size") if isinstance(meta, dict) else None
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def corpus_tokens(data_dir: str | Path) -> int | None:
    """Training tokens of a prepared corpus: meta.json's `train_tokens`, else the size of train.bin (uint16 ids
    up to a 65,536-token vocabulary, uint32 above); None where there is no prepared corpus."""
    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    n = meta.get("train_tokens")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    vocab = corpus_vocab(data_dir)
    try:
        size = (Path(data_dir) / "train.bin").stat().st_size
    except OSError:
        return None
    return size // (2 if vocab is None or vocab <= 2**16 else 4) or None
