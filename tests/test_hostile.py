"""Bad input through the CLI: one `error:` line, exit 2, no traceback, and the stored database byte-identical.

New commands join the table. The database is built from synthetic points (no sweep needed), in-process.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3

import pytest
from planner_data import synthetic_db

from vramfit.cli import main


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
        (["fit", "--db", db, "--target", "nope"], "target"),
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
