"""nanoGPT's own files taken as they are: meta.pkl (never unpickled with code), data folders, Python config
files (parsed, never executed), checkpoints both ways. Files are built here the way nanoGPT builds them."""

from __future__ import annotations

import builtins
import os
import pickle

import numpy as np
import pytest
import torch
from nanogpt_files import CHAR_CONFIG, nanogpt_checkpoint, prepare_shakespeare_char

from gpt.config import GPTConfig, load_config
from gpt.data import Corpus
from gpt.errors import ConfigError, DataError
from gpt.meta import load_meta, meta_from_pkl, read_meta_pkl
from gpt.model import GPT
from vramfit.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def checkout(tmp_path, corpus_text):
    """A nanoGPT checkout: data/shakespeare_char prepared by its steps, config/train_shakespeare_char.py."""
    root = tmp_path / "nanoGPT"
    meta = prepare_shakespeare_char(corpus_text[:60_000], root / "data" / "shakespeare_char")
    (root / "config").mkdir()
    (root / "config" / "train_shakespeare_char.py").write_text(CHAR_CONFIG)
    return root, meta


class _Payload:
    """Unpickling this calls open(marker, 'w'): it creates the file if the unpickler runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class _Shell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Plain:  # an ordinary object: pickled as a class reference plus its __dict__
    def __init__(self):
        self.vocab_size = 3


def _malicious(tmp_path, kind: str, protocol: int) -> tuple[bytes, object]:
    marker = tmp_path / f"pwned-{kind}-{protocol}"
    payload = {"open": _Payload(marker), "shell": _Shell(marker), "object": _Plain()}[kind]
    return pickle.dumps({"vocab_size": 65, "itos": payload, "stoi": {}}, protocol=protocol), marker


def test_meta_pkl_as_prepare_writes_it(checkout):
    root, meta = checkout
    raw = read_meta_pkl(root / "data" / "shakespeare_char" / "meta.pkl")
    assert raw == meta
    mine = load_meta(root / "data" / "shakespeare_char")
    assert mine["tokenizer"] == "char" and mine["vocab_size"] == meta["vocab_size"]
    assert "".join(mine["chars"]) == "".join(meta["itos"][i] for i in range(meta["vocab_size"]))
    corpus = Corpus.open(root / "data" / "shakespeare_char")
    assert corpus.vocab_size == meta["vocab_size"] and corpus.tokens("train").dtype == np.uint16


def test_sets_and_old_protocols_still_read(tmp_path):
    """Builtin containers pickled with protocol 0-2 go through `builtins.set` and friends: allowed."""
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        p = tmp_path / f"m{protocol}.pkl"
        p.write_bytes(pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "extra": {1, 2},
                                    "f": frozenset({3}), "t": (1.5, None, True)}, protocol=protocol))
        raw = read_meta_pkl(p)
        assert raw["extra"] == {1, 2} and raw["f"] == frozenset({3})
        assert meta_from_pkl(raw)["chars"] == ["a", "b"]


def test_the_payload_does_run_under_plain_pickle(tmp_path):
    """Control: the malicious meta.pkl below really creates its file when loaded with `pickle.loads`."""
    data, marker = _malicious(tmp_path, "open", 2)
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["open", "shell", "object"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_meta_pkl_is_refused_and_nothing_runs(tmp_path, kind, protocol):
    data, marker = _malicious(tmp_path, kind, protocol)
    (tmp_path / "meta.pkl").write_bytes(data)
    with pytest.raises(DataError, match="refused"):
        read_meta_pkl(tmp_path / "meta.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["train", "suggest", "sample"])
def test_malicious_meta_pkl_from_the_cli_is_one_line(capsys, tmp_path, checkout, command):
    root, meta = checkout
    data_dir = root / "data" / "shakespeare_char"
    data, marker = _malicious(tmp_path, "shell", 2)
    (data_dir / "meta.pkl").write_bytes(data)
    if command == "train":
        args = ["train", "--data-dir", data_dir, "--device", "cpu", "--max-iters", "1", "--out-dir", tmp_path / "o"]
    elif command == "suggest":
        args = ["suggest", "--vram", "8G", "--data-dir", data_dir, "--model", tmp_path / "none.json"]
    else:
        nanogpt_checkpoint(root / "out" / "ckpt.pt", meta["vocab_size"])
        args = ["sample", "--ckpt", root / "out", "--data-dir", data_dir, "--device", "cpu"]
    rc, out, err = run(capsys, *args)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "refused" in err, err
    assert not marker.exists()


def test_python_config_read_as_data(checkout, monkeypatch, tmp_path):
    root, _ = checkout
    monkeypatch.chdir(tmp_path)  # not the checkout: data/<dataset> is found beside the config's folder
    cfg = load_config(root / "config" / "train_shakespeare_char.py")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (6, 6, 384, 256, 64)
    assert cfg.dropout == 0.2 and cfg.min_lr == 1e-4 and cfg.out_dir == "out-shakespeare-char"
    assert cfg.bias is False and cfg.weight_decay == 0.1 and cfg.grad_clip == 1.0  # nanoGPT train.py defaults
    assert cfg.device == "auto" and cfg.compile is None  # the file leaves them: nanoGPT's GPU defaults not taken
    assert os.path.samefile(cfg.data_dir, root / "data" / "shakespeare_char")
    assert set(cfg.extra["nanogpt_ignored"]) == {"wandb_log", "wandb_project", "wandb_run_name", "backend",
                                                 "eval_only"}
    gpt2 = tmp_path / "train_gpt2.py"
    gpt2.write_text("wandb_run_name='gpt2-124M'\nbatch_size = 12\nblock_size = 1024\n"
                    "gradient_accumulation_steps = 5 * 8\nmax_iters = 600000\nweight_decay = 1e-1\n")
    cfg = load_config(gpt2, {"device": "cpu"})
    assert cfg.gradient_accumulation_steps == 40 and cfg.n_layer == 12 and cfg.data_dir.endswith("openwebtext")


@pytest.mark.parametrize("body, line", [
    ("import os\nn_layer = 2\n", 1),
    ("n_layer = 2\nn_head = int('2')\n", 2),
    ("import time\nwandb_run_name = 'ft-' + str(time.time())\n", 1),
    ("n_layer = 2\n\nbatch_size = open('MARKER', 'w')\n", 3),
    ("n_layer = 2\nfor i in range(3):\n    n_layer += i\n", 2),
    ("n_layer = 2\nn_embd = n_layer * 64\n", 2),
    ("x = 2 ** 10 ** 10\n", 1),
])
def test_python_config_with_code_is_an_error_naming_the_line(capsys, tmp_path, monkeypatch, body, line):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(ConfigError, match=f"line {line}:"):
        load_config(path)
    rc, _, err = run(capsys, "train", "--config", path)
    assert rc == 2 and err.startswith("error: ") and f"line {line}:" in err and err.count("\n") == 1
    assert not (tmp_path / "MARKER").exists()


def test_train_and_sample_on_a_nanogpt_data_folder(capsys, checkout, tmp_path, corpus_text):
    root, meta = checkout
    prompt = corpus_text[:6]  # characters of the corpus (tiny-shakespeare here, a generated stand-in on a clean clone)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "train", "--data-dir", root / "data" / "shakespeare_char", "--n-layer", 1,
                          "--n-head", 2, "--n-embd", 32, "--block-size", 32, "--batch-size", 4, "--max-iters", 20,
                          "--eval-interval", 20, "--eval-iters", 2, "--device", "cpu", "--out-dir", out)
    assert rc == 0 and "done: 20 iterations" in stdout, err
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["vocab_size"] == meta["vocab_size"]
    rc, stdout, err = run(capsys, "sample", "--ckpt", out, "--prompt", prompt, "--max-new-tokens", 30,
                          "--device", "cpu")
    assert rc == 0 and stdout.startswith(prompt), err
    assert set(stdout.strip()) <= set(meta["stoi"]) | {"\n"}  # decoded with meta.pkl's vocabulary


def test_a_nanogpt_folder_without_meta_is_gpt2(tmp_path, corpus_text):
    """nanoGPT's train.py: no meta.pkl means GPT-2 BPE, vocab_size 50304."""
    prepare_shakespeare_char(corpus_text[:5000], tmp_path / "owt", with_meta=False)
    corpus = Corpus.open(tmp_path / "owt")
    assert corpus.vocab_size == 50304 and corpus.meta["tokenizer"] == "gpt2"


