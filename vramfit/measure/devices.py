"""What hardware is here: GPUs via NVML (by UUID), else torch; the CPU otherwise. Never raises for a missing GPU.

The sweep's parent process reads facts through NVML only, so it never creates a CUDA context of its own.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import asdict, dataclass, field, replace

from vramfit.errors import VramfitError
from vramfit.recipe import Recipe


@dataclass
class DeviceFacts:
    """One device as the store's `environments` table records it."""

    device_type: str  # 'cuda' | 'cpu'
    device_name: str
    total_memory_bytes: int | None  # a MIG instance: the instance's memory, not the parent GPU's
    index: int | None = None  # the CUDA ordinal here: position among the visible GPUs in PCI bus order
    gpu_uuid: str | None = None  # 'GPU-...', or 'MIG-...' for a MIG instance
    compute_capability: str | None = None  # "9.0"
    used_memory_bytes: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None  # the CUDA runtime torch was built with
    torch_version: str | None = None
    hostname: str = field(default_factory=socket.gethostname)
    source: str = "nvml"  # nvml | torch | proc
    nvml_index: int | None = None  # NVML's index of the physical GPU (PCI bus order), whatever is visible
    mig_parent_uuid: str | None = None  # a MIG instance: the GPU it is carved from

    def to_dict(self) -> dict:
        return asdict(self)

    def capability(self) -> tuple[int, int] | None:
        """The compute capability as (major, minor), or None (CPU, or not known)."""
        try:
            major, minor = str(self.compute_capability).split(".")[:2]
            return int(major), int(minor)
        except ValueError:
            return None

    def resolve(self, recipe: Recipe) -> Recipe:
        """`recipe` with its 'auto' settings made concrete for this device, without touching CUDA here."""
        return recipe.resolved(self.device_type, self.capability())

    @property
    def torch_device(self) -> str:
        return "cpu" if self.device_type == "cpu" else "cuda"


def _torch_versions() -> tuple[str | None, str | None]:
    try:
        import torch

        return torch.__version__, torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        return None, None


