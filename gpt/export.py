"""vramfit checkpoints in nanoGPT's layout, so that nanoGPT's `sample.py` (and `train.py --init_from=resume`)
load them: `model` (no `_orig_mod.` prefixes), `optimizer`, `model_args` (exactly nanoGPT's GPTConfig fields),
`iter_num`, `best_val_loss`, and a flat `config` of scalars that names the `dataset`; a char vocabulary goes
to `meta.pkl`, where sample.py looks for it (`data/<dataset>/meta.pkl`)."""

from __future__ import annotations

import math
from pathlib import Path

from gpt.config import GPTConfig
from gpt.errors import CheckpointError
from gpt.files import check_output, same_file, writable_dir
from gpt.meta import write_meta_pkl
from gpt.model import clean_state_dict
from gpt.train import CHECKPOINT_KINDS, load_checkpoint, save_checkpoint

NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def dataset_name(ckpt: dict) -> str:
    """The nanoGPT dataset name of a checkpoint: its config's `dataset`, else its data_dir's folder name."""
    config = ckpt.get("config") or {}
    name = config.get("dataset") or Path(str(config.get("data_dir") or "")).name
    if not name:
        raise CheckpointError("the checkpoint names no corpus (no config data_dir or dataset)")
    return str(name)


def nanogpt_checkpoint(ckpt: dict) -> dict:
    """A checkpoint dict in nanoGPT's layout (tensors shared, not copied)."""
    shape = GPTConfig.from_dict(ckpt["model_args"]).to_dict()
    if shape["arch"] != "gpt2":
        raise CheckpointError(f"a {shape['arch']} checkpoint has no nanoGPT layout: only arch gpt2 exports")
    config = {k: v for k, v in (ckpt.get("config") or {}).items()
              if isinstance(v, int | float | bool | str) and k != "data_dir"}  # train.py keeps only scalars
    config["dataset"] = dataset_name(ckpt)
    best = float(ckpt.get("best_val_loss", math.inf))
    out = {
        "model": clean_state_dict(ckpt["model"]),
        "model_args": {k: shape[k] for k in NANOGPT_MODEL_ARGS},
        "iter_num": int(ckpt.get("iter_num", 0)),
        "best_val_loss": best if math.isfinite(best) else 1e9,  # nanoGPT's "none yet"
        "config": config,
    }
    if "optimizer" in ckpt:
        out["optimizer"] = ckpt["optimizer"]  # same two AdamW groups (decay / no decay) in the same order
    return out


def export_nanogpt(ckpt_path: str | Path, out_dir: str | Path, data_root: str | Path | None = None) -> list[Path]:
    """Write `out_dir/ckpt.pt` in nanoGPT's layout and, for a char corpus, `meta.pkl` beside it and (given
    nanoGPT's `data/` folder as `data_root`) in `data_root/<dataset>/` unless one is there. Returns the files."""
    out, src = Path(out_dir), Path(ckpt_path)
    src = src / "ckpt.pt" if src.is_dir() else src
    protected = {"the source checkpoint": src}
    if same_file(out / "ckpt.pt", src):
        raise CheckpointError(f"--out-dir {out} holds the source checkpoint: export to another folder")
    for path in (out / "ckpt.pt", out / "meta.pkl"):
        check_output(path, protected, "--out-dir", CHECKPOINT_KINDS)
    writable_dir(out, "--out-dir")
    if data_root is not None:
        writable_dir(Path(data_root), "--data-root")
    ckpt = load_checkpoint(ckpt_path)
    doc = nanogpt_checkpoint(ckpt)
    written = [save_checkpoint(doc, out / "ckpt.pt", protected)]
    meta = ckpt.get("meta") or {}
    if meta.get("tokenizer") == "char":
        written.append(write_meta_pkl(meta, check_output(out / "meta.pkl", protected, "--out-dir", ("a pickle",))))
        if data_root is not None:
            target = Path(data_root) / doc["config"]["dataset"] / "meta.pkl"
            if not target.exists():
                written.append(write_meta_pkl(meta, check_output(target, protected, "--data-root", ("a pickle",))))
    return written
