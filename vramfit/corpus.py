"""Prepared corpora as the planner sees them: identity and vocabulary, read from files (no torch)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def corpus_id(data_dir: str | Path) -> str | None:
    """A prepared corpus's identity: the first 12 hex digits of the sha256 of its meta.json (None if absent)."""
    meta = Path(data_dir) / "meta.json"
    if not meta.is_file():
        return None
    return hashlib.sha256(meta.read_bytes()).hexdigest()[:12]
