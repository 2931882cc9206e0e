"""One self-contained HTML page per database: a what-fits calculator, data summary, coefficients, CV tables,
the suggestions (ranked as the last `vramfit suggest` ranked) and the plots, all inlined (no network)."""

from __future__ import annotations

import base64
import html
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from vramfit.fit.profile import Profile
from vramfit.paths import Protected, check_output, write_text
from vramfit.plan.suggest import TimeBudget
from vramfit.plan.workflows import MODELS_DIR, fit_store
from vramfit.show.calculator import calculator_section, model_entry
from vramfit.show.context import PlanContext, feasibility_shape, per_gpu_model, ranked
from vramfit.show.plots import all_plots, largest_shape
from vramfit.show.tables import TableData, coefficient_table, cv_table, mfu_line, throughput_tables, to_html
from vramfit.units import format_size

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{font-size:90%}"""


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    return to_html(TableData("", [str(k) for k in rows[0]], [[str(v) for v in r.values()] for r in rows]))


def _model_tables(report: Profile) -> str:
    """Coefficients and cross-validated error of the memory model, and the throughput model's where fitted: the
    same tables `vramfit fit` prints (show.tables)."""
    parts = ["<h3>Coefficients</h3>" + to_html(coefficient_table(report.model)),
             "<h3>Cross-validated error</h3>" + to_html(cv_table(report.metrics))]
    tp = report.throughput
    if tp is not None:
        coef, cv = throughput_tables(tp)
        parts.append(f"<h3>Throughput model (ms/iter, {tp.n_points} sweep points; {html.escape(mfu_line(tp))})</h3>"
                     + to_html(coef) + to_html(cv, with_title=True))
    return "".join(parts)


def _suggestions_table(items: list, ctx: PlanContext) -> str:
    gpus = f" on {ctx.gpus} GPUs (DDP)" if ctx.gpus > 1 else ""
    return (f"<h3>Top suggestions (by {ctx.objective}, vocab {ctx.vocab_size}, budget "
            f"{format_size(ctx.budget_bytes)}{gpus})</h3>" + _table(
                [{"#": s.rank, "shape": f"{s.n_layer}L {s.n_head}H {s.n_embd}C", "block": s.block_size,
                  "batch": s.batch_size, "vocab": s.vocab_size, "params": f"{s.params / 1e6:.1f}M",
                  "predicted": format_size(s.predicted_bytes), "command": s.command} for s in items]))


def _images(paths: list[Path]) -> str:
    return "".join(f'<img alt="{png.stem}" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
                   for png in paths)


def write_report(points: pd.DataFrame, out: str | Path, ctx: PlanContext, target: str = "auto",
                 hours: float = 6.0, models_dir: str | Path = MODELS_DIR, source: str | None = None,
                 protected: Protected | None = None) -> Path:
    """Fit every device+recipe in `points`, rank and plot them for `ctx` (the last suggest's budget and
    vocabulary), and write one HTML file to `out` with the calculator on top (`hours`: the frontier plot's time
    budget; `models_dir`: where the page looks for the saved model file it names; `source`: the database;
    `protected`: the files `out` must not be, {label: path})."""
    check_output(out, protected or {}, "--out")
    return render_report(fit_store(points, target=target), points, out, ctx, hours, models_dir, source, protected)


def render_report(fits: list[tuple[Profile, pd.DataFrame]], points: pd.DataFrame, out: str | Path,
                  ctx: PlanContext, hours: float = 6.0, models_dir: str | Path = MODELS_DIR,
                  source: str | None = None, protected: Protected | None = None) -> Path:
    """`write_report` for fits already made (`fit_store`'s (report, points) pairs)."""
    out = check_output(out, protected or {}, "--out")
    parts, entries, shapes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (report, group) in enumerate(fits):
            items = ranked(report, ctx)
            shape = feasibility_shape(report, ctx, items, largest_shape(group))
            entries.append(model_entry(report, ctx, shape, models_dir, source, group))
            shapes.append(shape)
            pngs = all_plots(report, group, Path(tmp) / str(n), ctx.budget_bytes, items, TimeBudget(hours),
                             shape=shape, model=per_gpu_model(report, ctx),
                             vocab_size=[ctx.vocab_size])
            parts.append(f"<h2>{html.escape(report.device)} · {html.escape(report.recipe_key)}</h2>"
                         f"<p>reading {report.target}, {report.n_points} ok points, safety margin "
                         f"{report.margin_rel:.2%}, recipe <code>{html.escape(str(report.recipe))}</code>, data hash "
                         f"<code>{report.data_hash}</code></p>" + _model_tables(report)
                         + _suggestions_table(items, ctx) + _images(pngs))
    status = points.groupby(["device_name", "recipe_key", "status"]).size().reset_index(name="points")
    head = (f"<h1>vramfit report</h1><p>{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {len(points)} points"
            + (f" from <code>{html.escape(source)}</code>" if source else "")
            + f" · budget {format_size(ctx.budget_bytes)}, vocab {ctx.vocab_size}</p>")
    body = (head + calculator_section(entries, shapes, ctx) + "<h2>Measurements</h2>"
            + _table(status.to_dict("records")) + "".join(parts))
    write_text(out, f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>vramfit report</title>"
                    f"<meta name='viewport' content='width=device-width'><style>{CSS}</style></head>"
                    f"<body>{body}</body></html>", "--out")
    return out
