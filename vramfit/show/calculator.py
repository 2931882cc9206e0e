"""The report's planning section: a what-fits calculator that evaluates the fitted model in the page, offline.

Python builds the data (each fitted model's coefficients as `MemoryModel.to_dict` writes them, its margin, the
throughput model, suggest's batch candidates, the named cards, the provenance) and inlines it as JSON beside
`calculator.js`, a plain-JavaScript transcription of the same formulas. No network, no server: the page can be
mailed. The Python model stays the source of truth; tests/test_report_page.py checks the page against it.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from vramfit.fit.profile import Profile
from vramfit.plan.ddp import DDP_BYTES_PER_PARAM, DdpTerm
from vramfit.plan.suggest import DEFAULT_SPACE
from vramfit.plan.workflows import MODELS_DIR, model_filename
from vramfit.shape import Shape
from vramfit.show.context import PlanContext, grid_axes
from vramfit.units import format_size

if TYPE_CHECKING:
    import pandas as pd

INPUTS = (("vram", "VRAM", "the card: 8G, 7.5GiB, 8000M"), ("reserve", "reserve", "kept free, e.g. 500M"),
          ("gpus", "GPUs", "data parallel (DDP)"), ("n_layer", "n_layer", ""), ("n_head", "n_head", ""),
          ("n_embd", "n_embd", ""), ("block_size", "block", ""), ("batch_size", "batch", ""),
          ("vocab_size", "vocab", ""), ("grad_accum", "grad_accum", "micro-batches per optimizer step"),
          ("checkpoint", "checkpoint", "activation checkpointing: none | all | k (every k-th block)"),
          ("optimizer", "optimizer", "fused | foreach | loop (AdamW) | sgd | adafactor | muon"))
OUTPUTS = (("budget", "budget (VRAM - reserve)"), ("params", "parameters"), ("predicted", "predicted peak"),
           ("margin", "safety margin"), ("need", "predicted + margin"), ("headroom", "headroom"),
           ("verdict", "verdict"), ("regime", "peak in the"), ("largest", "largest batch that fits"),
           ("ms", "ms/iter"), ("tps", "tokens/s"))
CSS = """.vf{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.vf label{display:grid;
grid-template-columns:6em 14em;gap:.5em;margin:.2em 0}.vf input,.vf select{font:inherit;padding:1px 4px;width:100%;
box-sizing:border-box}
.vf-yes{color:#1a7f37;font-weight:bold}.vf-no{color:#c62828;font-weight:bold}.vf-err{color:#c62828}
#vf-chart{border:1px solid #ddd;max-width:100%}#vf-outputs{display:flex;gap:1em;align-items:flex-start}
#vf-outputs[hidden]{display:none}
.vf figure{margin:0;max-width:642px}.vf-prov{max-width:420px;font-size:85%;margin:0}.vf td,.vf th{text-align:left}"""


def named_cards() -> dict[str, int]:
    """Card names accepted as a budget ("t4" -> bytes): `vramfit.cards.CARDS`, the same table `--vram` reads."""
    from vramfit.cards import CARDS

    return {name: card.total_bytes for name, card in CARDS.items()}


def compact_size(n: int) -> str:
    """A size as the budget input would be typed: 8589934592 -> '8G', 268435456 -> '256M', else bytes."""
    for unit, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def model_file_note(report: Profile, models_dir: str | Path = MODELS_DIR, points: pd.DataFrame | None = None) -> str:
    """Which saved model file this fit is: the `vramfit fit` file for this device+recipe when its data hash
    matches; else, when it still holds every point of `points` (this fit's rows) within its margin, the same file
    fitted on fewer of them (a measured `train` run it predicted adds a point, not a contradiction); else stale."""
    path = Path(models_dir) / model_filename(report.device, report.recipe_key)
    if not path.is_file():
        return f"none saved ({path} absent): this page's fit of the database"
    try:
        saved = Profile.load(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a fact to state, not a reason to fail
        return f"{path} unreadable ({exc}): this page's fit of the database"
    if saved.target == report.target:
        if saved.data_hash == report.data_hash:
            return f"{path} (same data hash and target)"
        if points is not None and holds_every_point(saved, points, report.target):
            return (f"{path} (fitted on {saved.n_points} of these {report.n_points} points; none of them "
                    "exceeds its prediction + margin)")
    return (f"{path} is stale (data hash {saved.data_hash}, reading {saved.target}): "
            "this page's fit of the database; re-run `vramfit fit`")


def holds_every_point(saved: Profile, points: pd.DataFrame, target: str) -> bool:
    """Whether a saved model's prediction + margin covers the `target` reading of every ok point in `points`."""
    import numpy as np

    from vramfit.fit.features import frame_features
    from vramfit.fit.memmodel import TARGETS, trusted_points

    col = TARGETS[target]
    points = trusted_points(points, target)
    ok = points[(points["status"] == "ok") & points[col].notna()].reset_index(drop=True)
    if ok.empty:
        return False
    bound = saved.model.predict(frame_features(ok)) * (1 + saved.margin_rel)
    return bool(np.all(ok[col].to_numpy(dtype=np.float64) <= bound))


def provenance(report: Profile, models_dir: str | Path = MODELS_DIR, source: str | None = None,
               points: pd.DataFrame | None = None) -> dict:
    """Device, recipe, model file, data hash and CV error of one fit, as the page lists them."""
    m = report.metrics["ours"]
    out = {"device": report.device, "recipe": f"{report.recipe_key} {json.dumps(report.recipe, sort_keys=True)}",
           "target": report.target, "model file": model_file_note(report, models_dir, points),
           "data hash": report.data_hash, "points": str(report.n_points),
           "CV error, shape held out": f"MAPE {m['grouped']['mape']:.2%}, max {m['grouped']['max_rel']:.2%}",
           "CV error, leave-one-out": f"MAPE {m['loo']['mape']:.2%}, max {m['loo']['max_rel']:.2%}",
           "safety margin": f"{report.margin_rel:.2%} of the prediction (worst CV under-prediction)"}
    tp = report.throughput
    if tp is not None and "grouped" in tp.metrics.get("ours", {}):
        g = tp.metrics["ours"]["grouped"]
        out["throughput CV, shape held out"] = f"MAPE {g['mape']:.2%}, max {g['max_rel']:.2%} (best step)"
    if source:
        out["database"] = source
    return out


def family_options(report: Profile, shape: Shape, points: pd.DataFrame | None = None) -> dict[str, dict]:
    """The families the page offers for a profile, each with its options resolved as `gpt.config.resolve_arch`
    does (n_kv_head None: as many as the heads): GPT-2's; with a FAMILY fit also nanochat's default and each
    family text among its points; and the starting shape's."""
    from gpt.config import ARCH_OPTIONS, resolve_arch
    from vramfit.shape import GPT2, arch_options

    texts = [GPT2]
    if report.plans_families:
        texts += ["nanochat", *(sorted(set(points["arch"].dropna())) if points is not None and "arch" in points
                                else [])]
    texts.append(shape.arch)
    out = {}
    for text in dict.fromkeys(texts):
        options = arch_options(text)
        family = options.pop("arch")
        resolved = resolve_arch(family, 1, None, {k: options.get(k) for k in ARCH_OPTIONS})
        out[text] = {"arch": family, **resolved, "n_kv_head": options.get("n_kv_head")}
    return out


def model_entry(report: Profile, ctx: PlanContext, shape: Shape, models_dir: str | Path = MODELS_DIR,
                source: str | None = None, points: pd.DataFrame | None = None) -> dict:
    """One fitted model as the page's JavaScript reads it (`shape`: the inputs' starting values; `points`: the
    rows it was fitted on, against which a saved model file is judged)."""
    from gpt.config import checkpoint_every

    tp = report.throughput
    own = report.recipe_of().resolved(report.kind)
    return {"label": f"{report.device} · {report.recipe_key}", "model": report.model.to_dict(),
            "recipe": {"grad_accum": own.grad_accum, "checkpoint": own.checkpoint, "optimizer": own.optimizer,
                       "every": checkpoint_every(own.checkpoint)},
            "optimizers": sorted({m["optimizer"] for m in report.switches}) or None,  # None: one recipe
            "margin_rel": report.margin_rel, "ddp_bytes_per_param": DDP_BYTES_PER_PARAM,
            "ddp_comm_bytes": DdpTerm.for_device(report.device_type).comm_bytes,
            "throughput": tp.model.to_dict() if tp is not None else None,
            "archs": family_options(report, shape, points),
            "defaults": {**shape.as_dict(), "arch": shape.arch, "vram": compact_size(ctx.vram_bytes),
                         "reserve": compact_size(ctx.reserve_bytes), "gpus": ctx.gpus},
            "provenance": provenance(report, models_dir, source, points)}


def page_data(entries: list[dict], shapes: list[Shape]) -> dict:
    """Everything the script needs: the models, suggest's batch candidates, the chart's axes, the cards."""
    blocks, batches = grid_axes(mark=shapes[0].as_dict() if shapes else None)
    return {"models": entries, "batches": sorted(set(DEFAULT_SPACE["batch_size"])), "chart_blocks": blocks,
            "chart_batches": batches, "cards": named_cards()}


def _script_json(data: dict) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' left to end the element or open a comment."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def _input(key: str, label: str, tip: str) -> str:
    size = key in ("vram", "reserve", "checkpoint", "optimizer")
    extra = ' list="vf-cards"' if key == "vram" else ""
    return (f'<label for="vf-{key}">{label}<input id="vf-{key}" inputmode="{"text" if size else "numeric"}"'
            f'{extra} title="{html.escape(tip)}"></label>')


def calculator_section(entries: list[dict], shapes: list[dict], ctx: PlanContext) -> str:
    """The calculator's HTML: inputs, outputs, breakdown, chart, provenance, data and script."""
    data = page_data(entries, shapes)
    options = "".join(f'<option value="{i}">{html.escape(e["label"])}</option>' for i, e in enumerate(entries))
    cards = "".join(f'<option value="{html.escape(name)}">{format_size(b)}</option>'
                    for name, b in data["cards"].items())
    inputs = "".join(_input(k, label, tip) for k, label, tip in INPUTS)
    outputs = "".join(f'<tr><th>{label}</th><td id="vf-{k}"></td></tr>' for k, label in OUTPUTS)
    prov = "".join(f'<table class="vf-prov" data-model="{i}"><caption>built from</caption>'
                   + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                             for k, v in e["provenance"].items()) + "</table>" for i, e in enumerate(entries))
    script = resources.files("vramfit.show").joinpath("calculator.js").read_text()
    cards_note = (f"or a card name ({', '.join(data['cards'])})" if data["cards"] else
                  "sizes are binary: 8G = 8 GiB")
    return (f"<style>{CSS}</style><h2 id='calculator'>What fits: plan here</h2>"
            "<p>The fitted memory model below, evaluated in this page (no network): change the budget or the "
            f"shape and read the prediction, its breakdown and the largest batch that fits. VRAM: {cards_note}. "
            f"Starting values: {html.escape('; '.join(ctx.sources))}.</p>"
            f'<div class="vf"><form id="vf-form" onsubmit="return false"><label for="vf-model">model'
            f'<select id="vf-model">{options}</select></label><label for="vf-arch">family<select id="vf-arch" '
            f'title="the model family (a profile swept with nanochat points plans both)"></select></label>{inputs}'
            f'<datalist id="vf-cards">{cards}</datalist>'
            f'<p id="vf-error" class="vf-err"></p></form><div id="vf-outputs"><table>{outputs}</table>'
            '<table><caption>breakdown</caption><tbody id="vf-breakdown"></tbody></table></div>'
            '<figure><canvas id="vf-chart" width="640" height="300"></canvas>'
            f'<figcaption id="vf-chart-caption"></figcaption></figure>{prov}</div>'
            f'<script type="application/json" id="vf-data">{_script_json(data)}</script><script>{script}</script>')
