"""Grid specs, table-driven: Measure's checks and types, integer lists, axis blocks, overrides, points."""

import re

import pytest

from vramfit.errors import VramfitError
from vramfit.recipe import Recipe
from vramfit.shape import KEYS
from vramfit.sweep.grid import Grid, Measure, load_grid, parse_int_list, recipes

ONE = {"n_layer": [1], "n_head": [2], "n_embd": [32], "block_size": [16], "batch_size": [1], "vocab_size": [64]}


def toml_axes(**axes) -> str:
    return "[axes]\n" + "".join(f"{k} = {v}\n" for k, v in {**ONE, **axes}.items())


# ------------------------------------------------------------------------------------------------ Measure


def test_measure_defaults():
    m = Measure()
    assert (m.min_iters, m.max_iters, m.window, m.tolerance, m.timeout_s, m.threads, m.timing_iters) == (
        4, 30, 3, 0.01, 300.0, 1, 10)
    assert Measure.from_dict({}) == m and m.to_dict()["max_iters"] == 30


@pytest.mark.parametrize("kwargs", [
    dict(min_iters=1, max_iters=3), dict(min_iters=3, max_iters=3), dict(min_iters=5, max_iters=5), dict(window=1),
    dict(tolerance=0.0), dict(tolerance=0.999), dict(timeout_s=0.001), dict(threads=0), dict(timing_iters=0),
])
def test_measure_accepts_its_edges(kwargs):
    assert Measure(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_iters=0), "measure.min_iters must be >= 1"),
    (dict(max_iters=2, min_iters=1), r"measure.max_iters must be >= max\(3, min_iters\)"),
    (dict(max_iters=5, min_iters=6), r"measure.max_iters must be >= max\(3, min_iters\)"),
    (dict(window=0), "measure.window must be >= 1"),
    (dict(tolerance=-0.01), r"measure.tolerance must be in \[0, 1\)"),
    (dict(tolerance=1.0), r"measure.tolerance must be in \[0, 1\)"),
    (dict(timeout_s=0), "measure.timeout_s must be > 0"),
    (dict(threads=-1), "measure.threads must be >= 0"),
    (dict(timing_iters=-1), "measure.timing_iters must be >= 0"),
])
def test_measure_refuses(kwargs, message):
    with pytest.raises(VramfitError, match=f"^{message}$"):
        Measure(**kwargs)


def test_measure_from_dict_types():
    m = Measure.from_dict({"max_iters": 12.0, "tolerance": 0, "timeout_s": 5})
    assert m.max_iters == 12 and type(m.max_iters) is int
    assert m.tolerance == 0.0 and type(m.tolerance) is float and type(m.timeout_s) is float
    for key, value in (("max_iters", 3.5), ("max_iters", True), ("tolerance", "0.1"), ("threads", None),
                       ("window", [3])):
        with pytest.raises(VramfitError, match=f"^measure.{key} must be a number, got {re.escape(repr(value))}$"):
            Measure.from_dict({key: value})
    with pytest.raises(VramfitError, match=r"^unknown measure key\(s\): colour, max_iter \(known: min_iters, "
                                           r"max_iters, window, tolerance, timeout_s, threads, timing_iters, "
                                           r"dynamic_batch\)$"):
        Measure.from_dict({"max_iter": 3, "colour": 1})


# ------------------------------------------------------------------------------------------------ parse_int_list


@pytest.mark.parametrize("text, expected", [
    ("4,8,16", [4, 8, 16]), ("4, 8 ,16", [4, 8, 16]), ("1_000", [1000]), (7, [7]), ([3, "5", " 6 "], [3, 5, 6]),
    ("16,4", [16, 4]), ("4,4", [4, 4]), ("1", [1]), ("1__000", [1000]), ("_5", [5]), ("5_", [5]),
])
def test_parse_int_list(text, expected):
    assert parse_int_list(text) == expected


@pytest.mark.parametrize("text, message", [
    ("4,x", "batch: 'x' is not an integer"), ("4,", "batch: '' is not an integer"),
    ([4.0], "batch: 4.0 is not an integer"), ([True], "batch: True is not an integer"),
    ("2.5", "batch: '2.5' is not an integer"), ([None], "batch: None is not an integer"),
    ("0", "batch: values must be >= 1, got 0"), ("4,-2", "batch: values must be >= 1, got -2"),
    ([], "batch: empty list"), (True, "batch: True is not an integer"),
])
def test_parse_int_list_refuses(text, message):
    with pytest.raises(VramfitError, match=f"^{message}$"):
        parse_int_list(text, "batch")


