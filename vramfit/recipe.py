"""A recipe: everything besides the model shape and batch that changes training memory.

Shared by sweep, worker, train, estimate and suggest. A point is (GPTConfig, batch_size, recipe, device).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace

from gpt.config import ATTN_KERNELS, DTYPES, OPTIMIZERS, TrainConfig, checkpoint_every, resolve_recipe
from gpt.errors import ConfigError
from vramfit.errors import VramfitError

# torch reads PYTORCH_ALLOC_CONF first and PYTORCH_CUDA_ALLOC_CONF only where it is unset
# (c10/core/AllocatorConfig.cpp: the device-specific name is the older one, read for backward compatibility),
# so an inherited PYTORCH_ALLOC_CONF would override a recipe that set only the other: a worker sets or clears both.
ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def with_alloc_conf(env: dict[str, str], alloc_conf: str) -> dict[str, str]:
    """`env` with the allocator settings of `alloc_conf` in both of torch's variables ('' clears both)."""
    env = {k: v for k, v in env.items() if k not in ALLOC_CONF_VARS}
    if alloc_conf:
        env.update(dict.fromkeys(ALLOC_CONF_VARS, alloc_conf))
    return env


def alloc_conf_in_force(env: dict[str, str] | os._Environ) -> str:
    """The allocator settings torch reads from `env`: PYTORCH_ALLOC_CONF where set, else PYTORCH_CUDA_ALLOC_CONF."""
    for var in ALLOC_CONF_VARS:
        if env.get(var) is not None:
            return env[var]
    return ""


@dataclass(frozen=True)
class Recipe:
    """dtype, compile, optimizer, attention kernel, allocator settings, gradient accumulation and activation
    checkpointing.

    `grad_accum` and `checkpoint` at their defaults (1, "none") are left out of `to_dict` and `key`, so the
    recipes stored before these switches existed keep their keys and rows."""

    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool | None = None  # None: on for CUDA, off for CPU
    optimizer: str = "auto"  # auto | fused | foreach | loop | muon | sgd | adafactor
    attn_kernel: str = "default"  # default | flash | efficient | math
    alloc_conf: str = ""  # the allocator settings of the worker process (both ALLOC_CONF_VARS)
    grad_accum: int = 1  # micro-batches per optimizer step (TrainConfig.gradient_accumulation_steps)
    checkpoint: str = "none"  # activation checkpointing: none | all | k (every k-th block)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise VramfitError(f"recipe dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.optimizer not in OPTIMIZERS:
            raise VramfitError(f"recipe optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.attn_kernel not in ATTN_KERNELS:
            raise VramfitError(f"recipe attn_kernel must be one of {', '.join(ATTN_KERNELS)}, got {self.attn_kernel!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise VramfitError(f"recipe compile must be true or false, got {self.compile!r}")
        accum = self.grad_accum
        if isinstance(accum, str) and accum.strip().isdigit():
            object.__setattr__(self, "grad_accum", accum := int(accum))
        if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
            raise VramfitError(f"recipe grad_accum must be an integer >= 1, got {accum!r}")
        try:
            every = checkpoint_every(self.checkpoint)
        except ConfigError as exc:
            raise VramfitError(f"recipe {exc}") from None
        object.__setattr__(self, "checkpoint", {0: "none", 1: "all"}.get(every, str(every)))

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise VramfitError(f"unknown recipe key(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def resolved(self, device_type: str, capability: tuple[int, int] | None = None, loop: str = "vramfit") -> Recipe:
        """'auto' settings made concrete for a device type ('cuda' or 'cpu') and CUDA capability, exactly as the
        trainer (or, with `loop="nanogpt"`, nanoGPT's train.py) resolves them (`gpt.config.resolve_recipe`, the one
        place that decides)."""
        dtype, compile_, optimizer = resolve_recipe(self.dtype, self.compile, self.optimizer, device_type, capability,
                                                    loop=loop)
        return replace(self, dtype=dtype, compile=compile_, optimizer=optimizer)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name, default in _SWITCHES.items():
            if d[name] == default:
                del d[name]
        return d

    def key(self) -> str:
        """Short stable id of the (resolved) recipe, for file names and store lookups."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"{self.dtype}-{'c' if self.compile else 'e'}-{self.attn_kernel}-{hashlib.sha1(blob).hexdigest()[:8]}"

    def train_overrides(self) -> dict:
        """The TrainConfig fields this recipe sets."""
        return {"dtype": self.dtype, "compile": self.compile, "optimizer": self.optimizer,
                "attn_kernel": self.attn_kernel, "gradient_accumulation_steps": self.grad_accum,
                "checkpoint": self.checkpoint}

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        return replace(cfg, **self.train_overrides())

    def family(self) -> Recipe:
        """This recipe with the switches a profile can price (`grad_accum`, `checkpoint`, `optimizer`) at their
        defaults: the recipes one profile of varied switches covers share it (and its key)."""
        return replace(self, grad_accum=1, checkpoint="none", optimizer="auto")


_SWITCHES = {"grad_accum": 1, "checkpoint": "none"}  # added later: left out of dicts and keys at their defaults
