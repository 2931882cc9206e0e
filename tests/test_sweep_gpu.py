"""`vramfit sweep` on a real GPU (run with `pytest -m gpu` where CUDA exists; skipped elsewhere)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vramfit.store import Store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GRID = """
name = "gpu-smoke"
[axes]
n_layer = [2]
n_head = [4]
n_embd = [256]
block_size = [256]
batch_size = [4, 8, 16]
vocab_size = [8192]
[recipe]
compile = false
[measure]
min_iters = 4
max_iters = 15
timeout_s = 300
"""


def sweep(tmp_path, *extra: str) -> Path:
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    db = tmp_path / "db.sqlite"
    r = subprocess.run([sys.executable, "-m", "vramfit", "sweep", "--grid", str(grid), "--device", "cuda",
                        "--db", str(db), *extra], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return db


def test_cuda_sweep_records_nvml_reserved_allocated(tmp_path):
    df = Store(sweep(tmp_path)).points_frame()
    assert len(df) == 3 and (df.status == "ok").all(), df.error.tolist()
    assert (df.device_type == "cuda").all() and df.gpu_uuid.notna().all()
    assert (df.allocated_bytes > 0).all()
    assert (df.reserved_bytes > df.allocated_bytes).all()
    assert (df.nvml_bytes > df.reserved_bytes).all(), df[["nvml_bytes", "reserved_bytes", "nvml_source"]]
    assert df.allocated_bytes.is_monotonic_increasing  # batch 4 < 8 < 16


def test_emulated_small_card_records_oom(tmp_path):
    df = Store(sweep(tmp_path, "--batch-size", "512", "--emulate-vram", "1G")).points_frame()
    assert df.status.tolist() == ["oom"]
    assert df.total_memory_bytes.iloc[0] == 2**30 and df.physical_memory_bytes.iloc[0] > 2**30


def test_info_lists_the_gpu():
    r = subprocess.run([sys.executable, "-m", "vramfit", "info"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "GPU 0:" in r.stdout
