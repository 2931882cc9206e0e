"""The public validation set (vramfit/data/public_readings.toml), the planning margin it gives `suggest --no-profile`
(issue 28 item 3), `--margin`, and the named cards of `--vram` (item 4)."""

import json
import re

import pytest

from vramfit.cards import CARDS, describe, find_card, parse_vram
from vramfit.cli import main
from vramfit.errors import VramfitError
from vramfit.recipe import Recipe
from vramfit.shape import Shape
from vramfit.validation import (
    CUSHION,
    MIB,
    load_estimates,
    load_readings,
    parse_margin,
    planning_margin,
    under_prediction,
)

# ------------------------------------------------------------------------------------------ the validation set


def test_every_reading_is_cited_and_copied_as_printed():
    """Each row has a URL and a quote; an nvidia-smi row's number and the card's total appear in its quoted line
    exactly as the source prints them (no rounding)."""
    readings = load_readings()
    assert len([r for r in readings if r.scored]) >= 40
    assert {r.kind for r in readings} == {"nvidia-smi", "nvidia-smi-approx", "max_memory_allocated", "oom"}
    for r in readings:
        assert r.url.startswith("https://github.com/") and r.quote
        if r.kind == "nvidia-smi":
            assert re.fullmatch(rf"{r.value_mib}MiB / +{r.gpu_total_bytes // MIB}MiB", r.quote), r.id
    rows = {r.id: r for r in readings}
    l4 = rows["l4-b8"]  # GPT-2 124M, compiled, bf16, fused AdamW, batch 8 x 64 micro-steps on an L4
    assert (l4.value_mib, l4.batch_size, l4.grad_accum, l4.capability) == (7731, 8, 64, "8.9")
    assert l4.model["n_layer"] == 12 and l4.recipe == {"dtype": "bfloat16", "compile": True, "optimizer": "fused"}
    assert l4.torch == "2.8.0" and l4.url.endswith("#L157-L158")
    assert not rows["nanochat-d32-b8"].modelled and "nanochat" in rows["nanochat-d32-b8"].unmodelled


def test_config_quotes_hold_batch_and_micro_steps():
    """The quoted log line of each GPT-2 124M row says the batch and the micro-steps the row records."""
    import tomllib

    from vramfit.validation import READINGS

    for row in tomllib.loads(READINGS.read_text())["reading"]:
        if "config_quote" in row:
            assert f"bs: {row['batch_size']} | grad acc mini steps: {row['grad_accum']}" in row["config_quote"]


def write_table(tmp_path, rows: dict[str, tuple[int, int]]):
    """A readings file and an estimates file: id -> (reading MiB, estimate bytes)."""
    readings = tmp_path / "r.toml"
    readings.write_text('[sources.s]\nurl = "https://example.org/x"\nmodel = {n_layer = 2}\nrecipe = {dtype = "bf16"}\n'
                        + "".join(f'[[reading]]\nid = "{k}"\nsource = "s"\ngpu = "G"\ncapability = "8.0"\n'
                                  f'batch_size = 1\nkind = "nvidia-smi"\nvalue_mib = {v}\nquote = "q"\n'
                                  for k, (v, _) in rows.items()))
    estimates = tmp_path / "e.csv"
    estimates.write_text("# comment\nid,estimate_bytes\n" + "".join(f"{k},{e}\n" for k, (_, e) in rows.items()))
    return readings, estimates


def test_margin_is_the_worst_under_prediction_plus_the_cushion(tmp_path):
    r, e = write_table(tmp_path, {"a": (1000, 990 * MIB), "b": (1000, 950 * MIB), "c": (1000, 1100 * MIB)})
    m = planning_margin(r, e)
    assert m.worst_id == "b" and m.scored == 3
    assert m.worst_under == pytest.approx(50 / 950) and m.rel == pytest.approx(50 / 950 + CUSHION)
    assert "worst under-prediction 5.3% (b) on 3 public nvidia-smi readings" in m.describe()
    r, e = write_table(tmp_path, {"a": (1000, 1001 * MIB)})  # nothing under-predicted: the cushion alone
    assert planning_margin(r, e).rel == CUSHION and planning_margin(r, e).worst_id is None


