"""What is here and what is stored: `info`, `runs`, `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vramfit.cli.app import app, fail
from vramfit.cli.options import DB_FILE, Db, Json, OnlyDevice, Vram
from vramfit.cli.output import open_store


@app.command()
def info(as_json: Json = False, vram: Vram = None) -> None:
    """What is here: each GPU (NVML) or the CPU, with driver, CUDA and torch versions; with --vram NAME, which card
    that name stands for (its total and where it comes from)."""
    from vramfit.measure import devices

    if vram is not None:
        from vramfit.cards import card_lines

        for line in card_lines(vram):
            typer.echo(line)
    if as_json:
        import json

        gpus, note = devices.cuda_devices()
        facts = [g.to_dict() for g in gpus] or [devices.cpu_facts().to_dict()]
        typer.echo(json.dumps({"devices": facts, "note": note}, indent=1))
        return
    for line in devices.info_lines():
        typer.echo(line)


@app.command()
def runs(db: Db = DB_FILE) -> None:
    """List the sweeps in a database with their point counts."""
    with open_store(db) as store:
        df = store.sweeps_frame()
    if df.empty:
        typer.echo(f"no sweeps in {db}")
        return
    cols = ["sweep_id", "name", "status", "devices", "started_at", "n_planned", "n_resumed", "n_invalid", "n_ok",
            "n_oom", "n_error", "n_timeout"]
    typer.echo(df[cols].to_string(index=False))


@app.command()
def export(
    db: Db = DB_FILE,
    csv: Annotated[Path, typer.Option("--csv", help="write the points to this CSV file")] = None,
    parquet: Annotated[Path, typer.Option("--parquet", help="write the points to this Parquet file")] = None,
    device: OnlyDevice = None,
    status: Annotated[str, typer.Option("--status", help="only this status (ok, oom, timeout, error)")] = None,
) -> None:
    """Export all measured points (joined with their environment) to CSV and/or Parquet."""
    if csv is None and parquet is None:
        fail("give --csv FILE and/or --parquet FILE")
    from vramfit.paths import same_file

    if csv is not None and parquet is not None and same_file(csv, parquet):
        fail(f"--csv and --parquet name the same file ({csv}): give two paths")
    with open_store(db) as store:
        for path, fmt in ((csv, "csv"), (parquet, "parquet")):
            if path is not None:
                n = store.export(path, fmt, f"--{fmt}", device=device, status=status)
                typer.echo(f"wrote {n} points to {path}")
