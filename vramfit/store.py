"""SQLite store of measurements: sweeps, environments (device + software + recipe) and points.

WAL mode, `PRAGMA user_version` schema version, parameterised SQL only, one short transaction per write so that
several processes can share a file and every point is on disk the moment it is inserted. A file that is not a
vramfit database is refused with one line and never written to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from vramfit.errors import VramfitError
from vramfit.paths import DB_FILE, check_output, database_files, output_path
from vramfit.recipe import Recipe
from vramfit.shape import GPT2, KEYS, Shape

if TYPE_CHECKING:
    import pandas as pd  # imported by the queries that build frames: opening the store does not load pandas

SCHEMA_VERSION = 3  # 1: sweeps, environments, points; 2: + claims (points being measured, for concurrent sweeps);
# 3: + points.arch (the model family and its options, `vramfit.shape.arch_spec`; rows before it are GPT-2's)
CLAIM_TTL_S = 6 * 3600  # a claim from another host (whose process cannot be asked) lapses after this
DEFAULT_DB = DB_FILE
STATUSES = ("ok", "oom", "timeout", "error")
DONE_STATUSES = ("ok", "oom")  # resume skips these; error/timeout points are tried again
# how a CUDA point's nvml_bytes was read: this process's own entry in NVML's compute-process list, or device used
# minus the idle baseline before the worker started; SHARED_GPU when other compute processes were on the GPU at the
# same time (their memory may be in the reading: `vramfit fit` leaves such points out unless allowed)
NVML_SOURCES = ("pid", "device-baseline", "device-shared")
SHARED_GPU = "device-shared"
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE sweeps (
    sweep_id      INTEGER PRIMARY KEY,
    name          TEXT,
    grid_path     TEXT,
    grid_json     TEXT,
    devices       TEXT,
    emulate_bytes INTEGER,
    status        TEXT NOT NULL DEFAULT 'running',
    n_planned     INTEGER,
    n_invalid     INTEGER,
    n_resumed     INTEGER,
    argv          TEXT,
    hostname      TEXT,
    pid           INTEGER,
    started_at    TEXT NOT NULL,
    finished_at   TEXT
);
CREATE TABLE environments (
    env_id                INTEGER PRIMARY KEY,
    fingerprint           TEXT NOT NULL UNIQUE,
    device_key            TEXT NOT NULL,
    device_type           TEXT NOT NULL,
    device_name           TEXT NOT NULL,
    gpu_uuid              TEXT,
    compute_capability    TEXT,
    total_memory_bytes    INTEGER,
    physical_memory_bytes INTEGER,
    emulate_bytes         INTEGER,
    driver_version        TEXT,
    cuda_version          TEXT,
    torch_version         TEXT,
    hostname              TEXT,
    recipe_json           TEXT NOT NULL,
    recipe_key            TEXT NOT NULL,
    created_at            TEXT NOT NULL
);
CREATE TABLE points (
    point_id        INTEGER PRIMARY KEY,
    sweep_id        INTEGER REFERENCES sweeps(sweep_id),
    env_id          INTEGER NOT NULL REFERENCES environments(env_id),
    source          TEXT NOT NULL DEFAULT 'sweep',
    n_layer         INTEGER NOT NULL,
    n_head          INTEGER NOT NULL,
    n_embd          INTEGER NOT NULL,
    block_size      INTEGER NOT NULL,
    batch_size      INTEGER NOT NULL,
    vocab_size      INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'oom', 'timeout', 'error')),
    nvml_bytes      INTEGER,
    nvml_source     TEXT,
    allocated_bytes INTEGER,
    reserved_bytes  INTEGER,
    tracked_bytes   INTEGER,
    rss_bytes       INTEGER,
    context_bytes   INTEGER,
    alloc_retries   INTEGER,
    num_ooms        INTEGER,
    ms_per_iter     REAL,
    tokens_per_s    REAL,
    iters           INTEGER,
    stable          INTEGER,
    error           TEXT,
    timings         TEXT,
    extra           TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX points_by_env_shape ON points (env_id, n_layer, n_head, n_embd, block_size, batch_size, vocab_size);
CREATE INDEX environments_by_identity ON environments (device_key, recipe_key, torch_version);
"""