def _decode(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


PCI_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # CUDA's ordinals in NVML's (PCI bus) order, not fastest-first


def _match(entry: str, gpus: list[DeviceFacts]) -> DeviceFacts | None:
    """The GPU one CUDA_VISIBLE_DEVICES entry names: an ordinal (PCI bus order), a UUID or a unique UUID prefix."""
    if entry.isdigit():
        i = int(entry)
        return gpus[i] if i < len(gpus) else None
    if not entry.startswith(("GPU-", "MIG-")):
        return None
    hits = [g for g in gpus if g.gpu_uuid and g.gpu_uuid.startswith(entry)]
    exact = [g for g in hits if g.gpu_uuid == entry]
    return exact[0] if exact else hits[0] if len(hits) == 1 else None


def visible_devices(gpus: list[DeviceFacts], cvd: str | None) -> list[DeviceFacts]:
    """The GPUs a CUDA process here may use, in CUDA's order, each with `index` set to its CUDA ordinal.

    `gpus`: every device NVML lists, in NVML's (PCI bus) order, MIG instances in place of their GPU. `cvd`: the
    inherited CUDA_VISIBLE_DEVICES (None: unset, all visible; '': none). Its entries are ordinals (read in PCI bus
    order: vramfit sets CUDA_DEVICE_ORDER=PCI_BUS_ID wherever CUDA and NVML indices meet), GPU-/MIG- UUIDs or unique
    UUID prefixes; like CUDA, the list ends at the first entry that names no device (e.g. '-1') or repeats one."""
    if cvd is None:
        chosen = list(gpus)
    else:
        chosen = []
        for entry in (e.strip() for e in cvd.split(",")):
            g = _match(entry, gpus)
            if g is None or any(g is c for c in chosen):
                break
            chosen.append(g)
    return [replace(g, index=i) for i, g in enumerate(chosen)]


def _mig_instances(nv, h, parent: DeviceFacts) -> list[DeviceFacts]:
    """The MIG instances of a GPU in MIG mode (nvmlDeviceGetMigDeviceHandleByIndex over the max count), each with
    its own memory (nvmlDeviceGetMemoryInfo of the MIG handle); [] when MIG is off or not supported."""
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(h)
    except Exception:  # NVMLError_NotSupported: no MIG on this GPU (or an old driver)
        return []
    if current != getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    out = []
    for i in range(nv.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            m = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
        except Exception:  # NVMLError_NotFound: an empty slot
            continue
        mem = nv.nvmlDeviceGetMemoryInfo(m)
        out.append(replace(parent, device_name=_decode(nv.nvmlDeviceGetName(m)), total_memory_bytes=int(mem.total),
                           used_memory_bytes=int(mem.used), gpu_uuid=_decode(nv.nvmlDeviceGetUUID(m)),
                           mig_parent_uuid=parent.gpu_uuid))
    return out


def all_nvml_devices() -> tuple[list[DeviceFacts], str]:
    """Every device NVML lists (PCI bus order; a GPU in MIG mode as its MIG instances), and a note ('' when NVML
    worked). Not filtered by CUDA_VISIBLE_DEVICES: see `nvml_devices`."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # ImportError or NVMLError (no library, no driver)
        return [], f"NVML unavailable ({type(exc).__name__})"
    tv, cuda = _torch_versions()
    out: list[DeviceFacts] = []
    try:
        driver = _decode(pynvml.nvmlSystemGetDriverVersion())
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:
        return out, f"NVML error ({type(exc).__name__}: {exc})"
    errors = []
    for i in range(count):  # one GPU's error (a MIG instance without permission, a GPU fallen off the bus) is its own
        try:
            out += _nvml_device(pynvml, i, driver, cuda, tv)
        except Exception as exc:
            errors.append(f"NVML error on GPU {i} ({type(exc).__name__}: {exc}), left out")
    return out, "; ".join(errors)


def _nvml_device(nv, i: int, driver: str, cuda: str | None, tv: str | None) -> list[DeviceFacts]:
    """GPU `i` as NVML lists it: itself, or its MIG instances where it is in MIG mode."""
    h = nv.nvmlDeviceGetHandleByIndex(i)
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    try:
        cc = ".".join(str(x) for x in nv.nvmlDeviceGetCudaComputeCapability(h))
    except Exception:
        cc = None
    gpu = DeviceFacts(
        device_type="cuda", device_name=_decode(nv.nvmlDeviceGetName(h)), index=i,
        total_memory_bytes=int(mem.total), used_memory_bytes=int(mem.used),
        gpu_uuid=_decode(nv.nvmlDeviceGetUUID(h)), compute_capability=cc, driver_version=driver,
        cuda_version=cuda, torch_version=tv, source="nvml", nvml_index=i,
    )
    return _mig_instances(nv, h, gpu) or [gpu]


def nvml_devices() -> tuple[list[DeviceFacts], str]:
    """The GPUs this process may use as NVML sees them (the inherited CUDA_VISIBLE_DEVICES applied: a Slurm job,
    a container or a Ray task only ever sees its own), and a note ('' when NVML worked)."""
    gpus, note = all_nvml_devices()
    return visible_devices(gpus, os.environ.get("CUDA_VISIBLE_DEVICES")), note


def same_uuid(a: str | bytes | None, b: str | bytes | None) -> bool:
    """Whether two device UUIDs name the same device: torch prints a MIG instance's UUID as 'GPU-<uuid>' where NVML
    says 'MIG-<uuid>', so the prefix is ignored."""
    if not a or not b:
        return False
    bare = [(x.decode() if isinstance(x, bytes) else str(x)).removeprefix("GPU-").removeprefix("MIG-") for x in (a, b)]
    return bare[0] == bare[1]


def facts_for_uuid(uuid: str | None) -> DeviceFacts | None:
    """The NVML facts of the device with this UUID (a GPU or a MIG instance), None when NVML does not list it."""
    if not uuid:
        return None
    gpus, _ = all_nvml_devices()
    return next((g for g in gpus if same_uuid(g.gpu_uuid, uuid)), None)


def torch_uuid(props: object) -> str | None:
    """'GPU-<uuid>' from `torch.cuda.get_device_properties(d)` (whose `uuid` prints without the prefix)."""
    uuid = str(getattr(props, "uuid", "") or "")
    if not uuid:
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def torch_cuda_devices() -> list[DeviceFacts]:
    """GPUs seen by torch (used when NVML is missing; this initialises CUDA in the calling process)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(DeviceFacts(
                device_type="cuda", device_name=p.name, index=i, total_memory_bytes=int(p.total_memory),
                gpu_uuid=torch_uuid(p),
                compute_capability=f"{p.major}.{p.minor}", torch_version=torch.__version__,
                cuda_version=torch.version.cuda, source="torch",
            ))
        return out
    except Exception:
        return []


def cuda_devices() -> tuple[list[DeviceFacts], str]:
    """GPUs here: NVML first, torch as the fallback; plus a note on what was not available."""
    devs, note = nvml_devices()
    if devs:
        return devs, note
    tdevs = torch_cuda_devices()
    if tdevs and note:
        note += "; falling back to torch counters"
    return tdevs, note


def cpu_facts() -> DeviceFacts:
    """The CPU and its RAM (from /proc where available)."""
    name = platform.processor() or platform.machine() or "cpu"
    total = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    tv, _ = _torch_versions()
    return DeviceFacts(device_type="cpu", device_name=f"cpu: {name}", total_memory_bytes=total, torch_version=tv,
                       source="proc")


def resolve(device: str = "auto", indices: list[int] | None = None) -> list[DeviceFacts]:
    """The devices a sweep runs on: `device` is auto | cpu | cuda | cuda:N; `indices` picks several GPUs."""
    if device == "cpu":
        if indices:
            raise VramfitError("--devices selects GPUs; it cannot be combined with --device cpu")
        return [cpu_facts()]
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        raise VramfitError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)")
    gpus, note = cuda_devices()
    if not gpus:
        if device == "auto" and not indices:
            return [cpu_facts()]
        raise VramfitError(f"no CUDA device here{f' ({note})' if note else ''}; use --device cpu")
    if device.startswith("cuda:"):
        try:
            wanted = [int(device.split(":", 1)[1])]
        except ValueError:
            raise VramfitError(f"bad device {device!r} (cuda:N)") from None
        if indices and indices != wanted:
            raise VramfitError("give either --device cuda:N or --devices, not both")
        indices = wanted
    if not indices:
        return [gpus[0]]
    by_index = {g.index: g for g in gpus}
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise VramfitError(f"no GPU with index {missing[0]} (have {', '.join(str(i) for i in by_index)})")
    return [by_index[i] for i in dict.fromkeys(indices)]


def info_lines() -> list[str]:
    """The `vramfit info` report, one line per fact group."""
    from vramfit.units import format_size

    tv, cuda = _torch_versions()
    gpus, note = cuda_devices()
    lines = [f"torch {tv}, CUDA runtime {cuda or 'none'}, host {socket.gethostname()}"]
    if note:
        lines.append(note)
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        lines.append(f"CUDA_VISIBLE_DEVICES={cvd}: {len(gpus)} device(s) visible (ordinals in PCI bus order)")
    if not gpus:
        cpu = cpu_facts()
        mem = format_size(cpu.total_memory_bytes) if cpu.total_memory_bytes else "?"
        lines.append("no CUDA device: CPU mode")
        lines.append(f"{cpu.device_name}, {os.cpu_count()} cores, {mem} RAM")
        lines.append(how_measured(cpu))
        return lines
    for g in gpus:
        used = f", {format_size(g.used_memory_bytes)} used" if g.used_memory_bytes is not None else ""
        lines.append(
            f"GPU {g.index}: {g.device_name} {g.gpu_uuid or ''} compute {g.compute_capability or '?'}, "
            + (f"NVML index {g.nvml_index}, " if g.nvml_index not in (None, g.index) else "")
            + (f"MIG instance of {g.mig_parent_uuid}, " if g.mig_parent_uuid else "") +
            f"{format_size(g.total_memory_bytes or 0)} total{used}, driver {g.driver_version or '?'} ({g.source})"
        )
    lines.append(how_measured(gpus[0]))
    return lines


def how_measured(d: DeviceFacts) -> str:
    """What differs by device: the default recipe as it resolves here, and what a sweep's fit measures."""
    r = d.resolve(Recipe())
    recipe = f"{r.dtype}, {'torch.compile' if r.compile else 'eager'}, {r.optimizer} AdamW"
    if d.device_type == "cuda":
        return (f"here the default recipe is {recipe}; sweeps fit NVML's memory of the worker process (its peak: "
                "NVML - reserved + max reserved; device minus baseline where NVML hides the PID)")
    return (f"here the default recipe is {recipe}; sweeps fit the peak of live tensor storages (the allocator's "
            "analogue) and record peak RSS (NVML's analogue)")
