"""`plot` and `report` plan as the last `vramfit suggest` did: its budget, its vocabulary, its #1 shape."""

import json

import pytest
from PIL import Image
from planner_data import synthetic_db, synthetic_points

from vramfit.cli import main
from vramfit.errors import VramfitError
from vramfit.show.context import plan_context


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = synthetic_db(tmp_path_factory.mktemp("db") / "v.sqlite", synthetic_points().iloc[::3])  # 36: quick fits
    return path


@pytest.fixture(scope="module")
def last_suggest(db, char_corpus, tmp_path_factory):
    """`vramfit fit` then `vramfit suggest` for the char corpus (65-ish tokens) with a reserve, saved to a file."""
    tmp = tmp_path_factory.mktemp("suggest")
    assert main(["fit", "--db", str(db), "--out", str(tmp / "models")]) == 0
    (model,) = (tmp / "models").glob("*.json")
    save = tmp / "suggestions.json"
    assert main(["suggest", "--vram", "2G", "--reserve", "256M", "--model", str(model), "--data-dir",
                 str(char_corpus), "--objective", "balanced", "--block-size", "256", "--top", "3",
                 "--save", str(save)]) == 0
    return save


def test_context_precedence(last_suggest, char_corpus, tmp_path):
    doc = json.loads(last_suggest.read_text())
    vocab = json.loads((char_corpus / "meta.json").read_text())["vocab_size"]
    ctx = plan_context(None, last_suggest, None)
    assert (ctx.vram_bytes, ctx.reserve_bytes, ctx.budget_bytes) == (2 * 2**30, 2**28, doc["budget_bytes"])
    assert ctx.vocab_size == vocab and ctx.objective == "balanced" and ctx.data_dir == str(char_corpus)
    explicit = plan_context("1G", last_suggest, None)  # --vram wins; the vocabulary still comes from the last suggest
    assert (explicit.budget_bytes, explicit.vocab_size) == (2**30, vocab)
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "meta.json").write_text(json.dumps({"vocab_size": 50257}))
    assert plan_context(None, last_suggest, str(tmp_path / "bpe")).vocab_size == 50257  # --data-dir wins
    none = plan_context(None, tmp_path / "absent.json", None)
    assert none.budget_bytes == 8 * 2**30 and none.last is None and "default" in none.sources[0]
    with pytest.raises(VramfitError, match="no prepared corpus"):
        plan_context(None, last_suggest, str(tmp_path / "nothing"))


def test_report_ranks_in_the_last_suggests_vocabulary_and_budget(db, last_suggest, capsys, tmp_path):
    doc = json.loads(last_suggest.read_text())
    vocab, top = doc["suggestions"][0]["vocab_size"], doc["suggestions"][0]
    rc = main(["report", "--db", str(db), "--out", str(tmp_path / "r.html"), "--suggestions", str(last_suggest),
               "--models", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "from the last `vramfit suggest`" in out
    html = (tmp_path / "r.html").read_text()
    assert f"--vocab-size {vocab} " in html and "--vocab-size 50304" not in html
    assert f"budget 1.75 GiB, vocab {vocab}" in html
    data = json.loads(html.split('<script type="application/json" id="vf-data">')[1].split("</script>")[0])
    defaults = data["models"][0]["defaults"]  # the calculator starts from the last suggest's #1 and its budget
    assert {k: defaults[k] for k in ("n_layer", "n_embd", "block_size", "batch_size", "vocab_size")} == \
        {k: top[k] for k in ("n_layer", "n_embd", "block_size", "batch_size", "vocab_size")}
    assert (defaults["vram"], defaults["reserve"]) == ("2G", "256M")


def test_plot_draws_the_last_suggests_shape_against_its_budget(db, last_suggest, capsys, tmp_path):
    top = json.loads(last_suggest.read_text())["suggestions"][0]
    rc = main(["plot", "--db", str(db), "--out", str(tmp_path), "--suggestions", str(last_suggest)])
    capsys.readouterr()
    assert rc == 0
    (png,) = tmp_path.rglob("feasibility.png")
    title = Image.open(png).info["Title"]
    assert f"{top['n_layer']}L {top['n_head']}H {top['n_embd']}C V={top['vocab_size']}" in title
    assert "1.75 GiB budget" in title


def test_a_broken_suggestions_file_is_one_line(db, capsys, tmp_path):
    (tmp_path / "s.json").write_text("{not json")
    for cmd in ("plot", "report"):
        rc = main([cmd, "--db", str(db), "--out", str(tmp_path / "o"), "--suggestions", str(tmp_path / "s.json")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "not a vramfit suggest output" in err
        assert err.count("\n") == 1
