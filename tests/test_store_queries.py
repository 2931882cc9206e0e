"""The store's queries, table-driven: resume identity, frame filters and types, extras, train runs, the estimate
cache, and the status of sweeps whose process died."""

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from vramfit.errors import VramfitError
from vramfit.recipe import Recipe
from vramfit.shape import Shape
from vramfit.store import Store, _process_gone, device_key

CPU = {"device_type": "cpu", "device_name": "cpu: Test CPU", "total_memory_bytes": 2**34, "torch_version": "2.x"}
GPU = {"device_type": "cuda", "device_name": "NVIDIA Test 8GB", "total_memory_bytes": 8 * 2**30,
       "gpu_uuid": "GPU-1234", "compute_capability": "8.6", "torch_version": "2.x"}
SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 8, "vocab_size": 512}
KEY = Shape.of(SHAPE)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "db.sqlite") as s:
        yield s


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_device_key_is_type_name_and_capacity():
    assert device_key(GPU) == "cuda|NVIDIA Test 8GB|8589934592"
    assert device_key({**GPU, "gpu_uuid": "GPU-other", "hostname": "h9"}) == device_key(GPU)
    assert device_key({}) == "None|None|None"


@pytest.mark.parametrize("host, pid, gone", [
    ("self", "dead", True),
    ("self", "me", False),                  # alive
    ("other-host", "dead", False),          # cannot tell for another machine's process
    ("self", None, False), ("self", float("nan"), False),
    ("self", 2**40, False),                 # not a pid at all (OverflowError)
    ("self", float("inf"), False),          # not an integer at all (int() overflows)
])
def test_process_gone(host, pid, gone):
    hostname = socket.gethostname() if host == "self" else host
    pid = {"dead": dead_pid(), "me": os.getpid()}.get(pid, pid)
    assert _process_gone(hostname, pid) is gone


def test_asking_about_a_live_process_does_not_signal_it():
    """The check is signal 0 (existence only): a live process, SIGHUP not ignored, is still running after it."""
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, "
                              "signal.SIG_DFL); print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert _process_gone(socket.gethostname(), child.pid) is False
        with pytest.raises(subprocess.TimeoutExpired):  # still running a moment later: no signal reached it
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()


def test_identity_and_measured_keys_by_status(store):
    r = Recipe(dtype="bfloat16").resolved("cuda")
    e1 = store.environment(GPU, r)
    assert store.identity(e1) == (device_key(GPU), r.key(), "2.x", None)
    no_torch = store.environment({**GPU, "torch_version": None}, r)
    for status, bs in (("ok", 1), ("oom", 2), ("error", 3), ("timeout", 4)):
        store.insert_point({**SHAPE, "batch_size": bs, "status": status}, e1, None)
    same = lambda k: k.with_(batch_size=1) == KEY.with_(batch_size=1)  # noqa: E731
    keys = lambda *st: {k.batch_size for k in store.measured_shapes(e1, st) if same(k)}  # noqa: E731
    assert {k.batch_size for k in store.measured_shapes(e1)} == {1, 2}  # resume skips ok and oom only
    assert keys("error", "timeout") == {3, 4} and keys("ok") == {1} and keys() == set()
    assert store.measured_shapes(no_torch) == set()  # a NULL torch version matches only NULL
    store.insert_point({**SHAPE, "status": "ok"}, no_torch, None)
    assert store.measured_shapes(no_torch) == {KEY} and KEY not in store.measured_shapes(e1)
    assert store.is_measured(e1, {**SHAPE, "batch_size": 2}) and not store.is_measured(e1, {**SHAPE, "batch_size": 3})
    assert store.is_measured(e1, {**SHAPE, "batch_size": 3}, ("error",))
    assert store.is_measured(e1, {k: str(v) for k, v in {**SHAPE, "batch_size": 1}.items()})  # ints, not strings
    with pytest.raises(VramfitError, match=r"^no environment 999 in .*db\.sqlite$"):
        store.identity(999)


