"""Helpers for experiments/gpu_validate.sh (each subcommand is idempotent; the shell script runs the stages).

    python experiments/gpu_validate.py provenance OUT                 # provenance.json (device, driver, torch, ...)
    python experiments/gpu_validate.py corpus PATH                    # a generated text corpus (no network)
    python experiments/gpu_validate.py capped-train VRAM SUGG DB -- --key value ...  # train #1 on an emulated card
    python experiments/gpu_validate.py check ITEM OUT [DATA_DIR]      # an issue-12 check (experiments/gpu_checks.py)
    python experiments/gpu_validate.py budget OUT VRAM DATA_DIR       # suggest, train #1 under VRAM, next batch
    python experiments/gpu_validate.py heldout OUT                    # model vs held-out points -> heldout.csv
    python experiments/gpu_validate.py dryrun OUT                     # dry-run estimate vs the GPU -> dryrun.csv
    python experiments/gpu_validate.py summary OUT                    # summary.md with every table
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vramfit.shape import KEYS, MODEL_KEYS  # noqa: E402

PY = sys.executable
RECIPE_GRID = ROOT / "experiments" / "grids" / "gpu_adaptive.toml"


def vramfit(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "vramfit", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def model_file(out: Path) -> Path:
    files = sorted((out / "models").glob("*.json"))
    if not files:
        sys.exit(f"no model in {out / 'models'}: run the fit stage first")
    return files[0]


def provenance(out: Path) -> None:
    import torch

    from vramfit.measure import devices
    from vramfit.sweep.grid import load_grid

    gpus, note = devices.cuda_devices()
    doc = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "devices": [g.to_dict() for g in gpus], "nvml_note": note,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(), "host": platform.node(),
        "recipe": load_grid(RECIPE_GRID).recipe.to_dict(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
    }
    path = out / "provenance.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    doc["first_run"] = old.get("first_run", doc["date"])
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")


def corpus(path: Path, n_chars: int = 2_000_000) -> None:
    if path.is_file():
        return
    rng = random.Random(0)
    words = ["the", "king", "queen", "lord", "and", "of", "to", "my", "thou", "art", "good", "night", "sweet", "hath"]
    lines, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ".\n"
        lines.append(line)
        size += len(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    print(f"wrote {path} ({size:,} characters, generated)")


def capped_train(vram: str, suggestions: str, db: str, extra: list[str]) -> int:
    """Train suggestion #1 of `suggestions` with memory measured as `vramfit train --measure` does, on an emulated
    card of `vram` (a size or a named card): the reader takes the idle baseline and PIDs before any CUDA context,
    caps the allocator once the context exists and again after step 1 so that the whole process fits, and marks
    the run oom when NVML exceeds the card. Exit 0 ok, 3 over the card (NVML), an OOM traceback otherwise."""
    from gpt.config import load_config
    from vramfit.cards import describe, parse_vram
    from vramfit.cli import parse_overrides
    from vramfit.measure.train_measure import train_and_measure
    from vramfit.plan.workflows import compare_and_store, load_suggestion, suggestion_overrides

    cap, card = parse_vram(vram)
    doc, item = load_suggestion(1, suggestions)
    cfg = load_config(None, {**suggestion_overrides(doc, item), **parse_overrides(extra)})
    print(f"emulating {describe(cap, card)}", flush=True)
    _, record = train_and_measure(cfg, emulate_bytes=cap)
    for line in compare_and_store(cfg, record, doc, db):
        print(line, flush=True)
    print(f"capped: context {record.get('context_bytes')}, non-allocator {record.get('non_allocator_bytes')}, "
          f"allocator cap {record.get('allocator_cap_bytes')} B; status {record['status']}", flush=True)
    return 0 if record["status"] == "ok" else 3


def next_batch(b: int) -> int:
    from vramfit.plan.suggest import DEFAULT_SPACE

    larger = [x for x in DEFAULT_SPACE["batch_size"] if x > b]
    return larger[0] if larger else b + 1


def budget(out: Path, vram: str, data_dir: str) -> None:
    """Suggest for `vram`, train suggestion #1 for 20 iterations under that cap, then try the next larger batch of
    the same shape under the cap (a sweep point). Writes budget-<vram>.json; skipped when it exists."""
    done = out / f"budget-{vram}.json"
    if done.is_file():
        print(f"{done} exists: skipped")
        return
    model = model_file(out)
    sugg = out / f"suggest-{vram}.json"
    r = vramfit("suggest", "--vram", vram, "--model", str(model), "--objective", "params", "--top", "5",
                "--data-dir", data_dir, "--save", str(sugg), "--json")
    (out / f"suggest-{vram}.txt").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        doc = {"vram": vram, "error": (r.stderr or r.stdout).strip()[-500:]}
        done.write_text(json.dumps(doc, indent=1))
        print(f"{vram}: suggest failed: {doc['error']}")
        return
    top = json.loads(r.stdout)["suggestions"][0]
    run_dir = out / f"train-{vram}"
    cmd = [PY, str(Path(__file__).resolve()), "capped-train", vram, str(sugg), str(out / "budgets.sqlite"), "--",
           "--max-iters", "20", "--eval-interval", "1000", "--eval-iters", "2", "--log-interval", "5",
           "--warmup-iters", "5", "--data-dir", data_dir, "--out-dir", str(ROOT / "out" / f"gpu-validate-{vram}")]
    t = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (run_dir.parent / f"train-{vram}.log").write_text(t.stdout + "\n--- stderr ---\n" + t.stderr[-20000:])
    train_oom = t.returncode == 3 or (t.returncode != 0 and ("out of memory" in t.stderr.lower()
                                                             or "OutOfMemoryError" in t.stderr))
    nb = next_batch(top["batch_size"])
    shape = {k: top[k] for k in MODEL_KEYS}
    s = vramfit("sweep", "--device", "cuda", "--db", str(out / "budgets.sqlite"), "--emulate-vram", vram,
                "--grid", str(RECIPE_GRID), *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in shape.items()),
                                                  []), "--batch-size", str(nb), "--max-iters", "10")
    (out / f"nextbatch-{vram}.log").write_text(s.stdout + s.stderr)
    from vramfit.store import Store

    with Store(out / "budgets.sqlite") as st:
        df = st.points_frame()
    row = df[(df.source == "sweep") & (df.batch_size == nb)]
    for k, v in shape.items():
        row = row[row[k] == v]
    trained = df[(df.source == "train")]
    for k, v in {**shape, "batch_size": top["batch_size"]}.items():
        trained = trained[trained[k] == v]
    doc = {
        "vram": vram, "suggestion": {k: top[k] for k in (*KEYS, "params", "predicted_bytes", "margin_bytes",
                                                           "headroom_bytes")},
        "train_rc": t.returncode, "train_oom": train_oom,
        "train_nvml_bytes": float(trained.nvml_bytes.iloc[-1]) if len(trained) else None,
        "train_reserved_bytes": float(trained.reserved_bytes.iloc[-1]) if len(trained) else None,
        "next_batch": nb, "next_status": str(row.status.iloc[-1]) if len(row) else "missing",
        "next_nvml_bytes": float(row.nvml_bytes.iloc[-1]) if len(row) and row.nvml_bytes.notna().any() else None,
    }
    done.write_text(json.dumps(doc, indent=1))
    print(f"{vram}: #1 {shape} batch {top['batch_size']}: train rc {t.returncode}"
          f"{' (OOM!)' if train_oom else ''}; next batch {nb}: {doc['next_status']}")


def heldout(out: Path) -> None:
    import numpy as np

    from vramfit.fit.features import frame_features
    from vramfit.fit.memmodel import TARGETS
    from vramfit.fit.profile import Profile
    from vramfit.store import Store

    profile = Profile.load(model_file(out))
    col = TARGETS[profile.target]
    with Store(out / "heldout.sqlite") as s:
        all_held = s.points_frame()
    held = all_held[(all_held.status == "ok") & all_held[col].notna()].reset_index(drop=True)
    if held.empty:
        sys.exit("no ok held-out points")
    X = frame_features(held)
    y = held[col].to_numpy(dtype=float)
    ours, naive = profile.model.predict(X), profile.baseline.predict(X)
    df = held[list(KEYS)].copy()
    df["measured"] = y
    df["ours"], df["naive"] = ours, naive
    df["ours_rel"], df["naive_rel"] = (ours - y) / y, (naive - y) / y
    df["within_margin"] = ours * (1 + profile.margin_rel) >= y
    df.to_csv(out / "heldout.csv", index=False)
    print(f"held-out ({len(df)}): ours max {np.abs(df.ours_rel).max():.2%} mean {np.abs(df.ours_rel).mean():.2%}; "
          f"naive max {np.abs(df.naive_rel).max():.2%}; prediction + margin covers {df.within_margin.sum()}/{len(df)}")
    throughput_heldout(out, profile, all_held)  # every timed point, with or without a memory reading


def throughput_heldout(out: Path, profile, held) -> None:  # noqa: ANN001 - a Profile
    """The throughput model on the held-out points (issue: within 5 % on a GPU) -> throughput_heldout.csv."""
    from vramfit.fit.throughput import frame_time_features, timed_points

    tp = profile.throughput
    held = timed_points(held)
    if tp is None or held.empty:
        print("throughput: no model or no timed held-out points")
        return
    X = frame_time_features(held)
    df = held[[*KEYS, "ms_best", "ms_per_iter"]]
    df = df.assign(pred_best=tp.model.predict_best(X), pred_typical=tp.model.predict(X),
                   flops_best=tp.baseline.predict_best(X))
    df = df.assign(best_rel=df.pred_best / df.ms_best - 1, typical_rel=df.pred_typical / df.ms_per_iter - 1,
                   flops_rel=df.flops_best / df.ms_best - 1)
    df.to_csv(out / "throughput_heldout.csv", index=False)
    print(f"throughput held-out ({len(df)}): best step max {df.best_rel.abs().max():.2%} mean "
          f"{df.best_rel.abs().mean():.2%}; typical step max {df.typical_rel.abs().max():.2%}; FLOPs only max "
          f"{df.flops_rel.abs().max():.2%}")


def dryrun(out: Path) -> None:
    """Each ok point of both sweeps against its dry-run estimate: allocated vs max_memory_allocated, reserved vs
    max_memory_reserved (the allocator replay), device vs NVML (reserved + the context table) -> dryrun.csv."""
    import pandas as pd

    from gpt.config import GPTConfig
    from vramfit.dryrun.estimate import estimate_step, parse_capability, target_bytes
    from vramfit.recipe import Recipe
    from vramfit.store import Store

    rows = []
    for db in ("vramfit.sqlite", "heldout.sqlite"):
        if not (out / db).is_file():
            continue
        with Store(out / db) as s:
            pts = s.points_frame()
        for p in pts[pts.status == "ok"].itertuples(index=False):
            mc = GPTConfig(int(p.n_layer), int(p.n_head), int(p.n_embd), int(p.block_size), int(p.vocab_size))
            recipe = Recipe.from_dict(json.loads(p.recipe))
            est = estimate_step(mc, int(p.batch_size), recipe, "cuda", parse_capability(p.compute_capability))
            row = {k: getattr(p, k) for k in KEYS}
            row["compiled"] = bool(recipe.compile)
            for target, col in (("allocated", "allocated_bytes"), ("reserved", "reserved_bytes"),
                                ("nvml", "nvml_bytes")):
                e, m = target_bytes(est, target), getattr(p, col)
                row[f"{target}_est"], row[f"{target}_gpu"] = e, m
                row[f"{target}_rel"] = e / m - 1 if m and m == m else None
            rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(out / "dryrun.csv", index=False)
    for target in ("allocated", "reserved", "nvml"):
        if len(df) and df[f"{target}_rel"].notna().any():
            r = df[f"{target}_rel"].dropna()
            print(f"dry-run vs GPU {target} ({len(r)} points): max |error| {r.abs().max():.2%}, mean {r.mean():+.2%}")


def summary(out: Path) -> None:
    import pandas as pd

    from vramfit.store import Store

    gib = 2**30
    lines = [f"# GPU validation: {out.name}", ""]
    prov = json.loads((out / "provenance.json").read_text()) if (out / "provenance.json").is_file() else {}
    dev = (prov.get("devices") or [{}])[0]
    lines += [f"- device: {dev.get('device_name')} ({(dev.get('total_memory_bytes') or 0) / gib:.1f} GiB, "
              f"sm {dev.get('compute_capability')}), driver {dev.get('driver_version')}",
              f"- torch {prov.get('torch')}, CUDA {prov.get('cuda')}; recipe {prov.get('recipe')}",
              f"- date {prov.get('date')} (first run {prov.get('first_run')}), commit {prov.get('commit')}", ""]
    with Store(out / "vramfit.sqlite") as s:
        pts = s.points_frame()
        sweeps = s.sweeps_frame()
    walls = [json.loads(t).get("wall", 0.0) for t in pts.timings if isinstance(t, str)]
    lines += ["## Adaptive sweep", "", f"{len(pts)} points ({(pts.status == 'ok').sum()} ok, "
              f"{(pts.status == 'oom').sum()} oom), worker wall time {sum(walls) / 60:.1f} min in "
              f"{len(sweeps)} sweep run(s).", ""]
    cols = [*KEYS, "status", "nvml_bytes", "reserved_bytes", "ms_per_iter"]
    lines += ["```", pts[cols].to_string(index=False), "```", ""]
    model = sorted((out / "models").glob("*.json"))
    if model:
        m = json.loads(model[0].read_text())
        lines += ["## Model", "", f"`{model[0].name}`: target {m['target']}, margin {m['margin_rel']:.2%}", ""]
        lines += ["| term | value | unit |", "|---|---:|---|"]
        lines += [f"| {c['term']} | {c['value']:.4g} | {c['unit']} |" for c in m["coefficients"]]
        lines += ["", "| model | CV | MAPE | max error |", "|---|---|---:|---:|"]
        for name in ("ours", "naive"):
            for how in ("loo", "grouped"):
                r = m["metrics"][name][how]
                lines.append(f"| {name} | {how} | {r['mape']:.2%} | {r['max_rel']:.2%} |")
        lines.append("")
    if (out / "heldout.csv").is_file():
        h = pd.read_csv(out / "heldout.csv")
        lines += ["## Held-out points", "", "```", h.to_string(index=False), "```", "",
                  f"ours: max |error| {h.ours_rel.abs().max():.2%}, mean {h.ours_rel.abs().mean():.2%}; naive: max "
                  f"{h.naive_rel.abs().max():.2%}, mean {h.naive_rel.abs().mean():.2%}", ""]
    if (out / "throughput_heldout.csv").is_file():
        t = pd.read_csv(out / "throughput_heldout.csv")
        lines += ["## Throughput on the held-out points (ms/iter)", "", "```", t.to_string(index=False), "```", "",
                  f"best step: max |error| {t.best_rel.abs().max():.2%}, mean {t.best_rel.abs().mean():.2%}; "
                  f"typical step: max {t.typical_rel.abs().max():.2%}; FLOPs only: max {t.flops_rel.abs().max():.2%}",
                  ""]
    if (out / "dryrun.csv").is_file():
        d = pd.read_csv(out / "dryrun.csv")
        lines += ["## Dry-run estimate vs the GPU (allocated, reserved, NVML)", "", "```", d.to_string(index=False),
                  "```", ""]
    rows = []
    for f in sorted(out.glob("budget-*.json"), key=lambda p: float(p.stem.split("-")[1].rstrip("G"))):
        b = json.loads(f.read_text())
        if "error" in b:
            rows.append(f"| {b['vram']} | - | - | - | suggest failed: {b['error'][:60]} | | |")
            continue
        s = b["suggestion"]
        rows.append(f"| {b['vram']} | L{s['n_layer']} H{s['n_head']} C{s['n_embd']} T{s['block_size']} "
                    f"V{s['vocab_size']} | {s['batch_size']} | {(s['predicted_bytes'] + s['margin_bytes']) / gib:.2f} "
                    f"| {'OOM' if b['train_oom'] else ('ok' if b['train_rc'] == 0 else 'rc ' + str(b['train_rc']))}"
                    f" ({(b['train_nvml_bytes'] or 0) / gib:.2f} GiB) | {b['next_batch']} | {b['next_status']} |")
    if rows:
        lines += ["## Budgets (--emulate-vram)", "",
                  "| budget | suggestion #1 | batch | predicted + margin (GiB) | 20 iters under the cap (nvml) "
                  "| next batch | next batch under the cap |", "|---|---|---:|---:|---|---:|---|", *rows, ""]
    lines += checks_section(out)
    lines += bench_sections(out)
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def bench_sections(out: Path) -> list[str]:
    """The compiled-sweep benchmarks' tables (stages compile-cache and dynamic-batch), as they wrote them."""
    lines = []
    for name, title in (("compile-cache.md", "Compiled sweep: the shared Inductor cache"),
                        ("dynamic-batch.md", "Compiled sweep: static vs dynamic batch dimension")):
        f = out / name
        if f.is_file():
            head, *rest = f.read_text().splitlines() or [""]
            lines += [f"## {title} ({name})", "", head.lstrip("# "), *rest, ""]  # its provenance line, as text
    return lines


