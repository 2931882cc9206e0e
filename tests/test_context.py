"""The rest of the process: the CUDA context table and the cuBLAS workspace rule."""

from vramfit.dryrun.context import CONTEXT_TABLE, context_row, cublas_workspace_bytes, lazy_loading, process_memory

MiB = 1 << 20


def test_every_context_row_has_a_source():
    assert all(r.source and r.bytes > 0 for r in CONTEXT_TABLE)
    assert all(r.source.split(":")[0] in ("published", "documented", "measured") for r in CONTEXT_TABLE)


def test_context_row_follows_torch_cuda_and_lazy_loading():
    new = context_row((9, 0), torch_version="2.13.0", cuda_version="12.8", lazy=True)
    assert "109888" in new.source
    old = context_row((8, 0), torch_version="1.13.1", cuda_version="11.7", lazy=True)
    assert "86509" in old.source and old.bytes < new.bytes
    eager = context_row((8, 0), torch_version="2.13.0", cuda_version="12.8", lazy=False)
    assert eager.bytes > new.bytes and eager.lazy is False
    pre_lazy = context_row((7, 0), torch_version="1.10.0", cuda_version="11.3", lazy=True)
    assert pre_lazy.bytes >= 10**9


def test_lazy_loading_is_pytorchs_default():
    """torch sets CUDA_MODULE_LOADING=LAZY when the user has not set it (pytorch/pytorch#86509)."""
    assert lazy_loading({}) and lazy_loading({"CUDA_MODULE_LOADING": "lazy"})
    assert not lazy_loading({"CUDA_MODULE_LOADING": "EAGER"})


def test_cublas_workspace_per_architecture_and_env():
    """parseChosenWorkspaceSize (aten/src/ATen/cuda/CublasHandlePool.cpp): ':4096:2:16:8' before Hopper, 32 MiB
    on 9.x-12.x; CUBLAS_WORKSPACE_CONFIG sums SIZE KiB x COUNT; an unparsable value falls back to the default."""
    assert cublas_workspace_bytes((8, 6), {}) == 8 * MiB + 128 * 1024
    assert cublas_workspace_bytes((9, 0), {}) == cublas_workspace_bytes((12, 0), {}) == 32 * MiB
    assert cublas_workspace_bytes((10, 0), {}) == 32 * MiB and cublas_workspace_bytes((7, 5), {}) == 8 * MiB + 131072
    assert cublas_workspace_bytes((8, 0), {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}) == 32 * MiB
    assert cublas_workspace_bytes((8, 0), {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}) == 128 * 1024
    assert cublas_workspace_bytes((9, 0), {"CUBLAS_WORKSPACE_CONFIG": "junk"}) == 32 * MiB


def test_process_memory_adds_the_context():
    p = process_memory((8, 0), 1000 * MiB, torch_version="2.5.0", cuda_version="12.4", lazy=True)
    assert p["device_bytes"] == 1000 * MiB + p["context_bytes"] and p["context_source"]
