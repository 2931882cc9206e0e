"""What the commands print: the terminal console and the text of `fit`, `predict` and `suggest`."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer


def console():
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:  # rich's default exits 1; `main` ends a closed pipe quietly with 0
            self.quiet = True
            raise BrokenPipeError

    return PipeConsole(width=max(140, shutil.get_terminal_size().columns))


def esc(text: str) -> str:
    """Text shown through rich, with its [markup] taken literally."""
    from rich.markup import escape

    return escape(text)


def fmt(n: float) -> str:
    from vramfit.units import format_size

    return format_size(n)


def open_store(db: Path):
    """The database, read-only (a missing or foreign file is one `error:` line)."""
    from vramfit.store import Store

    return Store(db, readonly=True)


def print_fit(report, path: Path) -> None:
    """One fitted device + recipe: coefficients, CV beside the baselines, margin, throughput, OOM warnings."""
    from vramfit.show.tables import coefficient_table, cv_table, mfu_line, throughput_tables, to_rich

    out = console()
    out.print(f"[bold]{esc(report.device)}[/] · recipe {report.recipe_key} · reading {report.target} · "
              f"{report.n_points} points -> {esc(str(path))}")
    out.print(to_rich(coefficient_table(report.model)))
    out.print(to_rich(cv_table(report.metrics)))
    out.print(f"safety margin: {report.margin_rel:.2%} of the prediction (worst CV under-prediction)")
    if report.dryrun is not None:
        out.print(f"dry-run model: {fmt(report.dryrun.intercept_)} + {report.dryrun.coef_[0]:.4f} x estimate")
    tp = report.throughput
    if tp is None:
        out.print("throughput model: not fitted (fewer than 3 ok sweep points with ms/iter)")
    else:
        for t in throughput_tables(tp):
            out.print(to_rich(t))
        out.print(mfu_line(tp))
    for v in report.oom_violations:
        out.print(f"[yellow]warning:[/] OOM point {esc(str(v))} is predicted to fit "
                  f"({fmt(v['predicted'])} <= {fmt(v['capacity'])})")


def predict_json(r: dict) -> dict:
    return {"predicted_bytes": int(r["predicted"]), "margin_bytes": int(r["margin"]), "naive_bytes": int(r["naive"]),
            "regime": r["regime"], "breakdown": {k: int(v) for k, v in r["breakdown"].items()},
            "model_file": str(r["model_file"]), "extrapolated": sorted(r["extrapolation"].outside),
            "extrapolation_margin_bytes": int(r["widened_margin"])} | (
        {"loop": r["loop"]} if r["loop"] != "vramfit" else {}) | (
        {"recipe": r["recipe"], "ms_per_step": r["ms_per_step"]} if "recipe" in r else {})


def print_prediction(r: dict) -> None:
    """`predict`'s text: the model, the peak with its margin and breakdown, the naive line, an extrapolation."""
    profile = r["model"]
    loop = ", nanoGPT's train.py loop" if r["loop"] == "nanogpt" else ""
    typer.echo(f"model {r['model_file']} ({profile.device}, {profile.recipe_key}, reading {profile.target}){loop}")
    if "recipe" in r:
        ms = r["ms_per_step"]
        typer.echo(", ".join(f"{k} {v}" for k, v in r["recipe"].items())
                   + (f": {ms:,.1f} ms per optimizer step" if ms is not None else ""))
    typer.echo(f"predicted peak: {fmt(r['predicted'])}  (+ margin {fmt(r['margin'])} = "
               f"{fmt(r['predicted'] + r['margin'])}; peak in the {r['regime']})")
    for k, v in r["breakdown"].items():
        typer.echo(f"  {k:<18} {fmt(v):>12}")
    typer.echo(f"naive params+tokens line: {fmt(r['naive'])}")
    extra = r["extrapolation"]
    if not extra.inside:
        widened = extra.widened_margin(profile.margin_rel)
        typer.echo(f"warning: an extrapolation, {extra.describe()}: plan with a margin of "
                   f"{fmt(r['widened_margin'])} ({widened:.1%}). Check it by dry run (`vramfit estimate` with "
                   "these sizes) or measure it (`vramfit sweep` with these sizes as flags)", err=True)


def print_suggestions(rec, vram: str, save: Path) -> None:
    """`suggest`'s terminal output: what the plan is for, the budget, the table, the train commands."""
    from vramfit.show.tables import recipe_table, suggestion_table, time_table, to_rich

    doc, budget = rec.doc, rec.doc["budget_bytes"]
    out = console()
    out.print(esc(rec.plan_line), soft_wrap=True)
    for line in rec.notes:
        typer.echo(line)
    label = rec.vram_label if doc.get("card") or vram.strip().lower() == "auto" else vram
    out.print(f"budget: {fmt(budget)} ({esc(label)} - reserve "
              f"{fmt(doc['reserve_bytes'])}) · model {esc(rec.model_path.name)} ({esc(doc['device'])}, "
              f"margin {doc['margin_rel']:.1%})")
    if rec.like_line:
        out.print(esc(rec.like_line), soft_wrap=True)
    if rec.nothing_fits is not None:
        need, cfg = rec.nothing_fits
        typer.echo(f"error: nothing fits in {fmt(budget)}. The smallest config in this space needs {fmt(need)}: "
                   + " ".join(f"{k}={v}" for k, v in cfg.items())
                   + ". Raise --vram, lower --reserve, or relax the fixed sizes.", err=True)
        raise typer.Exit(1)
    if doc.get("tokens_per_step"):
        out.print(to_rich(recipe_table(rec.items, doc["ranking"])))
    elif rec.time is not None:
        out.print(to_rich(time_table(rec.items, rec.time.hours, rec.time.rank)))
    else:
        out.print(to_rich(suggestion_table(rec.items, doc["ranking"])))
    for s in rec.items:
        out.print(f"#{s.rank}: {esc(s.command)}", soft_wrap=True)
        if s.nanochat and s.nanochat["command"] != s.command:
            out.print(f"    nanochat: {esc(s.nanochat['command'])}", soft_wrap=True)
    out.print(f"saved to {esc(str(save))}: train one with `vramfit train --suggestion N`")