def checks_section(out: Path) -> list[str]:
    """Which of issue 12's items were checked on this GPU (stages check-4 .. check-9) and which on the CPU only."""
    rows = []
    for item in range(1, 10):
        f = out / "checks" / f"item{item}.json"
        if item <= 3:
            rows.append(f"| {item} | CPU tests only (tests/test_probe.py, tests/test_cuda_devices.py) | - | |")
        elif not f.is_file():
            rows.append(f"| {item} | not run on this GPU (stage check-{item}) | - | |")
        else:
            c = json.loads(f.read_text())
            nums = json.dumps(c.get("numbers"), default=str)
            rows.append(f"| {item} | {c['what']} | **{c['status']}** | {c.get('note', '')}; `{nums[:300]}` |")
    return ["## Issue 12: the CUDA paths on this GPU", "",
            "| item | checked | result | numbers |", "|---|---|---|---|", *rows, ""]


def cli(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "provenance":
        provenance(Path(rest[0]))
    elif cmd == "corpus":
        corpus(Path(rest[0]))
    elif cmd == "capped-train":
        vram, sugg, db, extra = rest[0], rest[1], rest[2], rest[3:]
        return capped_train(vram, sugg, db, extra[1:] if extra[:1] == ["--"] else extra)
    elif cmd == "check":
        from gpu_checks import run_check

        return run_check(rest[0], Path(rest[1]), rest[2:])
    elif cmd == "budget":
        budget(Path(rest[0]), rest[1], rest[2])
    elif cmd == "heldout":
        heldout(Path(rest[0]))
    elif cmd == "dryrun":
        dryrun(Path(rest[0]))
    elif cmd == "summary":
        summary(Path(rest[0]))
    else:
        print(f"unknown subcommand {cmd!r}\n{__doc__}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
