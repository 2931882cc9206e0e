"""`suggest` without a GPU profile: the dry run's one cache (its key, its one invalidation rule, corruption,
--no-cache), the parallel estimator pool, and the choice of what to plan for."""

import json
import sqlite3

import pytest

from vramfit.cli import main
from vramfit.dryrun.cache import EstimateCache, code_version
from vramfit.dryrun.estimate import Estimate, EstimateRequest, estimate_step
from vramfit.dryrun.estimator import Estimator
from vramfit.dryrun.pool import WarmWorkers, compiles, graphs
from vramfit.plan.noprofile import DryRunPlanner, design_shapes
from vramfit.recipe import Recipe

BF16 = Recipe(dtype="bfloat16", optimizer="fused")


def formula_estimate(req: EstimateRequest) -> Estimate:
    """A stand-in for the engine: device bytes from a formula (the planner reads only those)."""
    mc, B = req.model, req.batch_size
    L, C, T, V = mc.n_layer, mc.n_embd, mc.block_size, mc.vocab_size
    n = int(600e6 + 16 * 12 * L * C * C + 40 * B * T * L * C + 10 * B * T * V + 1000 * req.capability[0])
    return Estimate(peak_bytes=n, peak_phase="backward", peak_op="mm", peak_step=2, breakdown={}, step_peaks=[n, n],
                    steady_bytes=0, target=req.target, compute_capability=req.capability, dtype="bfloat16",
                    optimizer="fused", attention="flash", rounding=512, model_config=mc.to_dict(), batch_size=B,
                    recipe=req.recipe.to_dict(), process={"device_bytes": n})


class FormulaEstimator(Estimator):
    """The real `Estimator` (its cache and counts) with the engine replaced by `formula_estimate`; `calls` counts
    the estimates the engine made."""

    def __init__(self, **kw):
        super().__init__("process", **kw)
        self.calls = 0

    def _run(self, requests):
        self.calls += len(requests)
        return [formula_estimate(r) for r in requests]


def plan(tmp_path, recipe=BF16, capability=(8, 0), vocab=256, use_cache=True, version=None):
    cache = EstimateCache(tmp_path if use_cache else None, version=version)
    with DryRunPlanner(recipe, capability, vocab, estimator=FormulaEstimator(cache=cache)) as p:
        model, margin, _ = p.model()
    return p, model


def test_second_plan_with_the_same_key_runs_no_estimate(tmp_path):
    first, m1 = plan(tmp_path)
    n_design = len(design_shapes(256))
    assert first.estimator.calls == n_design and first.ran == n_design and first.cached == 0
    second, m2 = plan(tmp_path)
    assert second.estimator.calls == 0 and second.ran == 0 and second.cached == n_design
    assert m2.to_dict() == m1.to_dict()
    assert "0 estimates run, 16 from the cache" in second.summary()
    assert second.counts()["cache_file"] == str(tmp_path / "estimates.sqlite")


@pytest.mark.parametrize("change", [{"capability": (8, 6)}, {"recipe": Recipe(dtype="float16", optimizer="fused")},
                                    {"vocab": 50304}])
def test_a_changed_request_misses_the_cache(tmp_path, change):
    plan(tmp_path)
    other, _ = plan(tmp_path, **change)
    assert other.ran == 16 and other.cached == 0 and other.estimator.calls == 16


def test_changing_the_code_torch_or_the_emulated_build_invalidates_every_estimate(tmp_path, monkeypatch):
    """The one invalidation rule: the version (torch, the environment the emulation follows, the estimator's
    source) keys every row."""
    plan(tmp_path, version=code_version())
    same, _ = plan(tmp_path)  # the default version is the same hash
    assert same.ran == 0 and same.cached == 16
    import vramfit.dryrun.cache as cache_mod

    monkeypatch.setattr(cache_mod, "torch_version", lambda: "0.0-other")
    other_torch, _ = plan(tmp_path)
    assert other_torch.ran == 16 and other_torch.cached == 0
    monkeypatch.undo()
    monkeypatch.setenv("VRAMFIT_CUDNN_VERSION", "9.10.2")  # another cuDNN: another SDPA kernel choice
    assert plan(tmp_path)[0].ran == 16
    monkeypatch.undo()
    assert plan(tmp_path)[0].ran == 0
    src = tmp_path / "src"
    (src / "vramfit" / "dryrun").mkdir(parents=True)
    (src / "vramfit" / "dryrun" / "fake_step.py").write_text("x = 1\n")
    before = code_version(src)
    (src / "vramfit" / "dryrun" / "fake_step.py").write_text("x = 2\n")  # an edit to the dry run's source
    edited, _ = plan(tmp_path, version=code_version(src))
    assert code_version(src) != before and edited.ran == 16
    (src / "vramfit" / "dryrun" / "new.py").write_text("")  # a new module of the dry run
    assert code_version(src) != code_version(src, torch="0.0-other") != before
    rows = sqlite3.connect(tmp_path / "estimates.sqlite").execute("SELECT DISTINCT version FROM entries")
    assert len(rows.fetchall()) == 4  # other versions' rows stay until they are old (another checkout may use them)


