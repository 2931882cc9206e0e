"""The README's main command on a GPU: `--vram auto`, the demo's plan inside what the quick grid measured, and
(where CUDA exists) the demo's command sequence end to end."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from planner_data import true_memory

from vramfit.cli import main
from vramfit.measure import devices
from vramfit.measure.devices import DeviceFacts
from vramfit.plan.budget import AUTO_CPU_SHARE, AUTO_GPU_RESERVE, resolve_vram
from vramfit.plan.workflows import fit_and_save

ROOT = Path(__file__).resolve().parent.parent
GIB, MIB = 2**30, 2**20
GPU = DeviceFacts("cuda", "NVIDIA GeForce RTX 3070", 8 * GIB, index=0, gpu_uuid="GPU-sim", compute_capability="8.6",
                  used_memory_bytes=300 * MIB)
DEMO_FLAGS = ["--vocab", "65", "--block-size", "128", "--n-layer", "2,4", "--n-embd", "128,192,256",
              "--objective", "balanced", "--top", "5", "--within-measured"]


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(devices, "cuda_devices", lambda: ([GPU], ""))


def test_vram_auto_is_the_gpus_memory_minus_what_others_hold(one_gpu):
    n, card, label = resolve_vram("auto", "auto")
    assert n == 8 * GIB - 300 * MIB - int(8 * GIB * AUTO_GPU_RESERVE) and card is None
    assert "RTX 3070" in label and "300.00 MiB in use" in label


def test_vram_auto_on_the_cpu_is_a_share_of_ram(monkeypatch):
    monkeypatch.setattr(devices, "cuda_devices", lambda: ([], "no NVML"))
    monkeypatch.setattr(devices, "cpu_facts", lambda: DeviceFacts("cpu", "cpu: Test", 16 * GIB))
    assert resolve_vram("auto")[0] == int(16 * GIB * AUTO_CPU_SHARE)
    from vramfit.errors import VramfitError

    with pytest.raises(VramfitError, match="no CUDA GPU visible"):
        resolve_vram("auto", "cuda")


def simulated_cuda_points() -> pd.DataFrame:
    """A quick-grid-like GPU profile whose constant holds a 500 MiB CUDA context."""
    rows = []
    for L, C, T, B, V in itertools.product([1, 2, 4], [128, 256], [64, 128], [8, 16], [65, 2048]):
        y = float(true_memory(L, C // 64, C, T, B, V)[0]) - 3.0e8 + 500 * MIB
        rows.append(dict(n_layer=L, n_head=C // 64, n_embd=C, block_size=T, batch_size=B, vocab_size=V,
                         status="ok", nvml_bytes=y, device_type="cuda", device_name=GPU.device_name,
                         recipe_key="bf16c", recipe=json.dumps({"dtype": "bfloat16", "compile": True,
                                                                "optimizer": "fused"}),
                         total_memory_bytes=GPU.total_memory_bytes, compute_capability="8.6"))
    return pd.DataFrame(rows)


def test_demo_flags_on_a_simulated_gpu_profile_give_a_trainable_suggestion(one_gpu, tmp_path, capsys, char_corpus):
    ((report, model),) = fit_and_save(simulated_cuda_points(), tmp_path / "models")
    assert report.model.intercept_ > 400 * MIB  # the context is in the constant
    save = tmp_path / "s.json"
    rc = main(["suggest", "--vram", "auto", "--device", "cuda", "--model", str(model), "--save", str(save),
               "--data-dir", str(tmp_path / "none"), *DEMO_FLAGS])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "auto: NVIDIA GeForce RTX 3070" in out and "within the measured ranges" in out
    doc = json.loads(save.read_text())
    s = doc["suggestions"][0]
    assert doc["budget_bytes"] == resolve_vram("auto")[0]
    assert s["n_layer"] in (2, 4) and s["block_size"] == 128 and 8 <= s["batch_size"] <= 16
    assert all(not x["extrapolated"] for x in doc["suggestions"])
    # trainable: the suggestion's command trains (two steps on the CPU, its shape unchanged)
    data = char_corpus
    r = subprocess.run([sys.executable, "-m", "vramfit", "train", "--suggestion", "1", "--suggestions", str(save),
                        "--device", "cpu", "--dtype", "float32", "--compile", "false", "--max-iters", "2",
                        "--eval-iters", "1", "--eval-interval", "1", "--data-dir", str(data),
                        "--out-dir", str(tmp_path / "out"), "--db", str(tmp_path / "db.sqlite")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 2 iterations" in r.stdout


def test_without_the_flag_a_suggestion_beyond_the_measured_range_is_flagged(one_gpu, tmp_path, capsys):
    ((_, model),) = fit_and_save(simulated_cuda_points(), tmp_path / "models")
    rc = main(["suggest", "--vram", "auto", "--device", "cuda", "--model", str(model), "--json", "--save",
               str(tmp_path / "s.json"), "--data-dir", str(tmp_path / "none"), "--vocab", "65", "--n-layer", "8",
               "--n-embd", "512", "--top", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert {"n_layer", "n_embd"} <= set(doc["suggestions"][0]["extrapolated"])
    assert re.search(r"#1 is an extrapolation \(outside the measured range: .*n_layer 8 \(measured 1-4\)", err)
    assert "vramfit estimate --n-layer 8" in err


@pytest.mark.gpu
def test_demo_command_sequence_on_cuda(tmp_path, corpus_text):
    """scripts/demo.sh's steps with TARGET=cuda (VRAMFIT_PYTHON: the machine's own CUDA torch, no install)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    text = tmp_path / "input.txt"  # the corpus as a file (a GPU machine has neither ../shared nor the network)
    text.write_text(corpus_text, encoding="utf-8")
    env = {**os.environ, "VRAMFIT_PYTHON": sys.executable, "DB": str(tmp_path / "demo.sqlite"), "ITERS": "50",
           "SHAKESPEARE": str(text)}
    r = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "demo on CUDA" in r.stdout and "within the measured ranges" in r.stdout
    assert re.search(r"predicted .* vs measured .*: error [+-]\d", r.stdout), r.stdout[-2000:]
