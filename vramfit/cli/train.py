"""The GPT itself: `prepare` a corpus, `train`, `sample`, `export-nanogpt`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from vramfit.cli import options as o
from vramfit.cli.app import app, fail


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
    name: Annotated[str, typer.Argument(help="a known corpus: 'shakespeare' (downloaded unless --input is "
                                             "given)")] = None,
    input: Annotated[Path, typer.Option("--input", "-i", help="a UTF-8 text file to prepare")] = None,
    tokenizer: Annotated[str, typer.Option(help="char | gpt2")] = "char",
    data_dir: o.DataDir = None,
) -> None:
    """Tokenize a corpus into --data-dir (default data/<name>_<tokenizer>): train.bin / val.bin / meta.json."""
    from gpt.data import download_shakespeare, prepare_file
    from vramfit.paths import writable_dir

    if name not in (None, "shakespeare"):
        fail(f"unknown corpus {name!r}; use 'shakespeare' or --input FILE")
    if name is None and input is None:
        fail("give a corpus name ('shakespeare') or --input FILE")
    out = writable_dir(data_dir or Path("data") / f"{name or input.stem}_{tokenizer}", "--data-dir")
    if input is None:
        input = download_shakespeare(Path("data") / "shakespeare" / "input.txt")
    meta = prepare_file(input, out, tokenizer=tokenizer)
    typer.echo(f"prepared {out}: {meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
               f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option("--config", "-c", help="a TOML config (flat keys or \\[model]/\\[train] "
                                         "tables) or a nanoGPT config .py (read as data, never executed)")] = None,
    suggestion: Annotated[int, typer.Option("--suggestion", "-s", min=1, help="train suggestion N of the last "
                                            "`vramfit suggest` (of --suggestions-file)")] = None,
    suggestions: o.SuggestionsFile = o.SUGGESTIONS_FILE,
    measure: Annotated[bool, typer.Option("--measure", help="probe memory and store it (on with "
                                                            "--suggestion)")] = False,
    db: o.Db = o.DB_FILE,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="data-parallel processes (GPUs) on this node: "
                                       "re-launches through torchrun with DDP (nccl on CUDA, gloo on the CPU); "
                                       "default: the suggestion's --gpus, else 1")] = None,
) -> None:
    """Train a GPT: `vramfit train [--config FILE.toml] [--suggestion N] [--key value ...]` (any TrainConfig
    field). With --suggestion it prints predicted vs measured memory and stores the run as a new point in --db.
    With --nproc N: DDP over N processes (gradient_accumulation_steps divided across them; rank 0 logs and
    checkpoints); memory is not probed under DDP."""
    from vramfit.plan.ddp import launch_train, under_torchrun

    if nproc is None and suggestion is not None and not under_torchrun():
        from vramfit.plan.workflows import load_suggestion

        nproc = int(load_suggestion(suggestion, suggestions)[0].get("gpus") or 1)
    if (nproc or 1) > 1 and not under_torchrun():
        args = [*ctx.args, "--suggestions-file", str(suggestions), "--db", str(db)]
        args += ["--config", str(config)] if config is not None else []
        args += ["--suggestion", str(suggestion)] if suggestion is not None else []
        args += ["--measure"] if measure else []
        raise typer.Exit(launch_train(nproc, args))
    _train_here(config, parse_overrides(ctx.args), suggestion, suggestions, measure, db)


def _train_here(config: Path | None, overrides: dict, suggestion: int | None, suggestions: Path, measure: bool,
                db: Path) -> None:
    """One process of a run (the only one, or a torchrun rank): train, measure where asked, print, store."""
    from gpt.config import load_config
    from gpt.train import train as run_training
    from vramfit.plan.ddp import under_torchrun

    distributed = under_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    master = os.environ.get("RANK", "0") == "0"
    doc = None
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
    typer.echo(f"done: {result.iter_num} iterations, best val loss {result.best_val_loss:.4f}, "
               f"{result.ms_per_iter:.1f} ms/iter, {result.tokens_per_s:,.0f} tokens/s"
               + (f", checkpoint {result.ckpt_path}" if result.ckpt_path else ""))
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
    ckpt: o.Ckpt = Path("out/ckpt.pt"),
    prompt: Annotated[str, typer.Option(help="text to continue")] = "\n",
    num_samples: Annotated[int, typer.Option(min=1)] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 300,
    temperature: float = 0.8,
    top_k: Annotated[int, typer.Option(min=1)] = 200,
    seed: int = 1337,
    device: o.Device = "auto",
    interactive: Annotated[bool, typer.Option("--interactive", help="prompt, read the completion, "
                                                                    "repeat")] = False,
    data_dir: o.DataDir = None,
) -> None:
    """Generate text from a checkpoint (vramfit's or nanoGPT's). nanoGPT's meta.pkl is looked for beside the
    checkpoint, then in data/<dataset> of its config, then in --data-dir."""
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


@app.command("export-nanogpt")
def export_nanogpt(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="folder for ckpt.pt in nanoGPT's layout "
                                                            "(+ meta.pkl)")],
    ckpt: o.Ckpt = Path("out/ckpt.pt"),
    data_root: Annotated[Path, typer.Option("--data-root", help="nanoGPT's data/ folder: also write "
                                            "<data-root>/<dataset>/meta.pkl there (where its sample.py looks) "
                                            "if absent")] = None,
) -> None:
    """Write a vramfit checkpoint in nanoGPT's layout, for nanoGPT's sample.py (`--out_dir=OUT`)."""
    from gpt.export import export_nanogpt as run_export

    for path in run_export(ckpt, out_dir, data_root):
        typer.echo(f"wrote {path}")
