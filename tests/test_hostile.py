"""Bad input through the CLI: one `error:` line, exit 2, no traceback, and the stored database byte-identical.

New commands join the table. The database is built from synthetic points (no sweep needed), in-process.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_data import synthetic_db

from vramfit.cli import main
from vramfit.store import Store


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A vramfit database, checkpointed and closed (no -wal/-shm), as an archived file is."""
    path = synthetic_db(tmp_path_factory.mktemp("archive") / "v.sqlite")
    assert not path.with_name("v.sqlite-wal").exists()
    return path


@pytest.fixture
def db(archive, tmp_path):
    path = tmp_path / "v.sqlite"
    shutil.copy(archive, path)
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


USAGE = [
    (["suggest", "--vram", "8G", "--top", "0"], "--top"),
    (["suggest", "--vram", "8G", "--gpus", "0"], "--gpus"),
    (["suggest"], "Missing option '--vram'"),
    (["suggest", "--vram", "8G", "--bogus"], "No such option: --bogus"),
    (["suggest", "--vram", "8Q"], "cannot parse size '8Q'"),
    (["suggest", "--vram", "8G", "--n-layer", "0"], "--n-layer: values must be >= 1"),
    (["suggest", "--vram", "8G", "--n-layer", "x"], "--n-layer: 'x' is not an integer"),
    (["fit", "--regimes", "3"], "--regimes"),
    (["estimate", "--n-layer", "x", "--n-head", "1", "--n-embd", "8", "--block-size", "8", "--batch-size", "1"],
     "--n-layer"),
    (["predict", "--n-layer", "0", "--n-head", "1", "--n-embd", "8", "--block-size", "8", "--batch-size", "1"],
     "--n-layer"),
    (["nosuchcommand"], "No such command"),
]


