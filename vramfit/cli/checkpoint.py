"""What a checkpoint is for: `sample` text from it, `export-nanogpt` it to nanoGPT's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vramfit.cli import options as o
from vramfit.cli.app import app, fail


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
