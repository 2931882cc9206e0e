import json

import numpy as np
import pytest
import torch

from gpt.data import Corpus, Tokenizer, prepare_file, prepare_text, synthetic_batch
from gpt.errors import DataError


def test_char_prepare_roundtrip(tmp_path):
    text = "hello world\n" * 200
    meta = prepare_text(text, tmp_path, tokenizer="char")
    assert meta["vocab_size"] == len(set(text))
    assert meta["train_tokens"] + meta["val_tokens"] == len(text)
    assert meta["val_tokens"] == len(text) // 10
    assert json.loads((tmp_path / "meta.json").read_text())["dtype"] == "uint16"
    tok = Tokenizer(meta)
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert tok.decode(train.tolist()) == text[: len(train)]
    with pytest.raises(DataError, match="not in the corpus vocabulary"):
        tok.encode("HELLO")


def test_gpt2_path_with_local_encoding(tmp_path, byte_encoding):
    text = "To be, or not to be: that is the question.\n" * 50
    meta = prepare_text(text, tmp_path, tokenizer="gpt2", encoding=byte_encoding)
    assert meta["vocab_size"] == 257
    ids = np.concatenate([np.fromfile(tmp_path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert ids[-1] == 256  # EOT appended to the document
    assert Tokenizer(meta, encoding=byte_encoding).decode(ids[:-1].tolist()) == text


def test_large_vocab_uses_uint32(tmp_path):
    chars = "".join(chr(0x4E00 + i) if 0x4E00 + i < 0xD800 else chr(0x10000 + i) for i in range(70_000))
    meta = prepare_text(chars * 2, tmp_path, tokenizer="char")
    assert meta["vocab_size"] == 70_000 and meta["dtype"] == "uint32"
    corpus = Corpus.open(tmp_path)
    x, y = corpus.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert int(x.max()) < 70_000 and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize(
    "text, tokenizer, message",
    [("", "char", "empty"), ("   \n", "char", "empty"), ("abc", "wordpiece", "unknown tokenizer"),
     ("ab", "char", "short")],
)
def test_bad_corpora(tmp_path, text, tokenizer, message):
    with pytest.raises(DataError, match=message):
        prepare_text(text, tmp_path, tokenizer=tokenizer)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prepare_file(tmp_path / "nope.txt", tmp_path / "out")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa" * 100)
    with pytest.raises(DataError, match="UTF-8"):
        prepare_file(bad, tmp_path / "out")
    with pytest.raises(DataError, match="meta.json"):
        Corpus.open(tmp_path / "out")


def test_block_size_longer_than_data(tmp_path):
    prepare_text("abcdefghij" * 10, tmp_path)
    with pytest.raises(DataError, match="longer than the val split"):
        Corpus.open(tmp_path).check_block_size(50)


def test_batches_are_shifted_windows(char_corpus):
    corpus = Corpus.open(char_corpus)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, y1 = corpus.get_batch("val", 8, 32, g1)
    x2, _ = corpus.get_batch("val", 8, 32, g2)
    assert torch.equal(x1, x2)  # the generator alone decides the windows
    assert x1.shape == y1.shape == (8, 32)
    assert torch.equal(x1[:, 1:], y1[:, :-1])


def test_synthetic_batch_any_vocab():
    x, y = synthetic_batch(4, 32, 100_000, torch.Generator().manual_seed(0))
    assert x.shape == (4, 32) and int(x.max()) < 100_000 and int(x.max()) > 65_536
    assert torch.equal(x[:, 1:], y[:, :-1])
