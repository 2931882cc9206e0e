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


def _version(value: bool) -> None:
    if value:
        from vramfit import __version__

        typer.echo(f"vramfit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Which GPT and batch fit your GPU? Profile, fit, suggest, train."""


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
    from vramfit.paths import writable_dir

    out = writable_dir(out or Path("data") / f"{name or input.stem}_{tokenizer}", "--out")
    if input is None:
        input = download_shakespeare(Path("data") / "shakespeare" / "input.txt")
    meta = prepare_file(input, out, tokenizer=tokenizer)
    typer.echo(
        f"prepared {out}: {meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
        f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens"
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="a TOML config (flat keys or \\[model]/\\[train] tables) "
                                "or a nanoGPT config .py (read as data, never executed)"),
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
    _check_train_outputs(cfg, db if measure and not distributed else None)
    if cfg.extra.get("nanogpt_ignored") and master:
        typer.echo(f"note: not used from {config}: {', '.join(sorted(cfg.extra['nanogpt_ignored']))}")
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


def _check_train_outputs(cfg, db: Path | None) -> None:
    """Before the first step: the checkpoint folder, and the database a measured run is stored in."""
    from vramfit.paths import writable_dir, writable_file

    writable_dir(cfg.out_dir, "--out-dir")
    if db is not None:
        writable_file(db, "--db")
        if db.exists():
            from vramfit.store import Store

            Store(db, readonly=True).close()  # a vramfit database, readable: else one line now, not after training


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
    data_dir: Path = typer.Option(None, "--data-dir", help="where to look last for nanoGPT's meta.pkl (after "
                                  "beside the checkpoint and data/<dataset> of its config)"),
) -> None:
    """Generate text from a checkpoint (vramfit's or nanoGPT's)."""
    from gpt.sample import Sampler
    from gpt.sample import interactive as prompt_loop

    if not (temperature > 0 and temperature < float("inf")):
        fail(f"temperature must be a positive number, got {temperature}")
    sampler = Sampler(ckpt, device=device, seed=seed, data_dir=data_dir)
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
    dynamic_batch: bool = typer.Option(None, "--dynamic-batch/--static-batch",
                                       help="compiled points: mark the batch dimension dynamic (one compilation "
                                            "for every batch size) or keep it static; default: dynamic only where "
                                            "its readings were verified equal (see README)"),
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
                                 "on a Ray cluster; pip install 'vramfit\\[ray]')"),
    address: str = typer.Option(None, "--address", help="--executor ray: auto (a running cluster) | "
                                "ray://host:10001; default: a running cluster, else a local instance"),
    yes: bool = typer.Option(False, "--yes", "-y", help="run a grid of more than 500 points without asking"),
) -> None:
    # (long only by its option declarations: the body is ~45 lines)
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
    measure = {k: v for k, v in (("max_iters", max_iters), ("timeout_s", timeout), ("dynamic_batch", dynamic_batch))
               if v is not None}
    spec = load_grid(grid, overrides, {"dtype": dtype} if dtype else None, measure)
    if plan == "grid" and not boundary:
        _confirm_size(spec.points()[0], yes)
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
        from vramfit.fit.profile import Profile
        from vramfit.sweep.boundary import run_boundary

        mm = Profile.load(model).model if model else None
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


def _confirm_size(points: list[dict], yes: bool) -> None:
    """Ask before a sweep of more than CONFIRM_POINTS points (refuse without a terminal unless --yes), saying
    what it would cost (the bench figures: the sweep itself prints the profile's estimate once it starts)."""
    from vramfit.sweep.cost import estimate_cost
    from vramfit.sweep.grid import CONFIRM_POINTS

    if len(points) <= CONFIRM_POINTS or yes:
        return
    what = f"this grid has {estimate_cost(points, None, 'fork').line()}"
    if not sys.stdin.isatty():
        fail(f"{what}; pass --yes to run it, or use --plan adaptive")
    if not typer.confirm(f"{what}. Run it?", default=False):
        raise typer.Exit(1)


@app.command()
def runs(db: Path = typer.Option(Path("results/vramfit.sqlite"), "--db", help="SQLite database")) -> None:
    """List the sweeps in a database with their point counts."""
    with _open_store(db) as store:
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
    if csv is None and parquet is None:
        fail("give --csv FILE and/or --parquet FILE")
    with _open_store(db) as store:
        for path, fmt in ((csv, "csv"), (parquet, "parquet")):
            if path is not None:
                n = store.export(path, fmt, device=device, status=status)
                typer.echo(f"wrote {n} points to {path}")