def test_points_frame_filters(store):
    cpu = store.environment(CPU, Recipe().resolved("cpu"))
    gpu = store.environment(GPU, Recipe(dtype="bfloat16").resolved("cuda"))
    gpu16 = store.environment(GPU, Recipe(dtype="float16").resolved("cuda"))
    store.insert_point({**SHAPE, "status": "ok", "tracked_bytes": 10}, cpu, None)
    store.insert_point({**SHAPE, "status": "oom"}, gpu, None)
    store.insert_point({**SHAPE, "status": "ok", "nvml_bytes": 5}, gpu16, None)
    ids = lambda **f: store.points_frame(**f).point_id.tolist()  # noqa: E731
    assert ids() == [1, 2, 3]
    assert ids(device="test cpu") == [1] and ids(device="NVIDIA test") == [2, 3]  # substring, any case
    assert ids(device="cuda") == [2, 3] and ids(device="GPU-1234") == [2, 3] and ids(device="GPU-12") == []
    assert ids(device="CPU") == [1]  # 'cpu: Test CPU' by name; the type 'cpu' is exact
    assert ids(status="ok") == [1, 3] and ids(status="oom", device="cuda") == [2]
    assert ids(recipe_key=Recipe(dtype="float16").resolved("cuda").key()) == [3]
    assert ids(device="cuda", recipe_key=Recipe().resolved("cpu").key()) == []
    assert ids(device="nothing") == [] and ids(device="") == [1, 2, 3] and ids(status="") == [1, 2, 3]


def test_points_frame_types(store):
    env = store.environment(CPU, Recipe().resolved("cpu"))
    store.insert_point({**SHAPE, "status": "ok", "stable": False}, env, None)
    store.insert_point({**SHAPE, "status": "ok", "stable": True, "ms_per_iter": 2.5, "tracked_bytes": 7}, env, None)
    store.insert_point({**SHAPE, "status": "error"}, env, None)
    df = store.points_frame()
    for col in ("tracked_bytes", "nvml_bytes", "allocated_bytes", "reserved_bytes", "ms_per_iter", "num_ooms",
                "emulate_bytes", "total_memory_bytes"):
        assert df[col].dtype == np.float64, col  # NULL is NaN, whether or not any row has a value
    assert df.stable.tolist() == [False, True, None] and df.stable.dtype == object
    assert df.ms_per_iter.isna().tolist() == [True, False, True]


def test_points_frame_coerces_unreadable_numbers_and_names_a_malformed_recipe(store):
    env = store.environment(CPU, Recipe().resolved("cpu"))
    store.insert_point({**SHAPE, "status": "ok", "nvml_bytes": 5}, env, None)
    store.insert_point({**SHAPE, "status": "ok", "nvml_bytes": 6}, env, None)
    store.conn.execute("UPDATE points SET nvml_bytes = 'n/a' WHERE point_id = 2")  # SQLite keeps any type
    df = store.points_frame()
    assert df.nvml_bytes.tolist()[0] == 5.0 and np.isnan(df.nvml_bytes.tolist()[1])
    assert df.arch.tolist() == ["gpt2", "gpt2"]
    for text in ('{"dtype": "float32", "compile": false, "optimizer": "fused", ', "[1, 2]", "null"):
        store.conn.execute("UPDATE environments SET recipe_json = ? WHERE env_id = ?", (text, env))
        with pytest.raises(VramfitError, match=f"^{re.escape(str(store.path))}: environment {env} has a malformed "
                                               f"recipe_json \\({re.escape(repr(text[:40]))}; left untouched\\)$"):
            store.points_frame()


def test_points_frame_of_a_database_without_the_arch_column_is_gpt2(store):
    env = store.environment(CPU, Recipe().resolved("cpu"))
    store.insert_point({**SHAPE, "status": "ok"}, env, None)
    store.conn.execute("ALTER TABLE points DROP COLUMN arch")  # as a database older than version 3 has it
    assert store.points_frame().arch.tolist() == ["gpt2"]


