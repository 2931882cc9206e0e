"""The `vramfit` command line: thin wrappers that parse, call the modules, and print.

Every error a user can cause ends as one line on stderr and exit code 2 (see `main`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import typer

from vramfit.errors import USER_ERRORS, VramfitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Which GPT and batch fit your GPU? Profile, fit, suggest, train.",
)


def fail(message: str) -> None:
    """Print one error line and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`--key value`, `--key=value` and bare `--flag` (true) pairs from extra command-line arguments."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            fail(f"unexpected argument {arg!r} (expected --key value)")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        out[key.replace("-", "_")] = value
    return out


@app.command()
def prepare(
    name: str = typer.Argument(None, help="a known corpus: 'shakespeare' (downloaded unless --input is given)"),
    input: Path = typer.Option(None, "--input", "-i", help="a UTF-8 text file to prepare"),
    tokenizer: str = typer.Option("char", help="char | gpt2"),
    out: Path = typer.Option(None, help="output folder (default data/<name>_<tokenizer>)"),
) -> None:
    """Tokenize a corpus into train.bin / val.bin / meta.json."""
    from gpt.data import download_shakespeare, prepare_file

    if name not in (None, "shakespeare"):
        fail(f"unknown corpus {name!r}; use 'shakespeare' or --input FILE")
    if name is None and input is None:
        fail("give a corpus name ('shakespeare') or --input FILE")
    if input is None:
        input = download_shakespeare(Path("data") / "shakespeare" / "input.txt")
    stem = name or input.stem
    out = out or Path("data") / f"{stem}_{tokenizer}"
    meta = prepare_file(input, out, tokenizer=tokenizer)
    typer.echo(
        f"prepared {out}: {meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
        f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens"
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="a TOML config (flat keys or [model]/[train] tables)"),
    suggestion: int = typer.Option(None, "--suggestion", "-s", min=1,
                                   help="train suggestion N of the last `vramfit suggest` (or of --suggestions)"),
    suggestions: Path = typer.Option(Path("results/suggestions.json"), help="a `suggest --json` output"),
    measure: bool = typer.Option(False, "--measure", help="probe memory and store it (on with --suggestion)"),
    db: Path = typer.Option(Path("results/vramfit.sqlite"), "--db", help="where a measured run is stored"),
    nproc: int = typer.Option(None, "--nproc", min=1, help="data-parallel processes (GPUs) on this node: "
                              "re-launches through torchrun with DDP (nccl on CUDA, gloo on the CPU); default: "
                              "the suggestion's --gpus, else 1"),
) -> None:
    """Train a GPT: `vramfit train [--config FILE.toml] [--suggestion N] [--key value ...]` (any TrainConfig
    field). With --suggestion it prints predicted vs measured memory and stores the run as a new point.
    With --nproc N: DDP over N processes (gradient_accumulation_steps divided across them; rank 0 logs and
    checkpoints); memory is not probed under DDP."""
    from vramfit.plan.ddp import launch_train, under_torchrun

    if nproc is None and suggestion is not None and not under_torchrun():
        from vramfit.plan.workflows import load_suggestion

        nproc = int(load_suggestion(suggestion, suggestions)[0].get("gpus") or 1)
    if (nproc or 1) > 1 and not under_torchrun():
        args = [*ctx.args, "--suggestions", str(suggestions), "--db", str(db)]
        args += ["--config", str(config)] if config is not None else []
        args += ["--suggestion", str(suggestion)] if suggestion is not None else []
        args += ["--measure"] if measure else []
        raise typer.Exit(launch_train(nproc, args))
    distributed = under_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    master = os.environ.get("RANK", "0") == "0"
    from gpt.config import load_config
    from gpt.train import train as run_training

    overrides = parse_overrides(ctx.args)
    doc = item = None
    if suggestion is not None:
        from vramfit.plan.workflows import load_suggestion, suggestion_overrides

        doc, item = load_suggestion(suggestion, suggestions)
        overrides = {**suggestion_overrides(doc, item), **overrides}
        measure = True
    cfg = load_config(config, overrides)
    if distributed and measure:
        measure = False
        if master:
            typer.echo("note: memory is not probed under DDP (the per-GPU DDP term is measured by vramfit.plan.ddp)")
    if measure:
        from vramfit.measure.train_measure import train_and_measure

        result, record = train_and_measure(cfg)
    else:
        result = run_training(cfg)
    if not master:
        return
    typer.echo(
        f"done: {result.iter_num} iterations, best val loss {result.best_val_loss:.4f}, "
        f"{result.ms_per_iter:.1f} ms/iter, {result.tokens_per_s:,.0f} tokens/s"
        + (f", checkpoint {result.ckpt_path}" if result.ckpt_path else "")
    )
    if measure:
        from vramfit.plan.workflows import compare_and_store

        for line in compare_and_store(cfg, record, doc, db):
            typer.echo(line)


