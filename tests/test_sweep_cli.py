"""Bad inputs to `vramfit sweep` / `runs` / `export` / `info`: one-line errors, exit code 2, databases untouched."""

import hashlib
import sqlite3

import pytest
import torch

from vramfit.cli import main
from vramfit.errors import VramfitError
from vramfit.store import Store
from vramfit.sweep.grid import load_grid, parse_int_list

AXES = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "1",
        "--vocab-size", "64"]
GOOD = """
[axes]
n_layer = [1, 2]
n_head = [2, 3]
n_embd = [32, 48]
block_size = [16]
batch_size = [1]
vocab_size = [64]
"""


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("toml, message", [
    ("[axes\nn_layer = [1]", "is not valid TOML"),
    (GOOD.replace("n_layer", "n_layers"), "unknown axis 'n_layers'"),
    (GOOD.replace("n_layer = [1, 2]", "n_layer = []"), "empty list"),
    ("name = 'x'\n", "empty grid"),
    (GOOD.replace("n_embd = [32, 48]", "n_embd = [31]"), "empty grid"),
    (GOOD.replace("n_layer = [1, 2]", "n_layer = [0]"), "must be >= 1"),
    (GOOD.replace("n_layer = [1, 2]", "n_layer = ['a']"), "not an integer"),
    (GOOD + "[recipe]\ndtype = 'float8'\n", "recipe dtype"),
    (GOOD + "[measure]\nmax_iter = 3\n", "unknown measure key"),
    (GOOD + "[measure]\nmax_iters = 1\n", "max_iters"),
    ("colour = 'red'\n" + GOOD, "unknown key 'colour'"),
    ("[[axes]]\nn_layer = [1]\n", "lacks n_head"),
])
def test_bad_grid_files(capsys, tmp_path, toml, message):
    grid = tmp_path / "g.toml"
    grid.write_text(toml)
    db = tmp_path / "db.sqlite"
    rc, _, err = run(capsys, "sweep", "--grid", str(grid), "--device", "cpu", "--db", str(db))
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not db.exists()


@pytest.mark.parametrize("extra, message", [
    (["--emulate-vram", "8X"], "cannot parse size"),
    (["--emulate-vram", "0"], "must be > 0"),
    (["--batch-size", "4,x"], "not an integer"),
    (["--devices", "0,1"], "--devices selects GPUs"),
    (["--grid", "/nonexistent/grid.toml"], "no such grid file"),
])
def test_bad_flags(capsys, tmp_path, extra, message):
    db = tmp_path / "db.sqlite"
    rc, _, err = run(capsys, "sweep", *AXES, "--device", "cpu", "--db", str(db), *extra)
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not db.exists()


def test_missing_grid_and_unknown_device(capsys, tmp_path):
    rc, _, err = run(capsys, "sweep", "--n-layer", "2", "--db", str(tmp_path / "db.sqlite"))
    assert rc == 2 and "give --grid" in err
    rc, _, err = run(capsys, "sweep", *AXES, "--device", "tpu", "--db", str(tmp_path / "db.sqlite"))
    assert rc == 2 and "unknown device 'tpu'" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_requested_without_a_gpu(capsys, tmp_path):
    rc, _, err = run(capsys, "sweep", *AXES, "--device", "cuda", "--db", str(tmp_path / "db.sqlite"))
    assert rc == 2 and err.count("\n") == 1 and "no CUDA device" in err


def test_unwritable_db_path(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run(capsys, "sweep", *AXES, "--device", "cpu", "--db", str(blocker / "db.sqlite"))
    assert rc == 2 and err.count("\n") == 1 and "cannot create the database folder" in err


def test_corrupt_and_foreign_databases_are_never_touched(capsys, tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(bytes(range(256)) * 64)
    foreign = tmp_path / "foreign.sqlite"
    c = sqlite3.connect(foreign)
    c.execute("CREATE TABLE notes (x)")
    c.commit()
    c.close()
    for db, message in ((bad, "not an SQLite database"), (foreign, "not a vramfit one")):
        before = sha(db)
        for args in (["sweep", *AXES, "--device", "cpu"], ["runs"], ["export", "--csv", str(tmp_path / "x.csv")]):
            rc, _, err = run(capsys, *args, "--db", str(db))
            assert rc == 2 and err.count("\n") == 1 and message in err, (args, err)
            assert sha(db) == before
    assert not (tmp_path / "x.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.sqlite", "foreign.sqlite"]


def test_runs_and_export_need_a_database(capsys, tmp_path):
    rc, _, err = run(capsys, "runs", "--db", str(tmp_path / "none.sqlite"))
    assert rc == 2 and "no database" in err
    rc, _, err = run(capsys, "export", "--db", str(tmp_path / "none.sqlite"))
    assert rc == 2 and "--csv" in err
    Store(tmp_path / "empty.sqlite").close()
    rc, out, _ = run(capsys, "runs", "--db", str(tmp_path / "empty.sqlite"))
    assert rc == 0 and "no sweeps" in out


def test_info_never_tracebacks(capsys):
    rc, out, err = run(capsys, "info")
    assert rc == 0 and "torch" in out and not err
    if not torch.cuda.is_available():
        assert "no CUDA device: CPU mode" in out
    rc, out, _ = run(capsys, "info", "--json")
    assert rc == 0 and '"devices"' in out


def test_grid_loading_overrides_and_invalid_combinations(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GOOD)
    g = load_grid(grid)
    pts, invalid = g.points()
    # n_head 3 divides neither 32 nor... 48 yes: (2, 32) (2, 48) (3, 48) valid, (3, 32) invalid; times 2 layers
    assert len(pts) == 6 and invalid == 2
    g = load_grid(grid, {"n_layer": [4, 8], "batch_size": "1,2"})
    pts, _ = g.points()
    assert {p["n_layer"] for p in pts} == {4, 8} and {p["batch_size"] for p in pts} == {1, 2}
    with pytest.raises(VramfitError, match="unknown axis"):
        load_grid(grid, {"n_layers": [1]})
    assert parse_int_list("4, 8,16") == [4, 8, 16]


def test_union_of_axis_blocks_inherits_from_the_first(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GOOD.replace("[axes]", "[[axes]]") + "\n[[axes]]\nn_layer = [1]\nn_head = [2]\nn_embd = [32]\n"
                    "vocab_size = [64, 128]\n")
    pts, invalid = load_grid(grid).points()
    assert len(pts) == 7 and invalid == 2  # the duplicate (1, 2, 32, ..., 64) is counted once
