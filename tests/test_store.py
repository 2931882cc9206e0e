"""The SQLite store: schema, inserts, the points frame, resume identity, concurrency, refusing bad files."""

import hashlib
import multiprocessing as mp
import sqlite3

import pytest

from vramfit.errors import VramfitError
from vramfit.recipe import Recipe
from vramfit.shape import Shape
from vramfit.store import FRAME_COLUMNS, SCHEMA_VERSION, Store

CPU = {"device_type": "cpu", "device_name": "cpu: Test CPU", "total_memory_bytes": 2**34, "torch_version": "2.x",
       "hostname": "h1"}
GPU = {"device_type": "cuda", "device_name": "NVIDIA Test 8GB", "total_memory_bytes": 8 * 2**30,
       "gpu_uuid": "GPU-1234", "compute_capability": "8.6", "driver_version": "550.1", "cuda_version": "12.4",
       "torch_version": "2.x", "hostname": "h1"}
SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 8, "vocab_size": 512}


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_wal_and_version(tmp_path):
    path = tmp_path / "sub" / "db.sqlite"
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sweeps", "environments", "points"} <= tables
    with Store(path) as s:  # reopening keeps it
        assert s.schema_version == SCHEMA_VERSION


def test_insert_and_points_frame(tmp_path):
    with Store(tmp_path / "db.sqlite") as s:
        rcpu = Recipe().resolved("cpu")
        env = s.environment(CPU, rcpu)
        assert s.environment(CPU, rcpu) == env  # get-or-create
        genv = s.environment(GPU, Recipe(dtype="bfloat16").resolved("cuda"), emulate_bytes=4 * 2**30)
        sweep = s.start_sweep("t", None, {"axes": []}, ["cpu"], None, 2, 0, 0)
        pid = s.insert_point({**SHAPE, "status": "ok", "tracked_bytes": 1000, "rss_bytes": 1100, "iters": 5,
                              "stable": True, "ms_per_iter": 3.5, "tokens_per_s": float("nan"),
                              "timings": {"import": 1.0}, "dtype": "float32"}, env, sweep)
        s.insert_point({**SHAPE, "batch_size": 64, "status": "oom", "nvml_bytes": 3, "allocated_bytes": 1,
                        "reserved_bytes": 2, "error": "OutOfMemoryError: x"}, genv, None, source="train")
        df = s.points_frame()
        assert list(df.columns) == FRAME_COLUMNS
        assert len(df) == 2 and df.point_id.iloc[0] == pid
        row = df.iloc[0]
        assert row.device_type == "cpu" and row.status == "ok" and row.stable is True
        assert row.tracked_bytes == 1000 and row.rss_bytes == 1100 and row.nvml_bytes != row.nvml_bytes  # NaN
        assert row.recipe_key == rcpu.key() and '"dtype": "float32"' in row.recipe
        g = s.points_frame(device="cuda").iloc[0]
        assert g.source == "train" and g.status == "oom" and g.total_memory_bytes == 4 * 2**30
        assert g.physical_memory_bytes == 8 * 2**30 and g.emulate_bytes == 4 * 2**30
        assert len(s.points_frame(device="test cpu")) == 1 and len(s.points_frame(status="oom")) == 1
        assert len(s.points_frame(recipe_key=rcpu.key())) == 1
        sw = s.sweeps_frame()
        assert sw.n_ok.tolist() == [1] and sw.status.tolist() == ["running"]
        s.finish_sweep(sweep)
        assert s.sweeps_frame().status.tolist() == ["done"]
        with pytest.raises(VramfitError, match="status"):
            s.insert_point({**SHAPE, "status": "weird"}, env, None)
        with pytest.raises(VramfitError, match="lacks"):
            s.insert_point({"status": "ok"}, env, None)


def test_resume_identity_is_device_model_recipe_and_torch(tmp_path):
    with Store(tmp_path / "db.sqlite") as s:
        r = Recipe(dtype="bfloat16").resolved("cuda")
        e1 = s.environment(GPU, r)
        e2 = s.environment({**GPU, "gpu_uuid": "GPU-other", "hostname": "h2"}, r)  # a twin card elsewhere
        e3 = s.environment(GPU, Recipe(dtype="float16").resolved("cuda"))
        e4 = s.environment(GPU, r, emulate_bytes=2**30)
        s.insert_point({**SHAPE, "status": "ok"}, e1, None)
        s.insert_point({**SHAPE, "batch_size": 1, "status": "error"}, e1, None)
        assert s.is_measured(e2, SHAPE) and s.is_measured(e1, SHAPE)
        assert not s.is_measured(e3, SHAPE) and not s.is_measured(e4, SHAPE)
        assert not s.is_measured(e1, {**SHAPE, "batch_size": 1})  # errors are retried
        assert s.measured_shapes(e1, ("error",)) == {Shape(2, 2, 64, 64, 1, 512)}


