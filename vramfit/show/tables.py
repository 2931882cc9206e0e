"""The tables vramfit prints and the report shows, built once: rows of strings, rendered for a terminal (rich) or
for HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from vramfit.units import format_size

CV_MODELS = (("ours", "vramfit (physics)"), ("dryrun", "dry-run c0 + k*estimate"), ("naive", "naive params+tokens"))
CV_KINDS = (("loo", "leave-one-out"), ("grouped", "shape held out"))


@dataclass
class TableData:
    """A titled table of strings."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def _value(row: dict) -> tuple[str, str]:
    return (format_size(row["value"]), "") if row["unit"] == "B" else (f"{row['value']:.4g}", row["unit"])


def coefficient_table(model, title: str = "memory model") -> TableData:
    """A fitted model's coefficients in readable units (bytes as sizes)."""
    return TableData(title, ["term", "coefficient", "unit"],
                     [[r["term"], *_value(r)] for r in model.coefficients()])


def cv_table(metrics: dict) -> TableData:
    """Cross-validated error of the memory model beside the baselines present in `metrics`."""
    t = TableData("cross-validated error", ["model", "CV", "MAPE", "max error", "worst under-prediction"])
    for name, label in CV_MODELS:
        for how, how_label in CV_KINDS:
            r = metrics.get(name, {}).get(how)
            if r is not None:
                t.rows.append([label, how_label, f"{r['mape']:.2%}", f"{r['max_rel']:.2%}",
                               format_size(r["worst_under_bytes"])])
    return t


def throughput_tables(tp) -> list[TableData]:
    """The throughput model's coefficients and its CV error beside the FLOPs-only baseline."""
    from vramfit.fit.throughput import THROUGHPUT_CV

    coef = TableData(f"throughput model (ms/iter, {tp.n_points} sweep points)", ["term", "coefficient", "unit"],
                     [[r["term"], f"{r['value']:.4g}", r["unit"]] for r in tp.model.coefficients()])
    cv = TableData("throughput: cross-validated error (ms/iter; best step = the shape's cost, typical = its median "
                   "step, machine noise included)", ["model", "CV", "MAPE", "max error"])
    for name, label in (("ours", "FLOPs + memory traffic"), ("flops", "FLOPs + overhead only")):
        for how, how_label in THROUGHPUT_CV:
            r = tp.metrics[name].get(how)
            if r is not None:  # model files fitted before the typical-step rows existed lack them
                cv.rows.append([label, how_label, f"{r['mape']:.2%}", f"{r['max_rel']:.2%}"])
    return [coef, cv]


def mfu_line(tp) -> str:
    return (f"MFU: {tp.mfu:.1%} median of the sweep points (peak {tp.peak_flops / 1e12:.0f} TFLOP/s)"
            if tp.mfu is not None else "MFU: device peak FLOP/s unknown (CPU or an unlisted GPU)")


def _score(value: float, name: str) -> str:
    if name.startswith("params") and "x" not in name:
        return f"{value / 1e6:,.1f}M"
    if name == "tokens/step":
        return f"{value:,.0f}"
    return f"{value:.3g}"


def suggestion_table(items: list, ranking: dict) -> TableData:
    """Suggestions ranked by a memory objective: shape, params, tokens per step, prediction, headroom, and the
    value the ranking sorted by (`ranking`: `Ranked.ranking`, whose text is the title)."""
    from vramfit.plan.suggest import ranking_text

    name = ranking.get("value", "params")
    if _labelled(items):  # suggest --like: one search per row group, each ranked by its own value
        title = ("nanochat's run: the largest device batch at its depth, the deepest model at its device batch"
                 if name == "nanochat" else "close to the config: the largest batch, the longest block and the "
                 f"{'largest model' if name == 'params' else 'best model by ' + name}")
        return _with_labels(TableData(title,
                                      ["#", "layers", "heads", "width", "block", "batch", "vocab", "params",
                                       "tokens/step", "predicted", "headroom"],
                                      [_row(s) for s in items]), items)
    t = TableData(f"top {len(items)} by {ranking_text(ranking)}",
                  ["#", "layers", "heads", "width", "block", "batch", "vocab", "params", "tokens/step",
                   "predicted", "headroom", f"ranked by: {name}"])
    for s in items:
        t.rows.append(_row(s) + [_score(s.score, name) if s.score is not None else ""])
    return t


