"""nanoGPT's Python config files (`config/train_shakespeare_char.py`) read as data, never executed.

nanoGPT's configurator `exec`s these files over `train.py`'s globals. Here the file is parsed with `ast` and
only top-level assignments of literals are accepted (numbers, strings, booleans, None, and arithmetic on
numbers such as `5 * 8`); comments and docstrings are skipped, and anything else (an import, a call, a name,
a loop) is an error naming its line. The values are applied over `train.py`'s own defaults, as nanoGPT does.
No torch here.
"""

from __future__ import annotations

import ast
import operator
from pathlib import Path

from gpt.errors import ConfigError

# nanoGPT train.py's globals before the config file runs (karpathy/nanoGPT train.py, lines 34-74)
NANOGPT_DEFAULTS: dict = {
    "out_dir": "out", "eval_interval": 2000, "log_interval": 1, "eval_iters": 200, "eval_only": False,
    "always_save_checkpoint": True, "init_from": "scratch", "wandb_log": False, "wandb_project": "owt",
    "wandb_run_name": "gpt2", "dataset": "openwebtext", "gradient_accumulation_steps": 5 * 8, "batch_size": 12,
    "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768, "dropout": 0.0, "bias": False,
    "learning_rate": 6e-4, "max_iters": 600000, "weight_decay": 1e-1, "beta1": 0.9, "beta2": 0.95,
    "grad_clip": 1.0, "decay_lr": True, "warmup_iters": 2000, "lr_decay_iters": 600000, "min_lr": 6e-5,
    "backend": "nccl", "device": "cuda", "dtype": "auto", "compile": True,
}
# nanoGPT keys with no effect on what vramfit trains (logging services, the DDP backend, eval-only runs)
IGNORED = ("wandb_log", "wandb_project", "wandb_run_name", "backend", "eval_only")
# Each train.py setting, by what it does to a training step's peak memory (tests/test_nanogpt_loop.py checks that
# every key of NANOGPT_DEFAULTS is in exactly one): the settings `vramfit estimate --like` uses, and where ...
MEMORY_KEYS = {
    "n_layer": "the model", "n_head": "the model", "n_embd": "the model", "block_size": "the model",
    "bias": "the model", "dropout": "the model (its masks)", "batch_size": "the micro-batch",
    "dataset": "the vocabulary (its meta.pkl, else GPT-2's 50304)",
    "gradient_accumulation_steps": "the micro-steps per optimizer step (gradients kept across them)",
    "grad_clip": "clip_grad_norm_'s temporaries (0: no clipping)", "dtype": "the recipe (CUDA only: fp32 on the CPU)",
    "compile": "the recipe (the torch.compile emulation)", "device": "--target (cpu or cuda)",
    "init_from": "'scratch' and 'resume' train the same step (the checkpoint is freed before it); 'gpt2*' refused",
}
# ... and those that leave it unchanged, with why
NO_MEMORY_EFFECT = {
    "out_dir": "a folder", "log_interval": "printing", "wandb_log": "logging", "wandb_project": "logging",
    "wandb_run_name": "logging", "eval_interval": "evaluation runs under no_grad, below the training peak",
    "eval_iters": "evaluation runs under no_grad, below the training peak", "eval_only": "no training step",
    "always_save_checkpoint": "torch.save writes the tensors as they are (a CUDA tensor through host memory)",
    "learning_rate": "a number", "max_iters": "a number", "weight_decay": "a number (applied in place)",
    "beta1": "a number", "beta2": "a number", "decay_lr": "a number", "warmup_iters": "a number",
    "lr_decay_iters": "a number", "min_lr": "a number",
    "backend": "the DDP backend: one process per GPU, each estimated as one (suggest --gpus adds DDP's buckets)",
}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_MAX_POW = 64


def _value(node: ast.expr, where: str) -> object:
    """A literal, or arithmetic on number literals; anything else is a ConfigError naming `where`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool | type(None)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _value(node.operand, where)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _value(node.left, where), _value(node.right, where)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        if numbers and not (isinstance(node.op, ast.Pow) and abs(b) > _MAX_POW):
            try:
                return _OPS[type(node.op)](a, b)
            except (ZeroDivisionError, OverflowError):
                pass
    raise ConfigError(f"{where}: only literal values (numbers, strings, True/False/None, arithmetic on numbers) "
                      f"are read from a nanoGPT config, not {ast.unparse(node)!r}")


def read_py_config(path: str | Path) -> dict:
    """The top-level `name = literal` assignments of a Python config file, in order (later ones win)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such config file: {p}")
    try:
        tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(f"{p}" + (f" line {line}" if line else "") + f" is not valid Python: "
                          f"{getattr(exc, 'msg', exc)}") from None
    out: dict = {}
    for stmt in tree.body:
        where = f"{p} line {stmt.lineno}"
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = _value(stmt.value, where)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            out[stmt.target.id] = _value(stmt.value, where)
        else:
            raise ConfigError(f"{where}: only top-level `name = literal` assignments are read from a nanoGPT "
                              f"config (never executed), not {ast.unparse(stmt).splitlines()[0]!r}")
    return out


def foreign_keys(path: str | Path) -> list[str]:
    """The names a nanoGPT config file sets that train.py has no global for: its configurator runs them, and
    train.py never reads them (vramfit's own keys, such as `optimizer`, are used by vramfit's trainer alone)."""
    return [k for k in read_py_config(path) if k not in NANOGPT_DEFAULTS]


def _data_dir(dataset: str, config_path: Path) -> str:
    """nanoGPT's `data/<dataset>`: from the working folder when it is there, else from the nanoGPT checkout the
    config file sits in (`<root>/config/x.py` -> `<root>/data/<dataset>`)."""
    local = Path("data") / dataset
    beside = config_path.resolve().parent.parent / "data" / dataset
    return str(beside) if not local.is_dir() and beside.is_dir() else str(local)


def nanogpt_values(path: str | Path) -> tuple[dict, dict]:
    """(TrainConfig values, ignored nanoGPT keys) of a nanoGPT config file over train.py's defaults.

    `dataset` becomes `data_dir` (data/<dataset>); a device/compile/dtype the file leaves at nanoGPT's default
    stays vramfit's 'auto' (nanoGPT's default device 'cuda' and compile True assume a GPU)."""
    p = Path(path)
    own = read_py_config(p)
    values = {**NANOGPT_DEFAULTS, **own}
    for key in ("device", "compile", "dtype"):
        if key not in own:
            values.pop(key)
    init = values.get("init_from")
    if isinstance(init, str) and init.startswith("gpt2"):
        raise ConfigError(f"{p}: init_from = {init!r} loads OpenAI's GPT-2 weights, which vramfit does not "
                          "download; use 'scratch' or 'resume'")
    if not isinstance(values["dataset"], str) or not values["dataset"]:
        raise ConfigError(f"{p}: dataset must be a folder name under data/, got {values['dataset']!r}")
    values["data_dir"] = _data_dir(values.pop("dataset"), p)
    ignored = {k: values.pop(k) for k in list(values) if k in IGNORED}
    return values, ignored
