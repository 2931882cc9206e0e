"""`vramfit sweep`: profile training memory over a grid, one fresh process per point, into SQLite."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vramfit.cli.app import app, fail
from vramfit.cli.options import (
    DB_FILE,
    Arch,
    BatchSizes,
    BlockSizes,
    Db,
    Device,
    Model,
    NEmbds,
    NHeads,
    NLayers,
    Vocabs,
)
from vramfit.cli.output import fmt


def _opt(name: str, help: str, *short: str, **kw):  # noqa: A002 - typer's keyword
    return typer.Option(name, *short, help=help, **kw)


@app.command()
def sweep(
    grid: Annotated[Path, _opt("--grid", "grid spec TOML (e.g. experiments/grids/quick.toml)", "-g")] = None,
    device: Device = "auto",
    devices: Annotated[str, _opt("--devices", "GPU indices to use in parallel, e.g. 0,1")] = None,
    db: Db = DB_FILE,
    emulate_vram: Annotated[str, _opt("--emulate-vram", "behave like a card this big, e.g. 8G, or a named card "
                                      "(t4, a100-40g, rtx4090, ...: its NVML total)")] = None,
    redo: Annotated[bool, _opt("--redo", "measure again points already in the database")] = False,
    quiet: Annotated[bool, _opt("--quiet", "no progress output", "-q")] = False,
    n_layer: NLayers = None,
    n_head: NHeads = None,
    n_embd: NEmbds = None,
    block_size: BlockSizes = None,
    batch_size: BatchSizes = None,
    vocab_size: Vocabs = None,
    arch: Arch = None,
    dtype: Annotated[str, _opt("--dtype", "recipe override: auto | float32 | bfloat16 | float16")] = None,
    max_iters: Annotated[int, _opt("--max-iters", "measurement override")] = None,
    timeout: Annotated[float, _opt("--timeout", "seconds per point (measurement override)")] = None,
    dynamic_batch: Annotated[bool, _opt("--dynamic-batch/--static-batch", "compiled points: mark the batch "
                                        "dimension dynamic (one compilation for every batch size) or keep it "
                                        "static; default: dynamic only where its readings were verified equal "
                                        "(docs/sweep.md)")] = None,
    plan: Annotated[str, _opt("--plan", "grid (every point) | adaptive (a few, chosen; see --points)")] = "grid",
    points: Annotated[int, _opt("--points", "adaptive: at most this many points")] = 12,
    target_error: Annotated[float, _opt("--target-error", "adaptive: stop once the CV max error and the last 3 "
                                        "predictions are within this (0.03 = 3%)")] = 0.03,
    boundary_points: Annotated[int, _opt("--boundary-points", "adaptive: points near the capacity edge to "
                                         "measure on purpose")] = 2,
    boundary: Annotated[bool, _opt("--boundary", "find each shape's largest fitting batch by bisection on real "
                                   "runs (starting from --model's prediction when given)")] = False,
    model: Model = None,
    executor: Annotated[str, _opt("--executor", "local (this machine) | ray (one Ray task per point on a Ray "
                                  "cluster; pip install 'vramfit\\[ray]')")] = "local",
    address: Annotated[str, _opt("--address", "--executor ray: auto (a running cluster) | ray://host:10001; "
                                 "default: a running cluster, else a local instance")] = None,
    yes: Annotated[bool, _opt("--yes", "run a grid of more than 500 points without asking", "-y")] = False,
) -> None:
    """Profile training memory over a grid, one fresh process per point, into SQLite (resumable).
    `--plan adaptive` measures a few informative points and stops when the model is accurate enough;
    `--boundary` finds the largest batch that fits each shape of the grid."""
    from vramfit.cards import describe, parse_vram
    from vramfit.sweep.grid import parse_int_list

    if plan not in ("grid", "adaptive"):
        fail(f"unknown --plan {plan!r}; choose grid or adaptive")
    axes = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size,
            "batch_size": batch_size, "vocab_size": vocab_size}
    measure = {"max_iters": max_iters, "timeout_s": timeout, "dynamic_batch": dynamic_batch}
    spec = _grid_spec(grid, axes, dtype, measure, arch)
    if plan == "grid" and not boundary:
        _confirm_size(spec.points()[0] * len(spec.recipes), yes)  # every recipe measures every point
    emulate, card = parse_vram(emulate_vram) if emulate_vram else (None, None)
    if card is not None and not quiet:
        typer.echo(f"--emulate-vram {describe(emulate, card)}")
    from vramfit.sweep.executors import make_executor
    from vramfit.sweep.session import SweepOptions, run_sweep

    options = SweepOptions(db, device=device, gpu_indices=parse_int_list(devices, "--devices", minimum=0)
                           if devices else None, emulate_bytes=emulate, redo=redo, quiet=quiet, argv=sys.argv[1:],
                           log=typer.echo)
    chooser = _chooser(plan, boundary, model, points, target_error, boundary_points)
    res = run_sweep(spec, options, chooser, make_executor(executor, address))
    for r in res.boundaries:
        shape = " ".join(f"{k}={v}" for k, v in r.shape.point().items() if k != "batch_size")
        typer.echo(f"{shape}: largest batch {r.best} in {fmt(r.capacity)} (start {r.start} from "
                   f"{r.start_source}; probes " + ", ".join(f"{p.batch_size} {p.status}" for p in r.probes) + ")")
    if boundary:
        return
    counts = ", ".join(f"{n} {s}" for s, n in sorted(res.counts.items())) or "nothing to do"
    ids = res.sweep_ids
    which = f"sweep {ids[0]}" if len(ids) == 1 else f"sweeps {ids[0]}-{ids[-1]} ({len(ids)} recipes)"
    typer.echo(f"{which} done: {counts}; {res.resumed} already measured, "
               f"{res.invalid} invalid combinations skipped; db {res.db}")


def _chooser(plan: str, boundary: bool, model: Path | None, points: int, target_error: float,
             boundary_points: int):
    """The sweep's point chooser: the whole grid, the adaptive plan, or the boundary search."""
    if boundary:
        from vramfit.fit.profile import Profile
        from vramfit.sweep.boundary import BoundaryChooser

        return BoundaryChooser(Profile.load(model).model if model else None)
    if plan == "adaptive":
        from vramfit.sweep.adaptive import AdaptiveChooser, PlanSettings

        return AdaptiveChooser(PlanSettings(points=points, target_error=target_error, boundary=boundary_points))
    from vramfit.sweep.whole_grid import GridChooser

    return GridChooser()


