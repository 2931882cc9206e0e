"""The shape of a training point: the model's sizes and family, the micro-batch and the vocabulary (no torch).

One frozen type for what identifies a point besides its device and recipe: sweep jobs, store rows, suggestions,
`--like` and the report all speak `Shape`. `KEYS` is the order of its sizes (the store's integer columns, the
grid's integer axes, the features' arguments); `arch` names the model family and its options (`arch_spec`:
"gpt2", "nanochat" or e.g. "nanochat:n_kv_head=1,mlp=swiglu"), so that points of different families never share
a key. `DEFAULT_VOCAB` is GPT-2's padded BPE vocabulary, used where no corpus says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields, replace
from typing import Any

from gpt.config import ARCH_OPTIONS, ARCHS, GPT2_VOCAB, GPTConfig, resolve_arch
from gpt.errors import ConfigError
from vramfit.errors import VramfitError

DEFAULT_VOCAB = GPT2_VOCAB  # GPT-2 BPE, padded to a multiple of 64 as nanoGPT does
GPT2 = "gpt2"  # the family of every point stored before families existed (a store row's default)


def arch_options(spec: str) -> dict[str, Any]:
    """`arch_spec`'s text read back: {"arch": family, option: value, ...} with each value typed as its
    `gpt.config.ARCH_OPTIONS` default; a VramfitError naming what is wrong."""
    family, _, rest = str(spec).strip().partition(":")
    if family not in ARCHS:
        raise VramfitError(f"arch must be one of {', '.join(ARCHS)} (then ':option=value,...'), got {spec!r}")
    out: dict[str, Any] = {"arch": family}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        name, eq, text = item.partition("=")
        if name not in ARCH_OPTIONS or not eq:
            raise VramfitError(f"arch {spec!r}: {item!r} is not option=value (options: {', '.join(ARCH_OPTIONS)})")
        out[name] = _typed(name, text.strip())
    return out


def _typed(name: str, text: str) -> Any:
    kind = type(ARCH_OPTIONS[name][1])
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return int(text) if name == "n_kv_head" else kind(text)
    except ValueError:
        raise VramfitError(f"arch option {name}: cannot read {text!r}") from None


def arch_spec(config: GPTConfig | Mapping[str, Any]) -> str:
    """The canonical text of a model's family and options: the family, then each option that differs from the
    family's default in `ARCH_OPTIONS` order ("nanochat:n_kv_head=1,mlp=swiglu"); GPT-2 is always "gpt2"."""
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    family = get("arch") or GPT2
    n_head = get("n_head")
    options = {k: get(k) for k in ARCH_OPTIONS}
    try:
        resolved = resolve_arch(family, int(n_head), get("bias"), options)
    except ConfigError as exc:
        raise VramfitError(str(exc)) from None
    defaults = resolve_arch(family, int(n_head), None, dict.fromkeys(ARCH_OPTIONS))
    changed = [f"{k}={_text(resolved[k])}" for k in ARCH_OPTIONS if resolved[k] != defaults[k]]
    return family + (":" + ",".join(changed) if changed else "")


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Shape:
    """A GPT's sizes, family and micro-batch: what a point, a suggestion or a config file is, besides its recipe."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int = DEFAULT_VOCAB
    arch: str = GPT2

    def __post_init__(self) -> None:
        if self.arch != GPT2:  # canonical text, so that equal models have equal shapes
            object.__setattr__(self, "arch", arch_spec({**arch_options(self.arch), "n_head": self.n_head}))

    @classmethod
    def of(cls, row: Mapping[str, Any] | Any) -> Shape:
        """The shape of a mapping (a dict, a DataFrame row) or an object with the same attributes: the sizes as
        ints, the family "gpt2" where it has none (a point stored before families existed)."""
        if isinstance(row, Mapping) or not hasattr(row, "n_layer"):
            arch = row.get("arch") if hasattr(row, "get") else None
            return cls(*(int(row[k]) for k in KEYS), arch=arch if isinstance(arch, str) and arch else GPT2)
        arch = getattr(row, "arch", None)
        return cls(*(int(getattr(row, k)) for k in KEYS), arch=arch if isinstance(arch, str) and arch else GPT2)

    def as_tuple(self) -> tuple[int, ...]:
        """The sizes in `KEYS` order (the features' arguments, a SQL row); the family is `arch`."""
        return astuple(self)[:len(KEYS)]

    def as_dict(self) -> dict[str, int]:
        """The sizes by name (`KEYS`); the family is `arch`."""
        return dict(zip(KEYS, self.as_tuple(), strict=True))

    def point(self) -> dict[str, Any]:
        """The sizes, and the family where it is not GPT-2's: a sweep point, a store record."""
        return self.as_dict() | ({"arch": self.arch} if self.arch != GPT2 else {})

    def with_(self, **sizes: Any) -> Shape:
        """A copy with some sizes (or the family) changed."""
        return replace(self, **sizes)

    def model_config(self) -> GPTConfig:
        """The GPTConfig of this shape (its family's options included)."""
        d = self.as_dict()
        d.pop("batch_size")
        return GPTConfig(**d, **arch_options(self.arch))

    def flags(self) -> list[str]:
        """The command-line flags that give this shape's sizes (`--n-layer 4 ... --vocab-size 65`)."""
        return [a for k, v in self.as_dict().items() for a in (f"--{k.replace('_', '-')}", str(v))]

    def text(self) -> str:
        """`n_layer=4 n_head=4 ...`: the shape in words (the family at the end, where it is not GPT-2)."""
        return " ".join(f"{k}={v}" for k, v in self.point().items())


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Shape) if f.name != "arch")
MODEL_KEYS: tuple[str, ...] = tuple(k for k in KEYS if k != "batch_size")  # the model's sizes, without the batch