def _writer(path: str, tag: int, n: int) -> None:
    s = Store(path)
    env = s.environment(CPU, Recipe().resolved("cpu"))
    for i in range(n):
        s.insert_point({**SHAPE, "batch_size": tag * 1000 + i + 1, "status": "ok"}, env, None)
    s.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "db.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k, 60)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(path) as s:
        df = s.points_frame()
        assert len(df) == 180 and df.batch_size.nunique() == 180
        assert df.env_id.nunique() == 1


def test_refuses_garbage_and_leaves_it_untouched(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database at all\n" * 100)
    before = sha(bad)
    with pytest.raises(VramfitError, match="not an SQLite database"):
        Store(bad)
    assert sha(bad) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad.sqlite"]


def test_refuses_a_damaged_database_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "db.sqlite"
    with Store(path) as s:
        env = s.environment(CPU, Recipe().resolved("cpu"))
        for i in range(300):
            s.insert_point({**SHAPE, "batch_size": i + 1, "status": "ok", "error": "x" * 200}, env, None)
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in ("-wal", "-shm"):
        (tmp_path / f"db.sqlite{extra}").unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page: 6 * page] = b"\xde\xad\xbe\xef" * page  # clobber b-tree pages, keep the header
    path.write_bytes(bytes(data))
    before = sha(path)
    with pytest.raises(VramfitError, match="left untouched"):
        Store(path)
    assert sha(path) == before


def test_refuses_foreign_and_newer_databases(tmp_path):
    other = tmp_path / "other.sqlite"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    before = sha(other)
    with pytest.raises(VramfitError, match="not a vramfit one"):
        Store(other)
    assert sha(other) == before
    newer = tmp_path / "newer.sqlite"
    Store(newer).close()
    c = sqlite3.connect(newer)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(VramfitError, match="newer"):
        Store(newer)


def test_unwritable_paths(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(VramfitError, match="cannot create the database folder"):
        Store(blocker / "db.sqlite")
    with pytest.raises(VramfitError, match="is a directory"):
        Store(tmp_path)


def test_export_csv_and_parquet(tmp_path):
    import pandas as pd

    with Store(tmp_path / "db.sqlite") as s:
        env = s.environment(CPU, Recipe().resolved("cpu"))
        s.insert_point({**SHAPE, "status": "ok", "tracked_bytes": 5}, env, None)
        assert s.export(tmp_path / "out" / "p.csv") == 1
        assert s.export(tmp_path / "p.parquet") == 1
        with pytest.raises(VramfitError, match="unknown export format"):
            s.export(tmp_path / "p.x", fmt="xml")
    assert pd.read_csv(tmp_path / "out" / "p.csv").tracked_bytes.tolist() == [5]
    assert pd.read_parquet(tmp_path / "p.parquet").n_embd.tolist() == [64]


def test_families_are_part_of_a_points_identity_and_a_version_2_database_migrates(tmp_path):
    """A nanochat point and a GPT-2 point of the same sizes are two points (resume, claims, the frame); a database
    of schema 2 (no family column) is read as it is (its points GPT-2's) and gains the column on its first write,
    nothing lost."""
    db = tmp_path / "db.sqlite"
    chat = {**SHAPE, "arch": "nanochat:mlp=swiglu,n_kv_head=1"}
    with Store(db) as s:
        env = s.environment(CPU, Recipe().resolved("cpu"))
        s.insert_point({**SHAPE, "status": "ok", "tracked_bytes": 1}, env, None)
        assert s.is_measured(env, SHAPE) and not s.is_measured(env, chat) and s.claim(env, chat)
        s.insert_point({**chat, "status": "ok", "tracked_bytes": 2}, env, None)
        s.release(env, chat)
        assert s.measured_shapes(env) == {Shape.of(SHAPE), Shape(**chat)}
        assert list(s.points_frame().arch) == ["gpt2", "nanochat:n_kv_head=1,mlp=swiglu"]  # canonical order
        with pytest.raises(VramfitError, match="arch must be one of"):
            s.insert_point({**SHAPE, "arch": "llama", "status": "ok"}, env, None)
    with sqlite3.connect(db) as c:  # back to schema 2: the family column did not exist
        c.execute("DELETE FROM points WHERE arch != 'gpt2'")
        c.execute("ALTER TABLE points DROP COLUMN arch")
        c.execute("PRAGMA user_version = 2")
    sqlite3.connect(db).close()
    before = sha(db)
    with Store(db, readonly=True) as s:
        df = s.points_frame()
        assert list(df.arch) == ["gpt2"] and list(df.tracked_bytes) == [1] and s.is_measured(1, SHAPE)
    assert sha(db) == before  # read: untouched
    with Store(db) as s:
        assert s.schema_version == SCHEMA_VERSION == 3
        assert list(s.points_frame().arch) == ["gpt2"] and s.is_measured(1, SHAPE) and not s.is_measured(1, chat)