def _grid_spec(grid: Path | None, axes: dict, dtype: str | None, measure: dict, arch: str | None):
    """The grid file with the axis flags (`--arch`: the family axes) and the recipe and measurement overrides
    applied."""
    from vramfit.sweep.grid import arch_axes, load_grid

    overrides = {k: v for k, v in axes.items() if v is not None}
    if grid is None and len(overrides) < len(axes):
        fail("give --grid FILE.toml, or all six axes as flags")
    overrides |= arch_axes(arch) if arch is not None else {}
    measure = {k: v for k, v in measure.items() if v is not None}
    return load_grid(grid, overrides, {"dtype": dtype} if dtype else None, measure)


def _confirm_size(points: list[dict], yes: bool) -> None:
    """Ask before a sweep of more than CONFIRM_POINTS points (refuse without a terminal unless --yes), saying
    what it would cost (the bench figures: the sweep itself prints the profile's estimate once it starts)."""
    from vramfit.sweep.cost import estimate_cost
    from vramfit.sweep.grid import CONFIRM_POINTS

    if len(points) <= CONFIRM_POINTS or yes:
        return
    what = f"this grid has {estimate_cost(points, None, 'fork').line()}"
    if not sys.stdin.isatty():
        fail(f"{what}; pass --yes to run it, or use --plan adaptive")
    if not typer.confirm(f"{what}. Run it?", default=False):
        raise typer.Exit(1)