@pytest.mark.parametrize("breakage", ["no estimates", "bad csv", "bad toml", "no url"])
def test_a_broken_table_is_one_clear_error(tmp_path, breakage):
    r, e = write_table(tmp_path, {"a": (1000, 990 * MIB)})
    if breakage == "no estimates":
        e.write_text("id,estimate_bytes\nother,5\n")
    elif breakage == "bad csv":
        e.write_text("id,estimate_bytes\na,lots\n")
    elif breakage == "bad toml":
        r.write_text("[[reading]\n")
    else:
        r.write_text(r.read_text().replace('url = "https://example.org/x"\n', ""))
    with pytest.raises(VramfitError):
        planning_margin(r, e)


def test_the_committed_margin_covers_every_scored_reading():
    """The margin from the committed table: each scored reading fits its estimate raised by the margin, and the
    margin is above the worst under-prediction by exactly the cushion."""
    est, m = load_estimates(), planning_margin()
    scored = [r for r in load_readings() if r.scored]
    assert m.scored == len(scored) and all(r.id in est for r in scored)
    worst = max(under_prediction(r.reading_bytes, est[r.id]) for r in scored)
    assert m.rel == pytest.approx(max(worst, 0) + CUSHION)
    assert all(r.reading_bytes <= est[r.id] * (1 + m.rel) for r in scored)


@pytest.mark.parametrize(("text", "value"), [("5%", 0.05), ("0.05", 0.05), (" 2.5% ", 0.025), ("0", 0.0)])
def test_parse_margin(text, value):
    assert parse_margin(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["abc", "-1%", "100%", "1.5", "nan", "%"])
def test_parse_margin_refuses(bad):
    with pytest.raises(VramfitError, match="--margin"):
        parse_margin(bad)


# ------------------------------------------------------------------------------------------ --margin in suggest


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    from planner_data import synthetic_points

    from vramfit.fit.memmodel import fit_points

    return fit_points(synthetic_points(), target="nvml").save(tmp_path_factory.mktemp("p") / "gpu.json")