def _console():
    from rich.console import Console

    return Console(width=max(140, shutil.get_terminal_size().columns))


def _esc(text: str) -> str:
    """Text shown through rich, with its [markup] taken literally."""
    from rich.markup import escape

    return escape(text)


def _fmt(n: float) -> str:
    from vramfit.units import format_size

    return format_size(n)


def _open_store(db: Path):
    from vramfit.store import Store

    return Store(db, readonly=True)


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
    from vramfit.paths import writable_dir
    from vramfit.plan.workflows import fit_and_save
    from vramfit.show.tables import coefficient_table, cv_table, mfu_line, throughput_tables, to_rich

    if loss:
        writable_dir(loss_out, "--loss-out")
        _fit_loss(db, corpus, loss_out)
        return
    writable_dir(out, "--out")
    with _open_store(db) as store:
        points = store.points_frame(device=device, recipe_key=recipe)
        if points.empty and (device or recipe):
            n = len(store.points_frame())
            if n:
                fail(f"none of the {n} points in {db} match " + " and ".join(
                    f"--{k} {v}" for k, v in (("device", device), ("recipe", recipe)) if v))
    console = _console()
    for report, path in fit_and_save(points, out, target=target, regimes=regimes, dryrun=dry_run,
                                     allow_shared=allow_shared):
        console.print(f"[bold]{_esc(report.device)}[/] · recipe {report.recipe_key} · target {report.target} · "
                      f"{report.n_points} points -> {_esc(str(path))}")
        console.print(to_rich(coefficient_table(report.model)))
        console.print(to_rich(cv_table(report.metrics)))
        console.print(f"safety margin: {report.margin_rel:.2%} of the prediction (worst CV under-prediction)")
        if report.dryrun is not None:
            console.print(f"dry-run model: {_fmt(report.dryrun.intercept_)} + {report.dryrun.coef_[0]:.4f} x "
                          "estimate")
        tp = report.throughput
        if tp is None:
            console.print("throughput model: not fitted (fewer than 3 ok sweep points with ms/iter)")
        else:
            for t in throughput_tables(tp):
                console.print(to_rich(t))
            console.print(mfu_line(tp))
        for v in report.oom_violations:
            console.print(f"[yellow]warning:[/] OOM point {_esc(str(v))} is predicted to fit "
                          f"({_fmt(v['predicted'])} <= {_fmt(v['capacity'])})")


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