@app.command()
def sample(
    ckpt: Path = typer.Option(Path("out/ckpt.pt"), help="checkpoint file or its folder"),
    prompt: str = typer.Option("\n", help="text to continue"),
    num_samples: int = typer.Option(1, min=1),
    max_new_tokens: int = typer.Option(300, min=1),
    temperature: float = typer.Option(0.8),
    top_k: int = typer.Option(200, min=1),
    seed: int = typer.Option(1337),
    device: str = typer.Option("auto"),
    interactive: bool = typer.Option(False, "--interactive", help="prompt, read the completion, repeat"),
) -> None:
    """Generate text from a checkpoint."""
    from gpt.sample import Sampler
    from gpt.sample import interactive as prompt_loop

    if temperature <= 0:
        fail(f"temperature must be > 0, got {temperature}")
    sampler = Sampler(ckpt, device=device, seed=seed)
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
    if interactive:
        prompt_loop(sampler, **kwargs)
        return
    for i, text in enumerate(sampler.complete(prompt, num_samples=num_samples, **kwargs)):
        if i:
            typer.echo("---------------")
        typer.echo(text)


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="machine-readable facts")) -> None:
    """What is here: each GPU (NVML) or the CPU, with driver, CUDA and torch versions."""
    from vramfit.measure import devices

    if as_json:
        import json

        gpus, note = devices.cuda_devices()
        facts = [g.to_dict() for g in gpus] or [devices.cpu_facts().to_dict()]
        typer.echo(json.dumps({"devices": facts, "note": note}, indent=1))
        return
    for line in devices.info_lines():
        typer.echo(line)


@app.command()
def sweep(
    grid: Path = typer.Option(None, "--grid", "-g", help="grid spec TOML (e.g. experiments/grids/quick.toml)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    devices: str = typer.Option(None, "--devices", help="GPU indices to use in parallel, e.g. 0,1"),
    db: Path = typer.Option(Path("results/vramfit.sqlite"), "--db", help="SQLite database"),
    emulate_vram: str = typer.Option(None, "--emulate-vram", help="behave like a card this big, e.g. 8G, or a "
                                     "named card (t4, a100-40g, rtx4090, ...: its NVML total)"),
    redo: bool = typer.Option(False, "--redo", help="measure again points already in the database"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    n_layer: str = typer.Option(None, "--n-layer", help="axis override, e.g. 4,8"),
    n_head: str = typer.Option(None, "--n-head"),
    n_embd: str = typer.Option(None, "--n-embd"),
    block_size: str = typer.Option(None, "--block-size"),
    batch_size: str = typer.Option(None, "--batch-size"),
    vocab_size: str = typer.Option(None, "--vocab-size"),
    dtype: str = typer.Option(None, help="recipe override: auto | float32 | bfloat16 | float16"),
    max_iters: int = typer.Option(None, "--max-iters", help="measurement override"),
    timeout: float = typer.Option(None, "--timeout", help="seconds per point (measurement override)"),
    plan: str = typer.Option("grid", "--plan", help="grid (every point) | adaptive (a few, chosen; see --points)"),
    points: int = typer.Option(12, "--points", help="adaptive: at most this many points"),
    target_error: float = typer.Option(0.03, "--target-error",
                                       help="adaptive: stop once the CV max error and the last 3 predictions "
                                            "are within this (0.03 = 3%)"),
    boundary_points: int = typer.Option(2, "--boundary-points",
                                        help="adaptive: points near the capacity edge to measure on purpose"),
    boundary: bool = typer.Option(False, "--boundary",
                                  help="find each shape's largest fitting batch by bisection on real runs"),
    model: Path = typer.Option(None, "--model", help="--boundary: start from this model JSON's prediction"),
    executor: str = typer.Option("local", "--executor", help="local (this machine) | ray (one Ray task per point "
                                 "on a Ray cluster; pip install 'vramfit[ray]')"),
    address: str = typer.Option(None, "--address", help="--executor ray: auto (a running cluster) | "
                                "ray://host:10001; default: a running cluster, else a local instance"),
) -> None:
    """Profile training memory over a grid, one fresh process per point, into SQLite (resumable).
    `--plan adaptive` measures a few informative points and stops when the model is accurate enough;
    `--boundary` finds the largest batch that fits each shape of the grid."""
    from vramfit.cards import describe, parse_vram
    from vramfit.sweep.grid import load_grid, parse_int_list
    from vramfit.sweep.runner import run_sweep

    axes = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size,
            "batch_size": batch_size, "vocab_size": vocab_size}
    overrides = {k: v for k, v in axes.items() if v is not None}
    if grid is None and len(overrides) < len(axes):
        fail("give --grid FILE.toml, or all six axes as flags")
    measure = {k: v for k, v in (("max_iters", max_iters), ("timeout_s", timeout)) if v is not None}
    spec = load_grid(grid, overrides, {"dtype": dtype} if dtype else None, measure)
    emulate, card = parse_vram(emulate_vram) if emulate_vram else (None, None)
    if card is not None and not quiet:
        typer.echo(f"--emulate-vram {describe(emulate, card)}")
    indices = parse_int_list(devices, "--devices", minimum=0) if devices else None
    if plan not in ("grid", "adaptive"):
        fail(f"unknown --plan {plan!r}; choose grid or adaptive")
    if executor != "local" and (boundary or plan == "adaptive"):
        fail("--plan adaptive and --boundary measure one point at a time on this machine; use --executor local")
    from vramfit.sweep.executors import make_executor

    ex = make_executor(executor, address)
    if boundary:
        from vramfit.plan.workflows import open_model
        from vramfit.sweep.boundary import run_boundary

        mm = open_model(model)[1]["model"] if model else None
        for r in run_boundary(spec, db, device=device, gpu_indices=indices, emulate_bytes=emulate, model=mm,
                              quiet=quiet, argv=sys.argv[1:]):
            shape = " ".join(f"{k}={v}" for k, v in r.shape.items())
            typer.echo(f"{shape}: largest batch {r.best} in {_fmt(r.capacity)} (start {r.start} from "
                       f"{r.start_source}; probes " + ", ".join(f"{p.batch_size} {p.status}" for p in r.probes) + ")")
        return
    if plan == "adaptive":
        from vramfit.sweep.adaptive import PlanSettings, run_adaptive

        settings = PlanSettings(points=points, target_error=target_error, boundary=boundary_points)
        res = run_adaptive(spec, db, settings, device=device, gpu_indices=indices, emulate_bytes=emulate,
                           quiet=quiet, argv=sys.argv[1:], log=typer.echo)
    else:
        res = run_sweep(spec, db, device=device, gpu_indices=indices, emulate_bytes=emulate, redo=redo,
                        quiet=quiet, argv=sys.argv[1:], executor=ex)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(res.counts.items())) or "nothing to do"
    typer.echo(f"sweep {res.sweep_id} done: {counts}; {res.resumed} already measured, "
               f"{res.invalid} invalid combinations skipped; db {res.db}")


