"""The worker's decisions, table-driven: when memory readings are stable, which failures are OOMs, error lines.

`_is_oom` and `_first_line` are private to vramfit.measure.worker; they are tested under their current names."""

import pytest
import torch

from vramfit.measure.reader import is_stable
from vramfit.measure.worker import _first_line, _is_oom

MB = 2**20


@pytest.mark.parametrize("history, window, tolerance, expected", [
    ([], 1, 0.01, False),                                          # nothing read yet
    ([[100, 200]], 1, 0.0, True),                                  # one reading is its own window
    ([[100, 200], [100, 200]], 3, 0.01, False),                    # fewer readings than the window
    ([[100, 200]] * 3, 3, 0.0, True),                              # identical: stable at zero tolerance
    ([[50, 7], [100, 200], [100, 200], [100, 200]], 3, 0.0, True),  # only the last `window` readings count
    ([[100, 200], [100, 200], [100, 200], [50, 7]], 3, 0.01, False),  # ...and the newest one is among them
    ([[100, 200], [50, 200], [100, 200]], 3, 0.01, False),         # a dip inside the window
    ([[100, 200], [100, 200], [100, 150]], 3, 0.01, False),        # the second reading moves: all must hold
    ([[100, 0], [99, 0], [100, 0]], 3, 0.01, True),                # 1 % of the largest: at the tolerance
    ([[100, 0], [98, 0], [100, 0]], 3, 0.01, False),               # 2 %: over it
    ([[99, 0], [100, 0]], 2, 0.0099, False),                       # relative to the largest (1/100), not the
    ([[99, 0], [100, 0]], 2, 0.0100, True),                        # smallest (1/99 = 0.0101)
    ([[0, 0], [0, 0]], 2, 0.0, True),                              # all zero (no NVML reading): no division
    ([[1], [0]], 2, 0.5, False),                                   # a one-byte reading is a reading
    ([[0, 10 * MB], [0, 10 * MB]], 2, 0.0, True),
    ([[10 * MB], [10 * MB + 1]], 2, 1e-6, True),                   # growth of a byte on 10 MB is noise
    ([[10 * MB], [11 * MB]], 2, 0.05, False),                      # ~9 %: still growing
    ([[1, 2, 3]] * 2 + [[1, 2, 4]], 2, 0.5, True),                 # 3 -> 4 is 25 % < 50 %
])
def test_is_stable(history, window, tolerance, expected):
    assert is_stable(history, window, tolerance) is expected


def test_is_stable_refuses_readings_of_different_lengths():
    with pytest.raises(ValueError):
        is_stable([[1, 2], [1]], 2, 0.1)


def test_is_stable_does_not_modify_the_history():
    history = [[3, 4], [3, 4], [3, 5]]
    is_stable(history, 2, 0.5)
    assert history == [[3, 4], [3, 4], [3, 5]]


@pytest.mark.parametrize("exc, expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)"), True),
    (torch.OutOfMemoryError(""), True),                                # the type alone says so
    (torch.OutOfMemoryError("StorageTracker: 9 bytes live exceed the emulated capacity of 8 bytes"), True),
    (MemoryError(), True),                                             # Python's own allocation failure
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes."), True),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
    (RuntimeError("NCCL error: Out Of Memory"), True),                 # the text, case-insensitive
    (RuntimeError("Not Enough Memory"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)"), False),
    (ValueError("memory must be positive"), False),
    (KeyError("out"), False),
    (RuntimeError(""), False),
])
def test_is_oom(exc, expected):
    assert _is_oom(exc) is expected


@pytest.mark.parametrize("exc, expected", [
    (RuntimeError("first line\nsecond line"), "RuntimeError: first line"),
    (ValueError("  padded  \n"), "ValueError: padded"),
    (KeyError("k"), "KeyError: 'k'"),
    (MemoryError(), "MemoryError: "),
    (RuntimeError("x" * 600), "RuntimeError: " + "x" * (500 - len("RuntimeError: "))),
])
def test_first_line(exc, expected):
    assert _first_line(exc) == expected