def test_point_extras(store):
    env = store.environment(CPU, Recipe().resolved("cpu"))
    a = store.insert_point({**SHAPE, "status": "ok", "plan": "adaptive", "n": 3}, env, None)
    b = store.insert_point({**SHAPE, "status": "ok"}, env, None)
    c = store.insert_point({**SHAPE, "status": "ok", "x": 1}, env, None)
    d = store.insert_point({**SHAPE, "status": "ok", "x": 1}, env, None)
    store.conn.execute("UPDATE points SET extra = ? WHERE point_id = ?", ("{not json", c))
    store.conn.execute("UPDATE points SET extra = ? WHERE point_id = ?", ("[1, 2]", d))
    assert store.point_extras([a, b, c, d, 999]) == {a: {"plan": "adaptive", "n": 3}, b: {}, c: {}, d: {}, 999: {}}
    assert store.point_extras([]) == {}


def test_train_runs(store):
    env = store.environment(CPU, Recipe().resolved("cpu"))
    store.insert_point({**SHAPE, "status": "ok", "corpus_id": "c1", "losses": [[1, 3.0]]}, env, None, source="train")
    store.insert_point({**SHAPE, "status": "ok", "corpus_id": "sweep"}, env, None)  # a sweep point
    store.insert_point({**SHAPE, "status": "oom", "corpus_id": "c1"}, env, None, source="train")  # failed run
    store.insert_point({**SHAPE, "status": "ok"}, env, None, source="train")  # no extra
    bad = store.insert_point({**SHAPE, "status": "ok", "y": 1}, env, None, source="train")
    store.conn.execute("UPDATE points SET extra = ? WHERE point_id = ?", ("{oops", bad))
    lst = store.insert_point({**SHAPE, "status": "ok", "y": 1}, env, None, source="train")
    store.conn.execute("UPDATE points SET extra = ? WHERE point_id = ?", ("[1]", lst))
    last = store.insert_point({**SHAPE, "n_layer": 4, "status": "ok", "corpus_id": "c2"}, env, None, source="train")
    runs = store.train_runs()
    assert [r["point_id"] for r in runs] == [1, last]
    assert runs[0] == {"corpus_id": "c1", "losses": [[1, 3.0]], "point_id": 1, **SHAPE, "arch": "gpt2"}
    assert runs[1]["n_layer"] == 4 and runs[1]["corpus_id"] == "c2"
    store.conn.execute("DROP TABLE points")
    with pytest.raises(VramfitError, match=r"db\.sqlite is not a vramfit database \(no such table: points\)$"):
        store.train_runs()


def test_sweeps_frame_counts_and_dead_sweeps(store):
    env = store.environment(CPU, Recipe().resolved("cpu"))
    s1 = store.start_sweep("one", None, {}, ["cpu"], None, 3, 0, 0)
    s2 = store.start_sweep("two", "g.toml", {}, ["cpu"], 2**30, 0, 1, 4)
    s3 = store.start_sweep("three", None, {}, ["cpu"], None, 0, 0, 0)
    for status in ("ok", "ok", "oom", "error", "timeout"):
        store.insert_point({**SHAPE, "status": status}, env, s1)
    store.finish_sweep(s2, "interrupted")
    store.conn.execute("UPDATE sweeps SET pid = ? WHERE sweep_id = ?", (dead_pid(), s3))
    df = store.sweeps_frame().set_index("sweep_id")
    assert df.loc[s1, ["n_ok", "n_oom", "n_error", "n_timeout"]].tolist() == [2, 1, 1, 1]
    assert all(df[f"n_{s}"].dtype.kind == "i" for s in ("ok", "oom", "error", "timeout"))  # counts, not floats
    assert df.loc[s2, ["n_ok", "n_oom", "n_error", "n_timeout"]].tolist() == [0, 0, 0, 0]
    assert df.loc[s1, "status"] == "running"  # this process is alive
    assert df.loc[s2, "status"] == "interrupted" and df.loc[s3, "status"] == "killed"
    assert (df.loc[s2, "n_planned"], df.loc[s2, "n_resumed"], df.loc[s2, "n_invalid"]) == (0, 4, 1)
    assert "hostname" not in df.columns and "pid" not in df.columns
    store.conn.execute("UPDATE sweeps SET hostname = 'elsewhere' WHERE sweep_id = ?", (s3,))
    assert store.sweeps_frame().set_index("sweep_id").loc[s3, "status"] == "running"