@app.command()
def runs(db: Path = typer.Option(Path("results/vramfit.sqlite"), "--db", help="SQLite database")) -> None:
    """List the sweeps in a database with their point counts."""
    from vramfit.store import Store

    if not db.exists():
        fail(f"no database at {db} (run `vramfit sweep` first)")
    with Store(db) as store:
        df = store.sweeps_frame()
    if df.empty:
        typer.echo(f"no sweeps in {db}")
        return
    cols = ["sweep_id", "name", "status", "devices", "started_at", "n_planned", "n_resumed", "n_invalid", "n_ok",
            "n_oom", "n_error", "n_timeout"]
    typer.echo(df[cols].to_string(index=False))


@app.command()
def export(
    db: Path = typer.Option(Path("results/vramfit.sqlite"), "--db", help="SQLite database"),
    csv: Path = typer.Option(None, "--csv", help="write the points to this CSV file"),
    parquet: Path = typer.Option(None, "--parquet", help="write the points to this Parquet file"),
    device: str = typer.Option(None, help="only this device (name substring, cpu/cuda, or GPU UUID)"),
    status: str = typer.Option(None, help="only this status (ok, oom, timeout, error)"),
) -> None:
    """Export all measured points (joined with their environment) to CSV and/or Parquet."""
    from vramfit.store import Store

    if csv is None and parquet is None:
        fail("give --csv FILE and/or --parquet FILE")
    if not db.exists():
        fail(f"no database at {db}")
    with Store(db) as store:
        for path, fmt in ((csv, "csv"), (parquet, "parquet")):
            if path is not None:
                n = store.export(path, fmt, device=device, status=status)
                typer.echo(f"wrote {n} points to {path}")


def _console():
    from rich.console import Console

    return Console(width=max(120, shutil.get_terminal_size().columns))


def _fmt(n: float) -> str:
    from vramfit.units import format_size

    return format_size(n)


def _open_store(db: Path):
    from vramfit.store import Store

    if not db.exists():
        fail(f"no database at {db} (run `vramfit sweep` first)")
    return Store(db)


