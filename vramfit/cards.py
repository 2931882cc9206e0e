"""Named GPUs for `--vram` / `--emulate-vram`: the total memory NVML reports for each (nvidia-smi's "Total"), which
is what a measured card's `total_memory_bytes` holds, instead of the nominal size on the box.

A card is not its nominal size: a "16 GB" T4 reports 15360 MiB (ECC), an "80GB" H100 81559 MiB, and a 40 GB A100
40960 MiB. Each total below is copied from a public `nvidia-smi` output (cited, with its driver: the reported total
can differ between drivers, e.g. an A100 80GB read 81252 MiB under driver 450 and 81920 MiB under 535). The driver
also keeps part of that total for itself (NVML v2 `reserved`), which no process can allocate: not modelled here
(assumed 0) until a GPU of that kind measures it. Plain data: no torch, importable by suggest and plot.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramfit.errors import VramfitError
from vramfit.units import SizeError, SizeLimitError, format_size, parse_size

MIB = 2**20
MODAL = "https://github.com/modal-labs/modal-client/pull/2797 (nvidia-smi totals of Modal's GPU types, 2025-01)"


@dataclass(frozen=True)
class Card:
    """A named GPU: what nvidia-smi / NVML report as its total memory, and where that number comes from."""

    name: str
    label: str
    total_bytes: int
    source: str


CARDS = {c.name: c for c in (
    Card("t4", "Tesla T4 (16 GB, ECC on)", 15360 * MIB, MODAL),
    Card("l4", "NVIDIA L4 (24 GB)", 23034 * MIB, MODAL),
    Card("a10", "NVIDIA A10 (24 GB)", 23028 * MIB, MODAL),
    Card("l40s", "NVIDIA L40S (48 GB)", 46068 * MIB, MODAL),
    Card("a100-40g", "NVIDIA A100-SXM4-40GB", 40960 * MIB,
         "https://github.com/bottlerocket-os/bottlerocket-core-kit/pull/834 (nvidia-smi, driver 580.126.09); "
         + MODAL),
    Card("a100-80g", "NVIDIA A100 80GB", 81920 * MIB, MODAL),
    Card("h100-80g", "NVIDIA H100 80GB HBM3", 81559 * MIB,
         "https://github.com/NVIDIA/nccl/issues/1264 (nvidia-smi, driver 550.54.15); " + MODAL),
    Card("rtx3060", "NVIDIA GeForce RTX 3060 (12 GB)", 12288 * MIB,
         "https://github.com/geerlingguy/raspberry-pi-pcie-devices/issues/790 (nvidia-smi, driver 580.95.05)"),
    Card("rtx3090", "NVIDIA GeForce RTX 3090 (24 GB)", 24576 * MIB,
         "https://github.com/noonghunna/club-3090/issues/1128 (nvidia-smi, driver 595.84)"),
    Card("rtx4090", "NVIDIA GeForce RTX 4090 (24 GB)", 24564 * MIB,
         "https://github.com/RLinf/RLinf/issues/255 (nvidia-smi, driver 550.163.01)"),
)}


def parse_vram(text: str) -> tuple[int, Card | None]:
    """(bytes, card) for a `--vram` value: a card name (`t4`, `a100-40g`, ...: its NVML total) or a size (`8G`,
    `7.5GiB`, `8000M`: binary units, card None). One clear error for anything else."""
    key = str(text).strip().lower().replace("_", "-")
    if key in CARDS:
        return CARDS[key].total_bytes, CARDS[key]
    try:
        n = parse_size(text)
    except SizeLimitError:
        raise
    except SizeError:
        raise VramfitError(f"cannot parse size {text!r}: give a size (8G, 7.5GiB, 8000M) or a card ("
                           f"{', '.join(CARDS)})") from None
    if n <= 0:
        raise VramfitError(f"a card's memory must be > 0, got {text!r}")
    return n, None


def describe(n: int, card: Card | None) -> str:
    """'t4 = Tesla T4 (16 GB, ECC on): 15.00 GiB as NVML reports it' or just the size."""
    if card is None:
        return format_size(n)
    return f"{card.name} = {card.label}: {format_size(n)} as NVML reports it"