# version 2: a point being measured, claimed by the sweep measuring it, so that concurrent sweeps of one database
# split the work; `ident` is the identity (device model, recipe, torch, emulation) and the shape, as JSON
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    ident      TEXT PRIMARY KEY,
    hostname   TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    claimed_at REAL NOT NULL
)
"""

# version 3: the model family of each point, so that a nanochat point and a GPT-2 point of the same sizes differ;
# every row stored before is GPT-2's, which the column's default says
_ARCH_COLUMN = f"ALTER TABLE points ADD COLUMN arch TEXT NOT NULL DEFAULT '{GPT2}'"

_TABLE_COLUMNS = {  # table -> its columns, read from _SCHEMA (what a database must have to be read)
    stmt.split("(", 1)[0].split()[-1]: [line.split()[0] for line in stmt.split("(", 1)[1].splitlines()
                                        if line.strip() and not line.strip().startswith(")")]
    for stmt in _SCHEMA.split(";") if stmt.strip().startswith("CREATE TABLE")
}

_POINT_COLUMNS = (
    "status", "nvml_bytes", "nvml_source", "allocated_bytes", "reserved_bytes", "tracked_bytes", "rss_bytes",
    "context_bytes", "alloc_retries", "num_ooms", "ms_per_iter", "tokens_per_s", "iters", "stable", "error",
)
_ENV_FACTS = (
    "device_type", "device_name", "gpu_uuid", "compute_capability", "driver_version", "cuda_version",
    "torch_version", "hostname",
)

_NUMERIC_COLUMNS = (
    "total_memory_bytes", "physical_memory_bytes", "emulate_bytes", "nvml_bytes", "allocated_bytes", "reserved_bytes",
    "tracked_bytes", "rss_bytes", "context_bytes", "alloc_retries", "num_ooms", "ms_per_iter", "tokens_per_s",
)
FRAME_COLUMNS = [
    "point_id", "sweep_id", "env_id", "source", "device_key", "device_name", "device_type", "gpu_uuid",
    "compute_capability", "total_memory_bytes", "physical_memory_bytes", "emulate_bytes", "torch_version",
    "cuda_version", "driver_version", "hostname", "recipe_key", "recipe", *KEYS, "arch", "status", "nvml_bytes",
    "nvml_source", "allocated_bytes", "reserved_bytes", "tracked_bytes", "rss_bytes", "context_bytes",
    "alloc_retries", "num_ooms", "ms_per_iter", "tokens_per_s", "iters", "stable", "error", "timings", "created_at",
]


def _ro_uri(p: Path) -> str:
    """A read-only SQLite URI that creates no -wal/-shm files: with no -wal file the database is quiescent and is
    read as immutable; with one, a writer may be active, and its -wal/-shm are shared read-only."""
    wal = p.with_name(p.name + "-wal")
    return f"file:{quote(str(p.resolve()))}?mode=ro" + ("" if wal.exists() else "&immutable=1")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def device_key(facts: dict) -> str:
    """What makes two devices interchangeable for memory: type, model name and capacity (not the UUID)."""
    return f"{facts.get('device_type')}|{facts.get('device_name')}|{facts.get('total_memory_bytes')}"


def _process_gone(hostname: str | None, pid: float | None) -> bool:
    """True when a sweep's process ran on this host and no longer exists (a 'running' row nobody will close)."""
    import socket

    from vramfit.child import pid_alive

    if os.name == "nt" or hostname != socket.gethostname() or pid is None or pid != pid:
        return False  # a container sharing the host's name but not its pids can mislabel: display only
    try:
        return not pid_alive(int(pid))
    except (OverflowError, ValueError):  # not a pid at all
        return False