def test_train_with_a_nanogpt_config_file(capsys, checkout, monkeypatch, tmp_path):
    root, meta = checkout
    monkeypatch.chdir(root)  # as nanoGPT is run: from its checkout
    rc, stdout, err = run(capsys, "train", "--config", "config/train_shakespeare_char.py", "--n-layer", 1,
                          "--n-head", 2, "--n-embd", 32, "--block-size", 32, "--batch-size", 4, "--max-iters", 10,
                          "--eval-interval", 10, "--eval-iters", 2, "--device", "cpu", "--out-dir", tmp_path / "o")
    assert rc == 0 and "done: 10 iterations" in stdout, err
    assert "note: not used from config/train_shakespeare_char.py: backend, eval_only, wandb_log" in stdout
    ckpt = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["dropout"] == 0.2 and ckpt["model_args"]["bias"] is False
    assert ckpt["model_args"]["vocab_size"] == meta["vocab_size"]
    assert ckpt["config"]["data_dir"] == os.path.join("data", "shakespeare_char")


@pytest.mark.parametrize("where", ["beside", "dataset", "data_dir"])
def test_sample_from_a_nanogpt_checkpoint(capsys, checkout, monkeypatch, tmp_path, where, corpus_text):
    """meta.pkl is looked for beside the checkpoint, in data/<dataset> of its config, then in --data-dir."""
    root, meta = checkout
    prompt = corpus_text[:4]
    ckpt_dir = root / "out-shakespeare-char"
    nanogpt_checkpoint(ckpt_dir / "ckpt.pt", meta["vocab_size"],
                       dataset="shakespeare_char" if where == "dataset" else "elsewhere")
    pkl = root / "data" / "shakespeare_char" / "meta.pkl"
    args = []
    if where == "beside":
        (ckpt_dir / "meta.pkl").write_bytes(pkl.read_bytes())
        pkl.unlink()
    elif where == "data_dir":
        args = ["--data-dir", root / "data" / "shakespeare_char"]
    monkeypatch.chdir(root if where == "dataset" else tmp_path)
    rc, stdout, err = run(capsys, "sample", "--ckpt", ckpt_dir, "--prompt", prompt, "--max-new-tokens", 20,
                          "--device", "cpu", *args)
    assert rc == 0 and stdout.startswith(prompt), err
    assert set(stdout.strip()) <= set(meta["stoi"]) | {"\n"}


