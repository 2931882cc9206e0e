"""Grid specs (TOML): axes to sweep, the recipe, measurement settings.

```toml
name = "quick"
[[axes]]                       # or a single [axes] table; several [[axes]] blocks are a union of products
n_layer = [1, 2]               # each of the six axes: an int or a list of ints
n_head = [2]
n_embd = [64, 128]
block_size = [64]
batch_size = [4, 8]
vocab_size = [1024]
[[axes]]                       # later blocks inherit the axes they omit from the first block
block_size = [128]
[[axes]]                       # the model family and its options (gpt.config.ARCH_OPTIONS) are axes too
arch = ["nanochat"]            # gpt2 (the default) | nanochat
n_kv_head = [1, 2]             # nanochat's options; a combination its family refuses is skipped as invalid
mlp = ["relu2", "swiglu"]
[recipe]                       # vramfit.recipe.Recipe fields; a list sweeps each value (every combination of
dtype = "auto"                 # the lists is its own recipe, measured one after another: its own recipe key)
checkpoint = ["none", "all"]
[measure]                      # Measure fields
max_iters = 20
```
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from gpt.config import ARCH_OPTIONS, GPTConfig
from gpt.errors import ConfigError
from vramfit.errors import VramfitError
from vramfit.recipe import Recipe
from vramfit.shape import GPT2, KEYS, arch_options, arch_spec

ARCH_AXES = ("arch", *ARCH_OPTIONS)  # optional axes: the family and its options (values of their own types)


@dataclass(frozen=True)
class Measure:
    """How one point is measured: iterations, stability rule, timeout, CPU threads, a compiled point's batch
    dimension."""

    min_iters: int = 4  # never fewer optimizer steps (and always >= 3)
    max_iters: int = 30  # give up waiting for stability here (recorded with stable = false)
    window: int = 3  # the reading must stay within `tolerance` over this many consecutive iterations
    tolerance: float = 0.01  # relative
    timeout_s: float = 300.0  # per point, process start included
    threads: int = 1  # CPU worker intra-op threads (0: torch's default)
    timing_iters: int = 10  # steps timed after the memory is measured, with no probe attached (0: time those)
    # compiled points: the batch dimension dynamic (true) or static (false); unset: `vramfit.sweep.dynamic.decide`
    dynamic_batch: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.min_iters >= 1, "measure.min_iters must be >= 1"),
            (self.max_iters >= max(3, self.min_iters), "measure.max_iters must be >= max(3, min_iters)"),
            (self.window >= 1, "measure.window must be >= 1"),
            (0 <= self.tolerance < 1, "measure.tolerance must be in [0, 1)"),
            (self.timeout_s > 0, "measure.timeout_s must be > 0"),
            (self.threads >= 0, "measure.threads must be >= 0"),
            (self.timing_iters >= 0, "measure.timing_iters must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise VramfitError(msg)

    @classmethod
    def from_dict(cls, d: dict) -> Measure:
        hints = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(hints)
        if unknown:
            raise VramfitError(f"unknown measure key(s): {', '.join(sorted(unknown))} (known: {', '.join(hints)})")
        out = {}
        for k, v in d.items():
            if k == "dynamic_batch":
                if v is not None and not isinstance(v, bool):
                    raise VramfitError(f"measure.dynamic_batch must be true or false, got {v!r}")
                out[k] = v
                continue
            want = float if hints[k] in ("float", float) else int
            if isinstance(v, bool) or not isinstance(v, int | float) or (want is int and not float(v).is_integer()):
                raise VramfitError(f"measure.{k} must be a number, got {v!r}")
            out[k] = want(v)
        return cls(**out)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Grid:
    """A parsed grid spec: axis blocks (union of Cartesian products), the recipes (one, or every combination of
    the `[recipe]` lists), measurement settings."""

    name: str
    blocks: list[dict[str, list]]
    recipes: tuple[Recipe, ...] = (Recipe(),)
    measure: Measure = field(default_factory=Measure)
    path: str | None = None

    @property
    def recipe(self) -> Recipe:
        """The grid's one recipe (a grid of several is swept one recipe at a time: `each_recipe`)."""
        if len(self.recipes) != 1:
            raise VramfitError(f"grid {self.name!r} has {len(self.recipes)} recipes; sweep them one at a time")
        return self.recipes[0]

    def each_recipe(self) -> list[Grid]:
        """One grid per recipe, in order (the grid itself when it has one)."""
        return [replace(self, recipes=(r,)) for r in self.recipes]

    def points(self) -> tuple[list[dict], int]:
        """(valid points in order without duplicates, number of invalid combinations skipped). A point is the six
        sizes, and its family (`vramfit.shape.arch_spec`) where it is not GPT-2."""
        seen: dict[tuple, None] = {}
        invalid: set[tuple] = set()
        for block in self.blocks:
            axes = [*KEYS, *(a for a in ARCH_AXES if a in block)]
            for combo in itertools.product(*(block[a] for a in axes)):
                if combo in invalid:
                    continue
                p = dict(zip(axes, combo, strict=True))
                sizes = {k: p.pop(k) for k in KEYS}
                try:
                    arch = arch_spec(GPTConfig(sizes["n_layer"], sizes["n_head"], sizes["n_embd"],
                                               sizes["block_size"], sizes["vocab_size"], **p))
                except (ConfigError, VramfitError):
                    invalid.add(combo)
                    continue
                seen[(*sizes.values(), arch)] = None
        return [dict(zip(KEYS, c[:-1], strict=True)) | ({"arch": c[-1]} if c[-1] != GPT2 else {}) for c in seen], \
            len(invalid)

    def size(self) -> int:
        """Combinations before validation and de-duplication: an upper bound on points, computed without
        expanding the grid."""
        return sum(math.prod(len(v) for a, v in b.items() if a in KEYS or a in ARCH_AXES) for b in self.blocks)

    def to_dict(self) -> dict:
        recipe = {"recipe": self.recipes[0].to_dict()} if len(self.recipes) == 1 else \
            {"recipes": [r.to_dict() for r in self.recipes]}
        return {"name": self.name, "path": self.path, "axes": self.blocks, **recipe,
                "measure": self.measure.to_dict()}