@app.command()
def fit(
    db: Path = typer.Option(Path("results/vramfit.sqlite"), help="the measurement database"),
    target: str = typer.Option("auto", help="auto (nvml on CUDA, tracked on CPU) | nvml | allocated | reserved "
                                            "| rss | tracked"),
    device: str = typer.Option(None, help="only this device (name substring, 'cpu'/'cuda' or GPU UUID)"),
    recipe: str = typer.Option(None, help="only this recipe key"),
    regimes: int = typer.Option(2, min=1, max=2, help="2: peak in backward or in the optimizer step; 1: linear"),
    out: Path = typer.Option(Path("results/models"), help="where model JSON files go"),
    dry_run: bool = typer.Option(False, "--dry-run", help="also fit y = c0 + k*(dry-run estimate) and compare"),
    loss: bool = typer.Option(False, "--loss", help="instead: fit the loss law L(N, D) = E + A/N^alpha + B/D^beta "
                              "to the stored `vramfit train` runs, per corpus (needs 3 runs of 2+ sizes)"),
    corpus: Path = typer.Option(None, "--corpus", help="--loss: only this prepared corpus (data dir)"),
    loss_out: Path = typer.Option(Path("results/losslaw"), "--loss-out", help="--loss: where loss-law JSON goes"),
    allow_shared: bool = typer.Option(False, "--allow-shared-gpu", help="keep NVML readings taken as device used "
                                      "minus baseline while other processes used the GPU (left out by default)"),
) -> None:
    """Fit the memory and throughput models per device and recipe; print coefficients and CV error beside the
    baselines. With --loss, fit the loss law of each corpus to the stored training runs instead."""
    from rich.table import Table

    from vramfit.plan.workflows import fit_store, model_filename

    if loss:
        _fit_loss(db, corpus, loss_out)
        return
    with _open_store(db) as store:
        points = store.points_frame(device=device, recipe_key=recipe)
    console = _console()
    for report, _ in fit_store(points, target=target, regimes=regimes, dryrun=dry_run, allow_shared=allow_shared):
        path = report.save(out / model_filename(report.device, report.recipe_key))
        console.print(f"[bold]{report.device}[/] · recipe {report.recipe_key} · target {report.target} · "
                      f"{report.n_points} points -> {path}")
        coef = Table("term", "coefficient", "unit", title="memory model")
        for row in report.model.coefficients():
            value = _fmt(row["value"]) if row["unit"] == "B" else f"{row['value']:.4g}"
            coef.add_row(row["term"], value, "" if row["unit"] == "B" else row["unit"])
        console.print(coef)
        m = report.metrics
        cv = Table("model", "CV", "MAPE", "max error", "worst under-prediction", title="cross-validated error")
        for name, label in (("ours", "vramfit (physics)"), ("dryrun", "dry-run c0 + k*estimate"),
                            ("naive", "naive params+tokens")):
            if name not in m:
                continue
            for how, how_label in (("loo", "leave-one-out"), ("grouped", "shape held out")):
                r = m[name][how]
                cv.add_row(label, how_label, f"{r['mape']:.2%}", f"{r['max_rel']:.2%}",
                           _fmt(r["worst_under_bytes"]))
        console.print(cv)
        console.print(f"safety margin: {report.margin_rel:.2%} of the prediction (worst CV under-prediction)")
        if report.dryrun is not None:
            console.print(f"dry-run model: {_fmt(report.dryrun.intercept_)} + {report.dryrun.coef_[0]:.4f} x "
                          "estimate")
        _print_throughput(console, report.throughput)
        for v in report.oom_violations:
            console.print(f"[yellow]warning:[/] OOM point {v} is predicted to fit ({_fmt(v['predicted'])} <= "
                          f"{_fmt(v['capacity'])})")


def _print_throughput(console, tp) -> None:
    """The throughput model's coefficients and CV error beside the FLOPs-only baseline (fit's output)."""
    from rich.table import Table

    from vramfit.fit.throughput import THROUGHPUT_CV

    if tp is None:
        console.print("throughput model: not fitted (fewer than 3 ok sweep points with ms/iter)")
        return
    coef = Table("term", "coefficient", "unit", title=f"throughput model (ms/iter, {tp.n_points} sweep points)")
    for row in tp.model.coefficients():
        coef.add_row(row["term"], f"{row['value']:.4g}", row["unit"])
    console.print(coef)
    cv = Table("model", "CV", "MAPE", "max error", title="throughput: cross-validated error (ms/iter; best step "
               "= the shape's cost, typical = its median step, machine noise included)")
    for name, label in (("ours", "FLOPs + memory traffic"), ("flops", "FLOPs + overhead only")):
        for how, how_label in THROUGHPUT_CV:
            r = tp.metrics[name].get(how)
            if r is not None:  # model files fitted before the typical-step rows existed lack them
                cv.add_row(label, how_label, f"{r['mape']:.2%}", f"{r['max_rel']:.2%}")
    console.print(cv)
    console.print(f"MFU: {tp.mfu:.1%} median of the sweep points (peak {tp.peak_flops / 1e12:.0f} TFLOP/s)"
                  if tp.mfu is not None else "MFU: device peak FLOP/s unknown (CPU or an unlisted GPU)")