class Store:
    """A vramfit SQLite database; `Store(path)` creates the file and schema when missing.

    `Store(path, readonly=True)` is for commands that only read: the file must exist and be a vramfit database,
    it is opened with `mode=ro` and nothing (no schema, no -wal/-shm file) is written, so an archived read-only
    database works and a failing command leaves the file as it was."""

    def __init__(self, path: str | Path = DEFAULT_DB, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self._open_readonly()
            return
        self._check_existing()
        self._prepare_parent()
        try:
            self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise VramfitError(f"cannot open database {self.path}: {exc}") from None

    # ------------------------------------------------------------------------------------------ opening

    def _open_readonly(self) -> None:
        p = self.path
        if not p.exists():
            raise VramfitError(f"no database at {p} (run `vramfit sweep` first)")
        if p.is_file() and p.stat().st_size == 0:
            raise VramfitError(f"{p} is empty: not a vramfit database (left untouched)")
        self._check_existing()
        if self.conn_version == 0:
            raise VramfitError(f"{p} is not a vramfit database (no schema; left untouched)")
        try:
            self.conn = sqlite3.connect(_ro_uri(p), uri=True, timeout=60.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 60000")
        except sqlite3.Error as exc:
            raise VramfitError(f"cannot open database {p}: {exc}") from None

    def _check_existing(self) -> None:
        p = self.path
        self.conn_version = 0
        if p.is_dir():
            raise VramfitError(f"database path {p} is a directory")
        if not p.exists() or p.stat().st_size == 0:
            return
        try:
            with open(p, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise VramfitError(f"cannot read database {p}: {exc.strerror}") from None
        if head != _SQLITE_MAGIC:
            raise VramfitError(f"{p} is not an SQLite database (left untouched)")
        try:  # validate read-only before anything can write to it
            ro = sqlite3.connect(_ro_uri(p), uri=True, timeout=60.0)
            try:
                check = ro.execute("PRAGMA quick_check").fetchone()[0]
                version = ro.execute("PRAGMA user_version").fetchone()[0]
                tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                ro.close()
        except sqlite3.Error as exc:
            raise VramfitError(f"{p} is not a readable SQLite database ({exc}; left untouched)") from None
        self.conn_version = version
        if check != "ok":
            raise VramfitError(f"{p} is corrupt ({check}; left untouched)")
        if version > SCHEMA_VERSION:
            raise VramfitError(f"{p} has schema version {version}, newer than this vramfit ({SCHEMA_VERSION})")
        if version == 0 and tables:
            raise VramfitError(f"{p} is an SQLite database but not a vramfit one (left untouched)")
        if version:
            self._check_columns(p, version)

    @staticmethod
    def _check_columns(p: Path, version: int) -> None:
        """Every table and column of the schema is there (a table altered by hand is refused, not a traceback)."""
        ro = sqlite3.connect(_ro_uri(p), uri=True, timeout=60.0)
        try:
            for table, columns in _TABLE_COLUMNS.items():
                columns = [*columns, "arch"] if table == "points" and version >= 3 else columns
                have = {r[1] for r in ro.execute(f"PRAGMA table_info({table})")}
                missing = [c for c in columns if c not in have]
                if missing:
                    raise VramfitError(f"{p} is not a complete vramfit database: table {table} lacks "
                                       f"{', '.join(missing)} (left untouched)")
        except sqlite3.Error as exc:
            raise VramfitError(f"{p} is not a readable SQLite database ({exc}; left untouched)") from None
        finally:
            ro.close()

    def _prepare_parent(self) -> None:
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VramfitError(f"cannot create the database folder {parent}: {exc.strerror or exc}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise VramfitError(f"cannot write to the database folder {parent}")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise VramfitError(f"database {self.path} is not writable")

    def _migrate(self) -> None:
        with self._tx() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._create(c)
            if version < 2:
                c.execute(_CLAIMS)  # migration 1 -> 2
            if version < 3 and "arch" not in {r[1] for r in c.execute("PRAGMA table_info(points)")}:
                c.execute(_ARCH_COLUMN)  # migration 2 -> 3: the rows so far are GPT-2's (the column's default)
            if version < SCHEMA_VERSION:
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _create(c: sqlite3.Connection) -> None:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                c.execute(stmt)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE: waits for other writers, never deadlocks)."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise VramfitError(f"cannot write to database {self.path}: {exc}") from None
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            try:
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                raise VramfitError(f"cannot write to database {self.path}: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _arch(self) -> str:
        """The SQL of a point's family: its column, or GPT-2 in a database older than version 3 (read-only)."""
        if not hasattr(self, "_arch_sql"):
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(points)")}
            self._arch_sql = "p.arch" if "arch" in have else f"'{GPT2}'"
        return self._arch_sql

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------------------------------ writing

    def environment(self, facts: dict, recipe: Recipe | dict, emulate_bytes: int | None = None) -> int:
        """env_id for device `facts` (see `vramfit.measure.devices.DeviceFacts.to_dict`) and a resolved recipe
        (a `Recipe` or its dict); created when new. An emulated card's capacity is `emulate_bytes`."""
        recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(dict(recipe))
        recipe_d, rkey = recipe.to_dict(), recipe.key()
        physical = facts.get("total_memory_bytes")
        row = {k: (str(facts[k]) if facts.get(k) is not None else None) for k in _ENV_FACTS}
        row.update(
            device_key=device_key(facts),
            total_memory_bytes=emulate_bytes if emulate_bytes else physical,
            physical_memory_bytes=physical,
            emulate_bytes=emulate_bytes or None,
            recipe_json=json.dumps(recipe_d, sort_keys=True),
            recipe_key=rkey,
        )
        row["fingerprint"] = hashlib.sha1(json.dumps(row, sort_keys=True).encode()).hexdigest()
        row["created_at"] = _now()
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() as c:
            c.execute(f"INSERT OR IGNORE INTO environments ({cols}) VALUES ({marks})", tuple(row.values()))
            env_id = c.execute("SELECT env_id FROM environments WHERE fingerprint = ?", (row["fingerprint"],))
            return int(env_id.fetchone()[0])

    def insert_point(self, record: dict, env_id: int, sweep_id: int | None, source: str = "sweep") -> int:
        """Insert one measurement (a worker record: shape keys, status, readings; other keys go to `extra`)
        and commit it at once; returns point_id."""
        missing = [k for k in (*KEYS, "status") if record.get(k) is None]
        if missing:
            raise VramfitError(f"point record lacks {', '.join(missing)}")
        if record["status"] not in STATUSES:
            raise VramfitError(f"point status must be one of {', '.join(STATUSES)}, got {record['status']!r}")
        row: dict[str, Any] = {"sweep_id": sweep_id, "env_id": env_id, "source": source}
        row.update({k: int(record[k]) for k in KEYS})
        row["arch"] = Shape.of(record).arch
        for k in _POINT_COLUMNS:
            v = record.get(k)
            row[k] = int(bool(v)) if k == "stable" and v is not None else v
        for k in ("ms_per_iter", "tokens_per_s"):  # NaN/inf are not SQL values
            if isinstance(row[k], float) and not (row[k] == row[k] and abs(row[k]) != float("inf")):
                row[k] = None
        row["timings"] = json.dumps(record["timings"]) if record.get("timings") else None
        known = {*KEYS, "arch", *_POINT_COLUMNS, "timings"}
        extra = {k: v for k, v in record.items() if k not in known}
        row["extra"] = json.dumps(extra, default=str) if extra else None
        row["created_at"] = _now()
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() as c:
            cur = c.execute(f"INSERT INTO points ({cols}) VALUES ({marks})", tuple(row.values()))
            return int(cur.lastrowid)

    def start_sweep(self, name: str, grid_path: str | None, grid: dict, devices: list[str],
                    emulate_bytes: int | None, n_planned: int, n_invalid: int, n_resumed: int,
                    argv: list[str] | None = None) -> int:
        """Record a new sweep (status 'running'); returns sweep_id."""
        import socket

        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO sweeps (name, grid_path, grid_json, devices, emulate_bytes, n_planned, n_invalid, "
                "n_resumed, argv, hostname, pid, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, grid_path, json.dumps(grid, default=str), ",".join(devices), emulate_bytes, n_planned,
                 n_invalid, n_resumed, json.dumps(argv or []), socket.gethostname(), os.getpid(), _now()),
            )
            return int(cur.lastrowid)

    def finish_sweep(self, sweep_id: int, status: str = "done") -> None:
        with self._tx() as c:
            c.execute("UPDATE sweeps SET status = ?, finished_at = ? WHERE sweep_id = ?", (status, _now(), sweep_id))

    # ------------------------------------------------------------------------------------------ claims

    def _ident(self, env_id: int, point: dict) -> str:
        shape = Shape.of(point)
        return json.dumps([*self.identity(env_id), *shape.as_tuple(), *([shape.arch] if shape.arch != GPT2 else [])])

    def claim(self, env_id: int, point: dict) -> bool:
        """Claim `point` for measuring on env_id's identity, in one write transaction: False when it is already
        measured (ok or oom) or claimed by a live process (this host: its PID exists; another host: younger than
        CLAIM_TTL_S); a claim of a dead process is taken over."""
        import socket

        from vramfit.child import pid_alive

        ident, host = self._ident(env_id, point), socket.gethostname()
        with self._tx() as c:
            if self.is_measured(env_id, point):
                return False
            row = c.execute("SELECT hostname, pid, claimed_at FROM claims WHERE ident = ?", (ident,)).fetchone()
            if row is not None and (row[0], row[1]) != (host, os.getpid()):
                alive = pid_alive(int(row[1])) if row[0] == host else time.time() - row[2] < CLAIM_TTL_S
                if alive:
                    return False
            c.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)", (ident, host, os.getpid(), time.time()))
        return True

    def release(self, env_id: int | None = None, point: dict | None = None) -> None:
        """Drop this process's claim of `point` (measured, or given up), or every claim it holds."""
        import socket

        where, args = "hostname = ? AND pid = ?", [socket.gethostname(), os.getpid()]
        if point is not None:
            where, args = where + " AND ident = ?", [*args, self._ident(env_id, point)]
        with self._tx() as c:
            c.execute(f"DELETE FROM claims WHERE {where}", args)

    # ------------------------------------------------------------------------------------------ reading

    def identity(self, env_id: int) -> tuple:
        """(device_key, recipe_key, torch_version, emulate_bytes): what resume matches on."""
        row = self.conn.execute(
            "SELECT device_key, recipe_key, torch_version, emulate_bytes FROM environments WHERE env_id = ?",
            (env_id,),
        ).fetchone()
        if row is None:
            raise VramfitError(f"no environment {env_id} in {self.path}")
        return tuple(row)

    def measured_shapes(self, env_id: int, statuses: tuple[str, ...] = DONE_STATUSES) -> set[Shape]:
        """Shapes already measured with one of
        `statuses` on any environment with the same identity as `env_id` (same device model, recipe, torch)."""
        dkey, rkey, tv, emu = self.identity(env_id)
        marks = ", ".join("?" for _ in statuses)
        rows = self.conn.execute(
            f"SELECT {', '.join('p.' + k for k in KEYS)}, {self._arch} "
            "FROM points p JOIN environments e USING (env_id) "
            f"WHERE e.device_key = ? AND e.recipe_key = ? AND e.torch_version IS ? AND e.emulate_bytes IS ? "
            f"AND p.status IN ({marks})",
            (dkey, rkey, tv, emu, *statuses),
        )
        return {Shape(*r) for r in rows}

    def is_measured(self, env_id: int, point: dict, statuses: tuple[str, ...] = DONE_STATUSES) -> bool:
        """Whether `point` (the six sizes and the family) is already measured for env_id's device + recipe."""
        return Shape.of(point) in self.measured_shapes(env_id, statuses)

    def points_frame(self, device: str | None = None, recipe_key: str | None = None,
                     status: str | None = None) -> pd.DataFrame:
        """All points joined with their environment, one row each (columns: `FRAME_COLUMNS`).

        `device` matches the device name (substring, case-insensitive), the device type or the GPU UUID."""
        where, args = [], []
        if device:
            where.append("(lower(e.device_name) LIKE ? OR e.device_type = ? OR e.gpu_uuid = ?)")
            args += [f"%{device.lower()}%", device, device]
        if recipe_key:
            where.append("e.recipe_key = ?")
            args.append(recipe_key)
        if status:
            where.append("p.status = ?")
            args.append(status)
        sql = (
            "SELECT p.point_id, p.sweep_id, p.env_id, p.source, e.device_key, e.device_name, e.device_type, "
            "e.gpu_uuid, e.compute_capability, e.total_memory_bytes, e.physical_memory_bytes, e.emulate_bytes, "
            "e.torch_version, e.cuda_version, e.driver_version, e.hostname, e.recipe_key, e.recipe_json AS recipe, "
            + ", ".join(f"{self._arch} AS arch" if c == "arch" else f"p.{c}"
                        for c in FRAME_COLUMNS[FRAME_COLUMNS.index("n_layer"):])
            + " FROM points p JOIN environments e USING (env_id)"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY p.point_id"
        )
        import pandas as pd

        df = pd.read_sql_query(sql, self.conn, params=args)
        for env_id, recipe in df.groupby("env_id")["recipe"].first().items():
            try:
                ok = isinstance(json.loads(recipe), dict)
            except (TypeError, json.JSONDecodeError):
                ok = False
            if not ok:
                raise VramfitError(f"{self.path}: environment {env_id} has a malformed recipe_json "
                                   f"({str(recipe)[:40]!r}; left untouched)")
        for col in _NUMERIC_COLUMNS:  # NULL -> NaN, so readings are float64 whether or not any is missing
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        df["stable"] = df["stable"].map(lambda v: None if v is None or pd.isna(v) else bool(v)).astype("object")
        return df[FRAME_COLUMNS]

    def point_extras(self, point_ids: list[int]) -> dict[int, dict]:
        """The `extra` JSON of these points (empty dicts for none or unreadable ones), by point_id."""
        out: dict[int, dict] = {}
        for pid in point_ids:
            row = self.conn.execute("SELECT extra FROM points WHERE point_id = ?", (int(pid),)).fetchone()
            try:
                d = json.loads(row[0]) if row and row[0] else {}
            except json.JSONDecodeError:
                d = {}
            out[int(pid)] = d if isinstance(d, dict) else {}
        return out

    def train_runs(self) -> list[dict]:
        """Every ok `vramfit train` point with its `extra` fields (loss curve, corpus, ...), shape and point_id."""
        try:
            rows = self.conn.execute(
                f"SELECT point_id, {', '.join(KEYS)}, {self._arch} AS arch, extra FROM points p "
                "WHERE source = 'train' AND status = 'ok' AND extra IS NOT NULL ORDER BY point_id").fetchall()
        except sqlite3.DatabaseError as exc:
            raise VramfitError(f"{self.path} is not a vramfit database ({exc})") from None
        out = []
        for row in rows:
            try:
                extra = json.loads(row["extra"])
            except json.JSONDecodeError:
                continue
            if isinstance(extra, dict):
                out.append(extra | {k: row[k] for k in ("point_id", *KEYS, "arch")})
        return out

    def sweeps_frame(self) -> pd.DataFrame:
        """One row per sweep with its point counts by status."""
        sql = (
            "SELECT s.sweep_id, s.name, s.status, s.devices, s.emulate_bytes, s.started_at, s.finished_at, "
            "s.n_planned, s.n_resumed, s.n_invalid, s.hostname, s.pid, "
            + ", ".join(f"SUM(p.status = '{st}') AS n_{st}" for st in STATUSES)
            + " FROM sweeps s LEFT JOIN points p USING (sweep_id) GROUP BY s.sweep_id ORDER BY s.sweep_id"
        )
        import pandas as pd

        df = pd.read_sql_query(sql, self.conn)
        for st in STATUSES:
            df[f"n_{st}"] = df[f"n_{st}"].fillna(0).astype(int)
        gone = (df["status"] == "running") & df.apply(lambda r: _process_gone(r["hostname"], r["pid"]), axis=1)
        df.loc[gone, "status"] = "killed"  # its process died without closing the row (SIGKILL, power loss)
        return df.drop(columns=["hostname", "pid"])

    def export(self, path: str | Path, fmt: str | None = None, what: str = "export", **filters: Any) -> int:
        """Write `points_frame(**filters)` to CSV or Parquet (by `fmt` or the suffix); returns the row count.

        Never over the database or its -wal/-shm files (`vramfit.paths.check_output`); a regular file is written
        atomically, a stream or device (/dev/stdout) directly."""
        path = Path(path)
        fmt = fmt or ("parquet" if path.suffix == ".parquet" else "csv")
        if fmt not in ("csv", "parquet"):
            raise VramfitError(f"unknown export format {fmt!r} (csv or parquet)")
        check_output(path, {"the database": database_files(self.path)}, what)
        if filters.get("status") is not None and filters["status"] not in STATUSES:
            raise VramfitError(f"unknown status {filters['status']!r}; choose one of {', '.join(STATUSES)}")
        df = self.points_frame(**filters)
        with output_path(path, what) as target:
            if fmt == "parquet":
                try:
                    df.to_parquet(target, index=False)
                except ImportError:
                    raise VramfitError("Parquet export needs pyarrow (pip install 'vramfit[parquet]')") from None
            else:
                df.to_csv(target, index=False)
        return len(df)