def test_the_version_covers_every_source_of_the_dry_run_and_the_calibration():
    from vramfit.dryrun.cache import ROOT, source_files

    files = {str(p.relative_to(ROOT)) for p in source_files()}
    assert {"vramfit/dryrun/fake_step.py", "vramfit/dryrun/compiled.py", "vramfit/dryrun/allocator.py",
            "vramfit/dryrun/context.py", "vramfit/dryrun/sdpa.py", "vramfit/measure/probe.py", "gpt/model.py",
            "gpt/train.py", "gpt/config.py", "vramfit/recipe.py", "vramfit/fit/features.py",
            "vramfit/fit/memmodel.py", "vramfit/fit/stats.py", "vramfit/plan/noprofile.py"} <= files
    assert {f"vramfit/dryrun/{p.name}" for p in (ROOT / "vramfit" / "dryrun").glob("*.py")} <= files


@pytest.mark.parametrize("garbage", [b"not a database at all, not even close" * 40, b"\xff" * 4096])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path, garbage):
    _, model = plan(tmp_path)
    (tmp_path / "estimates.sqlite").write_bytes(garbage)
    again, rebuilt = plan(tmp_path)
    assert any("corrupt cache" in w and "rebuilding" in w for w in again.warnings), again.warnings
    assert again.ran == 16 and rebuilt.to_dict() == model.to_dict()
    third, _ = plan(tmp_path)  # the rebuilt file is valid again
    assert third.warnings == [] and third.ran == 0


def test_a_corrupt_entry_is_estimated_again(tmp_path):
    _, model = plan(tmp_path)
    with sqlite3.connect(tmp_path / "estimates.sqlite") as conn:
        rows = [r for r, in conn.execute("SELECT rowid FROM entries WHERE kind = 'estimate' ORDER BY rowid")]
        conn.execute("UPDATE entries SET value = '{not json' WHERE rowid = ?", (rows[0],))
        conn.execute("UPDATE entries SET value = '[1, 2]' WHERE rowid = ?", (rows[1],))
        conn.execute("""UPDATE entries SET value = '{"coef": 1}' WHERE kind = 'calibrated-model'""")
    again, rebuilt = plan(tmp_path)
    assert sum("corrupt cache entry" in w for w in again.warnings) == 2
    assert sum("corrupt calibrated model" in w for w in again.warnings) == 1
    assert again.ran == 2 and again.cached == 14 and rebuilt.to_dict() == model.to_dict()
    assert plan(tmp_path)[0].ran == 0


def test_an_unwritable_cache_is_a_warning(tmp_path):
    (tmp_path / "file").write_text("")
    p, _ = plan(tmp_path / "file")  # its folder is a file
    assert p.ran == 16 and any("cannot write the cache" in w for w in p.warnings), p.warnings


def test_no_cache_neither_reads_nor_writes(tmp_path):
    plan(tmp_path)
    before = [(f, f.stat().st_mtime_ns) for f in sorted(tmp_path.rglob("*"))]
    off, _ = plan(tmp_path, use_cache=False)
    assert off.ran == 16 and off.counts()["cache_file"] is None and "cache off" in off.summary()
    assert [(f, f.stat().st_mtime_ns) for f in sorted(tmp_path.rglob("*"))] == before


def test_rechecks_are_cached_per_config(tmp_path):
    from vramfit.plan.suggest import suggest

    cache = lambda: EstimateCache(tmp_path)  # noqa: E731
    with DryRunPlanner(BF16, (8, 0), 256, estimator=FormulaEstimator(cache=cache())) as p:
        model, margin, _ = p.model()
        items = suggest(model, margin, 4 * 2**30, top=3, vocab_size=256, n_layer=[2, 4])
        kept = p.verify(items, 4 * 2**30)
    assert p.ran == 16 + 3 and kept
    with DryRunPlanner(BF16, (8, 0), 256, estimator=FormulaEstimator(cache=cache())) as q:
        model, margin, _ = q.model()
        items = suggest(model, margin, 4 * 2**30, top=4, vocab_size=256, n_layer=[2, 4])
        q.verify(items, 4 * 2**30)
    assert q.ran == 1 and q.cached == 16 + 3  # only the new 4th config is estimated


