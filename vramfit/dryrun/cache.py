"""The dry run's one cache: estimates kept in the user cache directory while the code that made them is unchanged.

One SQLite file (`<cache dir>/estimates.sqlite`), one row per (version, request): the request is
`EstimateRequest.key()`, the version a hash of the installed torch's version and of the source files that decide
an estimate (`SOURCES`). That is the one invalidation rule: an edit to any of those files, or another torch, misses
every row written before (rows of other versions are dropped once they are `KEEP_DAYS` old). A file that cannot be
read is a warning and is rebuilt; one that cannot be written is a warning, and the estimates are still returned.
Torch-free: a planner whose estimates are all cached never imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sqlite3
import time
from pathlib import Path

from vramfit.dryrun.estimate import Estimate, EstimateRequest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("vramfit/dryrun/*.py", "vramfit/measure/probe.py", "vramfit/recipe.py", "gpt/*.py")
"""Everything an estimate depends on besides torch: the dry run, the tracker it extends, the recipe, the GPT and its
trainer (globs under the source root)."""
KEEP_DAYS = 30
FILE_NAME = "estimates.sqlite"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $VRAMFIT_CACHE_DIR, else the user cache directory (platformdirs)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("VRAMFIT_CACHE_DIR"):
        return Path(os.environ["VRAMFIT_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("vramfit", appauthor=False))


def torch_version() -> str:
    """The installed torch's version, read without importing it."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def source_files(root: Path = ROOT, patterns: tuple[str, ...] = SOURCES) -> list[Path]:
    """The files `patterns` match under `root`, sorted (a pattern that matches nothing counts as one missing file)."""
    out: list[Path] = []
    for pattern in patterns:
        out += sorted(root.glob(pattern)) or [root / pattern]
    return out


def code_version(root: Path = ROOT, patterns: tuple[str, ...] = SOURCES, torch: str | None = None) -> str:
    """The cache's version: a hash of the torch version and each source file's path and bytes."""
    h = hashlib.sha256(f"torch={torch or torch_version()}".encode())
    for path in source_files(root, patterns):
        h.update(b"\0" + str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:16]


class EstimateCache:
    """Estimates by request: in memory always, and on disk under `root` (None: nothing read or written).
    `version` defaults to `code_version()`. Warnings (a corrupt or unwritable file) collect in `warnings`."""

    def __init__(self, root: str | Path | None = None, version: str | None = None) -> None:
        self.path = Path(root) / FILE_NAME if root is not None else None
        self._version = version
        self.warnings: list[str] = []
        self._memory: dict[str, Estimate] = {}
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def user(cls, cache_dir: str | Path | None = None) -> EstimateCache:
        """The cache in `cache_dir`, $VRAMFIT_CACHE_DIR or the user cache directory (`cache_root`)."""
        return cls(cache_root(cache_dir))

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = code_version()
        return self._version

    def get(self, request: EstimateRequest) -> Estimate | None:
        """The estimate kept for `request` (this version's), or None."""
        key = request.key()
        if key in self._memory or self._db() is None:
            return self._memory.get(key)
        try:
            row = self._conn.execute("SELECT estimate FROM estimates WHERE version = ? AND request = ?",
                                     (self.version, key)).fetchone()
        except sqlite3.DatabaseError as exc:
            self._give_up(f"ignoring a corrupt cache {self.path} ({_why(exc)}); rebuilding it", rebuild=True)
            return None
        if row is not None:
            try:
                self._memory[key] = Estimate.from_dict(json.loads(row[0]))
            except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as exc:
                self.warnings.append(f"warning: ignoring a corrupt cache entry in {self.path} ({_why(exc)}); "
                                     "estimating it again")
        return self._memory.get(key)

    def put(self, request: EstimateRequest, estimate: Estimate) -> None:
        """Keep `estimate` for `request` (in memory, and on disk when there is a disk)."""
        key = request.key()
        self._memory[key] = estimate
        if self._db() is None:
            return
        try:
            with self._conn:
                self._conn.execute("INSERT OR REPLACE INTO estimates VALUES (?, ?, ?, ?)",
                                   (self.version, key, json.dumps(estimate.to_dict()), time.time()))
        except sqlite3.DatabaseError as exc:
            self._give_up(f"cannot write the cache {self.path} ({_why(exc)}); continuing")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection | None:
        """The open database (created when missing, old versions' stale rows dropped); None: memory only."""
        if self._conn is not None or self.path is None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30)
            with conn:
                conn.execute("CREATE TABLE IF NOT EXISTS estimates (version TEXT NOT NULL, request TEXT NOT NULL, "
                             "estimate TEXT NOT NULL, made REAL NOT NULL, PRIMARY KEY (version, request))")
                conn.execute("DELETE FROM estimates WHERE version != ? AND made < ?",
                             (self.version, time.time() - KEEP_DAYS * 86400))
            self._conn = conn
        except sqlite3.DatabaseError as exc:
            self._give_up(f"ignoring a corrupt cache {self.path} ({_why(exc)}); rebuilding it", rebuild=True)
        except OSError as exc:
            self._give_up(f"cannot write the cache {self.path} ({exc.strerror or exc}); continuing")
        return self._conn

    def _give_up(self, why: str, rebuild: bool = False) -> None:
        """Warn once; a corrupt file is removed (the next open starts a fresh one), else memory only from now on."""
        self.warnings.append(f"warning: {why}")
        path = self.path
        self.close()
        self.path = None
        if rebuild and path is not None:
            try:
                path.unlink(missing_ok=True)
                self.path = path
            except OSError:
                pass


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
