"""Matplotlib figures of a fitted memory model: accuracy, memory vs tokens, feasibility, breakdown, residuals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vramfit.fit.features import frame_features, shape_key  # noqa: E402
from vramfit.fit.memmodel import TARGETS  # noqa: E402
from vramfit.fit.profile import Profile  # noqa: E402
from vramfit.paths import check_output, output_path  # noqa: E402
from vramfit.plan.suggest import TimeBudget  # noqa: E402
from vramfit.shape import GPT2, KEYS, Shape  # noqa: E402
from vramfit.show.context import FEASIBILITY_BATCHES, FEASIBILITY_BLOCKS, grid_axes  # noqa: E402

GIB = 2**30


def _unit(values) -> tuple[float, str]:
    peak = float(np.nanmax(np.asarray(values, dtype=np.float64))) if len(values) else 0.0
    return (GIB, "GiB") if peak >= GIB else (2**20, "MiB")


def _save(fig, path: Path) -> Path:
    """Write a PNG whose metadata carries the title and axis labels (so tests and tools can read them); never
    over a database, checkpoint or pickle (`vramfit.paths.check_output`)."""
    fig.tight_layout()
    ax = fig.axes[0]
    meta = {"Title": ax.get_title(), "Description": f"x: {ax.get_xlabel()}; y: {ax.get_ylabel()}",
            "Software": "vramfit"}
    try:
        with output_path(check_output(path, {}, "plot"), "plot") as target:
            fig.savefig(target, dpi=110, metadata=meta, format="png")
    finally:
        plt.close(fig)
    return path


def pred_vs_measured(report: Profile, path: Path) -> Path:
    """Grouped-CV predictions (shapes held out) of ours and the naive baseline against measurements."""
    cv = report.cv
    scale, unit = _unit(cv["measured"])
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    lo, hi = 0.0, float(np.nanmax(cv[["measured", "ours_grouped", "naive_grouped"]].to_numpy())) / scale * 1.05
    xs = np.linspace(lo, hi, 50)
    ax.fill_between(xs, xs * 0.95, xs * 1.05, color="0.85", label="±5 %")
    ax.plot(xs, xs, color="0.4", lw=1)
    m = report.metrics
    ax.scatter(cv["measured"] / scale, cv["naive_grouped"] / scale, marker="x", color="tab:red",
               label=f"naive params+tokens (max err {m['naive']['grouped']['max_rel']:.1%})")
    ax.scatter(cv["measured"] / scale, cv["ours_grouped"] / scale, color="tab:blue", s=22,
               label=f"vramfit physics model (max err {m['ours']['grouped']['max_rel']:.1%})")
    ax.set_xlabel(f"measured peak ({report.target}, {unit})")
    ax.set_ylabel(f"predicted, shape held out ({unit})")
    ax.set_title(f"Predicted vs measured memory\n{report.device} · {report.recipe_key}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def memory_vs_tokens(report: Profile, points: pd.DataFrame, path: Path, budget: float | None = None) -> Path:
    """Measured memory against tokens per batch for each model shape and block, with the fitted lines."""
    col = TARGETS[report.target]
    ok = points[(points["status"] == "ok") & points[col].notna()].copy()
    ok["shape"] = shape_key(ok)
    scale, unit = _unit(ok[col])
    fig, ax = plt.subplots(figsize=(7.2, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((shape, T), g) in enumerate(sorted(ok.groupby(["shape", "block_size"]), key=lambda kv: kv[0])):
        c = colors[i % len(colors)]
        tokens = g["batch_size"] * g["block_size"]
        ax.scatter(tokens, g[col] / scale, color=c, s=18, label=f"{shape} T={T}")
        r = g.iloc[0]
        batches = np.linspace(1, max(g["batch_size"].max() * 1.3, 2), 40)
        f = report.model.columns({**{k: r[k] for k in KEYS}, "block_size": T, "batch_size": batches},
                                 r.get("arch") or GPT2)
        ax.plot(batches * T, report.model.predict(f) / scale, color=c, lw=1)
    if budget and budget <= 2 * ok[col].max():  # otherwise the line would flatten the data
        ax.axhline(budget / scale, color="k", ls="--", lw=1, label=f"budget {budget / scale:.2f} {unit}")
    ax.set_xlabel("tokens per batch (batch × block)")
    ax.set_ylabel(f"peak memory ({report.target}, {unit})")
    ax.set_title("Memory vs tokens per batch, by model shape (lines: fitted model)")
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    return _save(fig, path)


def feasibility(report: Profile, shape: Shape, budget: float, path: Path,
                blocks=FEASIBILITY_BLOCKS, batches=FEASIBILITY_BATCHES, model=None,
                mark: dict | None = None) -> Path:
    """Predicted memory + margin over block_size x batch_size for one model shape (`model`: the one to plan with,
    default the report's). The colour scale is centred on the budget (green fits, red does not; the budget is a
    line on the colour bar) and a contour follows it; `mark` (a config with block_size and batch_size) is starred."""
    from matplotlib.colors import TwoSlopeNorm

    model = model if model is not None else report.model
    blocks, batches = grid_axes(blocks, batches, mark)
    T, B = np.meshgrid(np.asarray(blocks), np.asarray(batches), indexing="ij")
    f = model.columns({**shape.as_dict(), "block_size": T.ravel(), "batch_size": B.ravel()}, shape.arch)
    need = (model.predict(f) * (1 + report.margin_rel)).reshape(T.shape)
    scale, unit = _unit([budget])
    lo, hi = min(float(need.min()), 0.9 * budget), max(min(float(need.max()), 2 * budget), 1.1 * budget)
    norm = TwoSlopeNorm(vcenter=budget / scale, vmin=lo / scale, vmax=hi / scale)  # past 2x budget: saturated
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    im = ax.pcolormesh(np.arange(len(batches) + 1), np.arange(len(blocks) + 1), need / scale, cmap="RdYlGn_r",
                       norm=norm, shading="flat")
    bar = fig.colorbar(im, ax=ax, extend="max" if need.max() > hi else "neither",
                       label=f"predicted + margin ({unit})")
    bar.ax.axhline(budget / scale, color="k", lw=2.5)
    b, span = budget / scale, (hi - lo) / scale
    ticks = [t for t in bar.get_ticks() if lo / scale <= t <= hi / scale and abs(t - b) > 0.06 * span]
    bar.set_ticks(sorted([*ticks, b]), labels=[f"budget {t:.3g}" if t == b else f"{t:g}" for t in sorted([*ticks, b])])
    if need.min() < budget < need.max():
        ax.contour(np.arange(len(batches)) + 0.5, np.arange(len(blocks)) + 0.5, need, levels=[budget],
                   colors="k", linewidths=2)
    if mark is not None:
        ax.scatter([batches.index(int(mark["batch_size"])) + 0.5], [blocks.index(int(mark["block_size"])) + 0.5],
                   marker="*", s=220, color="gold", edgecolor="k", zorder=5, label=mark.get("label", "chosen"))
        ax.legend(loc="upper right", fontsize=7)
    ax.set_yticks(np.arange(len(blocks)) + 0.5, [str(b) for b in blocks])
    step = max(1, len(batches) // 16)
    ax.set_xticks(np.arange(0, len(batches), step) + 0.5, [str(b) for b in batches[::step]])
    ax.set_xlabel("batch_size")
    ax.set_ylabel("block_size")
    ax.set_title(f"Feasibility for {shape.n_layer}L {shape.n_head}H {shape.n_embd}C "
                 f"V={shape.vocab_size} (line: {budget / scale:.3g} {unit} budget)")
    return _save(fig, path)


def breakdown_bars(suggestions: list, budget: float, path: Path) -> Path:
    """Stacked bars of the predicted memory of each suggestion, by part, with margin and budget."""
    parts = ["constant", "params+optimizer", "logits", "activations", "attention"]
    parts += sorted({k for s in suggestions for k in s.breakdown} - set(parts))  # e.g. "ddp buckets"
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    labels = [f"#{s.rank} {s.n_layer}L{s.n_embd}C\nT{s.block_size}×B{s.batch_size}" for s in suggestions]
    bottom = np.zeros(len(suggestions))
    scale, unit = _unit([budget])
    for part in parts + ["margin"]:
        vals = np.array([(s.margin_bytes if part == "margin" else s.breakdown.get(part, 0)) for s in suggestions],
                        dtype=np.float64) / scale
        ax.bar(labels, vals, bottom=bottom, label=part, hatch="//" if part == "margin" else None)
        bottom += vals
    ax.axhline(budget / scale, color="k", ls="--", lw=1, label="budget")
    ax.set_ylabel(unit)
    ax.set_title("Where the memory goes: top suggestions")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    return _save(fig, path)


def residuals(report: Profile, path: Path) -> Path:
    """Cross-validated relative errors (shape held out) per point, ours vs naive."""
    cv = report.cv
    scale, unit = _unit(cv["measured"])
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for name, style in (("naive", dict(marker="x", color="tab:red")), ("ours", dict(marker="o", color="tab:blue"))):
        rel = (cv[f"{name}_grouped"] - cv["measured"]) / cv["measured"] * 100
        ax.scatter(cv["measured"] / scale, rel, label=name, s=18, **style)
    ax.axhline(0, color="0.4", lw=1)
    ax.axhspan(-5, 5, color="0.9")
    ax.set_xlabel(f"measured ({unit})")
    ax.set_ylabel("CV error (%)  (+ over-predicts)")
    ax.set_title("Cross-validated residuals (grouped by model shape)")
    ax.legend()
    return _save(fig, path)


def ms_pred_vs_measured(tp, path: Path, title: str = "") -> Path:
    """Throughput model: shape-held-out predictions of each point's best step against the measured best step."""
    cv = tp.cv
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    lo, hi = float(np.nanmin(cv["measured"])) * 0.7, float(np.nanmax(cv["measured"])) * 1.3
    xs = np.geomspace(lo, hi, 50)
    ax.fill_between(xs, xs * 0.85, xs * 1.15, color="0.9", label="±15 %")
    ax.plot(xs, xs, color="0.4", lw=1)
    m = tp.metrics
    ax.scatter(cv["measured"], cv["flops_grouped"], marker="x", color="tab:red",
               label=f"FLOPs + overhead (max err {m['flops']['grouped']['max_rel']:.1%})")
    ax.scatter(cv["measured"], cv["ours_grouped"], color="tab:blue", s=22,
               label=f"FLOPs + memory traffic (max err {m['ours']['grouped']['max_rel']:.1%})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("measured ms/iter (best timed step)")
    ax.set_ylabel("predicted ms/iter, shape held out")
    ax.set_title(f"Predicted vs measured time per iteration\n{title}")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def frontier(front: dict, hours: float, rank: str, path: Path, chosen: dict | None = None) -> Path:
    """What the time budget buys each config that fits, against its parameters; the chosen config marked.
    y: predicted final loss (rank loss/chinchilla) or tokens in the budget (rank optimal, with the 20 x P line)."""
    from vramfit.fit.losslaw import TOKENS_PER_PARAM

    P = front["params"]
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    if rank == "optimal":
        y, ylabel = front["tokens"], f"tokens in {hours:g} h"
        xs = np.geomspace(P.min(), P.max(), 20)
        ax.plot(xs, TOKENS_PER_PARAM * xs, color="0.4", ls="--", lw=1, label="20 × params (compute-optimal)")
        ax.set_yscale("log")
    else:
        y = front["loss"]
        ylabel = "predicted final loss" + (" (Chinchilla's law)" if rank == "chinchilla" else " (fitted loss law)")
    sc = ax.scatter(P, y, c=np.log2(front["tokens"] / (TOKENS_PER_PARAM * P)), cmap="coolwarm_r", s=10)
    fig.colorbar(sc, ax=ax, label="log2(tokens / 20 P)")
    if chosen is not None:
        ax.scatter([chosen["params"]], [chosen["y"]], marker="*", s=260, color="gold", edgecolor="k", zorder=5,
                   label=f"chosen: {chosen['label']}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(f"What {hours:g} hours buy each config that fits (rank: {rank})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def frontier_for(report: Profile, budget: float, time: TimeBudget, path: Path, **space) -> Path | None:
    """The frontier plot of a fitted report (None without a throughput model or when nothing fits)."""
    from vramfit.errors import VramfitError
    from vramfit.plan.suggest import suggest, time_frontier

    if report.throughput is None:
        return None
    time = replace(time, throughput=report.throughput.model)
    hours, rank = time.hours, time.rank
    try:
        front = time_frontier(report.model, report.margin_rel, int(budget), time, **space)
        top = suggest(report.model, report.margin_rel, int(budget), top=1, time=time, **space)
    except VramfitError:
        return None
    if not len(front["params"]) or not top:
        return None
    s = top[0]
    chosen = {"params": s.params, "y": s.tokens_in_budget if rank == "optimal" else s.predicted_loss,
              "label": f"{s.n_layer}L {s.n_embd}C T{s.block_size} B{s.batch_size}"}
    return frontier(front, hours, rank, path, chosen)


def largest_shape(points: pd.DataFrame) -> Shape:
    """The ok point with the most parameters (the feasibility plot's shape without suggestions)."""
    ok = points[points["status"] == "ok"]
    big = ok.assign(P=frame_features(ok)["params"]).sort_values("P").iloc[-1]
    return Shape.of(big)


def all_plots(report: Profile, points: pd.DataFrame, out_dir: str | Path, budget: float,
              suggestions: list | None = None, time: TimeBudget | None = None,
              shape: Shape | None = None, model=None, **space) -> list[Path]:
    """Every figure for one fitted model into `out_dir`; returns the PNG paths. With a throughput model also
    ms/iter predicted vs measured and the frontier of what the `time` buys (default 6 hours; `space`: suggest's
    search space).
    The feasibility plot draws `shape` (its block and batch starred), else the top suggestion's, else the
    largest measured shape; `model` is the one to plan with (e.g. with the DDP term), default the report's."""
    out = Path(out_dir)
    paths = [pred_vs_measured(report, out / "pred_vs_measured.png"),
             memory_vs_tokens(report, points, out / "memory_vs_tokens.png", budget),
             residuals(report, out / "cv_residuals.png")]
    if report.throughput is not None and report.throughput.cv is not None:
        paths.append(ms_pred_vs_measured(report.throughput, out / "ms_pred_vs_measured.png",
                                         f"{report.device} · {report.recipe_key}"))
        fr = frontier_for(report, budget, time or TimeBudget(6.0), out / "frontier.png", **space)
        if fr is not None:
            paths.append(fr)
    if suggestions:
        paths.append(breakdown_bars(suggestions, budget, out / "breakdown.png"))
        if shape is None:
            shape = Shape.of(suggestions[0])
    mark = None
    if shape is None:
        shape = largest_shape(points)
    else:
        mark = {"block_size": shape.block_size, "batch_size": shape.batch_size,
                "label": f"T{shape.block_size} B{shape.batch_size}"}
    paths.append(feasibility(report, shape, budget, out / "feasibility.png", model=model, mark=mark))
    return paths


def write_plots(points: pd.DataFrame, out_dir: str | Path, ctx, target: str = "auto",
                time: TimeBudget | None = None) -> list[Path]:
    """`vramfit plot`: fit each device+recipe in `points`, rank as the last suggest did (`ctx`: a
    show.context.PlanContext) and write every figure into `out_dir/<device>-<recipe>/`."""
    from vramfit.plan.workflows import fit_store, slug
    from vramfit.show.context import feasibility_shape, per_gpu_model, ranked

    paths = []
    for report, group in fit_store(points, target=target):
        items = ranked(report, ctx)
        shape = feasibility_shape(report, ctx, items, largest_shape(group))
        folder = Path(out_dir) / f"{slug(report.device)}-{report.recipe_key}"
        paths += all_plots(report, group, folder, ctx.budget_bytes, items, shape=shape,
                           model=per_gpu_model(report, ctx), vocab_size=[ctx.vocab_size],
                           time=time)
    return paths