def test_equal_requests_in_one_call_run_once(tmp_path):
    from gpt.config import GPTConfig

    reqs = [EstimateRequest(GPTConfig(2, 2, 64, 64, 65), b, BF16, "cuda") for b in (4, 8, 4, 4)]
    with FormulaEstimator() as est:  # memory only
        out = est.estimate(reqs)
        assert est.calls == 2 and est.ran == 2 and est.cached == 2 and out[0] is out[2]
        est.estimate(reqs[:1])
        assert est.calls == 2 and est.cached == 3


@pytest.mark.slow
def test_pool_gives_exactly_the_serial_estimates():
    """Two workers (each importing torch once) return what this process computes, in the order asked."""
    from gpt.config import GPTConfig

    def req(L, H, C, T, B, V, cap=(8, 0)):  # noqa: ANN001, ANN202
        return EstimateRequest(GPTConfig(L, H, C, T, V), B, BF16, "cuda", cap, headline_only=True)

    # large enough to differ after the allocator replay's segment rounding (2 MiB / 20 MiB segments)
    reqs = [req(2, 4, 256, 256, b, 8192) for b in (1, 16)] + [req(1, 2, 128, 128, 4, 50304, (7, 5)),
                                                                req(4, 4, 256, 256, 8, 8192)]
    def timeless(e: Estimate) -> dict:  # everything but the seconds it took
        d = e.to_dict()
        return d | {"seconds": 0, "modes": {k: m | {"seconds": 0} for k, m in d["modes"].items()}}

    serial = [timeless(estimate_step(r)) for r in reqs]
    workers = WarmWorkers(workers=2)
    try:
        assert [timeless(e) for e in workers.run(reqs)] == serial
        assert [e.peak_bytes for e in workers.run(reqs[::-1])] == [d["peak_bytes"] for d in serial[::-1]]
    finally:
        workers.close()
    assert len({d["process"]["device_bytes"] for d in serial}) == 4


def test_requests_that_share_traced_graphs_are_one_group():
    """Depth and batch size (but a batch of 1) do not change the compiled emulation's graphs; width, block, vocab,
    recipe, target and capability do."""
    from gpt.config import GPTConfig

    def req(L, H, C, T, B, V, recipe=BF16, cap=(8, 0)):  # noqa: ANN001, ANN202
        return EstimateRequest(GPTConfig(L, H, C, T, V), B, recipe, "cuda", cap)

    base = req(2, 4, 256, 256, 8, 8192)
    assert graphs(req(6, 4, 256, 256, 3, 8192)) == graphs(base)
    for other in (req(2, 4, 256, 256, 1, 8192), req(2, 4, 320, 256, 8, 8192), req(2, 4, 256, 512, 8, 8192),
                  req(2, 4, 256, 256, 8, 512), req(2, 4, 256, 256, 8, 8192, cap=(9, 0)),
                  req(2, 4, 256, 256, 8, 8192, recipe=Recipe())):
        assert graphs(other) != graphs(base), other
    eager = Recipe(dtype="bfloat16", optimizer="fused", compile=False)
    a, b = req(2, 4, 256, 256, 8, 8192, recipe=eager), req(6, 4, 256, 256, 3, 8192, recipe=eager)
    assert not compiles(a) and graphs(a) != graphs(b)  # nothing traced: no reason to run them in one worker
    assert compiles(base) and not compiles(req(2, 4, 256, 256, 8, 8192, cap=(6, 1)))  # compile is off below sm70


@pytest.mark.slow
def test_cached_cli_run_gives_the_same_suggestions(tmp_path, monkeypatch, capsys):
    """The real estimator through the CLI: cold (all estimates run), warm (none run), --no-cache (all run, the
    cache untouched): the same suggestions each time. No GPU profile and no GPU here: auto plans by the dry run."""
    monkeypatch.chdir(tmp_path)  # results/models is empty: no profile
    monkeypatch.setattr("vramfit.plan.profiles.local_gpu_capability", lambda: None)
    args = ["suggest", "--vram", "3G", "--vocab", "128", "--n-layer", "2,4", "--block-size", "256", "--top", "3",
            "--cache-dir", str(tmp_path / "cache"), "--json", "--save", str(tmp_path / "s.json")]
    docs = []
    for extra in ([], [], ["--no-cache"]):
        assert main(args + extra) == 0
        docs.append(json.loads(capsys.readouterr().out))
    cold, warm, off = (d["dry_run"] for d in docs)
    assert cold["estimates_run"] >= 16 and cold["from_cache"] == 0
    assert warm["estimates_run"] == 0 and warm["from_cache"] == cold["estimates_run"]
    assert off["estimates_run"] == cold["estimates_run"] and off["cache_file"] is None
    assert docs[0]["suggestions"] == docs[1]["suggestions"] == docs[2]["suggestions"]
    assert "by the dry run" in docs[0]["plan"] and "compute capability 8.0" in docs[0]["plan"]


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """A GPU profile (an 8 GiB card) and a CPU profile (RAM), as `vramfit fit` writes them."""
    from planner_data import synthetic_points

    from vramfit.fit.memmodel import fit_points

    folder = tmp_path_factory.mktemp("profiles")
    gpu = fit_points(synthetic_points(), target="nvml").save(folder / "gpu.json")
    cpu_points = synthetic_points().assign(device_type="cpu", device_name="cpu: Test CPU")
    cpu = fit_points(cpu_points, target="nvml").save(folder / "cpu.json")
    return gpu, cpu