def _fit_loss(db: Path, corpus: Path | None, out: Path) -> None:
    from vramfit.fit.losslaw import fit_store_runs, law_path

    laws = fit_store_runs(db, corpus)
    fitted = [law for law in laws if not isinstance(law, VramfitError)]
    if not fitted:
        raise laws[0]
    for law in laws:
        if isinstance(law, VramfitError):
            typer.echo(f"skipped: {law}")
            continue
        path = law.save(law_path(law, out))
        typer.echo(f"loss law for {law.data_dir} (corpus {law.corpus_id}, {law.n_runs} runs, {law.n_obs} curve "
                   f"points) -> {path}")
        typer.echo(f"  L(N, D) = {law.E:.4f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}  "
                   f"(rms error of log-loss {law.rmse_log:.4f})")


def _corpus_vocab(data_dir: str) -> int | None:
    """The vocabulary size of a prepared corpus (its meta.json), None where there is none or it is unreadable."""
    from gpt.data import load_meta
    from gpt.errors import DataError

    try:
        meta = load_meta(data_dir)
    except DataError:  # not prepared (no meta.json) or unreadable
        return None
    v = meta.get("vocab_size") if isinstance(meta, dict) else None
    return int(v) if isinstance(v, int) and v > 0 else None


def _shape_options(n_layer, n_head, n_embd, block_size, batch_size, vocab) -> dict:
    def ints(value: str | None, name: str):
        if value is None:
            return None
        try:
            out = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            fail(f"--{name.replace('_', '-')}: expected integers like 4 or 4,8, got {value!r}")
        if not out or min(out) < 1:
            fail(f"--{name.replace('_', '-')}: sizes must be >= 1, got {value!r}")
        return out

    return {k: ints(v, k) for k, v in dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                            batch_size=batch_size, vocab_size=vocab).items()}


