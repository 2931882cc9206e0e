"""The dry run's one cache: estimates kept in the user cache directory while what made them is unchanged.

One SQLite file (`<cache dir>/estimates.sqlite`), one row per (version, kind, key): an estimate under its
request (`EstimateRequest.key()`), or a document computed from estimates alone (the no-profile calibrated model).
The version is a hash of what decides an estimate besides its request: the installed torch's version, the
environment variables the emulation reads (`ENVIRONMENT`) and the source files of the estimator and of what is
computed from it (`SOURCES`). That is the one invalidation rule: an edit to any of those files, another torch or
another setting of those variables misses every row written before (rows of other versions are dropped once they
are `KEEP_DAYS` old). A file that cannot be read is a warning and is rebuilt; one that cannot be written is a
warning, and the estimates are still returned. Torch-free: a planner whose estimates are all cached never imports
torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from vramfit.dryrun.estimate import Estimate, EstimateRequest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("vramfit/dryrun/*.py", "vramfit/measure/probe.py", "vramfit/recipe.py", "gpt/*.py", "vramfit/fit/*.py",
           "vramfit/plan/noprofile.py")
"""Everything a cached value depends on besides torch (globs under the source root): the dry run, the tracker it
extends, the recipe, the GPT and its trainer; the fit and the no-profile calibration, for the calibrated model."""
ENVIRONMENT = ("VRAMFIT_CUDA_VERSION", "VRAMFIT_CUDNN_VERSION", "TORCH_CUDNN_SDPA_DEPRIORITIZED", "CUDA_MODULE_LOADING",
               "CUBLAS_WORKSPACE_CONFIG", "VRAMFIT_FA3")
"""The environment variables an estimate follows: the SDPA build and kernel priority (`sdpa`; VRAMFIT_FA3: whether
nanochat's FlashAttention-3 loads), the context's lazy
loading and the cuBLAS workspace (`context`)."""
KEEP_DAYS = 30
FILE_NAME = "estimates.sqlite"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $VRAMFIT_CACHE_DIR, else the user cache directory: platformdirs' where it is installed
    (it is needed by nothing else: a sweep runs without it), else $XDG_CACHE_HOME/vramfit or ~/.cache/vramfit."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("VRAMFIT_CACHE_DIR"):
        return Path(os.environ["VRAMFIT_CACHE_DIR"])
    try:
        import platformdirs
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vramfit"
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
    """The cache's version: a hash of the torch version, the `ENVIRONMENT` variables and each source file's path
    and bytes."""
    env = {k: os.environ.get(k, "") for k in ENVIRONMENT}
    h = hashlib.sha256(json.dumps({"torch": torch or torch_version(), "env": env}, sort_keys=True).encode())
    for path in source_files(root, patterns):
        h.update(b"\0" + str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:16]


class EstimateCache:
    """Estimates by request, and documents derived from estimates alone (a calibrated model: `get_doc`), in memory
    always and on disk under `root` (None: nothing read or written). `version` defaults to `code_version()`.
    Warnings (a corrupt or unwritable file) collect in `warnings`."""

    def __init__(self, root: str | Path | None = None, version: str | None = None) -> None:
        self.path = Path(root) / FILE_NAME if root is not None else None
        self._version = version
        self.warnings: list[str] = []
        self._memory: dict[tuple[str, str], object] = {}
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
        return self._get("estimate", request.key(), Estimate.from_dict)  # type: ignore[return-value]

    def put(self, request: EstimateRequest, estimate: Estimate) -> None:
        """Keep `estimate` for `request` (in memory, and on disk when there is a disk)."""
        self._put("estimate", request.key(), estimate, estimate.to_dict())

    def get_doc(self, kind: str, key: str) -> dict | None:
        """A JSON document of `kind` kept under `key`: something computed from estimates alone, so valid exactly as
        long as they are (e.g. the no-profile planner's calibrated model, whose fit costs more imports than it)."""
        return self._get(kind, key, dict)  # type: ignore[return-value]

    def put_doc(self, kind: str, key: str, doc: dict) -> None:
        self._put(kind, key, doc, doc)

    def _get(self, kind: str, key: str, parse: Callable[[dict], object]) -> object | None:
        if (kind, key) in self._memory or self._db() is None:
            return self._memory.get((kind, key))
        try:
            row = self._conn.execute("SELECT value FROM entries WHERE version = ? AND kind = ? AND key = ?",
                                     (self.version, kind, key)).fetchone()
        except sqlite3.DatabaseError as exc:
            self._give_up(f"ignoring a corrupt cache {self.path} ({_why(exc)}); rebuilding it", rebuild=True)
            return None
        if row is not None:
            try:
                self._memory[kind, key] = parse(json.loads(row[0]))
            except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as exc:
                self.warnings.append(f"warning: ignoring a corrupt cache entry in {self.path} ({_why(exc)}); "
                                     "computing it again")
        return self._memory.get((kind, key))

    def _put(self, kind: str, key: str, value: object, doc: dict) -> None:
        self._memory[kind, key] = value
        if self._db() is None:
            return
        try:
            with self._conn:
                self._conn.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                                   (self.version, kind, key, json.dumps(doc), time.time()))
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
                conn.execute("CREATE TABLE IF NOT EXISTS entries (version TEXT NOT NULL, kind TEXT NOT NULL, key TEXT "
                             "NOT NULL, value TEXT NOT NULL, made REAL NOT NULL, PRIMARY KEY (version, kind, key))")
                conn.execute("DELETE FROM entries WHERE version != ? AND made < ?",
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
