"""Output paths checked before any work starts, so that no result is lost to a path that could have been checked
first (a file where a folder is needed, a folder where a file is, a location that cannot be written)."""

from __future__ import annotations

import os
from pathlib import Path

from vramfit.errors import VramfitError

# Where the commands read and write by default (relative to the working folder), each named once.
DB_FILE = Path("results") / "vramfit.sqlite"
MODELS_DIR = Path("results") / "models"
SUGGESTIONS_FILE = Path("results") / "suggestions.json"


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent(path: Path, what: str) -> None:
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise VramfitError(f"{what} {path}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise VramfitError(f"{what} {path}: cannot write in {anchor}")


def writable_file(path: str | Path, what: str = "output") -> Path:
    """`path` can be written as a file (it may not exist yet); else one clear VramfitError."""
    path = Path(path)
    if path.is_dir():
        raise VramfitError(f"{what} {path} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise VramfitError(f"{what} {path} is not writable")
    _check_parent(path, what)
    return path


def writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """`path` is, or can be created as, a writable folder; else one clear VramfitError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VramfitError(f"{what} {path} is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise VramfitError(f"{what} {path} is not writable")
        return path
    _check_parent(path, what)
    return path