@pytest.mark.parametrize(("args", "needle"), USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_are_one_line(capsys, args, needle):
    rc, _, err = run(capsys, *args)
    assert_one_error(rc, err, needle)


def test_version_and_help_are_rich_but_literal(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("vramfit ")
    rc, out, _ = run(capsys, "train", "--help")
    assert rc == 0 and "[model]/[train]" in out  # rich markup no longer swallows the table names
    rc, out, _ = run(capsys, "sweep", "--help")
    assert rc == 0 and "vramfit[ray]" in out


def db_cases(db, tmp_path):
    """(args, expected text) that must fail on a stored database without touching it."""
    return [
        (["export", "--db", db, "--csv", db], "refusing to write --csv"),
        (["export", "--db", db, "--csv", db.with_name(db.name + "-wal")], "it is the database"),
        (["export", "--db", db, "--csv", tmp_path], "is a folder, not a file"),
        (["export", "--db", db, "--csv", tmp_path / "x.csv", "--status", "bogus"], "unknown status 'bogus'"),
        (["fit", "--db", db, "--target", "nope"], "reading"),
    ]


def assert_each_fails_leaving_the_db(capsys, db, cases) -> None:
    """Every case exits 2 with one error line naming its needle, and the database stays byte for byte."""
    before = sha(db)
    for args, needle in cases:
        rc, _, err = run(capsys, *args)
        assert_one_error(rc, err, needle)
        assert sha(db) == before, args


def test_failing_commands_leave_the_database_byte_identical(capsys, db, tmp_path):
    assert_each_fails_leaving_the_db(capsys, db, db_cases(db, tmp_path))
    assert not db.with_name(db.name + "-wal").exists() and not db.with_name(db.name + "-shm").exists()


def test_read_only_commands_write_nothing_beside_the_database(capsys, db, tmp_path):
    before = sha(db)
    out = tmp_path / "out.csv"
    assert run(capsys, "export", "--db", db, "--csv", out)[0] == 0
    assert run(capsys, "runs", "--db", db)[0] == 0
    assert run(capsys, "fit", "--db", db, "--out", tmp_path / "models")[0] == 0
    assert sha(db) == before and out.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out.csv", "v.sqlite"]


@pytest.mark.parametrize("cmd", [["runs"], ["fit"], ["export", "--csv", "x.csv"], ["plot"], ["report"]])
def test_empty_database_file_is_refused_and_stays_empty(capsys, tmp_path, monkeypatch, cmd):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    rc, _, err = run(capsys, *cmd, "--db", empty)
    assert_one_error(rc, err, "empty")
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]


def test_sqlite_file_without_vramfit_schema_is_refused(capsys, tmp_path):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE t (x)")
    before = sha(foreign)
    rc, _, err = run(capsys, "runs", "--db", foreign)
    assert_one_error(rc, err, "not a vramfit")
    assert sha(foreign) == before


def file_cases(tmp_path, db) -> list[tuple[list, str]]:
    """Bad files and paths: binary where JSON is expected, files where folders are, absurd sizes."""
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    toml = tmp_path / "bool.toml"
    toml.write_text("n_layer = true\n")
    big = tmp_path / "big.toml"
    big.write_text("[[axes]]\n" + "".join(f"{k} = [{', '.join(str(i + 1) for i in range(40))}]\n" for k in
                                          ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")))
    many = tmp_path / "many.toml"
    many.write_text("[[axes]]\nn_layer = [1, 2, 3, 4, 5, 6, 7, 8]\nn_head = [1]\nn_embd = [8, 16, 32, 64, 128, 256, "
                    "512, 1024]\nblock_size = [8, 16, 32, 64]\nbatch_size = [1, 2, 4]\nvocab_size = [64]\n")
    return [
        (["suggest", "--vram", "8G", "--hours", "1", "--loss-law", binary], "is not a vramfit loss-law file"),
        (["train", "--suggestion", "1", "--suggestions", binary], "is not a vramfit suggest output"),
        (["suggest", "--vram", "8G", "--rank", "chinchilla"], "--rank ranks by time"),
        (["suggest", "--vram", "8G", "--save", tmp_path], "is a folder, not a file"),
        (["suggest", "--vram", "8G", "--save", a_file / "s.json"], "is a file, not a folder"),
        (["fit", "--db", db, "--out", a_file], "is a file, not a folder"),
        (["fit", "--db", db, "--device", "h100"], "none of the"),
        (["sample", "--ckpt", a_file, "--temperature", "nan"], "temperature must be a positive number"),
        (["train", "--config", toml, "--max-iters", "0"], "n_layer: cannot read True as int"),
        (["estimate", "--n-layer", "99999999999999999999", "--n-head", "1", "--n-embd", "8", "--block-size", "8",
          "--batch-size", "1"], "beyond the limit"),
        (["sweep", "--grid", big, "--device", "cpu", "--db", tmp_path / "g.sqlite"], "beyond the limit of 100,000"),
        (["sweep", "--grid", many, "--device", "cpu", "--db", tmp_path / "g.sqlite"], "768 points, estimated"),
        (["train", "--out-dir", a_file, "--max-iters", "1"], "--out-dir"),
        (["train", "--measure", "--db", tmp_path, "--out-dir", tmp_path / "o", "--max-iters", "1"], "--db"),
        (["prepare", "--input", a_file, "--out", a_file], "is a file, not a folder"),
        (["plot", "--db", db, "--out", a_file], "is a file, not a folder"),
        (["report", "--db", db, "--out", tmp_path], "is a folder, not a file"),
        (["plot", "--db", db, "--vram", "0"], "must be > 0"),
    ]


def test_bad_files_and_paths_fail_first_with_one_line(capsys, db, tmp_path):
    assert_each_fails_leaving_the_db(capsys, db, file_cases(tmp_path, db))
    assert not (tmp_path / "g.sqlite").exists()  # refused before the database was created


def test_prepare_offline_leaves_no_empty_folder(capsys, tmp_path, monkeypatch):
    import urllib.error

    import gpt.data

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(gpt.data.urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "prepare", "shakespeare")
    assert_one_error(rc, err, "offline")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_checkpoint_save_leaves_nothing_behind_on_the_next_save(tmp_path):
    import subprocess
    import sys

    from gpt.train import save_checkpoint

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ckpt.pt.{int(dead.stdout)}.tmp"  # a save killed mid-write: its process is gone
    stale.write_bytes(b"x" * 1000)
    alive = tmp_path / f".ckpt.pt.{1}.tmp"  # PID 1 always exists: another save may still be writing
    alive.write_bytes(b"y")
    save_checkpoint({"model": {}, "model_args": {}}, tmp_path / "ckpt.pt")
    assert not stale.exists() and alive.exists() and (tmp_path / "ckpt.pt").stat().st_size > 0


def test_empty_checkpoint_is_one_error_line(capsys, tmp_path):
    empty = tmp_path / "ckpt.pt"
    empty.write_bytes(b"")
    rc, _, err = run(capsys, "sample", "--ckpt", empty)
    assert_one_error(rc, err, "cannot read checkpoint")


# --- Item 1 and 2 of issue 31: no output is ever written over an input, and nothing but a regular file is replaced.

@pytest.fixture(scope="module")
def model_file(archive, tmp_path_factory):
    """The synthetic database's fitted model JSON (what suggest and predict read)."""
    out = tmp_path_factory.mktemp("models")
    assert main(["fit", "--db", str(archive), "--out", str(out)]) == 0
    (path,) = out.glob("*.json")
    return path


def identity(path) -> tuple:
    """What must not change about a protected path: its kind (lstat mode), its target, its bytes."""
    import os
    import stat

    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return (st.st_mode, os.readlink(path))
    return (st.st_mode, sha(path) if stat.S_ISREG(st.st_mode) else None)


def overwrite_cases(tmp_path, db, model, char_corpus) -> list[tuple[list, str, list]]:
    """(args, needle, files that must stay byte-identical): each writer aimed at an input of its own command,
    directly, through a symlink, a hard link or `..`, or at a database or checkpoint it does not know about."""
    import os

    import torch

    from vramfit.plan.workflows import slug

    ckpt = tmp_path / "out" / "ckpt.pt"
    ckpt.parent.mkdir()
    torch.save({"model": {}, "model_args": {}}, ckpt)
    link_db, link_ckpt, hard = tmp_path / "link.html", tmp_path / "ckpt.html", tmp_path / "hard.csv"
    link_db.symlink_to(db)
    link_ckpt.symlink_to(ckpt)
    os.link(db, hard)
    (tmp_path / "sub").mkdir()
    corpus = tmp_path / "data" / "x"
    shutil.copytree(char_corpus, corpus)
    fit_out = tmp_path / "models"
    fit_out.mkdir()
    (fit_out / model.name).symlink_to(db)
    plots = tmp_path / "plots" / model.stem
    plots.mkdir(parents=True)
    (plots / "pred_vs_measured.png").symlink_to(db)
    assert model.stem.startswith(slug("synthetic gpu"))
    model_copy = tmp_path / "m.json"
    shutil.copy(model, model_copy)
    corpus_files = sorted(corpus.iterdir())
    return [
        (["report", "--db", db, "--out", db], "refusing to write --out", [db]),
        (["report", "--db", db, "--out", link_db], "it is the database", [db, link_db]),
        (["report", "--db", db, "--out", hard], "it is the database", [db, hard]),
        (["report", "--db", db, "--out", tmp_path / "sub" / ".." / db.name], "it is the database", [db]),
        (["report", "--db", db, "--out", link_ckpt], "it holds a PyTorch checkpoint", [ckpt, link_ckpt]),
        (["suggest", "--vram", "8G", "--model", model_copy, "--save", db], "it holds a SQLite database", [db]),
        (["suggest", "--vram", "8G", "--model", model_copy, "--save", ckpt], "it holds a PyTorch checkpoint",
         [ckpt]),
        (["suggest", "--vram", "8G", "--model", model_copy, "--save", model_copy], "it is --model", [model_copy]),
        (["export", "--db", db, "--csv", hard], "refusing to write --csv", [db, hard]),
        (["export", "--db", db, "--parquet", link_db], "refusing to write --parquet", [db, link_db]),
        (["export", "--db", db, "--csv", tmp_path / "t.csv", "--parquet", tmp_path / "sub" / ".." / "t.csv"],
         "--csv and --parquet name the same file", [db]),
        (["prepare", "--input", corpus / "train.bin", "--out", corpus], "it is the input", corpus_files),
        (["train", "--measure", "--db", ckpt, "--out-dir", ckpt.parent, "--data-dir", corpus, "--max-iters", "1"],
         "it is the checkpoint", [ckpt, *corpus_files]),
        (["fit", "--db", db, "--out", fit_out], "it is the database", [db, fit_out / model.name]),
        (["plot", "--db", db, "--out", plots.parent], "it holds a SQLite database",
         [db, plots / "pred_vs_measured.png"]),
        (["export-nanogpt", "--ckpt", ckpt, "--out-dir", ckpt.parent], "holds the source checkpoint", [ckpt]),
    ]


def test_no_writer_overwrites_an_input(capsys, db, tmp_path, model_file, char_corpus):
    for args, needle, files in overwrite_cases(tmp_path, db, model_file, char_corpus):
        before = [identity(f) for f in files]
        rc, _, err = run(capsys, *args)
        assert_one_error(rc, err, needle)
        assert [identity(f) for f in files] == before, args


def special_cases(tmp_path, db, model) -> list[tuple[list, int, str]]:
    """(args, exit code, needle in stderr) writing into a stream or device: into it, never replacing it."""
    return [
        (["export", "--db", db, "--csv", "/dev/null"], 0, ""),
        (["export", "--db", db, "--csv", "/dev/full"], 2, "no space left on the device"),
        (["suggest", "--vram", "8G", "--model", model, "--save", "/dev/null"], 0, ""),
        (["report", "--db", db, "--out", "/dev/null", "--suggestions", tmp_path / "none.json"], 0, ""),
    ]


@pytest.mark.parametrize("case", range(4))
def test_devices_are_written_into_never_replaced(capsys, db, tmp_path, model_file, case):
    args, code, needle = special_cases(tmp_path, db, model_file)[case]
    devices = {p: identity(p) for p in ("/dev/null", "/dev/full")}
    rc, _, err = run(capsys, *args)
    assert rc == code and needle in err and "Traceback" not in err, err
    assert {p: identity(p) for p in devices} == devices


def test_a_fifo_is_written_into(capsys, db, tmp_path):
    import os
    import threading

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    before = identity(fifo)
    rc, _, err = run(capsys, "export", "--db", db, "--csv", fifo)
    reader.join(30)
    assert rc == 0, err
    assert identity(fifo) == before and got[0].startswith(b"point_id,")


def test_a_symlink_to_stdout_is_written_through(db, tmp_path):
    import subprocess
    import sys

    link = tmp_path / "out.csv"
    link.symlink_to("/proc/self/fd/1")
    r = subprocess.run([sys.executable, "-m", "vramfit.cli", "export", "--db", str(db), "--csv", str(link)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("point_id,") and link.is_symlink()


def test_write_errors_are_one_line_and_leave_the_old_file(capsys, db, tmp_path, monkeypatch, char_corpus):
    import errno

    import gpt.files

    out = tmp_path / "old.csv"
    out.write_text("old")

    def refuse(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(gpt.files.os, "replace", refuse)
    rc, _, err = run(capsys, "export", "--db", db, "--csv", out)
    assert_one_error(rc, err, "read-only file system")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["old.csv", "v.sqlite"]

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gpt.files.os, "replace", full)
    rc, _, err = run(capsys, "prepare", "--input", tmp_path / "old.csv", "--out", tmp_path / "c")
    assert_one_error(rc, err, "no space left on the device")
    assert not any((tmp_path / "c").iterdir())


def test_export_removes_the_temp_files_of_killed_exports(capsys, db, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.csv.{int(dead.stdout)}.tmp"  # an export killed mid-write: its process is gone
    stale.write_text("partial")
    out = tmp_path / "out.csv"
    assert run(capsys, "export", "--db", db, "--csv", out)[0] == 0
    assert not stale.exists() and out.read_text().startswith("point_id,")


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_an_atomic_rewrite_keeps_the_file_mode(tmp_path, mode):
    from gpt.files import write_text

    path = tmp_path / "f.txt"
    path.write_text("a")
    path.chmod(mode)
    write_text(path, "b")
    assert path.read_text() == "b" and path.stat().st_mode & 0o777 == mode


# --- Items 4 and 5 of issue 31: what used to end in a traceback, or was accepted, is refused with one line.

HUGE = "9" * 400
SHAPE = ["--n-layer", "2", "--n-head", "2", "--n-embd", "128", "--block-size", "128"]


def tampered_models(model, tmp_path) -> dict[str, object]:
    """The fitted model JSON with one coefficient made NaN, -1e12 or inf (JSON's NaN / Infinity)."""
    import json

    out = {}
    for name, (key, value) in {"nan": ("intercept", float("nan")), "negative": ("coef", -1e12),
                               "inf": ("step_coef", float("inf"))}.items():
        doc = json.loads(model.read_text())
        if key == "coef":
            doc["model"]["coef"][0] = value
        else:
            doc["model"][key] = value
        out[name] = tmp_path / f"{name}.json"
        out[name].write_text(json.dumps(doc))
    return out


def altered_databases(db, tmp_path) -> dict[str, object]:
    """Copies of the database: one with a column dropped, one with a recipe that is not JSON."""
    out = {"missing": tmp_path / "missing.sqlite", "recipe": tmp_path / "recipe.sqlite"}
    for path in out.values():
        shutil.copy(db, path)
    with sqlite3.connect(out["missing"]) as c:
        c.execute("ALTER TABLE points DROP COLUMN nvml_bytes")
    with sqlite3.connect(out["recipe"]) as c:
        c.execute("UPDATE environments SET recipe_json = '{not json'")
    for path in out.values():
        sqlite3.connect(path).close()
    return out


def refused_cases(tmp_path, db, model) -> list[tuple[list, str, list]]:
    """(args, needle, files that must stay byte-identical) for the planner, the store and the parsers."""
    bad = tampered_models(model, tmp_path)
    dbs = altered_databases(db, tmp_path)
    predict = ["predict", *SHAPE, "--batch-size", "1", "--model"]
    return [
        (["suggest", "--vram", HUGE, "--model", model], "beyond the limit of 2**60 bytes", []),
        (["suggest", "--vram", "8G", "--reserve", HUGE, "--model", model], "beyond the limit of 2**60 bytes", []),
        (["sweep", "--emulate-vram", HUGE, *SHAPE, "--batch-size", "1", "--vocab-size", "64", "--device", "cpu",
          "--db", tmp_path / "new.sqlite"], "beyond the limit of 2**60 bytes", []),
        (["suggest", "--vram", "8G", "--model", model, "--n-layer", "99999999999999999999"],
         "--n-layer: 99999999999999999999 is beyond the limit of 4,096", []),
        (["suggest", "--vram", "8G", "--model", model, "--vocab", "99999999999"], "beyond the limit of 16,777,216",
         []),
        (["suggest", "--vram", "8G", "--model", model, "--n-layer", "1,,2"], "--n-layer: '' is not an integer", []),
        (["suggest", "--vram", "8G", "--model", model, "--n-head", "128"], "search's limit of 64 heads", []),
        (["predict", *SHAPE, "--batch-size", str(2**40), "--model", model],
         "batch_size 1099511627776 is beyond the limit of 1,048,576", [model]),
        ([*predict, bad["nan"]], "its intercept is nan", [bad["nan"]]),
        ([*predict, bad["negative"]], "its coef of params is -1000000000000.0", [bad["negative"]]),
        (["suggest", "--vram", "8G", "--model", bad["inf"], "--save", tmp_path / "s.json"], "its step_coef is inf",
         [bad["inf"]]),
        *[([cmd, "--db", dbs["missing"], *more], "table points lacks nvml_bytes", [dbs["missing"]])
          for cmd, more in (("fit", ["--out", tmp_path / "m"]), ("export", ["--csv", tmp_path / "x.csv"]),
                            ("plot", ["--out", tmp_path / "p"]), ("report", ["--out", tmp_path / "r.html"]),
                            ("runs", []))],
        (["sweep", *SHAPE, "--batch-size", "1", "--vocab-size", "64", "--device", "cpu", "--db", dbs["missing"]],
         "table points lacks nvml_bytes", [dbs["missing"]]),
        (["fit", "--db", dbs["recipe"], "--out", tmp_path / "m"], "malformed recipe_json", [dbs["recipe"]]),
        (["export", "--db", dbs["recipe"], "--csv", tmp_path / "x.csv"], "malformed recipe_json", [dbs["recipe"]]),
    ]


def test_planner_and_store_refuse_with_one_line(capsys, db, tmp_path, model_file):
    for args, needle, files in refused_cases(tmp_path, db, model_file):
        before = [sha(f) for f in files]
        rc, _, err = run(capsys, *args)
        assert_one_error(rc, err, needle)
        assert [sha(f) for f in files] == before, args
    assert not (tmp_path / "new.sqlite").exists() and not (tmp_path / "x.csv").exists()


@pytest.fixture
def small_ckpt(tmp_path, char_corpus):
    """A real checkpoint of a tiny GPT on the char corpus (weights as initialised: no training needed)."""
    import json

    import torch

    from gpt.config import GPTConfig
    from gpt.model import GPT

    meta = json.loads((char_corpus / "meta.json").read_text())
    cfg = GPTConfig(1, 1, 16, 16, meta["vocab_size"])
    path = tmp_path / "ckpt" / "ckpt.pt"
    path.parent.mkdir()
    torch.save({"model": GPT(cfg).state_dict(), "model_args": cfg.to_dict(), "meta": meta,
                "config": {"data_dir": str(char_corpus)}}, path)
    return path


def broken_checkpoints(ckpt, tmp_path) -> dict[str, object]:
    import torch

    doc = torch.load(ckpt, weights_only=True)
    as_list = tmp_path / "list.pt"
    torch.save({**doc, "model": list(doc["model"].values())}, as_list)
    weights = dict(doc["model"])
    weights["transformer.wte.weight"] = torch.full_like(weights["transformer.wte.weight"], float("nan"))
    nan = tmp_path / "nan.pt"
    torch.save({**doc, "model": weights}, nan)
    return {"list": as_list, "nan": nan}


def broken_corpora(char_corpus, tmp_path) -> dict[str, object]:
    """Copies of the corpus: val.bin cut to an odd size; train.bin with ids beyond the vocabulary."""
    import numpy as np

    out = {name: tmp_path / name for name in ("odd", "ids")}
    for path in out.values():
        shutil.copytree(char_corpus, path)
    data = (out["odd"] / "val.bin").read_bytes()
    (out["odd"] / "val.bin").write_bytes(data[:1001])
    ids = np.fromfile(out["ids"] / "train.bin", dtype=np.uint16)
    ids[::7] = 60000
    ids.tofile(out["ids"] / "train.bin")
    return out


TINY = ["--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--max-iters", "2", "--eval-iters", "1", "--device", "cpu", "--compile", "false"]


def training_cases(tmp_path, char_corpus, ckpt) -> list[tuple[list, str, list]]:
    """(args, needle, protected files) for train, sample and export-nanogpt."""
    corpora = broken_corpora(char_corpus, tmp_path)
    ckpts = broken_checkpoints(ckpt, tmp_path)
    (tmp_path / "dir_ckpt" / "ckpt.pt").mkdir(parents=True)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    train = ["train", *TINY, "--data-dir", char_corpus, "--out-dir", tmp_path / "out"]
    sample = ["sample", "--ckpt", ckpt, "--max-new-tokens", "2"]
    hyper = [("--learning-rate", "inf", "learning_rate must be a finite number > 0, got inf"),
             ("--weight-decay", "-1", "weight_decay must be a finite number >= 0, got -1.0"),
             ("--grad-clip", "nan", "grad_clip must be a finite number >= 0, got nan"),
             ("--min-lr", "-1", "min_lr must be a finite number >= 0"),
             ("--eval-interval", "-1", "eval_interval must be >= 0"),
             ("--peak-tflops", "-1", "peak_tflops must be a finite number > 0"),
             ("--log-interval", "0", "log_interval must be >= 1"),
             ("--beta1", "nan", "beta1 must be a finite number in [0, 1), got nan"),
             ("--beta2", "2", "beta2 must be a finite number in [0, 1), got 2.0"),
             ("--seed", "99999999999999999999", "seed must be in [0, 4,294,967,295]")]
    return [
        *[([*train, flag, value], needle, []) for flag, value, needle in hyper],
        (["train", *TINY, "--data-dir", corpora["odd"], "--out-dir", tmp_path / "o"], "not a whole number of uint16",
         [corpora["odd"] / "val.bin"]),
        (["train", *TINY, "--data-dir", corpora["ids"], "--out-dir", tmp_path / "o"], "is outside the vocabulary",
         [corpora["ids"] / "train.bin"]),
        (["train", *TINY, "--data-dir", char_corpus, "--out-dir", tmp_path / "dir_ckpt"], "is a folder, not a file",
         []),
        ([*train, "--n-layer", "96", "--n-head", "96", "--n-embd", "12288"], "more than the", []),
        ([*train, "--nproc", "4096"], "--nproc 4096 is more than the", []),
        (["sample", "--ckpt", ckpts["list"]], "its 'model' is a list, not a dict", [ckpts["list"]]),
        (["sample", "--ckpt", ckpts["nan"]], "holds NaN or inf", [ckpts["nan"]]),
        ([*sample, "--seed", "99999999999999999999"], "seed must be in [0, 4,294,967,295]", [ckpt]),
        (["sample", "--ckpt", ckpt, "--num-samples", "100000000"], "num_samples must be in [1, 1,048,576]", [ckpt]),
        (["sample", "--ckpt", ckpt, "--max-new-tokens", "1000000000"], "max_new_tokens must be in [1, 1,048,576]",
         [ckpt]),
        (["sample", "--ckpt", ckpt, "--num-samples", "1000000", "--max-new-tokens", "1000000"], "more than the",
         [ckpt]),
        (["export-nanogpt", "--ckpt", ckpt, "--out-dir", a_file], "is a file, not a folder", [ckpt, a_file]),
        (["export-nanogpt", "--ckpt", ckpt, "--out-dir", tmp_path / "e", "--data-root", a_file],
         "is a file, not a folder", [ckpt, a_file]),
    ]


def test_training_and_sampling_refuse_with_one_line(capsys, tmp_path, char_corpus, small_ckpt):
    for args, needle, files in training_cases(tmp_path, char_corpus, small_ckpt):
        before = [sha(f) for f in files]
        rc, _, err = run(capsys, *args)
        assert_one_error(rc, err, needle)
        assert [sha(f) for f in files] == before, args
    assert not (tmp_path / "out").exists() and not (tmp_path / "e").exists()


# --- Properties: the parsers and the hyper-parameter validation never raise anything but their one error type.

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.from_regex(r"\s*[0-9]{1,500}(\.[0-9]{0,30})?\s*[kKmMgGtT]?(i?[bB])?\s*",
                                                     fullmatch=True)))
def test_parse_size_returns_a_bounded_int_or_one_size_error(text):
    from vramfit.units import MAX_SIZE, SizeError, parse_size

    try:
        n = parse_size(text)
    except SizeError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(n, int) and 0 <= n <= MAX_SIZE


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789,-_ x", max_size=40),
                 st.lists(st.integers(min_value=-10, max_value=10**25), max_size=6).map(
                     lambda xs: ",".join(map(str, xs)))))
def test_int_lists_are_in_range_or_one_error(text):
    from gpt.config import MAX_SIZES
    from vramfit.errors import VramfitError
    from vramfit.plan.recommend import parse_int_options

    try:
        values = parse_int_options(n_layer=text)["n_layer"]
    except VramfitError as exc:
        assert str(exc).startswith("--n-layer: ")
        return
    assert values and all(1 <= v <= MAX_SIZES["n_layer"] for v in values)
    assert len(values) == len(text.split(","))  # no item dropped: '1,,2' is refused, not read as 1,2


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**30, max_value=10**30))
HYPER = {"learning_rate": (0, False), "weight_decay": (0, True), "grad_clip": (0, True), "min_lr": (0, True),
         "beta1": (0, True), "beta2": (0, True), "peak_tflops": (0, False)}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(HYPER)), FLOATS)
