"""Output paths: checked before any work starts, and never written over an input (the database, a checkpoint, a
model file, a file being read). One implementation for vramfit and gpt/, in `gpt.files` (gpt/ cannot import
vramfit); this module is vramfit's door to it."""

from __future__ import annotations

import os
from pathlib import Path

from gpt.files import (
    Protected,
    check_output,
    output_path,
    same_file,
    writable_dir,
    writable_file,
    write_bytes,
    write_text,
)

__all__ = ["Protected", "check_output", "database_files", "output_path", "same_file", "writable_dir",
           "writable_file", "write_bytes", "write_text"]

# Where the commands read and write by default (relative to the working folder), each named once.
DB_FILE = Path("results") / "vramfit.sqlite"
MODELS_DIR = Path("results") / "models"
SUGGESTIONS_FILE = Path("results") / "suggestions.json"


def database_files(db: str | Path) -> list[Path]:
    """A SQLite database and the files SQLite keeps beside it (-wal, -shm, -journal)."""
    out = []
    for base in dict.fromkeys((Path(db), Path(os.path.realpath(db)))):
        out += [base, *(base.with_name(base.name + x) for x in ("-wal", "-shm", "-journal"))]
    return out