def _row(s) -> list[str]:  # noqa: ANN001 - a Suggestion
    return [str(s.rank), str(s.n_layer), str(s.n_head), str(s.n_embd), str(s.block_size), str(s.batch_size),
            str(s.vocab_size), f"{s.params / 1e6:.1f}M", f"{s.tokens_per_step:,}", format_size(s.predicted_bytes),
            format_size(s.headroom_bytes)]


def _labelled(items: list) -> bool:
    return any(getattr(s, "label", None) for s in items)


def _with_labels(t: TableData, items: list) -> TableData:
    """The table with a second column saying what each row's search found (suggest --like)."""
    t.columns.insert(1, "found")
    for row, s in zip(t.rows, items, strict=True):
        row.insert(1, s.label or "")
    return t


def time_table(items: list, hours: float, rank: str) -> TableData:
    """Suggestions ranked by what `hours` of training buys (throughput model; loss law where ranked by loss)."""
    from vramfit.fit.losslaw import TOKENS_PER_PARAM

    how = {"optimal": f"min(tokens, {TOKENS_PER_PARAM:.0f} x params): compute-optimal use of the time",
           "chinchilla": "predicted loss (Chinchilla's published law)",
           "loss": "predicted final loss (loss law fitted to this corpus's runs)"}[rank]
    cols = ["#", "layers", "heads", "width", "block", "batch", "params", "predicted", "ms/iter", "tokens/s",
            f"tokens in {hours:g} h", f"h to {TOKENS_PER_PARAM:.0f}xP"]
    cols += [f"ranked: min(D, {TOKENS_PER_PARAM:.0f}P)" if rank == "optimal" else "ranked: loss"]
    t = TableData(f"top {len(items)} for {hours:g} hours, by {how}", cols)
    for s in items:
        row = [str(s.rank), str(s.n_layer), str(s.n_head), str(s.n_embd), str(s.block_size), str(s.batch_size),
               f"{s.params / 1e6:.2f}M", format_size(s.predicted_bytes), f"{s.ms_per_iter:,.1f}",
               f"{s.tokens_per_s:,.0f}", f"{s.tokens_in_budget / 1e6:,.1f}M", f"{s.hours_to_optimal:,.2f}"]
        score = "" if s.score is None else f"{s.score / 1e6:,.1f}M" if rank == "optimal" else f"{s.predicted_loss:.3f}"
        t.rows.append(row + [score])
    return _with_labels(t, items) if _labelled(items) else t


def recipe_table(items: list, ranking: dict) -> TableData:
    """Suggestions of a recipe plan (`suggest --tokens-per-step`): shape, micro-batch x accumulation,
    checkpointing, optimizer, prediction, headroom and the time (or compute) of an optimizer step."""
    timed = any(s.ms_per_step is not None for s in items)
    t = TableData(f"top {len(items)} for {ranking['text']}",
                  ["#", "layers", "heads", "width", "block", "micro-batch", "accum", "checkpoint", "optimizer",
                   "params", "predicted", "headroom", "ms/step" if timed else "TFLOP/step"])
    for s in items:
        t.rows.append([str(s.rank), str(s.n_layer), str(s.n_head), str(s.n_embd), str(s.block_size),
                       str(s.batch_size), str(s.grad_accum), s.checkpoint, s.optimizer, f"{s.params / 1e6:.1f}M",
                       format_size(s.predicted_bytes), format_size(s.headroom_bytes),
                       f"{s.ms_per_step:,.1f}" if timed else f"{s.tflop_per_step:.3g}"])
    return t


def to_rich(t: TableData):
    """A rich Table for the terminal."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(*[escape(c) for c in t.columns], title=escape(t.title) if t.title else None)
    for row in t.rows:
        table.add_row(*[escape(v) for v in row])
    return table


def to_html(t: TableData, with_title: bool = False) -> str:
    """An HTML table (escaped), with its title as a caption when asked."""
    if not t.rows:
        return "<p>(none)</p>"
    cap = f"<caption>{html.escape(t.title)}</caption>" if with_title and t.title else ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in t.rows)
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"
