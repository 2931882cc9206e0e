"""Planning: `predict` one config, `suggest` configs that fit a card, `estimate` one step by dry run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vramfit.cli import options as o
from vramfit.cli.app import app, fail
from vramfit.cli.output import predict_json, print_prediction, print_suggestions


@app.command()
def predict(n_layer: o.NLayer = None, n_head: o.NHead = None, n_embd: o.NEmbd = None, block_size: o.BlockSize = None,
            batch_size: o.BatchSize = None, vocab: o.Vocab = None, like: o.Like = None, model: o.Model = None,
            json_out: o.Json = False, grad_accum: o.GradAccum = None, checkpoint: o.Checkpoint = None,
            optimizer: o.Optimizer = None, loop: o.Loop = None, arch: o.Arch = None) -> None:
    """Predicted training memory of one config, with a breakdown and the safety margin; with --grad-accum,
    --checkpoint or --optimizer, under the profile's recipe with those switches (and ms per optimizer step).
    --like: its micro-steps, and what its loop keeps alive beyond vramfit's step (nanoGPT's: logits, next batch)."""
    import json

    from vramfit.plan.like import resolve_shape
    from vramfit.plan.recommend import predict_one

    shape, found = resolve_shape(dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                      batch_size=batch_size, vocab_size=vocab), like=like)
    r = predict_one(shape.with_(arch=arch) if arch else shape, model,
                    dict(grad_accum=grad_accum, checkpoint=checkpoint, optimizer=optimizer), found, loop)
    for line in r["warnings"]:
        typer.echo(line, err=True)
    if json_out:
        typer.echo(json.dumps(predict_json(r)))
    else:
        print_prediction(r)


@app.command()
def suggest(
    vram: o.Vram,
    reserve: Annotated[str, typer.Option(help="memory kept free for the display and other processes, "
                                              "e.g. 500M")] = "0",
    objective: Annotated[str, typer.Option(help="trainable (default: the largest models that train on >= 16,384 "
                                           "tokens per step at block 256-1024, <= 16 params per corpus token) | "
                                           "params (largest model; the default with --like) | tokens (most tokens "
                                           "per step) | balanced (params x tokens)")] = None,
    n_layer: o.NLayers = None, n_head: o.NHeads = None, n_embd: o.NEmbds = None, block_size: o.BlockSizes = None,
    batch_size: o.BatchSizes = None, vocab: o.Vocabs = None,
    min_batch: Annotated[int, typer.Option(min=1, help="the smallest batch a suggestion may have")] = 1,
    top: Annotated[int, typer.Option(min=1, help="how many suggestions (default 10; with --like, 1 per "
                                     "search)")] = None,
    model: o.Model = None,
    data_dir: o.DataDir = None,
    json_out: o.Json = False,
    save: o.SuggestionsFile = o.SUGGESTIONS_FILE,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="no sweep of this GPU: plan from dry-run "
                                             "estimates plus a context constant (unvalidated)")] = False,
    recipe: o.Recipe = None,
    capability: o.Capability = None,
    target: o.Target = "auto",
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="the dry run's cache (default: the user cache "
                                            "directory, or $VRAMFIT_CACHE_DIR)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="with the dry run: neither read nor write the "
                                           "cache")] = False,
    hours: o.Hours = None,
    rank: o.Rank = "auto",
    loss_law: Annotated[Path, typer.Option("--loss-law", help="with --hours: a `fit --loss` JSON (default: the "
                                           "one for --data-dir's corpus in results/losslaw)")] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="GPUs to train on (memory is per GPU; tokens per step "
                                      "multiply by this)")] = 1,
    strategy: Annotated[str, typer.Option("--strategy", help="multi-GPU strategy: ddp (default with --gpus > 1; "
                                          "adds DDP's gradient buckets, 4 B/param, per GPU)")] = None,
    like: o.Like = None,
    within_measured: Annotated[bool, typer.Option("--within-measured", help="keep layers, width, block and batch "
                                                  "inside the ranges the profile measured (no "
                                                  "extrapolation)")] = False,
    margin: Annotated[str, typer.Option("--margin", help="safety margin over the prediction, e.g. 5% or 0.05 "
                                        "(default: the profile's CV margin; with the dry run, the worst "
                                        "under-prediction on the public validation set + a cushion)")] = None,
    loop: o.Loop = None,
    tokens_per_step: o.TokensPerStep = None, checkpoint: o.Checkpoint = None, optimizer: o.Optimizer = None,
    arch: o.Arch = None,
    aspect_ratio: Annotated[int, typer.Option(help="--arch nanochat: width = depth x this, rounded up to a multiple "
                                              "of --head-dim (base_train's)")] = 64,
    head_dim: Annotated[int, typer.Option(help="--arch nanochat: heads = width / this (base_train's)")] = 128,
) -> None:
    """Configs that fit a card with the safety margin, ranked, each with its train command. --recipe (default:
    dtype=bfloat16,optimizer=fused under --like's dtype and compile) and --capability (default: this machine's GPU,
    else 8.0) are the dry run's (--no-profile, or no GPU profile). With --hours H: ranked by what H hours of
    training buys (tokens/s from the throughput model). With --like: the config as it is, then the largest batch,
    the longest block and the largest model close to it (--data-dir default: its corpus). With --tokens-per-step N:
    micro-batch, gradient accumulation, checkpointing and optimizer for N tokens a step, fastest first. With --arch
    nanochat: nanochat's models (depth -> width by --aspect-ratio and --head-dim) from a profile with its points."""
    import json

    from vramfit.paths import check_output, writable_file
    from vramfit.plan.recommend import PlanRequest, parse_int_options, recommend
    from vramfit.plan.workflows import save_suggestions

    if hours is None and rank != "auto":
        fail("--rank ranks by time: give --hours too")
    writable_file(save, "--suggestions-file")
    check_output(save, {"--model": model, "--loss-law": loss_law, "--like": like}, "--suggestions-file")
    space = parse_int_options(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                              batch_size=batch_size, vocab_size=vocab)
    rec = recommend(PlanRequest(vram, reserve, objective, space, min_batch, top, model, data_dir, no_profile,
                                recipe, capability, hours, rank, loss_law, gpus, strategy, target, cache_dir,
                                not no_cache, within_measured, like, margin, loop, tokens_per_step, checkpoint,
                                optimizer, arch, aspect_ratio, head_dim))
    for line in rec.warnings:
        typer.echo(line, err=True)
    if rec.items:
        save_suggestions(rec.doc, save)
    if json_out:
        typer.echo(json.dumps(rec.doc, indent=1))
        raise typer.Exit(0 if rec.items else 1)
    print_suggestions(rec, vram, save)


