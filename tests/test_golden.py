"""Golden outputs: `fit`, `predict`, `suggest` and `estimate` print the same bytes as they did before a refactor.

`tests/golden/demo.sqlite` is a real quick-grid sweep of this project's 2-core CPU VM (the demo's
`experiments/grids/quick.toml`, torch 2.13.0+cpu), so the planning commands run on fixed readings; the dry-run
commands depend on nothing measured. The expected outputs in `tests/golden/*.txt` were written by the code before
the "one of each" refactor; `VRAMFIT_GOLDEN_UPDATE=1 pytest tests/test_golden.py` rewrites them (only for a change
of output that is meant, and said in the commit).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[1]
MODEL = "models/cpu-amd-epyc-float32-e-default-56fb1f79.json"
CONFIG = "batch_size = 4\nblock_size = 64\nn_layer = 2\nn_head = 2\nn_embd = 64\ndropout = 0.0\n"
SHAPE = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "64", "--batch-size", "4",
         "--vocab", "65"]

# name -> arguments, run in order in one folder (fit writes the model file the later commands read)
CASES = {
    "fit": ["fit", "--db", "demo.sqlite", "--models", "models"],
    "predict": ["predict", "--model", MODEL, "--n-layer", "4", "--n-head", "4", "--n-embd", "256",
                "--block-size", "128", "--batch-size", "16", "--vocab", "65"],
    "predict_json": ["predict", "--model", MODEL, "--n-layer", "4", "--n-head", "4", "--n-embd", "256",
                     "--block-size", "128", "--batch-size", "16", "--vocab", "65", "--json"],
    "suggest": ["suggest", "--vram", "256M", "--target", "cpu", "--vocab", "65", "--block-size", "128",
                "--n-layer", "2,4", "--n-embd", "128,192,256", "--objective", "balanced", "--top", "5",
                "--model", MODEL, "--suggestions-file", "s.json", "--data-dir", "data/shakespeare_char"],
    "suggest_json": ["suggest", "--vram", "256M", "--target", "cpu", "--vocab", "65", "--block-size", "128",
                     "--n-layer", "2,4", "--n-embd", "128,192,256", "--top", "3", "--model", MODEL,
                     "--suggestions-file", "s.json", "--json"],
    "estimate_cpu": ["estimate", *SHAPE, "--target", "cpu"],
    "estimate_cuda": ["estimate", *SHAPE],
    "estimate_like": ["estimate", "--like", "cfg.py", "--vocab", "65", "--target", "cpu"],
    # added after the refactor (issue 27): `suggest --like` with a card name, which failed before it ("cannot parse
    # size 't4'"); its output is the one suggest workflow's
    "suggest_like": ["suggest", "--vram", "t4", "--like", "cfg.py", "--vocab", "65", "--model", MODEL,
                     "--suggestions-file", "s.json"],
}
NO_PROFILE = ["suggest", "--vram", "512M", "--no-profile", "--capability", "8.6", "--vocab", "65", "--n-layer", "2",
              "--n-head", "4", "--n-embd", "128", "--block-size", "256", "--top", "3", "--no-cache",
              "--suggestions-file", "np.json"]


def _normalise(text: str) -> str:
    """What differs from run to run by design: wall times and the number of estimator workers; and what differs
    between machines: the last bits of a float printed at full precision (a JSON float: the fits' sums and least
    squares round differently with the CPU's vector width, numpy and BLAS dispatching per CPU), compared to 12
    significant digits."""
    text = re.sub(r"\d+\.\d{12,}(e[-+]?\d+)?", lambda m: f"{float(m.group()):.12g}", text)
    text = re.sub(r"\(\d+(\.\d+)? s\)", "(<time>)", text)
    return re.sub(r"\d+ workers?\)", "<n> workers)", text)


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": "120", "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "vramfit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return _normalise(f"exit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}")


def _check(name: str, got: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("VRAMFIT_GOLDEN_UPDATE"):
        path.write_text(got)
    assert got == _normalise(path.read_text()), f"output of `{name}` changed (see {path})"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("golden")
    shutil.copy(GOLDEN / "demo.sqlite", cwd / "demo.sqlite")
    (cwd / "cfg.py").write_text(CONFIG)
    return cwd


@pytest.mark.slow
def test_planning_and_estimate_outputs_unchanged(folder):
    for name, args in CASES.items():  # one test: later cases read the model file that `fit` wrote
        _check(name, _run(args, folder))


@pytest.mark.slow
def test_no_profile_suggest_unchanged(folder):
    _check("suggest_no_profile", _run(NO_PROFILE, folder))
