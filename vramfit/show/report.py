"""One self-contained HTML page per database: data summary, coefficients, CV tables and the plots (inlined)."""

from __future__ import annotations

import base64
import html
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from vramfit.errors import VramfitError
from vramfit.fit.throughput import THROUGHPUT_CV
from vramfit.plan.suggest import suggest
from vramfit.plan.workflows import fit_store, train_command
from vramfit.show.plots import all_plots
from vramfit.units import format_size

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{font-size:90%}"""


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(points: pd.DataFrame, out: str | Path, budget: float, target: str = "auto",
                 hours: float = 6.0) -> Path:
    """Fit every device+recipe in `points`, render the plots, and write one HTML file to `out`
    (`hours`: the time budget of the frontier plot)."""
    out = Path(out)
    parts = [f"<h1>vramfit report</h1><p>{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {len(points)} points · "
             f"budget for suggestions {format_size(budget)}</p>"]
    status = points.groupby(["device_name", "recipe_key", "status"]).size().reset_index(name="points")
    parts.append("<h2>Measurements</h2>" + _table(status.to_dict("records")))
    with tempfile.TemporaryDirectory() as tmp:
        for report, group in fit_store(points, target=target):
            parts.append(f"<h2>{html.escape(report.device)} · {html.escape(report.recipe_key)}</h2>"
                         f"<p>target {report.target}, {report.n_points} ok points, safety margin "
                         f"{report.margin_rel:.2%}, recipe <code>{html.escape(str(report.recipe))}</code></p>")
            coef = [{"term": r["term"], "value": format_size(r["value"]) if r["unit"] == "B" else f"{r['value']:.4g}",
                     "unit": "" if r["unit"] == "B" else r["unit"]} for r in report.model.coefficients()]
            parts.append("<h3>Coefficients</h3>" + _table(coef))
            cv = [{"model": name, "CV": how, "MAPE": f"{m['mape']:.2%}", "max error": f"{m['max_rel']:.2%}",
                   "worst under-prediction": format_size(m["worst_under_bytes"])}
                  for name in ("ours", "naive") for how, m in report.metrics[name].items() if how != "train"]
            parts.append("<h3>Cross-validated error</h3>" + _table(cv))
            tp = report.throughput
            if tp is not None:
                rows = [{"model": label, "CV": how_label, "MAPE": f"{tp.metrics[name][how]['mape']:.2%}",
                         "max error": f"{tp.metrics[name][how]['max_rel']:.2%}"}
                        for name, label in (("ours", "FLOPs + memory traffic"), ("flops", "FLOPs + overhead"))
                        for how, how_label in THROUGHPUT_CV if how in tp.metrics[name]]
                mfu = f"median MFU {tp.mfu:.1%}" if tp.mfu is not None else "MFU: device peak unknown"
                parts.append(f"<h3>Throughput model (ms/iter, {tp.n_points} sweep points; {mfu})</h3>"
                             + _table([{"term": r["term"], "value": f"{r['value']:.4g}", "unit": r["unit"]}
                                       for r in tp.model.coefficients()]) + _table(rows))
            try:
                items = suggest(report.model, report.margin_rel, int(budget), "balanced", top=5,
                                command=lambda s, r=report: train_command(s, r.recipe))
            except VramfitError:
                items = []
            parts.append("<h3>Top suggestions</h3>" + _table(
                [{"#": s.rank, "shape": f"{s.n_layer}L {s.n_head}H {s.n_embd}C", "block": s.block_size,
                  "batch": s.batch_size, "params": f"{s.params / 1e6:.1f}M",
                  "predicted": format_size(s.predicted_bytes), "command": s.command} for s in items]))
            for png in all_plots(report, group, Path(tmp), budget, items, hours=hours):
                data = base64.b64encode(png.read_bytes()).decode()
                parts.append(f'<img alt="{png.stem}" src="data:image/png;base64,{data}">')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>vramfit report</title>"
                   f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    return out
