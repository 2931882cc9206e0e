"""Memory sizes: "8G" / "7.5GiB" / "8000MB" <-> bytes. Binary units throughout: "8G" means 8 GiB."""

from __future__ import annotations

import math
import re

MAX_SIZE = 2**60  # 1 EiB: far beyond any memory; a typo of 400 digits is refused, not an OverflowError
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


class SizeError(ValueError):
    """A size string that cannot be parsed."""


class SizeLimitError(SizeError):
    """A size beyond MAX_SIZE (or not finite)."""


def parse_size(text: str | int | float) -> int:
    """Bytes in a size such as "8G", "8GiB", "8GB", "7.5G", "8000M", "8192MiB", "500M" or a plain number."""
    if isinstance(text, bool):
        raise SizeError(f"not a size: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise SizeError(f"size must be >= 0, got {text}")
        return _bounded(text, text)
    m = _SIZE.match(str(text))
    if not m:
        raise SizeError(f"cannot parse size {text!r} (examples: 8G, 7.5GiB, 8000M, 512MiB)")
    value, unit = float(m.group(1)), m.group(2).upper()
    if not unit and m.group(3) and m.group(3).upper() == "IB":
        raise SizeError(f"cannot parse size {text!r} (examples: 8G, 7.5GiB, 8000M, 512MiB)")
    return _bounded(value * _UNITS[unit], text, rounded=True)


def _bounded(n: float, text: object, rounded: bool = False) -> int:
    if not math.isfinite(n) or n > MAX_SIZE:
        raise SizeLimitError(f"size {str(text)[:40]!r} is beyond the limit of 2**60 bytes (1 EiB)")
    return int(round(n)) if rounded else int(n)


def format_size(n: float, precision: int = 2) -> str:
    """Human-readable binary size: 8589934592 -> '8.00 GiB'."""
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{sign}{n / scale:.{precision}f} {unit}"
    return f"{sign}{n:.0f} B"