def test_resume_and_estimate_from_a_nanogpt_checkpoint(capsys, checkout, tmp_path):
    root, meta = checkout
    ckpt_dir = tmp_path / "out-nano"
    nanogpt_checkpoint(ckpt_dir / "ckpt.pt", meta["vocab_size"])
    rc, stdout, err = run(capsys, "train", "--init-from", "resume", "--out-dir", ckpt_dir, "--data-dir",
                          root / "data" / "shakespeare_char", "--max-iters", 255, "--batch-size", 4,
                          "--eval-interval", 5, "--eval-iters", 2, "--device", "cpu", "--warmup-iters", 0)
    assert rc == 0 and "at iteration 250" in stdout and "done: 255 iterations" in stdout, err
    resumed = torch.load(ckpt_dir / "ckpt.pt", weights_only=True)
    assert resumed["iter_num"] == 255 and resumed["model_args"]["bias"] is False
    nanogpt_checkpoint(ckpt_dir / "ckpt.pt", meta["vocab_size"])
    rc, stdout, err = run(capsys, "estimate", "--ckpt", ckpt_dir, "--target", "cpu", "--json")
    assert rc == 0, err
    import json

    est = json.loads(stdout)
    assert est["batch_size"] == 12  # nanoGPT config's batch_size
    assert {k: est["model_config"][k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")} == dict(
        n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=meta["vocab_size"])
    assert est["model_config"]["bias"] is False  # the checkpoint's model_args


def test_export_loads_the_way_nanogpt_sample_py_does(capsys, checkout, tmp_path):
    """export-nanogpt, then sample.py's steps: torch.load(weights_only=True), GPTConfig(**model_args) with
    nanoGPT's 7 fields, `_orig_mod.` stripped, strict load_state_dict, meta from data/<dataset>/meta.pkl."""
    root, meta = checkout
    out = tmp_path / "out"
    assert run(capsys, "train", "--data-dir", root / "data" / "shakespeare_char", "--n-layer", 1, "--n-head", 2,
               "--n-embd", 32, "--block-size", 32, "--batch-size", 4, "--max-iters", 10, "--eval-interval", 10,
               "--eval-iters", 2, "--device", "cpu", "--out-dir", out)[0] == 0
    nano_data = tmp_path / "nano" / "data"
    rc, stdout, err = run(capsys, "export-nanogpt", "--ckpt", out, "--out-dir", tmp_path / "nano" / "out-x",
                          "--data-root", nano_data)
    assert rc == 0 and stdout.count("wrote") == 3, err
    ckpt = torch.load(tmp_path / "nano" / "out-x" / "ckpt.pt", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"}
    assert set(ckpt["model_args"]) == {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}
    assert all(isinstance(v, int | float | bool | str) for v in ckpt["config"].values())
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])  # strict, as sample.py
    with open(nano_data / ckpt["config"]["dataset"] / "meta.pkl", "rb") as f:
        nano_meta = pickle.load(f)  # sample.py's own pickle.load
    assert nano_meta["stoi"] == meta["stoi"] and nano_meta["itos"] == meta["itos"]
    x = torch.tensor([[nano_meta["stoi"][c] for c in "the"]])
    y = model.generate(x, 5)
    assert len("".join(nano_meta["itos"][i] for i in y[0].tolist())) == 8
    # and vramfit reads its own export back (meta.pkl beside it)
    rc, stdout, err = run(capsys, "sample", "--ckpt", tmp_path / "nano" / "out-x", "--prompt", "the",
                          "--max-new-tokens", 5, "--device", "cpu")
    assert rc == 0 and stdout.startswith("the"), err