def test_what_to_plan_for(profiles, tmp_path):
    """auto/cuda: the newest GPU profile, else None (the dry run); cpu: the newest CPU profile, else an error."""
    from vramfit.errors import VramfitError
    from vramfit.plan.profiles import choose_model
    from vramfit.plan.request import PlanRequest

    gpu, cpu = profiles
    only_cpu = tmp_path / "only-cpu"
    only_cpu.mkdir()
    (only_cpu / "cpu.json").write_bytes(cpu.read_bytes())
    assert choose_model(PlanRequest("8G"), only_cpu) is None
    assert choose_model(PlanRequest("8G", device="cuda"), only_cpu) is None
    assert choose_model(PlanRequest("8G", device="cpu"), only_cpu)[0].name == "cpu.json"
    (only_cpu / "gpu.json").write_bytes(gpu.read_bytes())
    assert choose_model(PlanRequest("8G"), only_cpu)[0].name == "gpu.json"
    with pytest.raises(VramfitError, match="no CPU profile"):
        choose_model(PlanRequest("8G", device="cpu"), tmp_path / "empty")
    with pytest.raises(VramfitError, match="unknown --target"):
        choose_model(PlanRequest("8G", device="tpu"), only_cpu)


def test_first_line_says_what_the_plan_is_for(profiles, tmp_path, capsys):
    gpu, cpu = profiles
    common = ["--top", "2", "--data-dir", str(tmp_path / "none"), "--save", str(tmp_path / "s.json")]
    assert main(["suggest", "--vram", "4G", "--model", str(cpu), *common]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("plan for CPU RAM") and "not a GPU" in first and "--no-profile --capability" in first
    assert main(["suggest", "--vram", "24G", "--model", str(gpu), *common]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("plan for Synthetic GPU") and "more than this card's 8.00 GiB" in first
    assert main(["suggest", "--vram", "6G", "--model", str(gpu), *common]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "card memory 8.00 GiB" in first and "more than" not in first


def test_groups_go_back_to_the_worker_that_traced_their_graphs():
    from vramfit.dryrun.pool import assign

    home: dict = {}
    first = assign({"a": 10, "b": 9, "c": 1}, 2, home)
    assert first["a"] != first["b"] and first["c"] == first["b"]  # least loaded: b (9) + c (1) vs a (10)
    again = assign({"c": 100, "d": 5}, 2, home)
    assert again["c"] == first["c"]  # c's graphs are in that worker, however big the group is now
    assert again["d"] != again["c"]  # a new group goes where the load is least
    assert home == {**first, **again}
    home = {"x": 0, "y": 0}
    moved = assign({"x": 10, "y": 10}, 2, home)
    assert moved == {"x": 0, "y": 1}  # y's home is busy with x: retracing on the idle worker beats waiting


def test_fitting_batch_lands_on_the_largest_batch_the_line_allows():
    from vramfit.plan.noprofile import fitting_batch, secant

    def need(b: int) -> int:  # 3 GiB fixed + 100 MiB per sample
        return 3 * 2**30 + b * 100 * 2**20

    budget = 8 * 2**30
    largest = max(b for b in range(1, 200) if need(b) <= budget)
    b1 = fitting_batch(64, need(64), budget, None)  # in proportion: still over (the fixed bytes do not shrink)
    assert largest < b1 < 64 and need(b1) > budget
    b2 = fitting_batch(b1, need(b1), budget, secant((64, need(64)), (b1, need(b1))))
    assert b2 == largest
    assert fitting_batch(2, need(2) + budget, budget, None) == 1  # never below 1
    assert fitting_batch(10, budget + 1, budget, 1e12) == 9  # at least one smaller
    assert secant((8, 100), (8, 100)) is None and secant((8, 100), (4, 120)) is None
    # a nearly flat line between two estimates (the allocator's 2 MiB rounding) would cut 48 down to 1: proportional
    assert fitting_batch(48, budget + 2**20, budget, 1.0) == int(48 * budget / (budget + 2**20))


def test_the_user_cache_needs_no_platformdirs(monkeypatch, tmp_path):
    """platformdirs is only the no-profile cache's way to the user cache directory (absent on the lent GPU images):
    without it the cache is $XDG_CACHE_HOME/vramfit, else ~/.cache/vramfit."""
    import sys

    from vramfit.dryrun.cache import cache_root

    monkeypatch.delenv("VRAMFIT_CACHE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "platformdirs", None)  # import platformdirs -> ImportError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "vramfit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "vramfit"


def test_a_suggestion_over_budget_is_cut_along_the_calibrated_slope():
    """The first smaller batch comes from the calibrated model's bytes per sample at the suggestion's shape (a line
    in the batch), not in proportion: with an engine the model describes, one re-estimate lands on the largest
    batch that fits (the proportional step needed two more), and the next batch up confirms it is the largest."""
    from dataclasses import replace

    from vramfit.dryrun.cache import EstimateCache
    from vramfit.plan.suggest import suggest

    budget = 8 * 2**30
    with DryRunPlanner(BF16, (8, 0), 256, estimator=FormulaEstimator(cache=EstimateCache(None))) as planner:
        assert planner.slope((4, 8, 512, 256, 32, 256)) is None  # no model yet
        model, _, _ = planner.model()
        L, C, T, V = 4, 512, 256, 256
        per_sample = 40 * T * L * C + 10 * T * V  # formula_estimate's bytes per sample
        assert planner.slope((L, 8, C, T, 32, V)) == pytest.approx(per_sample, rel=0.02)
        assert planner.slope((L, 8, C, T, 1, V)) is None
        def need(b: int) -> int:
            return formula_estimate(planner._requests([(L, 8, C, T, b, V)])[0]).process["device_bytes"]

        largest = max(b for b in range(1, 400) if need(b) <= budget)
        s = list(suggest(model, 0.0, budget, top=1, vocab_size=[V], n_layer=[L], n_embd=[C], block_size=[T]))[0]
        over = replace(s, batch_size=largest + 8, tokens_per_step=(largest + 8) * T)  # the model over-reached
        calls = planner.estimator.calls
        kept = planner.verify([over], budget, 0.0)
    # the suggestion, the one batch along the slope (it fits), the next one up (it does not: the cut was the largest)
    assert planner.estimator.calls - calls == 3
    assert [k.batch_size for k in kept] == [largest]


def test_a_flat_stretch_of_the_allocators_rounding_is_stepped_past_not_walked():
    """Where several batches round to one segment size (the estimates at the suggested batch and one below are
    equal), the re-check steps twice as far each time instead of one batch at a time, so the config is kept at a
    batch that fits instead of being dropped after three one-batch steps (seen in suggest's golden no-profile plan:
    batches 27, 26, 25, 24 at the same 491.47 MiB, then 'nothing fits')."""
    granule = 20 * 2**20

    class Stretched(FormulaEstimator):
        def _run(self, requests):
            out = super()._run(requests)
            for e in out:  # the batch-dependent bytes rounded up to 20 MiB segments
                n = e.process["device_bytes"]
                e.process["device_bytes"] = -(-n // granule) * granule
            return out

    from dataclasses import replace

    from vramfit.dryrun.cache import EstimateCache
    from vramfit.plan.suggest import suggest

    with DryRunPlanner(BF16, (8, 0), 256, estimator=Stretched(cache=EstimateCache(None))) as planner:
        model, _, _ = planner.model()
        L, C, T, V = 2, 128, 256, 256
        shape = (L, 2, C, T, 1, V)

        def need(b: int) -> int:
            return planner._estimates([(*shape[:4], b, V)])[0]

        top = next(b for b in range(80, 10, -1) if need(b) == need(b - 4))  # a stretch wider than three steps
        budget = need(top) - 1  # the whole stretch is over by a byte; the batches below it fit
        flat = [b for b in range(1, top) if need(b) == need(top)]
        s = list(suggest(model, 0.0, 8 * 2**30, top=1, vocab_size=[V], n_layer=[L], n_embd=[C], block_size=[T]))[0]
        kept = planner.verify([replace(s, batch_size=top, tokens_per_step=top * T)], budget, 0.0)
    assert len(kept) == 1 and need(kept[0].batch_size) <= budget and kept[0].batch_size < min(flat)
