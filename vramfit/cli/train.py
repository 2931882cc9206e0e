"""The GPT itself: `prepare` a corpus, `train` (measured where asked, on one process or under torchrun)."""

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
    from vramfit.paths import check_output, writable_dir, writable_file

    writable_dir(cfg.out_dir, "--out-dir")
    if db is not None:
        writable_file(db, "--db")
        check_output(db, {"the checkpoint": Path(cfg.out_dir) / "ckpt.pt",
                          "the training data": [Path(cfg.data_dir) / n for n in ("train.bin", "val.bin", "meta.json")]},
                     "--db", replaces=("a SQLite database",))
        if db.exists():
            from vramfit.store import Store

            Store(db, readonly=True).close()  # a vramfit database, readable: else one line now, not after training