def test_parse_int_list_minimum_and_default_name():
    assert parse_int_list("0,3", minimum=0) == [0, 3]
    with pytest.raises(VramfitError, match="^value: values must be >= 2, got 1$"):
        parse_int_list("1", minimum=2)


# ------------------------------------------------------------------------------------------------ load_grid


def test_a_file_with_recipe_measure_and_name(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('name = "mine"\ndescription = "x"\n' + toml_axes(batch_size=[1, 2]) +
                    '[recipe]\ndtype = "float32"\n[measure]\nmax_iters = 7\n')
    g = load_grid(path)
    assert g.name == "mine" and g.path == str(path) and g.recipe == Recipe(dtype="float32")
    assert g.measure == Measure(max_iters=7) and g.blocks == [{**ONE, "batch_size": [1, 2]}]
    d = g.to_dict()
    assert d["name"] == "mine" and d["path"] == str(path) and d["axes"] == g.blocks
    assert d["recipe"]["dtype"] == "float32" and d["measure"]["max_iters"] == 7


def test_names_default_to_the_file_stem_or_adhoc(tmp_path):
    path = tmp_path / "stem.toml"
    path.write_text(toml_axes())
    assert load_grid(path).name == "stem"
    g = load_grid(None, ONE)
    assert g.name == "adhoc" and g.path is None and g.recipe == Recipe() and g.measure == Measure()


def test_overrides_replace_an_axis_in_every_block_and_merge_recipe_and_measure(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("[[axes]]\n" + toml_axes()[7:] + "[[axes]]\nblock_size = [32]\n"
                    '[recipe]\ndtype = "float32"\n[measure]\nmax_iters = 7\nwindow = 2\n')
    g = load_grid(path, {"batch_size": "2,4"}, {"optimizer": "loop"}, {"max_iters": 9})
    assert [b["batch_size"] for b in g.blocks] == [[2, 4], [2, 4]]
    assert [b["block_size"] for b in g.blocks] == [[16], [32]]  # the second block inherits the rest
    assert g.recipe == Recipe(dtype="float32", optimizer="loop") and (g.measure.max_iters, g.measure.window) == (9, 2)
    pts, invalid = g.points()
    assert invalid == 0 and [(p["block_size"], p["batch_size"]) for p in pts] == [(16, 2), (16, 4), (32, 2), (32, 4)]


def test_points_go_on_after_an_invalid_or_a_duplicate_combination():
    g = Grid("g", [{**ONE, "n_head": [2], "n_embd": [32, 48]},
                   {**ONE, "n_head": [3, 2], "n_embd": [32, 64, 48]}])  # (3, 32) invalid, then (3, 48) valid
    pts, invalid = g.points()
    assert [(p["n_head"], p["n_embd"]) for p in pts] == [(2, 32), (2, 48), (3, 48), (2, 64)]
    assert invalid == 2  # (3, 32) and (3, 64): two combinations, each counted once


@pytest.mark.parametrize("axis", ["block_size", "vocab_size", "n_layer", "batch_size"])
def test_points_with_a_non_positive_size_are_invalid(axis):
    """A Grid built in code (load_grid refuses these earlier): every size is checked, not only the divisibility."""
    g = Grid("g", [{**ONE, axis: [0, 16]}]) if axis != "batch_size" else None
    if g is None:  # the batch is not part of the model shape: GPTConfig does not check it
        assert len(Grid("g", [{**ONE, axis: [0, 16]}]).points()[0]) == 2
        return
    pts, invalid = g.points()
    assert [p[axis] for p in pts] == [16] and invalid == 1


def test_points_keep_order_drop_duplicates_and_count_invalid_once():
    g = Grid("g", [{**ONE, "n_head": [2, 3], "n_embd": [32, 48]}, {**ONE, "n_head": [3], "n_embd": [32, 48]}])
    pts, invalid = g.points()
    assert [(p["n_head"], p["n_embd"]) for p in pts] == [(2, 32), (2, 48), (3, 48)]
    assert invalid == 1  # (3, 32) twice: one combination
    assert list(pts[0]) == list(KEYS)


@pytest.mark.parametrize("text, message", [
    ("colour = 1\n" + toml_axes(), "unknown key 'colour' (name, description, axes, recipe, measure)"),
    ("name = 'x'\n", "empty grid (no axes)"),
    ("[axes]\nn_layer = [1]\n", "the first axes block lacks n_head, n_embd, block_size, batch_size, vocab_size"),
    (toml_axes(n_layers=[1]), "axes: unknown axis 'n_layers' (axes: n_layer, n_head, n_embd, block_size, "
                              "batch_size, vocab_size, arch, n_kv_head, window_pattern, mlp, value_embeds, qk_norm, "
                              "resid_scalars, smear, backout, softcap, vocab_multiple)"),
    ("axes = 5\n", "axes: axes must be a table of axis = [values]"),
    (toml_axes(n_embd=[31]), "empty grid (1 combinations, none valid: n_embd % n_head != 0?)"),
    (toml_axes(n_layer=[0]), "axes n_layer: values must be >= 1, got 0"),
    ("recipe = 5\n" + toml_axes(), "[recipe] and [measure] must be tables"),
    ("measure = 'fast'\n" + toml_axes(), "[recipe] and [measure] must be tables"),
    ("[axes\n", "is not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 6)"),
])
def test_bad_files_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(VramfitError) as err:
        load_grid(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(path))


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(VramfitError, match="^no such grid file: "):
        load_grid(tmp_path / "none.toml")
    with pytest.raises(VramfitError, match="^no such grid file: "):
        load_grid(tmp_path)  # a folder
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(VramfitError, match="is not valid TOML"):
        load_grid(bad)


def test_overrides_without_a_file():
    with pytest.raises(VramfitError, match="^unknown axis 'depth' \\(axes: n_layer, n_head, n_embd, block_size, "
                                           "batch_size, vocab_size\\)$"):
        load_grid(None, {"depth": [1]})
    with pytest.raises(VramfitError, match="^grid: the first axes block lacks n_embd"):
        load_grid(None, {k: v for k, v in ONE.items() if k != "n_embd"})
    with pytest.raises(VramfitError, match="^grid: empty grid \\(no axes\\)"):
        load_grid(None)
    with pytest.raises(VramfitError, match="^batch_size: 'x' is not an integer"):
        load_grid(None, {**ONE, "batch_size": "x"})


# ------------------------------------------------------------------------------------------------ families, recipes


def test_a_repeated_invalid_combination_is_skipped_and_the_block_goes_on():
    g = Grid("g", [{**ONE, "n_head": [3], "n_embd": [32]}, {**ONE, "n_head": [3], "n_embd": [32, 96]}])
    assert g.points() == ([{**{k: v[0] for k, v in ONE.items()}, "n_head": 3, "n_embd": 96}], 1)


def test_family_axes_make_points_of_their_family(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(toml_axes(n_head=[2], n_embd=[32, 48]) + 'arch = ["gpt2", "nanochat"]\nmlp = "swiglu"\n'
                    "softcap = [0, 7.5]\nvalue_embeds = [false]\nn_kv_head = [1]\nvocab_multiple = 8\n")
    g = load_grid(path)
    assert g.blocks[0]["arch"] == ["gpt2", "nanochat"] and g.blocks[0]["mlp"] == ["swiglu"]
    assert g.blocks[0]["softcap"] == [0, 7.5] and g.blocks[0]["n_kv_head"] == [1]
    assert g.size() == 2 * 2 * 2  # n_embd x arch x softcap: the one-value axes count once
    pts, invalid = g.points()
    spec = "nanochat:n_kv_head=1,mlp=swiglu,value_embeds=false,softcap=0,vocab_multiple=8"
    assert invalid == 4  # GPT-2 has none of these options
    spec75 = spec.replace("softcap=0", "softcap=7.5")
    assert [p["arch"] for p in pts] == [spec, spec75, spec, spec75]
    assert [p["n_embd"] for p in pts] == [32, 32, 48, 48] and all(list(p)[:6] == list(KEYS) for p in pts)
    plain = load_grid(None, ONE).points()[0]
    assert "arch" not in plain[0]  # GPT-2 points have no family key (the rows stored before families)
    assert Grid("g", [{**ONE, "arch": ["gpt2"]}]).points() == (plain, 0)


@pytest.mark.parametrize("axis, value, kind, got", [
    ("arch", "1", "str", "1"), ("n_kv_head", "true", "int", "True"), ("n_kv_head", "1.5", "int", "1.5"),
    ("n_kv_head", "'1'", "int", "'1'"), ("value_embeds", "1", "bool", "1"), ("softcap", "true", "float", "True"),
    ("softcap", "'x'", "float", "'x'"), ("vocab_multiple", "false", "int", "False"), ("mlp", "[]", "str", "[]"),
    ("window_pattern", "['L', 2]", "str", "['L', 2]"),
])
def test_a_family_axis_of_the_wrong_type_is_one_error(tmp_path, axis, value, kind, got):
    path = tmp_path / "g.toml"
    path.write_text(toml_axes() + f"{axis} = {value}\n")
    with pytest.raises(VramfitError, match=f"^{re.escape(str(path))} axes {axis}: expected a {kind} or a non-empty "
                                           f"list of them, got {re.escape(got)}$"):
        load_grid(path)


def test_family_axes_accept_their_types(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(toml_axes() + 'arch = "nanochat"\nn_kv_head = [1, 2]\nvalue_embeds = true\nsoftcap = 15\n'
                    'qk_norm = [true, false]\nwindow_pattern = "SL"\n')
    b = load_grid(path).blocks[0]
    assert (b["arch"], b["n_kv_head"], b["value_embeds"], b["softcap"], b["qk_norm"], b["window_pattern"]) == (
        ["nanochat"], [1, 2], [True], [15], [True, False], ["SL"])


def test_the_combination_limit_is_inclusive(tmp_path, monkeypatch):
    import vramfit.sweep.grid as grid

    monkeypatch.setattr(grid, "MAX_GRID_COMBINATIONS", 4)
    assert load_grid(None, {**ONE, "batch_size": [1, 2, 3, 4]}).size() == 4
    with pytest.raises(VramfitError, match=r"^grid: 5 combinations is beyond the limit of 4 \(split the grid, or "
                                           r"use --plan adaptive\)$"):
        load_grid(None, {**ONE, "batch_size": [1, 2, 3, 4, 5]})
    monkeypatch.setattr(grid, "MAX_GRID_COMBINATIONS", 5000)
    with pytest.raises(VramfitError, match="^grid: 5,001 combinations is beyond the limit of 5,000 "):
        load_grid(None, {**ONE, "batch_size": list(range(1, 5002))})


def test_parse_int_list_maximum_is_inclusive():
    assert parse_int_list("5000", "batch", maximum=5000) == [5000]
    with pytest.raises(VramfitError, match="^batch: 5001 is beyond the limit of 5,000$"):
        parse_int_list("5001", "batch", maximum=5000)


def test_recipe_lists_are_every_combination_in_order():
    got = recipes({"optimizer": ["sgd", "fused"], "dtype": "float32", "checkpoint": ["none", "0", "all"]})
    assert got == (Recipe("float32", optimizer="sgd"), Recipe("float32", optimizer="sgd", checkpoint="all"),
                   Recipe("float32", optimizer="fused"), Recipe("float32", optimizer="fused", checkpoint="all"))
    assert recipes({}) == (Recipe(),) and recipes({"grad_accum": list(range(1, 257))})[-1].grad_accum == 256
    with pytest.raises(VramfitError, match="^grid: more than 256 recipe combinations$"):
        recipes({"grad_accum": list(range(1, 258))})
    with pytest.raises(VramfitError, match="^grid: recipe checkpoint is an empty list$"):
        recipes({"optimizer": ["sgd"], "checkpoint": [], "dtype": []})


def test_a_grid_of_several_recipes(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(toml_axes() + '[recipe]\noptimizer = ["sgd", "loop"]\n')
    g = load_grid(path)
    each = g.each_recipe()
    assert [x.recipes for x in each] == [(Recipe(optimizer="sgd"),), (Recipe(optimizer="loop"),)]
    assert all(x.blocks == g.blocks and x.name == g.name and x.measure == g.measure for x in each)
    assert g.to_dict()["recipes"] == [r.to_dict() for r in g.recipes] and "recipe" not in g.to_dict()
    with pytest.raises(VramfitError, match="^grid 'g' has 2 recipes; sweep them one at a time$"):
        _ = g.recipe
    path.write_text(toml_axes() + "[recipe]\noptimizer = []\n")
    with pytest.raises(VramfitError, match=f"^{re.escape(str(path))}: recipe optimizer is an empty list$"):
        load_grid(path)


@pytest.mark.parametrize("value", [True, False, None])
def test_measure_dynamic_batch_is_a_boolean_or_unset(value):
    m = Measure.from_dict({"dynamic_batch": value, "max_iters": 7})
    assert m.dynamic_batch is value and m.max_iters == 7  # the keys after it are read too


def test_measure_dynamic_batch_refuses_a_number():
    with pytest.raises(VramfitError, match="^measure.dynamic_batch must be true or false, got 1$"):
        Measure.from_dict({"dynamic_batch": 1})