def test_hyper_parameters_are_finite_and_in_range_or_one_config_error(name, value):
    import math

    from gpt.config import make_config
    from gpt.errors import ConfigError

    try:
        cfg = make_config({name: value})
    except ConfigError as exc:
        assert str(exc).startswith(f"{name} must be")
        return
    v = getattr(cfg, name)
    low, closed = HYPER[name]
    assert math.isfinite(v) and (v >= low if closed else v > low)
    if name.startswith("beta"):
        assert v < 1


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["seed", "log_interval", "eval_interval", "warmup_iters"]),
       st.integers(min_value=-10**30, max_value=10**30))
def test_integer_settings_are_in_range_or_one_config_error(name, value):
    from gpt.config import MAX_SEED, make_config
    from gpt.errors import ConfigError

    try:
        cfg = make_config({name: value})
    except ConfigError:
        return
    v = getattr(cfg, name)
    assert v >= (1 if name == "log_interval" else 0) and (name != "seed" or v <= MAX_SEED)


# --- Item 6 of issue 31: pipes and the "nothing fits" answer.

@pytest.mark.parametrize("cmd", [["fit", "--out", "{tmp}/m"], ["runs"], ["export", "--csv", "/dev/stdout"]])
def test_a_closed_pipe_ends_quietly_with_exit_0(db, tmp_path, cmd):
    """`vramfit fit | head -c 1`: the reader leaves; the command exits 0 with nothing on stderr."""
    import subprocess
    import sys

    args = [a.format(tmp=tmp_path) for a in cmd]
    p = subprocess.Popen([sys.executable, "-m", "vramfit.cli", *args, "--db", str(db)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.read(1)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == "", err


def test_nothing_fits_is_one_error_line_with_exit_1(capsys, model_file, tmp_path):
    rc, out, err = run(capsys, "suggest", "--vram", "600M", "--n-layer", "48", "--n-embd", "4096", "--model",
                       model_file, "--save", tmp_path / "s.json")
    assert rc == 1 and err.startswith("error: nothing fits in 600.00 MiB") and err.count("\n") == 1, err
    assert "nothing fits" not in out and not (tmp_path / "s.json").exists()


# --- Item 3 of issue 31: fit scales (bounded CV, NNLS through the normal equations for many rows).

def test_cv_is_exact_for_small_data_and_bounded_for_large():
    import numpy as np

    from vramfit.fit.stats import CV_MAX_POINTS, FOLDS, cv_keys

    assert list(cv_keys(108, None)) == list(range(108))  # leave-one-out, as before: the same numbers
    groups = np.array([f"s{i % 18}" for i in range(108)])
    assert len(set(cv_keys(108, groups))) == 18  # leave-one-shape-out
    keys = cv_keys(100_000, np.array([f"s{i % 5000}" for i in range(100_000)]))
    held = keys[keys >= 0]
    assert len(held) == CV_MAX_POINTS and set(held) <= set(range(FOLDS))


def test_nnls_on_many_rows_is_the_same_fit():
    import numpy as np

    import vramfit.fit.stats as stats

    rng = np.random.default_rng(1)
    X = np.abs(rng.normal(size=(5000, 5))) * [1e6, 1e9, 1e8, 1e3, 1e5]
    for y, w in ((X @ [12, 12, 40, 0.5, 8] + 3e8 + rng.normal(0, 1e6, 5000), None),
                 (X @ [12, 12, 40, 0.5, 8] + 3e8, 1 / (X @ [12, 12, 40, 0.5, 8] + 3e8) ** 2),
                 (X @ [12, 12, 40, 0.5, 8] - 3e9, None)):  # a negative intercept: refit through the origin
        c0, coef = stats._nnls_reduced(X, y, w)
        big = stats.NNLS_DIRECT_MAX
        try:
            stats.NNLS_DIRECT_MAX = 10**9
            d0, dcoef = stats.nnls(X, y, w)
        finally:
            stats.NNLS_DIRECT_MAX = big
        assert np.isclose(c0, d0, rtol=1e-6, atol=1.0) and np.allclose(coef, dcoef, rtol=1e-5, atol=1e-6)


def test_fit_of_many_points_costs_seconds_not_minutes():
    import sys
    import time
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from bench_fit import synthetic_rows

    from vramfit.fit.memmodel import fit_points

    rows = pd.DataFrame(synthetic_rows(30_000)).assign(device_type="cuda", device_name="Synthetic GPU",
                                                         recipe_key="r1", recipe="{}", total_memory_bytes=8 * 2**30)
    t = time.process_time()
    report = fit_points(rows)
    assert time.process_time() - t < 30  # was: 1,664 points in 53 s (leave-one-out of every point and shape)
    assert report.n_points == int((rows["status"] == "ok").sum()) and report.margin_rel < 0.05
    assert report.throughput is not None


# refused before the work starts: one line, exit 2, and the process stays small (issue 31: "no process above 2 GB
# of RSS for a refused input"); each runs as its own process so that its peak RSS is its own
RSS_WRAP = """
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": r.returncode, "err": r.stderr, "maxrss_kib": usage.ru_maxrss}))
"""


def runaway_cases(model, ckpt) -> list[tuple[list, str]]:
    many = lambda n, step=1: ",".join(str(step * (i + 1)) for i in range(n))  # noqa: E731
    return [
        (["suggest", "--vram", "8G", "--model", model, "--n-layer", many(4096), "--save", "/dev/null"],
         "beyond the limit of 10,000,000"),
        (["suggest", "--vram", "8G", "--model", model, "--block-size", many(1000, 8), "--save", "/dev/null"],
         "beyond the limit of 10,000,000"),
        (["estimate", "--n-layer", "4096", "--n-head", "1", "--n-embd", "8", "--block-size", "8", "--batch-size",
          "1"], "beyond the dry run's limit of 512 layers"),
        (["sample", "--ckpt", ckpt, "--num-samples", "100000000"], "num_samples must be in [1, 1,048,576]"),
        (["sample", "--ckpt", ckpt, "--num-samples", "1048576", "--max-new-tokens", "1048576"], "more than the"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_runaway_requests_are_refused_small(model_file, small_ckpt, case):
    import json
    import subprocess
    import sys

    args, needle = runaway_cases(model_file, small_ckpt)[case]
    r = subprocess.run([sys.executable, "-c", RSS_WRAP, sys.executable, "-m", "vramfit.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    res = json.loads(r.stdout)
    assert_one_error(res["rc"], res["err"], needle)
    assert res["maxrss_kib"] < 2 * 2**20, res  # KiB: under 2 GiB


# --- Item 6 of issue 31: point claims, so that concurrent sweeps of one database split the work.

SLOW_WORKER = """
import json, sys, time
p = json.loads(sys.stdin.read())["point"]
time.sleep(0.5)
print(json.dumps({**p, "status": "ok", "tracked_bytes": 100 * p["batch_size"], "rss_bytes": 1, "iters": 3,
                  "stable": True}))
"""
SWEEP = """
import sys
from vramfit.sweep.grid import load_grid
from vramfit.sweep.session import SweepOptions, run_sweep
from vramfit.sweep.whole_grid import GridChooser
axes = {"n_layer": [1], "n_head": [1], "n_embd": [8], "block_size": [8], "vocab_size": [8],
        "batch_size": list(range(1, 13))}
options = SweepOptions(sys.argv[1], device="cpu", quiet=True, worker_cmd=[sys.executable, "-c", sys.argv[2]])
res = run_sweep(load_grid(None, axes, measure_overrides={"timeout_s": 60}), options, GridChooser())
print(sum(res.counts.values()))
"""


def test_two_sweeps_of_one_database_never_measure_a_point_twice(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "db.sqlite"
    Store(db).close()  # created first, so that neither sweep races the other to the schema
    runs = [subprocess.Popen([sys.executable, "-c", SWEEP, str(db), SLOW_WORKER], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in runs]
    assert all(p.returncode == 0 for p in runs), [o[1][-2000:] for o in outs]
    measured = [int(o[0].split()[-1]) for o in outs]
    with sqlite3.connect(db) as c:
        batches = sorted(r[0] for r in c.execute("SELECT batch_size FROM points"))
        claims = c.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    assert batches == list(range(1, 13)) and sum(measured) == 12, (batches, measured)  # each point once
    assert claims == 0  # released as each point was stored


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path):
    import subprocess
    import sys

    db = synthetic_db(tmp_path / "v.sqlite")
    point = {"n_layer": 3, "n_head": 1, "n_embd": 8, "block_size": 8, "batch_size": 1, "vocab_size": 8}
    claim = ("import sys, time; from vramfit.store import Store; s = Store(sys.argv[1]); "
             f"print(s.claim(1, {point!r}), flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", claim, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "True"
        with Store(db) as s:
            assert not s.claim(1, point)  # a live sweep holds it
            other.kill()
            other.wait()
            assert s.claim(1, point)  # its process is gone: taken over
            measured = {"n_layer": 2, "n_head": 2, "n_embd": 128, "block_size": 128, "batch_size": 4,
                        "vocab_size": 512}
            assert s.is_measured(1, measured) and not s.claim(1, measured)  # stored already: nothing to claim
    finally:
        other.kill()


def test_a_version_1_database_is_read_as_is_and_migrated_on_write(tmp_path):
    from vramfit.store import SCHEMA_VERSION

    db = synthetic_db(tmp_path / "v.sqlite")
    with sqlite3.connect(db) as c:
        c.execute("DROP TABLE claims")
        c.execute("ALTER TABLE points DROP COLUMN arch")
        c.execute("PRAGMA user_version = 1")
    sqlite3.connect(db).close()
    before = sha(db)
    with Store(db, readonly=True) as s:
        n = len(s.points_frame())
    assert sha(db) == before  # read: untouched
    with Store(db) as s:
        assert s.schema_version == SCHEMA_VERSION == 3 and len(s.points_frame()) == n
        assert s.claim(1, {"n_layer": 3, "n_head": 1, "n_embd": 8, "block_size": 8, "batch_size": 1,
                           "vocab_size": 8})


def test_fit_says_which_device_and_recipe_it_could_not_fit(capsys, tmp_path):
    """A group too small to fit (here one point of a second GPU) is skipped with its reason on stderr, not
    silently: the other group is fitted and saved."""
    from planner_data import SYNTHETIC_GPU, synthetic_points

    from vramfit.recipe import Recipe

    db = synthetic_db(tmp_path / "v.sqlite")
    with Store(db) as store:
        env = store.environment({**SYNTHETIC_GPU, "device_name": "Lonely GPU", "gpu_uuid": "GPU-lonely"},
                                Recipe(dtype="bfloat16", compile=True, optimizer="fused"))
        store.insert_point({**synthetic_points().iloc[0].to_dict(), "device_name": "Lonely GPU"}, env, None)
    rc, out, err = run(capsys, "fit", "--db", db, "--models", tmp_path / "models")
    assert rc == 0, err
    assert "Synthetic GPU" in out and "Lonely GPU" not in out
    (line,) = [x for x in err.splitlines() if x.startswith("skipped: ")]
    assert line.startswith("skipped: Lonely GPU / ") and len(line) > len("skipped: Lonely GPU / ") + 10
    assert [p.name.startswith("synthetic") or "Synthetic" in p.name for p in (tmp_path / "models").iterdir()] == [True]
