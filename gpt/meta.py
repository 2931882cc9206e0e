"""A prepared corpus's meta: vramfit's `meta.json`, or nanoGPT's `meta.pkl` read without running any code.

nanoGPT's `prepare.py` pickles `{'vocab_size': int, 'itos': {int: str}, 'stoi': {str: int}}`. Unpickling can
run arbitrary code (a `__reduce__` names any callable), so `read_meta_pkl` uses an unpickler that resolves no
global at all except `set`/`frozenset` (how protocols 0-3 pickle sets): only builtin containers and scalars come
back, and anything else is refused before it is called. No torch here.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from gpt.config import GPT2_VOCAB
from gpt.errors import DataError
from gpt.files import output_path

# protocols 0-2 name the module `__builtin__` (Python 2's), which pickle maps to `builtins`
_SAFE_GLOBALS = {(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset")}


class _BuiltinsOnly(pickle.Unpickler):
    """Resolves no class or function: a pickle that needs one (an object, a `__reduce__`) fails to load."""

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle's hook
        if (module, name) in _SAFE_GLOBALS:
            return {"set": set, "frozenset": frozenset}[name]
        raise pickle.UnpicklingError(f"refused {module}.{name}: only builtin containers and scalars are read")

    def persistent_load(self, pid):  # noqa: D102 - pickle's hook
        raise pickle.UnpicklingError("refused a persistent id: only builtin containers and scalars are read")


def safe_unpickle(data: bytes) -> object:
    """Unpickle builtin containers and scalars only; anything else raises `pickle.UnpicklingError`."""
    return _BuiltinsOnly(io.BytesIO(data)).load()


def read_meta_pkl(path: str | Path) -> dict:
    """nanoGPT's meta.pkl as a dict (vocab_size, and itos/stoi when char-level), read without executing it."""
    path = Path(path)
    try:
        raw = safe_unpickle(path.read_bytes())
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as exc:
        raise DataError(f"{path} is not a readable pickle: {type(exc).__name__}") from None
    vocab = raw.get("vocab_size") if isinstance(raw, dict) else None
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise DataError(f"{path} is not a nanoGPT meta.pkl (needs a dict with a positive int 'vocab_size')")
    return raw


def meta_from_pkl(raw: dict, source: str | Path = "meta.pkl") -> dict:
    """vramfit's meta dict for a nanoGPT meta.pkl: char-level with its vocabulary in id order when it has one."""
    vocab = int(raw["vocab_size"])
    itos = raw.get("itos")
    if itos is None and isinstance(raw.get("stoi"), dict):
        itos = {i: s for s, i in raw["stoi"].items()}
    base = {"vocab_size": vocab, "dtype": "uint16", "source": str(source)}
    if itos is None:  # only a vocabulary size: enough to train, not to encode text
        return {"tokenizer": "none", **base}
    ok = isinstance(itos, dict) and sorted(itos) == list(range(len(itos))) and len(itos) <= vocab
    if not ok or not all(isinstance(s, str) for s in itos.values()):
        raise DataError(f"{source}: 'itos' must map the ids 0..n-1 to strings")
    return {"tokenizer": "char", "chars": [itos[i] for i in range(len(itos))], **base}


def write_meta_pkl(meta: dict, path: str | Path) -> Path:
    """Write a char-level meta as nanoGPT's prepare.py does (a plain pickle of vocab_size, itos, stoi)."""
    chars = list(meta["chars"])
    doc = {"vocab_size": int(meta["vocab_size"]), "itos": dict(enumerate(chars)),
           "stoi": {c: i for i, c in enumerate(chars)}}
    path = Path(path)
    with output_path(path, "meta.pkl") as target, open(target, "wb") as f:
        pickle.dump(doc, f)
    return path


def meta_source(data_dir: str | Path) -> Path | None:
    """The file a data folder's vocabulary comes from: meta.json, else meta.pkl, else None."""
    for name in ("meta.json", "meta.pkl"):
        if (Path(data_dir) / name).is_file():
            return Path(data_dir) / name
    return None


def load_meta(data_dir: str | Path) -> dict:
    """A data folder's meta: vramfit's meta.json, nanoGPT's meta.pkl, or for a nanoGPT folder with only
    train.bin / val.bin, GPT-2 BPE with nanoGPT's padded vocabulary (as its train.py does)."""
    src = meta_source(data_dir)
    if src is not None and src.suffix == ".json":
        try:
            return json.loads(src.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{src} is not valid JSON") from None
    if src is not None:
        return meta_from_pkl(read_meta_pkl(src), src)
    if (Path(data_dir) / "train.bin").is_file():
        return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB, "dtype": "uint16", "source": "GPT-2 (no meta.pkl)"}
    raise DataError(f"no prepared corpus in {data_dir} (missing meta.json, or nanoGPT's meta.pkl / train.bin; "
                    "run `vramfit prepare`)")


def corpus_vocab(data_dir: str | Path) -> tuple[int, str] | None:
    """(vocabulary size, where it comes from) of a prepared folder, None when the folder holds no corpus.
    A meta.pkl that is refused or unreadable is an error, never a silent fallback."""
    d = Path(data_dir)
    if meta_source(d) is None and not (d / "train.bin").is_file():
        return None
    meta = load_meta(d)
    v = meta.get("vocab_size") if isinstance(meta, dict) else None
    if not isinstance(v, int) or v < 1:
        return None
    return v, str(meta.get("source") or meta_source(d))


def find_meta_pkl(ckpt_path: str | Path, dataset: str | None = None,
                  data_dir: str | Path | None = None) -> Path | None:
    """Where a nanoGPT checkpoint's meta.pkl is: beside the checkpoint, then `data/<dataset>` (from the working
    folder, then from the checkpoint folder's parent, nanoGPT's root), then `data_dir`."""
    ckpt = Path(ckpt_path)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    candidates = [folder / "meta.pkl"]
    if dataset:
        candidates += [Path("data") / dataset / "meta.pkl", folder.parent / "data" / dataset / "meta.pkl"]
    if data_dir is not None:
        candidates.append(Path(data_dir) / "meta.pkl")
    return next((p for p in candidates if p.is_file()), None)