@app.command()
def estimate(n_layer: o.NLayer = None, n_head: o.NHead = None, n_embd: o.NEmbd = None,
             block_size: o.BlockSize = None, batch_size: o.BatchSize = None, vocab: o.Vocab = None,
             like: o.Like = None, ckpt: o.Ckpt = None, recipe: o.Recipe = None, target: o.Target = None,
             capability: o.Capability = "8.0", loop: o.Loop = None, json_out: o.Json = False) -> None:
    """Dry run: peak memory of two real training steps under fake tensors, no GPU needed (--target cuda emulates
    the GPU; --target cpu is the CPU step, byte-exact; default: --like's device, else cuda). --like fills the
    loop, the recipe (its dtype, compile, gradient accumulation) and the clipping."""
    import json

    from vramfit.dryrun.cache import EstimateCache
    from vramfit.dryrun.estimator import Estimator
    from vramfit.plan.like import estimate_request
    from vramfit.plan.nanochat import base_train_request, is_base_train

    if like is not None and is_base_train(like):  # a nanochat base_train command line: its model and device batch
        from vramfit.dryrun.estimate import parse_capability, parse_recipe

        req = base_train_request(str(like), parse_recipe(recipe), target or "cuda", parse_capability(capability),
                                 loop)
    else:
        req = estimate_request(dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                    batch_size=batch_size, vocab_size=vocab), like=like, ckpt=ckpt, recipe=recipe,
                               target=target, capability=capability, loop=loop)
    with Estimator("warm", cache=EstimateCache.user()) as estimator:  # a warm process (CUDA code paths may abort)
        est = estimator.estimate([req])[0]
        for line in estimator.cache.warnings:
            typer.echo(line, err=True)
    from vramfit.dryrun.estimate import format_estimate

    typer.echo(json.dumps(est.to_dict()) if json_out else format_estimate(est))
