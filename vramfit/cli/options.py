"""The options more than one command takes, each declared once: one flag name, one meaning, one help text
(tests/test_cli_options.py checks it across every command). A command states its own default beside the type.

Names: `--device` is where a command runs, `--target` the device it plans or estimates for, `--reading` which
memory reading a model describes; `--only-device` / `--only-recipe` select stored points; `--suggestions-file`
is the file `suggest` writes and `train`, `plot` and `report` read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vramfit.paths import DB_FILE, MODELS_DIR, SUGGESTIONS_FILE

__all__ = ["DB_FILE", "MODELS_DIR", "SUGGESTIONS_FILE"]

HELP = {
    "--db": "the SQLite database of measurements",
    "--json": "machine-readable output (suggest's follows vramfit/schemas/suggest.schema.json)",
    "--vram": "the card's memory: 8G, 7.5GiB, 8000M, 24GB (binary units: 8G = 8 GiB), or a card: t4, l4, a10, "
              "a100-40g, h100-sxm, rtx3070, 'RTX 4090', ... (its NVML total), or auto: this machine's GPU (NVML "
              "total - what others use - 2%), else half its RAM. plot and report: default the last suggest's, else 8G; "
              "info: say which card a name stands for",
    "--hours": "a time budget in hours (6, 1.5): rank what fits by what that much training buys (tokens/s from the "
               "throughput model)",
    "--rank": "with --hours: optimal = maximise min(D, 20 P), D tokens in the hours, P params (compute-optimal, "
              "Hoffmann et al. 2022); chinchilla = minimise 1.69 + 406.4/P^0.34 + 410.7/D^0.28; loss = minimise "
              "the loss law of --data-dir's corpus (`fit --loss`); auto = loss if fitted, else optimal",
    "--data-dir": "a prepared corpus folder (train.bin, val.bin, meta.json or nanoGPT's meta.pkl): plans use its "
                  "vocabulary and train on it",
    "--suggestions-file": "the suggestions `suggest` writes and `train --suggestion N`, `plot` and `report` read",
    "--model": "a fitted model JSON (`vramfit fit` writes them; default: the most recently fitted profile in "
               "results/models of the device planned for, by the fit time it records)",
    "--models": "the folder of fitted model JSON files",
    "--like": "a nanoGPT config .py (read as data, never run), a vramfit TOML or a checkpoint: its sizes and "
              "its dataset's vocabulary; flags given beside it override them (suggest: also a nanochat base_train "
              "command line in quotes, \"nanochat --depth 20\")",
    "--ckpt": "a checkpoint file or its folder (vramfit's, or nanoGPT's where read)",
    "--device": "where to run: auto (CUDA if available, else the CPU) | cpu | cuda | cuda:N",
    "--target": "the device planned for: cuda (a GPU: its profile, else the dry run; no GPU needed) | cpu (the "
                "CPU's RAM) | auto (the most recently fitted GPU profile, else cuda)",
    "--loop": "the training loop estimated: vramfit (`vramfit train`'s step) | nanogpt (nanoGPT's train.py: the "
              "logits kept through backward, the next batch fetched before it, its AdamW: fused on CUDA, for-loop "
              "on the CPU) | nanochat (base_train.py: a loss-only forward, its loader's buffers, no clipping); "
              "default: --like's (a nanoGPT config or checkpoint: nanogpt; a base_train line: nanochat), else "
              "vramfit",
    "--recipe": "the training recipe: inline dtype=bfloat16,optimizer=fused,... or a TOML/JSON file (suggest "
                "--tokens-per-step: fixed = search only its checkpointing and optimizer)",
    "--tokens-per-step": "tokens per optimizer step (524288 = nanoGPT's GPT-2 batch): search micro-batch x "
                         "gradient accumulation x block = this, activation checkpointing and the optimizer",
    "--grad-accum": "micro-batches per optimizer step (gradient accumulation)",
    "--checkpoint": "activation checkpointing: none | all | k (every k-th block) (suggest: a list, default "
                    "none,all)",
    "--optimizer": "fused | foreach | loop (AdamW) | sgd | adafactor | muon (suggest: a list; default the "
                   "recipe's)",
    "--capability": "the GPU's CUDA compute capability for the dry run: 8.0, 8.6, 9.0, ...",
    "--reading": "the memory reading modelled: auto (nvml on CUDA, tracked on the CPU) | nvml | allocated | "
                 "reserved | rss | tracked",
    "--only-device": "only the points of this device (name substring, cpu/cuda, or GPU UUID)",
    "--only-recipe": "only the points of this recipe key",
    "--arch": "the model family: gpt2 | nanochat, its options after a colon (nanochat:n_kv_head=1,window_pattern=L); "
              "sweep: also a list of families (gpt2,nanochat), an axis of the grid; suggest: nanochat's shapes from "
              "the depth (--n-layer) by its rule, from a profile swept with nanochat points",
    "--n-layer": "transformer blocks",
    "--n-head": "attention heads",
    "--n-embd": "embedding width",
    "--block-size": "context length",
    "--batch-size": "micro-batch size",
    "--vocab": "vocabulary size (default: --like's, --ckpt's or --data-dir's corpus, else 50304: GPT-2 BPE, "
               "padded)",
}
for axis in ("--n-layer", "--n-head", "--n-embd", "--block-size", "--batch-size", "--vocab"):
    HELP[axis] += " (sweep, suggest: a list, 4,8)"


def _option(name: str, *aliases: str, **kw) -> typer.models.OptionInfo:
    return typer.Option(name, *aliases, help=HELP[name], **kw)


Db = Annotated[Path, _option("--db")]
Json = Annotated[bool, _option("--json")]
Vram = Annotated[str, _option("--vram")]
Hours = Annotated[str, _option("--hours")]
Rank = Annotated[str, _option("--rank")]
DataDir = Annotated[str, _option("--data-dir")]
SuggestionsFile = Annotated[Path, _option("--suggestions-file")]
Model = Annotated[Path, _option("--model")]
Models = Annotated[Path, _option("--models")]
Like = Annotated[Path, _option("--like")]
Ckpt = Annotated[Path, _option("--ckpt")]
Device = Annotated[str, _option("--device")]
Target = Annotated[str, _option("--target")]
Recipe = Annotated[str, _option("--recipe")]
Loop = Annotated[str, _option("--loop")]
Capability = Annotated[str, _option("--capability")]
Reading = Annotated[str, _option("--reading")]
OnlyDevice = Annotated[str, _option("--only-device")]
OnlyRecipe = Annotated[str, _option("--only-recipe")]
# the shape: lists where a command takes many values (sweep, suggest), one number where it takes one
NLayers = Annotated[str, _option("--n-layer")]
NHeads = Annotated[str, _option("--n-head")]
NEmbds = Annotated[str, _option("--n-embd")]
BlockSizes = Annotated[str, _option("--block-size")]
BatchSizes = Annotated[str, _option("--batch-size")]
Vocabs = Annotated[str, _option("--vocab", "--vocab-size")]
NLayer = Annotated[int, _option("--n-layer", min=1)]
NHead = Annotated[int, _option("--n-head", min=1)]
NEmbd = Annotated[int, _option("--n-embd", min=1)]
BlockSize = Annotated[int, _option("--block-size", min=1)]
BatchSize = Annotated[int, _option("--batch-size", min=1)]
Vocab = Annotated[int, _option("--vocab", "--vocab-size", min=1)]
Arch = Annotated[str, _option("--arch")]
# the recipe's switches: one value (predict) or, with suggest --tokens-per-step, a list to search
TokensPerStep = Annotated[str, _option("--tokens-per-step")]
GradAccum = Annotated[int, _option("--grad-accum", min=1)]
Checkpoint = Annotated[str, _option("--checkpoint")]
Optimizer = Annotated[str, _option("--optimizer")]
