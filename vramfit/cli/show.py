"""What the plots and the planning page show: `plot`, `report` (both plan as the last `suggest` did)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vramfit.cli import options as o
from vramfit.cli.app import app
from vramfit.cli.output import open_store


@app.command()
def plot(
    db: o.Db = o.DB_FILE,
    plots: Annotated[Path, typer.Option("--plots", help="folder for the PNG files")] = Path("results/plots"),
    vram: o.Vram = None,
    reading: o.Reading = "auto",
    device: o.OnlyDevice = None,
    recipe: o.OnlyRecipe = None,
    hours: o.Hours = "6",
    rank: o.Rank = "auto",
    data_dir: o.DataDir = None,
    suggestions: o.SuggestionsFile = o.SUGGESTIONS_FILE,
) -> None:
    """PNG plots per device and recipe: predicted vs measured, memory vs tokens, feasibility, breakdown, residuals,
    and (with ms/iter in the sweep) ms/iter predicted vs measured and the frontier of what --hours buy.
    --data-dir defaults to the last suggest's (its fitted loss law is the frontier's)."""
    from vramfit.paths import writable_dir
    from vramfit.plan.recommend import time_args as parse_time_args
    from vramfit.show.context import plan_context
    from vramfit.show.plots import write_plots

    writable_dir(plots, "--plots")
    ctx = plan_context(vram, suggestions, data_dir)
    time_args = parse_time_args(hours, rank, None, ctx.data_dir)
    with open_store(db) as store:
        points = store.points_frame(device=device, recipe_key=recipe)
    typer.echo("; ".join(ctx.sources))
    for p in write_plots(points, plots, ctx, reading, time_args):
        typer.echo(f"wrote {p}")


@app.command()
def report(
    db: o.Db = o.DB_FILE,
    out: Annotated[Path, typer.Option("--out", help="the HTML page to write")] = Path("results/report.html"),
    vram: o.Vram = None,
    reading: o.Reading = "auto",
    data_dir: o.DataDir = None,
    suggestions: o.SuggestionsFile = o.SUGGESTIONS_FILE,
    models: o.Models = o.MODELS_DIR,
) -> None:
    """One self-contained HTML page: a what-fits calculator (the fitted model in the page, offline), data summary,
    coefficients, CV tables, the suggestions and every plot. --data-dir defaults to the last suggest's; --models
    is where the page looks for the model file it names."""
    from vramfit.paths import check_output, database_files, writable_file
    from vramfit.show.context import plan_context
    from vramfit.show.report import write_report

    writable_file(out, "--out")
    protected = {"the database": database_files(db), "--suggestions-file": suggestions,
                 "a model file": sorted(models.glob("*.json")) if models.is_dir() else []}
    check_output(out, protected, "--out")
    ctx = plan_context(vram, suggestions, data_dir)
    with open_store(db) as store:
        points = store.points_frame()
    typer.echo("; ".join(ctx.sources))
    path = write_report(points, out, ctx, target=reading, models_dir=models, source=str(db), protected=protected)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
