"""The `vramfit` command line: thin wrappers that parse, call the modules, and print.

Every error a user can cause ends as one line on stderr and exit code 2 (see `main`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vramfit.errors import USER_ERRORS

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
) -> None:
    """Train a GPT: `vramfit train [--config FILE.toml] [--key value ...]` (any TrainConfig field)."""
    from gpt.train import load_config
    from gpt.train import train as run_training

    cfg = load_config(config, parse_overrides(ctx.args))
    result = run_training(cfg)
    typer.echo(
        f"done: {result.iter_num} iterations, best val loss {result.best_val_loss:.4f}, "
        f"{result.ms_per_iter:.1f} ms/iter, {result.tokens_per_s:,.0f} tokens/s"
        + (f", checkpoint {result.ckpt_path}" if result.ckpt_path else "")
    )


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