def test_margin_flag_overrides_a_profiles_margin(profile, tmp_path, capsys):
    args = ["suggest", "--model", str(profile), "--vram", "8G", "--top", "2", "--save", str(tmp_path / "s.json")]
    assert main([*args, "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert "margin_source" not in base
    assert main([*args, "--margin", "7%", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["margin_rel"] == pytest.approx(0.07) and doc["margin_source"].startswith("margin 7.0%: --margin")
    assert all(s["margin_bytes"] == pytest.approx(0.07 * s["predicted_bytes"], rel=1e-6) for s in doc["suggestions"])
    assert main([*args, "--margin", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --margin") and "Traceback" not in err


def test_no_profile_plan_uses_and_prints_the_validation_margin(tmp_path, monkeypatch, capsys):
    """`suggest --no-profile` plans with the public validation set's margin and says where it comes from; --margin
    overrides it. (The estimator is a stand-in here: the margin, not the estimates, is under test.)"""
    from test_noprofile import formula_estimate

    from vramfit.dryrun.pool import WarmWorkers

    monkeypatch.setattr(WarmWorkers, "run", lambda self, requests: [formula_estimate(r) for r in requests])
    monkeypatch.setattr("vramfit.plan.profiles.local_gpu_capability", lambda: None)
    args = ["suggest", "--vram", "rtx3070", "--no-profile", "--vocab", "256", "--top", "2", "--no-cache",
            "--save", str(tmp_path / "s.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    m = planning_margin()
    assert m.describe() in out and f"margin {m.rel:.1%})" in out
    assert "rtx3070 = NVIDIA GeForce RTX 3070 (8 GB): 8.00 GiB from the spec sheet" in out
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["margin_rel"] == pytest.approx(m.rel) and doc["margin_source"] == m.describe()
    assert doc["card"] == "rtx3070" and doc["vram_bytes"] == 8192 * MIB
    assert main([*args, "--json", "--margin", "0.2"]) == 0
    assert json.loads(capsys.readouterr().out)["margin_rel"] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------ named cards

REQUIRED = ["rtx3060", "rtx3060ti", "rtx3070", "rtx3070ti", "rtx3080", "rtx3080-12g", "rtx3080ti", "rtx3090",
            "rtx3090ti", "rtx4060ti", "rtx4060ti-16g", "rtx4070", "rtx4070ti", "rtx4070tisuper", "rtx4080",
            "rtx4080super", "rtx4090", "rtx5070", "rtx5070ti", "rtx5080", "rtx5090", "t4", "v100-16g", "v100-32g",
            "a10", "a4000", "a5000", "a6000", "l4", "l40s", "a100-40g", "a100-80g", "h100-pcie", "h100-sxm",
            "h100-nvl", "h200", "b200"]


def test_the_cards_people_train_on_are_named_with_a_source():
    """Each card's total is an nvidia-smi output (an https source, a whole number of MiB) or a spec sheet's figure
    marked as such; totals copied from nvidia-smi (cited): an RTX 3090 24576 MiB, a 4090 24564, a 5090 32607, an
    H100 81559, an H100 NVL 95830, an H200 143771, a B200 183359 (RunPod outputs, see vramfit/cards.py)."""
    assert set(REQUIRED) <= set(CARDS)
    for c in CARDS.values():
        assert c.total_bytes % MIB == 0 and "https://" in c.source
        assert c.from_spec == c.source.startswith("spec sheet")
    mib = {n: CARDS[n].total_bytes // MIB for n in ("rtx3090", "rtx4090", "rtx5090", "h100-sxm", "h100-nvl",
                                                     "h200", "b200", "v100-32g", "rtx5070")}
    assert mib == {"rtx3090": 24576, "rtx4090": 24564, "rtx5090": 32607, "h100-sxm": 81559, "h100-nvl": 95830,
                   "h200": 143771, "b200": 183359, "v100-32g": 32510, "rtx5070": 12227}
    assert CARDS["rtx3070"].from_spec and CARDS["rtx3070"].total_bytes == 8 * 2**30


@pytest.mark.parametrize("text", ["rtx3070", "RTX 3070", "3070", "rtx-3070", "NVIDIA GeForce RTX 3070", "Rtx_3070"])
def test_names_match_with_and_without_spaces_and_dashes(text):
    assert find_card(text) is CARDS["rtx3070"] and parse_vram(text) == (8192 * MIB, CARDS["rtx3070"])


def test_names_do_not_collide_and_sizes_still_parse():
    assert find_card("rtx 3070 ti") is CARDS["rtx3070ti"] and find_card("3080 12GB") is CARDS["rtx3080-12g"]
    assert find_card("A100 80GB") is CARDS["a100-80g"] and find_card("h100") is CARDS["h100-sxm"]
    assert find_card("RTX A6000") is CARDS["a6000"] and find_card("4070 Ti Super") is CARDS["rtx4070tisuper"]
    assert parse_vram("8G") == (8 * 2**30, None) and find_card("8G") is None and find_card("") is None
    assert "as NVML reports it" in describe(CARDS["rtx4090"].total_bytes, CARDS["rtx4090"])


def test_info_says_which_card_a_vram_name_stands_for(capsys):
    assert main(["info", "--vram", "RTX 3090 Ti"]) == 0
    out = capsys.readouterr().out
    assert "--vram RTX 3090 Ti: rtx3090ti = NVIDIA GeForce RTX 3090 Ti (24 GB)" in out and "(24564 MiB)" in out
    assert "source: https://github.com/noonghunna/club-3090/issues/353" in out
    assert main(["info", "--vram", "RTX 3070"]) == 0  # the README's example: a spec-sheet figure, said so
    assert "rtx3070 = NVIDIA GeForce RTX 3070 (8 GB): 8.00 GiB from the spec sheet" in capsys.readouterr().out
    assert main(["info", "--vram", "rtx9999"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot parse size 'rtx9999'")


# ------------------------------------------------------------------------------------------ the bench


@pytest.mark.slow
def test_bench_public_compares_a_row_and_lists_what_it_cannot_model(tmp_path):
    """`experiments/bench_public.py` on two rows: the L4 reading beside `vramfit estimate`'s device figure (the real
    estimator, in its child process), and the nanochat row listed with the reason it is not scored."""
    import subprocess
    import sys

    from vramfit.validation import ESTIMATES

    md, csv = tmp_path / "public.md", tmp_path / "est.csv"
    before = ESTIMATES.read_bytes()
    out = subprocess.run([sys.executable, "experiments/bench_public.py", "--rows", "l4-b8,nanochat-d32-b8", "--md",
                          str(md), "--csv", str(csv)], capture_output=True, text=True, timeout=900, check=True).stdout
    assert "load at start:" in out and "load at the end:" in out
    est = load_estimates(csv)
    assert set(est) == {"l4-b8"} and 6000 * MIB < est["l4-b8"] < 9000 * MIB
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| l4-b8 |"))
    assert "| L4 (8.9) | 8 x 64 | 7,731 MiB |" in row and f"{est['l4-b8'] / MIB:,.0f} MiB" in row
    assert "- nanochat-d32-b8 (H100 80GB (8 x), nvidia-smi-approx: about 78/80GB): nanochat's architecture" in text
    assert "#L157-L158> \"7731MiB /  23034MiB\"" in text
    assert ESTIMATES.read_bytes() == before  # a subset never touches the committed table


# ------------------------------------------------------------------------------------------ verified with the margin


def test_no_profile_suggestions_are_verified_with_the_margin():
    """The dry run's re-check keeps a suggestion only when its estimate raised by the plan's margin fits the budget:
    a config that fits bare but not with 10 % gets a smaller batch (or is dropped), and says its margin."""
    import copy

    from test_noprofile import BF16, FormulaEstimator

    from vramfit.dryrun.cache import EstimateCache
    from vramfit.plan.noprofile import DryRunPlanner
    from vramfit.plan.suggest import suggest

    budget = 8 * 2**30
    with DryRunPlanner(BF16, (8, 0), 256, estimator=FormulaEstimator(cache=EstimateCache(None))) as planner:
        model, _, _ = planner.model()
        found = list(suggest(model, 0.0, budget, top=5, vocab_size=[256]))  # planned to the edge, no margin
        bare = planner.verify(copy.deepcopy(found), budget, 0.0)
        kept = planner.verify(copy.deepcopy(found), budget, 0.10)
    assert len(bare) == len(found) and kept
    assert all(s.predicted_bytes <= budget for s in bare)
    assert all(s.predicted_bytes * 1.10 <= budget and s.margin_bytes == int(s.predicted_bytes * 0.10)
               and s.headroom_bytes == budget - s.predicted_bytes - s.margin_bytes >= 0 for s in kept)
    smaller = {Shape.of(s).with_(batch_size=1): s.batch_size for s in bare}
    assert any(s.batch_size < smaller[Shape.of(s).with_(batch_size=1)] for s in kept)  # the margin cut a batch


@pytest.mark.slow
def test_no_profile_top_5_fit_each_card_with_the_worst_under_prediction(tmp_path, monkeypatch):
    """Must hold (issue 28): `suggest --no-profile`'s top 5 for 8, 12, 16 and 24 GiB each fit their budget when
    the estimate (the real dry run's device figure) is raised by the worst under-prediction on the public
    validation set. One estimate cache for the four plans: the calibration runs once."""
    from vramfit.dryrun.cache import EstimateCache
    from vramfit.dryrun.estimate import EstimateRequest, device_bytes
    from vramfit.dryrun.estimator import Estimator
    from vramfit.plan.recommend import PlanRequest, recommend

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("vramfit.plan.profiles.local_gpu_capability", lambda: None)
    worst = planning_margin().worst_under
    tops = {}
    for gib in (8, 12, 16, 24):
        rec = recommend(PlanRequest(f"{gib}G", no_profile=True, top=5))
        assert 1 <= len(rec.items) <= 5  # a suggestion 3 smaller batches do not bring within budget is dropped
        for s in rec.items:
            assert s.predicted_bytes * (1 + worst) <= gib * 2**30, (gib, s)
        tops[gib] = rec
    rec = tops[8]  # the figure checked is the estimator's own: the top suggestion estimated again (from the cache)
    s, recipe = rec.items[0], Recipe(**rec.doc["recipe"])
    from gpt.config import GPTConfig

    req = EstimateRequest(GPTConfig(s.n_layer, s.n_head, s.n_embd, s.block_size, s.vocab_size), s.batch_size, recipe,
                          "cuda", (8, 0), headline_only=True)
    with Estimator("process", cache=EstimateCache.user()) as estimator:
        assert device_bytes(estimator.estimate([req])[0]) == s.predicted_bytes
