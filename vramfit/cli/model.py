"""`vramfit fit`: the memory and throughput models per device and recipe, or the loss law per corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vramfit.cli.app import app, fail
from vramfit.cli.options import DB_FILE, MODELS_DIR, Db, Models, OnlyDevice, OnlyRecipe, Reading
from vramfit.cli.output import open_store, print_fit
from vramfit.errors import VramfitError


@app.command()
def fit(
    db: Db = DB_FILE,
    reading: Reading = "auto",
    device: OnlyDevice = None,
    recipe: OnlyRecipe = None,
    regimes: Annotated[int, typer.Option(min=1, max=2, help="2: peak in backward or in the optimizer step; "
                                                            "1: linear")] = 2,
    models: Models = MODELS_DIR,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="also fit y = c0 + k*(dry-run estimate) and "
                                                            "compare")] = False,
    loss: Annotated[bool, typer.Option("--loss", help="instead: fit the loss law L(N, D) = E + A/N^alpha + "
                                       "B/D^beta to the stored `vramfit train` runs, per corpus (needs 3 runs of "
                                       "2+ sizes)")] = False,
    corpus: Annotated[Path, typer.Option("--corpus", help="--loss: only this prepared corpus (data dir)")] = None,
    loss_out: Annotated[Path, typer.Option("--loss-out", help="--loss: where loss-law JSON goes")] = Path(
        "results/losslaw"),
    allow_shared: Annotated[bool, typer.Option("--allow-shared-gpu", help="keep NVML readings taken as device "
                                               "used minus baseline while other processes used the GPU (left out "
                                               "by default)")] = False,
) -> None:
    """Fit the memory and throughput models per device and recipe; print coefficients and CV error beside the
    baselines. With --loss, fit the loss law of each corpus to the stored training runs instead."""
    from vramfit.paths import writable_dir

    if loss:
        writable_dir(loss_out, "--loss-out")
        _fit_loss(db, corpus, loss_out)
        return
    from vramfit.paths import database_files
    from vramfit.plan.workflows import fit_and_save

    writable_dir(models, "--models")
    points = _points(db, device, recipe)
    skipped: list[str] = []
    for report, path in fit_and_save(points, models, target=reading, regimes=regimes, dryrun=dry_run,
                                     allow_shared=allow_shared, protected={"the database": database_files(db)},
                                     skipped=skipped):
        print_fit(report, path)
    for why in skipped:
        typer.echo(f"skipped: {why}", err=True)


def _points(db: Path, device: str | None, recipe: str | None):
    """The stored points to fit; a filter that matches none of them is an error, not an empty fit."""
    with open_store(db) as store:
        points = store.points_frame(device=device, recipe_key=recipe)
        if points.empty and (device or recipe):
            n = len(store.points_frame())
            if n:
                fail(f"none of the {n} points in {db} match " + " and ".join(
                    f"--{k} {v}" for k, v in (("only-device", device), ("only-recipe", recipe)) if v))
    return points


def _fit_loss(db: Path, corpus: Path | None, out: Path) -> None:
    from vramfit.fit.losslaw import fit_store_runs, law_path
    from vramfit.paths import database_files

    laws = fit_store_runs(db, corpus)
    fitted = [law for law in laws if not isinstance(law, VramfitError)]
    if not fitted:
        raise laws[0]
    for law in laws:
        if isinstance(law, VramfitError):
            typer.echo(f"skipped: {law}")
            continue
        path = law.save(law_path(law, out), {"the database": database_files(db)})
        typer.echo(f"loss law for {law.data_dir} (corpus {law.corpus_id}, {law.n_runs} runs, {law.n_obs} curve "
                   f"points) -> {path}")
        typer.echo(f"  L(N, D) = {law.E:.4f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}  "
                   f"(rms error of log-loss {law.rmse_log:.4f})")
