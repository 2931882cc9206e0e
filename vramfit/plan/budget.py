"""`--vram`: a size (`8G`), a named card (`t4`: its NVML total), or `auto`: the memory of the device planned for.

`auto` on CUDA: the first visible GPU's total as NVML reports it, minus what other processes hold on it now (a
desktop's display, another job) and minus `AUTO_GPU_RESERVE` of the total (fragmentation, the driver's own use).
`auto` on the CPU: `AUTO_CPU_SHARE` of the physical RAM (the rest is the operating system's and other programs').
"""

from __future__ import annotations

from vramfit.cards import Card, describe, parse_vram
from vramfit.errors import VramfitError
from vramfit.units import format_size

AUTO_GPU_RESERVE = 0.02  # of the GPU's total: kept free beyond what other processes already hold
AUTO_CPU_SHARE = 0.5  # of the physical RAM


def auto_budget(device: str = "auto") -> tuple[int, str]:
    """(bytes, how they were found) for `--vram auto`: the visible GPU (device auto or cuda), else the CPU's RAM
    (device auto without a GPU, or cpu)."""
    from vramfit.measure.devices import cpu_facts, cuda_devices

    if device not in ("auto", "cuda", "cpu"):
        raise VramfitError(f"unknown --target {device!r}; choose auto, cuda, cpu")
    gpus = cuda_devices()[0] if device != "cpu" else []
    gpus = [g for g in gpus if g.total_memory_bytes]
    if gpus:
        g = gpus[0]
        total, used = int(g.total_memory_bytes), int(g.used_memory_bytes or 0)
        reserve = int(total * AUTO_GPU_RESERVE)
        return total - used - reserve, (f"auto: {g.device_name} {format_size(total)} (NVML) - {format_size(used)} "
                                        f"in use by other processes - {AUTO_GPU_RESERVE:.0%} reserve")
    if device == "cuda":
        raise VramfitError("--vram auto --target cuda: no CUDA GPU visible here (give a size or a card name)")
    ram = int(cpu_facts().total_memory_bytes or 0)
    if ram <= 0:
        raise VramfitError("--vram auto: cannot read this machine's RAM (give a size)")
    return int(ram * AUTO_CPU_SHARE), f"auto: {AUTO_CPU_SHARE:.0%} of this CPU's {format_size(ram)} RAM"


def resolve_vram(text: str, device: str = "auto") -> tuple[int, Card | None, str]:
    """(bytes, card or None, label) for a `--vram` value: `auto`, a card name, or a size."""
    if str(text).strip().lower() == "auto":
        n, how = auto_budget(device)
        if n <= 0:
            raise VramfitError(f"--vram auto leaves nothing to plan with ({how})")
        return n, None, f"{format_size(n)} ({how})"
    n, card = parse_vram(text)
    return n, card, describe(n, card)