@app.command()
def predict(
    n_layer: int = typer.Option(None, min=1),
    n_head: int = typer.Option(None, min=1),
    n_embd: int = typer.Option(None, min=1),
    block_size: int = typer.Option(None, min=1),
    batch_size: int = typer.Option(None, min=1),
    vocab: int = typer.Option(None, "--vocab", "--vocab-size", min=1, help="default 50304, or --like's corpus"),
    like: Path = typer.Option(None, "--like", help="take the sizes from a nanoGPT config .py, a vramfit TOML or a "
                              "checkpoint (its vocabulary from its dataset's meta); flags given override them"),
    model: Path = typer.Option(None, help="model JSON (default: the most recently fitted profile in results/models "
                               "by its recorded fit time, a GPU's before a CPU's)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Predicted training memory of one config, with a breakdown and the safety margin."""
    import json

    from vramfit.plan.like import resolve_shape
    from vramfit.plan.recommend import predict_one

    shape, _ = resolve_shape(dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                  batch_size=batch_size, vocab_size=vocab), like=like)
    r = predict_one(shape, model)
    if json_out:
        typer.echo(json.dumps({"predicted_bytes": int(r["predicted"]), "margin_bytes": int(r["margin"]),
                               "naive_bytes": int(r["naive"]), "regime": r["regime"],
                               "breakdown": {k: int(v) for k, v in r["breakdown"].items()},
                               "model_file": str(r["model_file"]),
                               "extrapolated": sorted(r["extrapolation"].outside),
                               "extrapolation_margin_bytes": int(r["widened_margin"])}))
        return
    profile = r["model"]
    typer.echo(f"model {r['model_file']} ({profile.device}, {profile.recipe_key}, target {profile.target})")
    typer.echo(f"predicted peak: {_fmt(r['predicted'])}  (+ margin {_fmt(r['margin'])} = "
               f"{_fmt(r['predicted'] + r['margin'])}; peak in the {r['regime']})")
    for k, v in r["breakdown"].items():
        typer.echo(f"  {k:<18} {_fmt(v):>12}")
    typer.echo(f"naive params+tokens line: {_fmt(r['naive'])}")
    extra = r["extrapolation"]
    if not extra.inside:
        widened = extra.widened_margin(profile.margin_rel)
        typer.echo(f"warning: an extrapolation, {extra.describe()}: plan with a margin of "
                   f"{_fmt(r['widened_margin'])} ({widened:.1%}). Check it by dry run (`vramfit estimate` with "
                   "these sizes) or measure it (`vramfit sweep` with these sizes as flags)", err=True)


@app.command()
def suggest(
    vram: str = typer.Option(..., help="the card's memory: 8G, 7.5GiB, 8000M, 24GB (binary units: 8G = 8 GiB), or a "
                             "card: t4, l4, a10, a100-40g, h100-80g, rtx3090, ... (its NVML total), or auto: this "
                             "machine's GPU (NVML total - what others use - 2%), else half its RAM"),
    reserve: str = typer.Option("0", help="memory kept free for the display and other processes, e.g. 500M"),
    objective: str = typer.Option(None, help="trainable (default: the largest models that train on >= "
                                  "16,384 tokens per step at block 256-1024, <= 16 params per corpus token) | "
                                  "params (largest model; the default with --like) | tokens (most tokens per step) | "
                                  "balanced (params x tokens)"),
    n_layer: str = typer.Option(None, help="fix or restrict: 12 or 6,12"),
    n_head: str = typer.Option(None),
    n_embd: str = typer.Option(None),
    block_size: str = typer.Option(None),
    batch_size: str = typer.Option(None),
    vocab: str = typer.Option(None, "--vocab", "--vocab-size", help="default: --data-dir's vocabulary when it "
                              "is prepared, else 50304 (GPT-2 BPE, padded)"),
    min_batch: int = typer.Option(1, min=1),
    top: int = typer.Option(None, min=1, help="how many (default 10; with --like, 1 per search)"),
    model: Path = typer.Option(None, help="model JSON (default: the most recently fitted profile of --device in "
                               "results/models, by its recorded fit time)"),
    data_dir: str = typer.Option(None, help="corpus for the printed train commands (default: --like's, else "
                                 "data/shakespeare_char)"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output (schema: vramfit/schemas/)"),
    save: Path = typer.Option(Path("results/suggestions.json"), help="where `train --suggestion N` finds them"),
    no_profile: bool = typer.Option(False, "--no-profile", help="no sweep of this GPU: plan from dry-run "
                                    "estimates plus a context constant (unvalidated)"),
    recipe: str = typer.Option(None, help="with --no-profile: the recipe (inline k=v,... or a TOML/JSON file; "
                               "default: dtype=bfloat16,optimizer=fused under --like's dtype and compile)"),
    capability: str = typer.Option(None, help="with the dry run: the GPU's compute capability (8.6, 9.0; default: "
                                   "this machine's GPU, else 8.0)"),
    device: str = typer.Option("auto", help="plan for: auto (the newest GPU profile, else a GPU by the dry run) | "
                               "cuda (the same) | cpu (the newest CPU profile: RAM)"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="the dry run's cache (default: the user cache "
                                   "directory, or $VRAMFIT_CACHE_DIR)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="with the dry run: neither read nor write the cache"),
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
    like: Path = typer.Option(None, "--like", help="a nanoGPT config .py, a vramfit TOML or a checkpoint: that "
                              "config as it is, and the largest batch / block / model close to it that fits"),
    within_measured: bool = typer.Option(False, "--within-measured", help="keep layers, width, block and batch "
                                         "inside the ranges the profile measured (no extrapolation)"),
) -> None:
    # (long only by its option declarations: the body is ~30 lines, the rest is in plan.recommend)
    """Configs that fit a card with the safety margin, ranked, each with its train command.
    With --hours H: ranked by what H hours of training buys (tokens/s from the throughput model)."""
    import json

    from vramfit.paths import writable_file
    from vramfit.plan.recommend import PlanRequest, parse_int_options, recommend
    from vramfit.plan.workflows import save_suggestions

    if hours is None and rank != "auto":
        fail("--rank ranks by time: give --hours too")
    writable_file(save, "--save")
    space = parse_int_options(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                              batch_size=batch_size, vocab_size=vocab)
    rec = recommend(PlanRequest(vram, reserve, objective, space, min_batch, top, model, data_dir, no_profile,
                                recipe, capability, hours, rank, loss_law, gpus, strategy, device, cache_dir,
                                not no_cache, within_measured, like))
    for line in rec.warnings:
        typer.echo(line, err=True)
    if rec.items:
        save_suggestions(rec.doc, save)
    if json_out:
        typer.echo(json.dumps(rec.doc, indent=1))
        if not rec.items:
            raise typer.Exit(1)
        return
    _print_suggestions(rec, vram, save)


def _print_suggestions(rec, vram: str, save: Path) -> None:
    """`suggest`'s terminal output: what the plan is for, the budget, the table, the train commands."""
    from vramfit.show.tables import suggestion_table, time_table, to_rich

    doc, budget = rec.doc, rec.doc["budget_bytes"]
    console = _console()
    console.print(_esc(rec.plan_line), soft_wrap=True)
    for line in rec.notes:
        typer.echo(line)
    label = rec.vram_label if doc.get("card") or vram.strip().lower() == "auto" else vram
    console.print(f"budget: {_fmt(budget)} ({_esc(label)} - reserve "
                  f"{_fmt(doc['reserve_bytes'])}) · model {_esc(rec.model_path.name)} ({_esc(doc['device'])}, "
                  f"margin {doc['margin_rel']:.1%})")
    if rec.like_line:
        console.print(_esc(rec.like_line), soft_wrap=True)
    if rec.nothing_fits is not None:
        need, cfg = rec.nothing_fits
        console.print(f"nothing fits in {_fmt(budget)}. The smallest config in this space needs {_fmt(need)}: "
                      + " ".join(f"{k}={v}" for k, v in cfg.items())
                      + ". Raise --vram, lower --reserve, or relax the fixed sizes.")
        raise typer.Exit(1)
    if rec.time is not None:
        console.print(to_rich(time_table(rec.items, rec.time.hours, rec.time.rank)))
    else:
        console.print(to_rich(suggestion_table(rec.items, doc["ranking"])))
    for s in rec.items:
        console.print(f"#{s.rank}: {_esc(s.command)}", soft_wrap=True)
    console.print(f"saved to {_esc(str(save))}: train one with `vramfit train --suggestion N`")


VRAM_HELP = "budget of the plots and suggestions (default: the last `vramfit suggest`'s, else 8G)"
SUGGESTIONS_HELP = "the last `vramfit suggest` output, whose budget, vocabulary and #1 shape are drawn"
DATA_DIR_HELP = "rank in this prepared corpus's vocabulary (default: the last suggest's, else data/shakespeare_char)"


@app.command()
def plot(
    db: Path = typer.Option(Path("results/vramfit.sqlite")),
    out: Path = typer.Option(Path("results/plots"), help="folder for the PNG files"),
    vram: str = typer.Option(None, help=VRAM_HELP),
    target: str = typer.Option("auto"),
    device: str = typer.Option(None),
    recipe: str = typer.Option(None),
    hours: str = typer.Option("6", "--hours", help="time budget of the frontier plot"),
    rank: str = typer.Option("auto", "--rank", help="frontier: optimal | chinchilla | loss | auto (see suggest)"),
    data_dir: str = typer.Option(None, help=DATA_DIR_HELP + "; its fitted loss law is the frontier's"),
    suggestions: Path = typer.Option(Path("results/suggestions.json"), help=SUGGESTIONS_HELP),
) -> None:
    """PNG plots per device and recipe: predicted vs measured, memory vs tokens, feasibility, breakdown, residuals,
    and (with ms/iter in the sweep) ms/iter predicted vs measured and the frontier of what --hours buy."""
    from vramfit.paths import writable_dir
    from vramfit.plan.recommend import time_args as parse_time_args
    from vramfit.show.context import plan_context
    from vramfit.show.plots import write_plots

    writable_dir(out, "--out")
    ctx = plan_context(vram, suggestions, data_dir)
    time_args = parse_time_args(hours, rank, None, ctx.data_dir)
    with _open_store(db) as store:
        points = store.points_frame(device=device, recipe_key=recipe)
    typer.echo("; ".join(ctx.sources))
    for p in write_plots(points, out, ctx, target, time_args):
        typer.echo(f"wrote {p}")


@app.command()
def report(
    db: Path = typer.Option(Path("results/vramfit.sqlite")),
    out: Path = typer.Option(Path("results/report.html")),
    vram: str = typer.Option(None, help=VRAM_HELP),
    target: str = typer.Option("auto"),
    data_dir: str = typer.Option(None, help=DATA_DIR_HELP),
    suggestions: Path = typer.Option(Path("results/suggestions.json"), help=SUGGESTIONS_HELP),
    models: Path = typer.Option(Path("results/models"), help="where the page looks for the model file it names"),
) -> None:
    """One self-contained HTML page: a what-fits calculator (the fitted model in the page, offline), data summary,
    coefficients, CV tables, the suggestions and every plot."""
    from vramfit.paths import writable_file
    from vramfit.show.context import plan_context
    from vramfit.show.report import write_report

    writable_file(out, "--out")
    ctx = plan_context(vram, suggestions, data_dir)
    with _open_store(db) as store:
        points = store.points_frame()
    typer.echo("; ".join(ctx.sources))
    path = write_report(points, out, ctx, target=target, models_dir=models, source=str(db))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


@app.command()
def estimate(
    n_layer: int = typer.Option(None, help="transformer blocks"),
    n_head: int = typer.Option(None, help="attention heads"),
    n_embd: int = typer.Option(None, help="embedding width"),
    block_size: int = typer.Option(None, help="context length"),
    batch_size: int = typer.Option(None, help="micro-batch size"),
    vocab: int = typer.Option(None, "--vocab", "--vocab-size", help="vocabulary size (default 50304, or "
                              "--like's / --ckpt's)"),
    like: Path = typer.Option(None, "--like", help="take the sizes from a nanoGPT config .py or vramfit TOML"),
    ckpt: Path = typer.Option(None, "--ckpt", help="take the sizes from a checkpoint (vramfit's or nanoGPT's; "
                              "the batch from its config)"),
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
    from vramfit.plan.like import resolve_shape

    shape, found = resolve_shape(dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                      batch_size=batch_size, vocab_size=vocab), like=like, ckpt=ckpt)
    batch_size = shape.batch_size
    if batch_size < 1:
        raise VramfitError(f"batch_size must be >= 1, got {batch_size}")
    extras = {k: v for k, v in (("dropout", getattr(found, "dropout", None)), ("bias", getattr(found, "bias", None)))
              if v is not None}
    mc = GPTConfig(shape.n_layer, shape.n_head, shape.n_embd, shape.block_size, shape.vocab_size, **extras)
    run = estimate_step_isolated if target == "cuda" else estimate_step  # CUDA code paths may abort: child process
    est = run(mc, batch_size, parse_recipe(recipe), target, parse_capability(capability))
    typer.echo(json.dumps(est.to_dict()) if json_out else format_estimate(est))


@app.command("export-nanogpt")
def export_nanogpt(
    ckpt: Path = typer.Option(Path("out/ckpt.pt"), help="a vramfit checkpoint file or its folder"),
    out_dir: Path = typer.Option(..., "--out-dir", help="folder for ckpt.pt in nanoGPT's layout (+ meta.pkl)"),
    data_root: Path = typer.Option(None, "--data-root", help="nanoGPT's data/ folder: also write "
                                   "<data-root>/<dataset>/meta.pkl there (where its sample.py looks) if absent"),
) -> None:
    """Write a vramfit checkpoint in nanoGPT's layout, for nanoGPT's sample.py (`--out_dir=OUT`)."""
    from gpt.export import export_nanogpt as run_export

    for path in run_export(ckpt, out_dir, data_root):
        typer.echo(f"wrote {path}")


def _click_exceptions():
    """The click exception classes typer raises (recent typer vendors click as typer._click)."""
    try:
        from typer._click import exceptions as cx
    except ImportError:
        from click import exceptions as cx
    return cx


def _usage_line(exc) -> str:
    """A click usage error as one line: the message and where to find help."""
    msg = " ".join(exc.format_message().split())
    where = exc.ctx.command_path if exc.ctx is not None else "vramfit"
    return f"error: {msg} (see `{where} --help`)"


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors (bad values, usage errors) become one `error:` line and exit code 2, never a
    traceback; --help stays rich."""
    cx = _click_exceptions()
    try:
        rv = app(args=argv, prog_name="vramfit", standalone_mode=False)
    except getattr(cx, "NoArgsIsHelpError", ()):  # the help was printed
        return 0
    except cx.UsageError as exc:
        typer.echo(_usage_line(exc), err=True)
        return 2
    except cx.ClickException as exc:  # e.g. a file option that cannot be opened
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