MAX_GRID_COMBINATIONS = 100_000  # refused before expansion: weeks of GPU time even at 10 s a point
CONFIRM_POINTS = 500  # a sweep this large asks for --yes (hours of work)


def parse_int_list(text: str | int | list, what: str = "value", minimum: int = 1,
                   maximum: int | None = None) -> list[int]:
    """'4,8,16' (or an int, or a list) -> [4, 8, 16]; integers in [`minimum`, `maximum`] only, no empty item."""
    items = text if isinstance(text, list) else [text] if isinstance(text, int) else str(text).split(",")
    out = []
    for item in items:
        try:
            if isinstance(item, bool) or isinstance(item, float):
                raise ValueError
            v = int(str(item).strip().replace("_", "")) if isinstance(item, str) else int(item)
        except (TypeError, ValueError):
            raise VramfitError(f"{what}: {item!r} is not an integer") from None
        if v < minimum:
            raise VramfitError(f"{what}: values must be >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise VramfitError(f"{what}: {v} is beyond the limit of {maximum:,}")
        out.append(v)
    if not out:
        raise VramfitError(f"{what}: empty list")
    return out


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise VramfitError(f"no such grid file: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VramfitError(f"{path} is not valid TOML: {str(exc).splitlines()[0]}") from None


def _block(raw: object, where: str) -> dict[str, list]:
    if not isinstance(raw, dict):
        raise VramfitError(f"{where}: axes must be a table of axis = [values]")
    unknown = set(raw) - set(KEYS) - set(ARCH_AXES)
    if unknown:
        raise VramfitError(f"{where}: unknown axis {sorted(unknown)[0]!r} (axes: {', '.join((*KEYS, *ARCH_AXES))})")
    return {k: parse_int_list(v, f"{where} {k}") if k in KEYS else _arch_values(k, v, f"{where} {k}")
            for k, v in raw.items()}


def arch_axes(text: str) -> dict[str, list]:
    """`sweep --arch`: a list of families ("gpt2,nanochat") or one family with its options
    ("nanochat:n_kv_head=1,mlp=swiglu") as grid axes ({"arch": [...], option: [value], ...})."""
    if ":" in text:
        options = arch_options(text)
        return {k: [v] for k, v in options.items()}
    families = [f.strip() for f in text.split(",")]
    for f in families:
        arch_options(f)  # one of ARCHS, else one error line
    return {"arch": families}


def _arch_values(axis: str, raw: object, what: str) -> list:
    """A family or option axis: a value or a list of values of the option's type (nanochat's default's: a string,
    a boolean, an integer or a number); whether a combination is valid is checked with each point."""
    kind = {"arch": str, "n_kv_head": int}.get(axis) or type(ARCH_OPTIONS[axis][1])
    values = raw if isinstance(raw, list) else [raw]
    ok = (lambda v: isinstance(v, int | float) and not isinstance(v, bool)) if kind is float else \
        (lambda v: isinstance(v, kind) and (kind is bool or not isinstance(v, bool)))
    if not values or not all(ok(v) for v in values):
        raise VramfitError(f"{what}: expected a {kind.__name__} or a non-empty list of them, got {raw!r}")
    return values


MAX_RECIPES = 256  # recipe combinations of one grid (3 optimizers x 4 checkpointings x 4 accumulations is 48)


def recipes(recipe_d: dict, where: str = "grid") -> tuple[Recipe, ...]:
    """The recipes of a `[recipe]` table: every combination of its list values (in the table's order, the last
    list varying fastest), each a `Recipe`; combinations that resolve to the same recipe are kept once."""
    lists = {k: v if isinstance(v, list) else [v] for k, v in recipe_d.items()}
    empty = [k for k, v in lists.items() if not v]
    if empty:
        raise VramfitError(f"{where}: recipe {empty[0]} is an empty list")
    if math.prod(len(v) for v in lists.values()) > MAX_RECIPES:
        raise VramfitError(f"{where}: more than {MAX_RECIPES} recipe combinations")
    out = (Recipe.from_dict(dict(zip(lists, combo, strict=True))) for combo in itertools.product(*lists.values()))
    return tuple(dict.fromkeys(out))


def load_grid(path: str | Path | None, axis_overrides: dict[str, list[int]] | None = None,
              recipe_overrides: dict | None = None, measure_overrides: dict | None = None) -> Grid:
    """Read a grid spec; axis overrides (e.g. from `--n-layer 4,8`) replace that axis in every block.

    Without a file, the overrides must name all six axes."""
    doc: dict = {}
    if path is not None:
        path = Path(path)
        doc = _read_toml(path)
    where = str(path) if path is not None else "grid"
    unknown = set(doc) - {"name", "description", "axes", "recipe", "measure"}
    if unknown:
        raise VramfitError(f"{where}: unknown key {sorted(unknown)[0]!r} (name, description, axes, recipe, measure)")
    raw_axes = doc.get("axes", [])
    raw_blocks = raw_axes if isinstance(raw_axes, list) else [raw_axes]
    blocks = [_block(b, f"{where} axes") for b in raw_blocks]
    for name, values in (axis_overrides or {}).items():
        if name not in KEYS and name not in ARCH_AXES:
            raise VramfitError(f"unknown axis {name!r} (axes: {', '.join(KEYS)})")  # the family's: --arch
        values = parse_int_list(values, name) if name in KEYS else _arch_values(name, values, f"--{name}")
        blocks = [{**b, name: values} for b in blocks] if blocks else [{name: values}]
    if not blocks:
        raise VramfitError(f"{where}: empty grid (no axes)")
    first = blocks[0]
    missing = [a for a in KEYS if a not in first]
    if missing:
        raise VramfitError(f"{where}: the first axes block lacks {', '.join(missing)}")
    blocks = [{**first, **b} for b in blocks]
    if not isinstance(doc.get("recipe", {}), dict) or not isinstance(doc.get("measure", {}), dict):
        raise VramfitError(f"{where}: [recipe] and [measure] must be tables")  # before dict(): `recipe = 5`
    recipe_d = dict(doc.get("recipe", {}))
    recipe_d.update(recipe_overrides or {})
    measure_d = dict(doc.get("measure", {}))
    measure_d.update(measure_overrides or {})
    name = str(doc.get("name") or (path.stem if path is not None else "adhoc"))
    grid = Grid(name=name, blocks=blocks, recipes=recipes(recipe_d, where), measure=Measure.from_dict(measure_d),
                path=str(path) if path is not None else None)
    if grid.size() > MAX_GRID_COMBINATIONS:
        raise VramfitError(f"{where}: {grid.size():,} combinations is beyond the limit of {MAX_GRID_COMBINATIONS:,} "
                           "(split the grid, or use --plan adaptive)")
    pts, n_invalid = grid.points()
    if not pts:
        raise VramfitError(f"{where}: empty grid ({n_invalid} combinations, none valid: n_embd % n_head != 0?)")
    return grid

