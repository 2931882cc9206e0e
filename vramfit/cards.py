"""Named GPUs for `--vram` / `--emulate-vram`: the total memory NVML reports for each (nvidia-smi's "Total"), which
is what a measured card's `total_memory_bytes` holds, instead of the nominal size on the box.

A card is not its nominal size: a "16 GB" T4 reports 15360 MiB (ECC), an "80GB" H100 81559 MiB, and a 40 GB A100
40960 MiB. Most totals below are copied from a public `nvidia-smi` output (cited, with its driver where it shows
one: the reported total can differ between drivers, e.g. an A100 80GB read 81252 MiB under driver 450 and 81920 MiB
under 535). Where no output was found, the total is the spec sheet's figure in MiB (`from_spec`): nvidia-smi's
total is the spec figure less what the driver keeps for itself, which the cited outputs show growing by generation:
0 MiB on the RTX 30 series (3060 12288 of 12 GiB, 3090 24576), 12 on the 4090 (24564), 61 on the 5070 (12227) and
161 on the 5090 (32607); so a spec figure may be up to ~0.5 % above what the card reports. Part of the total is
kept by the driver (NVML v2 `reserved`) and no process can allocate it: not modelled here (assumed 0) until a GPU
of that kind measures it. Names match case-insensitively with or without spaces, dashes and an NVIDIA / GeForce /
Tesla / RTX prefix (`rtx3070`, `RTX 3070`, `3070`). Plain data: no torch, importable by suggest and plot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vramfit.errors import VramfitError
from vramfit.units import SizeError, SizeLimitError, format_size, parse_size

MIB = 2**20
MODAL = "https://github.com/modal-labs/modal-client/pull/2797 (nvidia-smi totals of Modal's GPU types, 2025-01)"
RUNPOD = ("https://github.com/Any-Winter-4079/GPT-3-Small-Pretraining-Experiments/blob/"
          "a2347e97a994a8f9e6cadaa9474fd648c9c052b5/versions/06-gpt-3-small-cuda-gpu-comparison.py "
          "(nvidia-smi 'used / total' on RunPod, torch 2.8 image, 2025)")
SPEC = ("spec sheet, not an nvidia-smi output ({url}: {size} GB = {mib} MiB); nvidia-smi reports the spec figure "
        "less the driver's reservation, 0 to 161 MiB on the cited RTX 30-50 series outputs")
GEFORCE = "https://www.nvidia.com/en-us/geforce/graphics-cards/"


@dataclass(frozen=True)
class Card:
    """A named GPU: what nvidia-smi / NVML report as its total memory, and where that number comes from."""

    name: str
    label: str
    total_bytes: int
    source: str
    aliases: tuple[str, ...] = ()
    from_spec: bool = False  # the spec sheet's figure: nvidia-smi may report slightly less


def _spec(name: str, label: str, gb: int, page: str, aliases: tuple[str, ...] = ()) -> Card:
    source = SPEC.format(url=GEFORCE + page, size=gb, mib=gb * 1024)
    return Card(name, label, gb * 1024 * MIB, source, aliases, from_spec=True)


CARDS = {c.name: c for c in (
    # data centre
    Card("t4", "Tesla T4 (16 GB, ECC on)", 15360 * MIB, MODAL),
    Card("v100-16g", "Tesla V100-SXM2-16GB", 16384 * MIB,
         "https://github.com/1CatAI/1Cat-vLLM/issues/85 (nvidia-smi, driver 570.211.01: 5MiB /  16384MiB)",
         ("v100-16gb",)),
    Card("v100-32g", "Tesla V100-SXM2-32GB", 32510 * MIB,
         "https://github.com/ModelCloud/GPTQModel/issues/1491 (nvidia-smi, driver 470.57.02: 27979MiB / 32510MiB)",
         ("v100-32gb",)),
    Card("a10", "NVIDIA A10 (24 GB)", 23028 * MIB, MODAL),
    Card("a4000", "NVIDIA RTX A4000 (16 GB)", 16376 * MIB, RUNPOD + " line 283"),
    Card("a5000", "NVIDIA RTX A5000 (24 GB)", 24564 * MIB, RUNPOD + " line 257"),
    Card("a6000", "NVIDIA RTX A6000 (48 GB)", 49140 * MIB, RUNPOD + " line 238"),
    Card("l4", "NVIDIA L4 (24 GB)", 23034 * MIB, MODAL + "; " + RUNPOD + " line 158"),
    Card("l40s", "NVIDIA L40S (48 GB)", 46068 * MIB, MODAL + "; " + RUNPOD + " line 113"),
    Card("a100-40g", "NVIDIA A100-SXM4-40GB", 40960 * MIB,
         "https://github.com/bottlerocket-os/bottlerocket-core-kit/pull/834 (nvidia-smi, driver 580.126.09); "
         + MODAL, ("a100-40gb",)),
    Card("a100-80g", "NVIDIA A100 80GB", 81920 * MIB, MODAL + "; " + RUNPOD + " lines 199, 212", ("a100-80gb",)),
    Card("h100-pcie", "NVIDIA H100 PCIe (80 GB)", 81559 * MIB, RUNPOD + " line 87"),
    Card("h100-sxm", "NVIDIA H100 80GB HBM3 (SXM)", 81559 * MIB,
         "https://github.com/NVIDIA/nccl/issues/1264 (nvidia-smi, driver 550.54.15); " + MODAL + "; " + RUNPOD
         + " line 74", ("h100-80g", "h100-80gb", "h100")),
    Card("h100-nvl", "NVIDIA H100 NVL (94 GB)", 95830 * MIB, RUNPOD + " line 61"),
    Card("h200", "NVIDIA H200 (141 GB)", 143771 * MIB, RUNPOD + " line 35", ("h200-sxm",)),
    Card("b200", "NVIDIA B200 (180 GB)", 183359 * MIB, RUNPOD + " line 22"),
    # consumer
    Card("rtx3060", "NVIDIA GeForce RTX 3060 (12 GB)", 12288 * MIB,
         "https://github.com/geerlingguy/raspberry-pi-pcie-devices/issues/790 (nvidia-smi, driver 580.95.05)",
         ("rtx3060-12g", "rtx3060-12gb")),
    _spec("rtx3060ti", "NVIDIA GeForce RTX 3060 Ti (8 GB)", 8, "30-series/rtx-3060-3060ti/"),
    _spec("rtx3070", "NVIDIA GeForce RTX 3070 (8 GB)", 8, "30-series/rtx-3070-3070ti/"),
    _spec("rtx3070ti", "NVIDIA GeForce RTX 3070 Ti (8 GB)", 8, "30-series/rtx-3070-3070ti/"),
    _spec("rtx3080", "NVIDIA GeForce RTX 3080 (10 GB)", 10, "30-series/rtx-3080-3080ti/",
          ("rtx3080-10g", "rtx3080-10gb")),
    _spec("rtx3080-12g", "NVIDIA GeForce RTX 3080 (12 GB)", 12, "30-series/rtx-3080-3080ti/", ("rtx3080-12gb",)),
    _spec("rtx3080ti", "NVIDIA GeForce RTX 3080 Ti (12 GB)", 12, "30-series/rtx-3080-3080ti/"),
    Card("rtx3090", "NVIDIA GeForce RTX 3090 (24 GB)", 24576 * MIB,
         "https://github.com/noonghunna/club-3090/issues/1128 (nvidia-smi, driver 595.84)"),
    Card("rtx3090ti", "NVIDIA GeForce RTX 3090 Ti (24 GB)", 24564 * MIB,
         "https://github.com/noonghunna/club-3090/issues/353 (nvidia-smi query, driver 580.159.03: "
         "NVIDIA GeForce RTX 3090 Ti | 24564 MiB)"),
    _spec("rtx4060ti", "NVIDIA GeForce RTX 4060 Ti (8 GB)", 8, "40-series/rtx-4060-4060ti/",
          ("rtx4060ti-8g", "rtx4060ti-8gb")),
    _spec("rtx4060ti-16g", "NVIDIA GeForce RTX 4060 Ti (16 GB)", 16, "40-series/rtx-4060-4060ti/",
          ("rtx4060ti-16gb",)),
    Card("rtx4070", "NVIDIA GeForce RTX 4070 (12 GB)", 12282 * MIB,
         "https://lzwjava.github.io/rtx-4070-vram-usage-en (an AI-written page on its author's nvidia-smi output: "
         "'12 GB VRAM (12288 MiB, shown as 12282 MiB likely due to rounding/reserved space)')"),
    _spec("rtx4070ti", "NVIDIA GeForce RTX 4070 Ti (12 GB)", 12, "40-series/rtx-4070-family/"),
    _spec("rtx4070tisuper", "NVIDIA GeForce RTX 4070 Ti SUPER (16 GB)", 16, "40-series/rtx-4070-family/",
          ("rtx4070tis",)),
    _spec("rtx4080", "NVIDIA GeForce RTX 4080 (16 GB)", 16, "40-series/rtx-4080-family/"),
    Card("rtx4080super", "NVIDIA GeForce RTX 4080 SUPER (16 GB)", 16376 * MIB,
         "https://github.com/utkuozdemir/nvidia_gpu_exporter/blob/e656cd81a180e7e0e7862b53c9acd4c2fb0f590b/internal/"
         "captures/linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05.txt#L1407 (nvidia-smi, driver 595.71.05: "
         "596MiB /  16376MiB)", ("rtx4080s",)),
    Card("rtx4090", "NVIDIA GeForce RTX 4090 (24 GB)", 24564 * MIB,
         "https://github.com/RLinf/RLinf/issues/255 (nvidia-smi, driver 550.163.01)"),
    Card("rtx5070", "NVIDIA GeForce RTX 5070 (12 GB)", 12227 * MIB,
         "https://github.com/shkhln/libc6-shim/issues/14 (nvidia-smi, driver 575.64.03: 1731MiB /  12227MiB)"),
    _spec("rtx5070ti", "NVIDIA GeForce RTX 5070 Ti (16 GB)", 16, "50-series/rtx-5070-family/"),
    _spec("rtx5080", "NVIDIA GeForce RTX 5080 (16 GB)", 16, "50-series/rtx-5080/"),
    Card("rtx5090", "NVIDIA GeForce RTX 5090 (32 GB)", 32607 * MIB,
         "https://github.com/noonghunna/club-3090/issues/1229 (nvidia-smi, driver 610.57.04: 29324MiB /  32607MiB); "
         + RUNPOD + " line 139"),
)}


def _key(text: str) -> str:
    """'NVIDIA GeForce RTX 3070' / 'rtx-3070' / '3070' -> '3070': lower case, letters and digits only, no vendor,
    brand or RTX prefix."""
    k = re.sub(r"[^a-z0-9]", "", str(text).lower())
    for prefix in ("nvidia", "geforce", "tesla", "rtx"):
        k = k.removeprefix(prefix)
    return k


KEYS = {_key(n): c for c in CARDS.values() for n in (c.name, *c.aliases)}


def find_card(text: str) -> Card | None:
    """The card `text` names (`rtx3070`, `RTX 3070`, `3070`, `h100_80g`), None if it names none."""
    k = _key(text)
    return KEYS.get(k) if k else None


def parse_vram(text: str) -> tuple[int, Card | None]:
    """(bytes, card) for a `--vram` value: a card name (`t4`, `a100-40g`, ...: its NVML total) or a size (`8G`,
    `7.5GiB`, `8000M`: binary units, card None). One clear error for anything else."""
    card = find_card(text)
    if card is not None:
        return card.total_bytes, card
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
    if card.from_spec:
        return f"{card.name} = {card.label}: {format_size(n)} from the spec sheet (nvidia-smi may report slightly less)"
    return f"{card.name} = {card.label}: {format_size(n)} as NVML reports it"


def card_lines(text: str) -> list[str]:
    """What a `--vram` value stands for, with the source of a card's total (`vramfit info --vram NAME`)."""
    n, card = parse_vram(text)
    if card is None:
        return [f"--vram {text}: {format_size(n)} (a size, not a named card)"]
    return [f"--vram {text}: {describe(n, card)} ({n // MIB} MiB)", f"source: {card.source}"]
