"""Shared fixtures: the tiny-shakespeare corpus (or a generated stand-in) and small tokenizers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
QUICK_GRID = ROOT / "experiments" / "grids" / "quick.toml"
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # its 65 characters


def _run_dir(tmp_path_factory) -> Path:
    """A folder of this test run shared by its pytest-xdist workers (`scripts/test.sh` runs two): each worker's
    base temp is `pytest-N/popen-gwK`, so their parent is this run's own; without xdist, the base temp itself."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True, scope="session")
def _private_dry_run_cache(tmp_path_factory):
    """The dry run's cache in a temporary folder of this run (shared by its workers), never the user's cache."""
    cache = _run_dir(tmp_path_factory) / "vramfit-cache"
    cache.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("VRAMFIT_CACHE_DIR", str(cache))
    yield
    mp.undo()


def pytest_collection_modifyitems(config, items):
    for item in items:  # the quick-grid sweep takes ~45 s: `-m "not slow"` (the mutation runs) leaves these out
        if "quick_db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _generated_corpus(n_chars: int = 300_000) -> str:
    """A stand-in with learnable structure: words drawn from a small Zipf-ish vocabulary, after one line holding
    tiny-shakespeare's 65 characters, so that the stand-in has its vocabulary (the docs' `--vocab 65`, their
    `--prompt "ROMEO:"`) where ../shared/data is absent (a clone elsewhere, CI)."""
    rng = random.Random(0)
    lines = [SHAKESPEARE_CHARS.replace("\n", "") + "\n"]
    size = len(lines[0])
    words = ["the", "king", "queen", "lord", "and", "of", "to", "my", "thou", "art", "good", "night", "sweet"]
    while size < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ".\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")
    return _generated_corpus()


@pytest.fixture(scope="session")
def char_corpus(tmp_path_factory, corpus_text) -> Path:
    from gpt.data import prepare_text

    out = tmp_path_factory.mktemp("corpus") / "char"
    prepare_text(corpus_text, out, tokenizer="char")
    return out


@pytest.fixture(scope="session")
def byte_encoding():
    """A real tiktoken Encoding built locally (byte-level, no merges): no network needed."""
    import tiktoken

    return tiktoken.Encoding(
        name="bytes_test",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\w+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )


@pytest.fixture(scope="session")
def quick_db(tmp_path_factory) -> Path:
    """The quick grid measured once per test run on the CPU (13 points, ~45 s), shared by the sweep and planner
    tests and by the xdist workers (the first one sweeps under a file lock, the others wait and read)."""
    folder = _run_dir(tmp_path_factory) / "quick"
    folder.mkdir(exist_ok=True)
    db = folder / "vramfit.sqlite"
    with FileLock(str(folder / "sweep.lock")):
        if not (folder / "done").exists():
            r = subprocess.run([sys.executable, "-m", "vramfit", "sweep", "--grid", str(QUICK_GRID), "--device",
                                "cpu", "--db", str(db)], cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, r.stderr[-2000:]
            assert "done: 13 ok" in r.stdout
            (folder / "done").touch()
    return db


@pytest.fixture(scope="session")
def local_choices(tmp_path_factory) -> tuple:
    """An adaptive plan and a boundary search of fake physics workers through this machine's executor
    (`fake_workers.choose_all`): what every other executor must reproduce."""
    from fake_workers import choose_all, fake_cmd

    from vramfit.sweep.executors import LocalExecutor

    return choose_all(tmp_path_factory.mktemp("choices"), lambda: LocalExecutor(fake_cmd()))
