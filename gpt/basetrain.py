"""nanochat's `scripts/base_train.py` command line read as data (never run): the model it builds and the batch it
trains with. Torch-free, for planners.

The model: `gpt.config.nanochat_config` (depth -> width by the aspect ratio and head dim). The batch, as base_train
computes it: tokens per micro-batch = device_batch_size x max_seq_len x ranks; with `--total-batch-size -1` (its
default) the total batch is 2^19 tokens at depth 12 scaled by (target tokens / d12's)^0.383 (Power Lines),
rounded to a power of two, where target tokens = target_param_data_ratio x the scaling parameters (the blocks'
matrices and the head); the gradient accumulation is the total over the micro-batch.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

from gpt.config import GPTConfig, nanochat_config
from gpt.errors import ConfigError

B_REF = 2**19  # base_train: the optimal total batch at d12, in tokens
# base_train's flags that shape the model or the batch, with their defaults
FLAGS: dict[str, int | float | str] = {
    "depth": 20, "aspect_ratio": 64, "head_dim": 128, "max_seq_len": 2048, "window_pattern": "SSSL",
    "device_batch_size": 32, "total_batch_size": -1, "target_param_data_ratio": 12.0,
}
BOOL_FLAGS = ("fp8",)  # base_train's store_true flags (no value follows them)


@dataclass(frozen=True)
class NanochatRun:
    """What a base_train command trains: the model, the per-GPU micro-batch, the total batch, the ranks."""

    config: GPTConfig
    device_batch_size: int
    total_batch_size: int  # tokens per optimizer step, all ranks
    world_size: int
    flags: dict = field(default_factory=dict)  # the flags read (defaults filled in)
    ignored: dict = field(default_factory=dict)  # the other flags (--fp8 among them: vramfit plans bf16)

    @property
    def grad_accum_steps(self) -> int:
        return self.total_batch_size // (self.device_batch_size * self.config.block_size * self.world_size)

    def command(self, device_batch_size: int | None = None, depth: int | None = None) -> str:
        """nanochat's own command for this run (the flags it was given, ignored ones too; the depth and device batch
        always), with another device batch size or depth if given."""
        flags = {**self.flags, **({"device_batch_size": device_batch_size} if device_batch_size else {}),
                 **({"depth": depth} if depth else {})}
        args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()
                if v != FLAGS[k] or k in ("depth", "device_batch_size")]
        args += [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in self.ignored.items()]
        args = " ".join(shlex.quote(a) for a in args)
        launch = f"torchrun --standalone --nproc_per_node={self.world_size} -m" if self.world_size > 1 else \
            "python -m"
        return f"{launch} scripts.base_train {args}".rstrip()


def scaling_params(config: GPTConfig) -> int:
    """nanochat's scaling parameters: the blocks' matrices and the head (base_train `get_scaling_params`)."""
    counts = config.param_counts()
    return counts["matrices"] + counts["head"]


def auto_total_batch(config: GPTConfig, reference: GPTConfig) -> int:
    """base_train's total batch for `--total-batch-size -1`: B_REF x (params / reference params)^0.383, the nearest
    power of two (the data:param ratio cancels out)."""
    predicted = B_REF * (scaling_params(config) / scaling_params(reference)) ** 0.383
    return 2 ** round(math.log2(predicted))


def _split(command: str | list[str]) -> tuple[list[str], int]:
    """base_train's arguments and the number of ranks (torchrun's --nproc_per_node) of a command line."""
    tokens = shlex.split(command) if isinstance(command, str) else list(command)
    world = 1
    if "-m" in tokens:
        at = tokens.index("-m")
        for i, tok in enumerate(tokens[:at]):
            key, _, value = tok.partition("=")
            if key in ("--nproc_per_node", "--nproc-per-node"):
                value = value or (tokens[i + 1] if i + 1 < at else "")
                if not value.isdigit() or int(value) < 1:
                    raise ConfigError(f"--nproc_per_node must be a positive integer, got {value!r}")
                world = int(value)
        tokens = tokens[at + 2:]
    while tokens and not tokens[0].startswith("-"):  # "nanochat", "base_train", "scripts.base_train"
        tokens = tokens[1:]
    return [t for t in tokens if t != "--"], world  # speedrun.sh: `-m scripts.base_train -- --depth=24 ...`


def read_base_train(command: str | list[str], vocab_size: int = 32768) -> NanochatRun:
    """A NanochatRun from a base_train command line (`--depth 20 --device-batch-size 16`, optionally after
    `nanochat`, `python -m scripts.base_train` or `torchrun --nproc_per_node=8 -m scripts.base_train`)."""
    args, world = _split(command)
    values: dict = {}
    ignored: dict = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r} in the base_train command (expected --flag value)")
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not eq and key not in BOOL_FLAGS:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"--{key.replace('_', '-')} needs a value")
            value, i = args[i + 1], i + 1
        i += 1
        if key not in FLAGS:
            ignored[key] = value if (eq or key not in BOOL_FLAGS) else True
            continue
        kind = type(FLAGS[key])
        try:
            values[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--{key.replace('_', '-')}: cannot read {value!r} as {kind.__name__}") from None
    flags = {**FLAGS, **values}
    for key in ("depth", "aspect_ratio", "head_dim", "max_seq_len", "device_batch_size"):
        if flags[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {flags[key]}")
    shape = dict(aspect_ratio=flags["aspect_ratio"], head_dim=flags["head_dim"], max_seq_len=flags["max_seq_len"],
                 vocab_size=vocab_size, window_pattern=flags["window_pattern"])
    config = nanochat_config(flags["depth"], **shape)
    total = flags["total_batch_size"]
    if total == -1:
        total = auto_total_batch(config, nanochat_config(12, **shape))
    micro = flags["device_batch_size"] * flags["max_seq_len"] * world
    if total < 1 or total % micro:
        raise ConfigError(f"total_batch_size ({total}) must be a multiple of device_batch_size x max_seq_len x "
                          f"ranks ({micro}), as base_train asserts")
    return NanochatRun(config, flags["device_batch_size"], total, world, flags, ignored)
