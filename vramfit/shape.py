"""The shape of a training point: the model's sizes, the micro-batch and the vocabulary (no torch).

One frozen type for what identifies a point besides its device and recipe: sweep jobs, store rows, suggestions,
`--like` and the report all speak `Shape`. `KEYS` is its field order (the store's columns, the grid's axes, the
features' arguments); `DEFAULT_VOCAB` is GPT-2's padded BPE vocabulary, used where no corpus says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields, replace
from typing import Any

from gpt.config import GPT2_VOCAB

DEFAULT_VOCAB = GPT2_VOCAB  # GPT-2 BPE, padded to a multiple of 64 as nanoGPT does


@dataclass(frozen=True)
class Shape:
    """A GPT's sizes and its micro-batch: what a point, a suggestion or a config file is, besides its recipe."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int = DEFAULT_VOCAB

    @classmethod
    def of(cls, row: Mapping[str, Any] | Any) -> Shape:
        """The shape of a mapping (a dict, a DataFrame row) or an object with the same attributes, as ints."""
        if isinstance(row, Mapping) or not hasattr(row, "n_layer"):
            return cls(*(int(row[k]) for k in KEYS))
        return cls(*(int(getattr(row, k)) for k in KEYS))

    def as_tuple(self) -> tuple[int, ...]:
        """The sizes in `KEYS` order (a dictionary key, a SQL row)."""
        return astuple(self)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(KEYS, astuple(self), strict=True))

    def with_(self, **sizes: int) -> Shape:
        """A copy with some sizes changed."""
        return replace(self, **sizes)

    def flags(self) -> list[str]:
        """The command-line flags that give this shape (`--n-layer 4 ... --vocab-size 65`)."""
        return [a for k, v in self.as_dict().items() for a in (f"--{k.replace('_', '-')}", str(v))]

    def text(self) -> str:
        """`n_layer=4 n_head=4 ...`: the shape in words."""
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Shape))
MODEL_KEYS: tuple[str, ...] = tuple(k for k in KEYS if k != "batch_size")  # the model's sizes, without the batch