@app.command()
def predict(
    n_layer: int = typer.Option(..., min=1),
    n_head: int = typer.Option(..., min=1),
    n_embd: int = typer.Option(..., min=1),
    block_size: int = typer.Option(..., min=1),
    batch_size: int = typer.Option(..., min=1),
    vocab: int = typer.Option(50304, "--vocab", "--vocab-size", min=1),
    model: Path = typer.Option(None, help="model JSON (default: the newest in results/models)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Predicted training memory of one config, with a breakdown and the safety margin."""
    import json

    from gpt.config import GPTConfig
    from vramfit.fit.features import features
    from vramfit.plan.workflows import open_model

    GPTConfig(n_layer, n_head, n_embd, block_size, vocab)  # shape errors as one line
    path, doc = open_model(model)
    f = features(n_layer, n_head, n_embd, block_size, batch_size, vocab)
    pred = float(doc["model"].predict(f)[0])
    base = float(doc["baseline"].predict(f)[0])
    part = doc["model"].breakdown(f)[0]
    margin = pred * doc["margin_rel"]
    if json_out:
        typer.echo(json.dumps({"predicted_bytes": int(pred), "margin_bytes": int(margin),
                               "naive_bytes": int(base), "regime": part.pop("regime"),
                               "breakdown": {k: int(v) for k, v in part.items()}, "model_file": str(path)}))
        return
    typer.echo(f"model {path} ({doc['device']}, {doc['recipe_key']}, target {doc['target']})")
    typer.echo(f"predicted peak: {_fmt(pred)}  (+ margin {_fmt(margin)} = {_fmt(pred + margin)}; "
               f"peak in the {part.pop('regime')})")
    for k, v in part.items():
        typer.echo(f"  {k:<18} {_fmt(v):>12}")
    typer.echo(f"naive params+tokens line: {_fmt(base)}")


@app.command()
def suggest(
    vram: str = typer.Option(..., help="the card's memory: 8G, 7.5GiB, 8000M, 24GB (binary units: 8G = 8 GiB), or a "
                             "card: t4, l4, a10, a100-40g, h100-80g, rtx3090, ... (its NVML total)"),
    reserve: str = typer.Option("0", help="memory kept free for the display and other processes, e.g. 500M"),
    objective: str = typer.Option("params", help="params (largest model) | tokens (most tokens per step) | "
                                                 "balanced (params x tokens)"),
    n_layer: str = typer.Option(None, help="fix or restrict: 12 or 6,12"),
    n_head: str = typer.Option(None),
    n_embd: str = typer.Option(None),
    block_size: str = typer.Option(None),
    batch_size: str = typer.Option(None),
    vocab: str = typer.Option(None, "--vocab", "--vocab-size", help="default: --data-dir's vocabulary when it "
                              "is prepared, else 50304 (GPT-2 BPE, padded)"),
    min_batch: int = typer.Option(1, min=1),
    top: int = typer.Option(10, min=1),
    model: Path = typer.Option(None, help="model JSON (default: the newest in results/models)"),
    data_dir: str = typer.Option("data/shakespeare_char", help="corpus for the printed train commands"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output (schema: vramfit/schemas/)"),
    save: Path = typer.Option(Path("results/suggestions.json"), help="where `train --suggestion N` finds them"),
    no_profile: bool = typer.Option(False, "--no-profile", help="no sweep of this GPU: plan from dry-run "
                                    "estimates plus a context constant (unvalidated)"),
    recipe: str = typer.Option("dtype=bfloat16,optimizer=fused", help="with --no-profile: the recipe "
                               "(inline k=v,... or a TOML/JSON file)"),
    capability: str = typer.Option("8.0", help="with --no-profile: the GPU's compute capability (8.6, 9.0)"),
    hours: str = typer.Option(None, "--hours", help="a time budget (e.g. 6 or 1.5): rank what fits by what it "
                              "learns in that time (replaces --objective), from the throughput model"),
    rank: str = typer.Option("auto", "--rank", help="with --hours: optimal = maximise min(D, 20 P), D tokens "
                             "in the hours, P params (compute-optimal, Hoffmann et al. 2022; peaks at D = 20 P); "
                             "chinchilla = minimise 1.69 + 406.4/P^0.34 + 410.7/D^0.28; loss = minimise the loss "
                             "law of --data-dir's corpus (`fit --loss`); auto = loss if fitted, else optimal"),
    loss_law: Path = typer.Option(None, "--loss-law", help="with --hours: a `fit --loss` JSON (default: the one "
                                  "for --data-dir's corpus in results/losslaw)"),
    gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs to train on (memory is per GPU; tokens per step "
                             "multiply by this)"),
    strategy: str = typer.Option(None, "--strategy", help="multi-GPU strategy: ddp (default with --gpus > 1; "
                                 "adds DDP's gradient buckets, 4 B/param, per GPU)"),
) -> None:
    """Configs that fit a card with the safety margin, ranked, each with its train command.
    With --hours H: ranked by what H hours of training buys (tokens/s from the throughput model)."""
    import json

    from rich.table import Table

    from vramfit.cards import describe, parse_vram
    from vramfit.plan.suggest import smallest_need
    from vramfit.plan.suggest import suggest as run_suggest
    from vramfit.plan.workflows import open_model, save_suggestions, train_command
    from vramfit.units import parse_size

    (vram_b, card), reserve_b = parse_vram(vram), parse_size(reserve)
    budget = vram_b - reserve_b
    space = _shape_options(n_layer, n_head, n_embd, block_size, batch_size, vocab)
    corpus_vocab = _corpus_vocab(data_dir)
    if corpus_vocab is not None:
        if space["vocab_size"] is None:  # plan for the corpus the printed commands train on
            space["vocab_size"] = [corpus_vocab]
            if not json_out:
                typer.echo(f"vocab {corpus_vocab}: from {Path(data_dir) / 'meta.json'} (--vocab to override)")
        elif min(space["vocab_size"]) < corpus_vocab:
            fail(f"--vocab {min(space['vocab_size'])} is smaller than the vocabulary of --data-dir {data_dir} "
                 f"({corpus_vocab}): training would fail")
    time_args: dict = {}
    if hours is not None:
        time_args = _time_args(hours, rank, loss_law, data_dir)
        if no_profile:
            fail("--hours needs a profiled device (its sweep measures speed); drop --no-profile")
    if no_profile:
        from vramfit.dryrun.estimate import parse_capability, parse_recipe
        from vramfit.plan.workflows import no_profile_model, verify_with_estimates
        from vramfit.recipe import Recipe

        rec, cap = parse_recipe(recipe), parse_capability(capability)
        typer.echo("warning: no profile of this device: predictions are dry-run estimates of the eager step plus "
                   "a 512 MiB CUDA context constant and 5% allocator slack, not measurements "
                   "(run `vramfit sweep` on the GPU for a validated model)", err=True)
        mm, margin, recipe_d = no_profile_model(rec, cap, (space["vocab_size"] or [50304])[0])
        path, doc = Path("(dry-run, no profile)"), {"device": f"CUDA sm{cap[0]}{cap[1]} (not profiled)",
                                                   "recipe_key": Recipe(**recipe_d).key(), "target": "allocated"}
    else:
        path, doc = open_model(model)
        mm, margin, recipe_d = doc["model"], doc["margin_rel"], doc.get("recipe") or {}
    if time_args:
        time_args["throughput"] = doc["throughput"].model if doc.get("throughput") is not None else None
    if gpus > 1 and time_args:
        fail("--hours plans one GPU for now; drop --gpus or --hours")
    from vramfit.plan.ddp import for_strategy, multi_gpu

    mm = for_strategy(mm, gpus, strategy)
    items = run_suggest(mm, margin, budget, objective=objective, top=top, min_batch=min_batch,
                        command=lambda s: train_command(s, recipe_d, data_dir), **time_args, **space)
    if no_profile:
        items = verify_with_estimates(items, rec, cap, budget)
    items = multi_gpu(items, gpus)
    result = {"vram_bytes": vram_b, "card": card.name if card else None, "reserve_bytes": reserve_b,
              "budget_bytes": budget, "objective": objective,
              "model_file": str(path), "device": doc["device"], "recipe_key": doc["recipe_key"], "recipe": recipe_d,
              "target": doc["target"], "margin_rel": margin, "data_dir": data_dir,
              "gpus": gpus, "strategy": strategy or ("ddp" if gpus > 1 else None),
              "suggestions": [s.to_dict() for s in items]}
    if time_args:
        law = time_args["loss_law"]
        result.update(hours=time_args["hours"], rank=time_args["rank"],
                      loss_law=law.to_dict() if law is not None and time_args["rank"] == "loss" else None)
    if items:
        save_suggestions(result, save)
    if json_out:
        typer.echo(json.dumps(result, indent=1))
        if not items:
            raise typer.Exit(1)
        return
    console = _console()
    console.print(f"budget: {_fmt(budget)} ({describe(vram_b, card) if card else vram} - reserve {_fmt(reserve_b)})"
                  f" · model {path.name} "
                  f"({doc['device']}, margin {margin:.1%})")
    if not items:
        need, cfg = smallest_need(mm, margin, **space)
        console.print(f"nothing fits in {_fmt(budget)}. The smallest config in this space needs {_fmt(need)}: "
                      + " ".join(f"{k}={v}" for k, v in cfg.items())
                      + ". Raise --vram, lower --reserve, or relax the fixed sizes.")
        raise typer.Exit(1)
    if time_args:
        _print_time_table(console, items, time_args)
    else:
        table = Table("#", "layers", "heads", "width", "block", "batch", "vocab", "params", "tokens/step",
                      "predicted", "headroom", title=f"top {len(items)} by {objective}")
        for s in items:
            table.add_row(str(s.rank), str(s.n_layer), str(s.n_head), str(s.n_embd), str(s.block_size),
                          str(s.batch_size), str(s.vocab_size), f"{s.params / 1e6:.1f}M", f"{s.tokens_per_step:,}",
                          _fmt(s.predicted_bytes), _fmt(s.headroom_bytes))
        console.print(table)
    for s in items:
        console.print(f"#{s.rank}: {s.command}", soft_wrap=True)
    console.print(f"saved to {save}: train one with `vramfit train --suggestion N`")


def _time_args(hours: str, rank: str, loss_law: Path | None, data_dir: str) -> dict:
    """Validated --hours / --rank / --loss-law for suggest (and plot)."""
    from vramfit.fit.losslaw import law_for_corpus, load_law
    from vramfit.plan.suggest import TIME_RANKS, check_hours

    h = check_hours(hours)
    if rank not in ("auto", *TIME_RANKS):
        fail(f"unknown --rank {rank!r}; choose auto, {', '.join(TIME_RANKS)}")
    law = load_law(loss_law) if loss_law else law_for_corpus(data_dir)
    if rank == "auto":
        rank = "loss" if law is not None else "optimal"
    if rank == "loss" and law is None:
        fail(f"--rank loss: no loss law for {data_dir} (run `vramfit fit --loss` after 3+ `vramfit train` runs "
             "on it, or pass --loss-law FILE)")
    return {"hours": h, "rank": rank, "loss_law": law}


def _print_time_table(console, items: list, time_args: dict) -> None:
    from rich.table import Table

    from vramfit.fit.losslaw import TOKENS_PER_PARAM

    h, rank = time_args["hours"], time_args["rank"]
    how = {"optimal": f"min(tokens, {TOKENS_PER_PARAM:.0f} x params): compute-optimal use of the time",
           "chinchilla": "predicted loss (Chinchilla's published law)",
           "loss": "predicted final loss (loss law fitted to this corpus's runs)"}[rank]
    cols = ["#", "layers", "heads", "width", "block", "batch", "params", "predicted", "ms/iter", "tokens/s",
            f"tokens in {h:g} h", f"h to {TOKENS_PER_PARAM:.0f}xP"] + (["loss"] if rank != "optimal" else [])
    table = Table(*cols, title=f"top {len(items)} for {h:g} hours, by {how}")
    for s in items:
        row = [str(s.rank), str(s.n_layer), str(s.n_head), str(s.n_embd), str(s.block_size), str(s.batch_size),
               f"{s.params / 1e6:.2f}M", _fmt(s.predicted_bytes), f"{s.ms_per_iter:,.1f}", f"{s.tokens_per_s:,.0f}",
               f"{s.tokens_in_budget / 1e6:,.1f}M", f"{s.hours_to_optimal:,.2f}"]
        table.add_row(*row, *([f"{s.predicted_loss:.3f}"] if rank != "optimal" else []))
    console.print(table)


@app.command()
def plot(
    db: Path = typer.Option(Path("results/vramfit.sqlite")),
    out: Path = typer.Option(Path("results/plots"), help="folder for the PNG files"),
    vram: str = typer.Option("8G", help="budget line and feasibility contour"),
    target: str = typer.Option("auto"),
    device: str = typer.Option(None),
    recipe: str = typer.Option(None),
    hours: str = typer.Option("6", "--hours", help="time budget of the frontier plot"),
    rank: str = typer.Option("auto", "--rank", help="frontier: optimal | chinchilla | loss | auto (see suggest)"),
    data_dir: str = typer.Option("data/shakespeare_char", help="corpus whose fitted loss law the frontier uses"),
) -> None:
    """PNG plots per device and recipe: predicted vs measured, memory vs tokens, feasibility, breakdown, residuals,
    and (with ms/iter in the sweep) ms/iter predicted vs measured and the frontier of what --hours buy."""
    from vramfit.plan.suggest import suggest as run_suggest
    from vramfit.plan.workflows import fit_store, slug, train_command
    from vramfit.show.plots import all_plots
    from vramfit.units import parse_size

    budget = parse_size(vram)
    time_args = _time_args(hours, rank, None, data_dir)
    with _open_store(db) as store:
        points = store.points_frame(device=device, recipe_key=recipe)
    for report, group in fit_store(points, target=target):
        try:
            items = run_suggest(report.model, report.margin_rel, budget, "balanced", top=5,
                                command=lambda s, r=report: train_command(s, r.recipe))
        except VramfitError:
            items = []
        folder = out / f"{slug(report.device)}-{report.recipe_key}"
        for p in all_plots(report, group, folder, budget, items, **time_args):
            typer.echo(f"wrote {p}")


@app.command()
def report(
    db: Path = typer.Option(Path("results/vramfit.sqlite")),
    out: Path = typer.Option(Path("results/report.html")),
    vram: str = typer.Option("8G"),
    target: str = typer.Option("auto"),
) -> None:
    """One self-contained HTML page: data summary, coefficients, CV tables and every plot."""
    from vramfit.show.report import write_report
    from vramfit.units import parse_size

    budget = parse_size(vram)
    with _open_store(db) as store:
        points = store.points_frame()
    path = write_report(points, out, budget, target=target)
    typer.echo(f"wrote {path}")


@app.command()
def estimate(
    n_layer: int = typer.Option(..., help="transformer blocks"),
    n_head: int = typer.Option(..., help="attention heads"),
    n_embd: int = typer.Option(..., help="embedding width"),
    block_size: int = typer.Option(..., help="context length"),
    batch_size: int = typer.Option(..., help="micro-batch size"),
    vocab: int = typer.Option(50304, "--vocab", "--vocab-size", help="vocabulary size"),
    recipe: str = typer.Option(None, help="recipe TOML/JSON file, or inline: dtype=bfloat16,optimizer=fused,..."),
    target: str = typer.Option("cuda", help="cuda (emulated, no GPU needed) | cpu"),
    capability: str = typer.Option("8.0", "--capability", help="CUDA compute capability of the target (8.0, 8.6, 9.0)"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Dry run: peak memory of two real training steps under fake tensors, no GPU needed."""
    import json

    from gpt.config import GPTConfig
    from vramfit.dryrun.estimate import (
        estimate_step,
        estimate_step_isolated,
        format_estimate,
        parse_capability,
        parse_recipe,
    )

    if batch_size < 1:
        raise VramfitError(f"batch_size must be >= 1, got {batch_size}")
    mc = GPTConfig(n_layer, n_head, n_embd, block_size, vocab)
    run = estimate_step_isolated if target == "cuda" else estimate_step  # CUDA code paths may abort: child process
    est = run(mc, batch_size, parse_recipe(recipe), target, parse_capability(capability))
    typer.echo(json.dumps(est.to_dict()) if json_out else format_estimate(est))


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line and exit code 2, never a traceback.

    Typer (standalone) already turns usage errors into exit code 2 via SystemExit."""
    try:
        app(args=argv, prog_name="vramfit")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
