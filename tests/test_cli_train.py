"""The foundation commands from the command line: prepare, train, sample, and their one-line errors."""

import subprocess
import sys

import pytest

from vramfit.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_prepare_train_sample_end_to_end(capsys, tmp_path, corpus_text):
    src = tmp_path / "input.txt"
    src.write_text(corpus_text[:200_000])
    rc, out, _ = run(capsys, "prepare", "--input", str(src), "--out", str(tmp_path / "data"))
    assert rc == 0 and "vocab" in out
    cfg = tmp_path / "small.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nout_dir = "{tmp_path / "out"}"\n'
                   "[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\n")
    rc, out, _ = run(capsys, "train", "--config", str(cfg), "--max-iters", "20", "--eval-interval=20",
                     "--eval-iters", "2", "--batch-size", "4", "--device", "cpu")
    assert rc == 0 and "done: 20 iterations" in out
    rc, out, _ = run(capsys, "sample", "--ckpt", str(tmp_path / "out"), "--prompt", "the", "--max-new-tokens",
                     "10", "--num-samples", "2", "--device", "cpu")
    assert rc == 0 and out.count("the") >= 2 and "---------------" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--n-embd", "65", "--n-head", "4"], "divisible by n_head"),
        (["train", "--bogus", "3"], "unknown config key"),
        (["train", "--batch-size", "x"], "cannot read 'x' as int"),
        (["train", "--data-dir", "/nonexistent"], "no prepared corpus"),
        (["sample", "--ckpt", "/nonexistent/ckpt.pt"], "no checkpoint"),
        (["prepare", "--input", "/nonexistent.txt"], "no such file"),
        (["prepare", "--input", "x.txt", "--tokenizer", "bpe"], "unknown tokenizer"),
        (["prepare", "wikipedia"], "unknown corpus"),
        (["train", "--config", "/nonexistent.toml"], "no such config file"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, message):
    if args[:2] == ["prepare", "--input"] and args[2] == "x.txt":
        (tmp_path / "x.txt").write_text("hello there\n" * 20)
        args = ["prepare", "--input", str(tmp_path / "x.txt"), "--tokenizer", "bpe"]
    rc, _, err = run(capsys, *args)
    assert rc == 2
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_block_size_longer_than_corpus(capsys, tmp_path):
    src = tmp_path / "tiny.txt"
    src.write_text("to be or not to be\n" * 10)
    assert run(capsys, "prepare", "--input", str(src), "--out", str(tmp_path / "d"))[0] == 0
    rc, _, err = run(capsys, "train", "--data-dir", str(tmp_path / "d"), "--block-size", "512", "--device", "cpu")
    assert rc == 2 and "longer than the" in err


def test_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vramfit", "train", "--n-layer", "0"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: n_layer must be a positive integer, got 0"
