"""`suggest` without a GPU profile: the dry-run model's cache (keys, corruption, --no-cache), the parallel
estimator pool, and the choice of what to plan for."""

import json

import pytest

from vramfit.cli import main
from vramfit.plan.estimate_pool import EstimatorPool, Job, run_job
from vramfit.plan.noprofile import DryRunPlanner, cache_key, design_shapes, key_digest
from vramfit.recipe import Recipe
from vramfit.shape import Shape

BF16 = Recipe(dtype="bfloat16", optimizer="fused")


class FakeRunner:
    """Stands in for the estimator pool: device bytes from a formula, and a count of the estimates it ran."""

    def __init__(self):
        self.calls = 0

    def __call__(self, jobs):
        self.calls += len(jobs)
        out = []
        for j in jobs:
            L, H, C, T, B, V = j.shape.as_tuple()
            out.append(int(600e6 + 16 * 12 * L * C * C + 40 * B * T * L * C + 10 * B * T * V + 1000 * j.capability[0]))
        return out


def plan(tmp_path, runner, recipe=BF16, capability=(8, 0), vocab=256, **kw):
    with DryRunPlanner(recipe, capability, vocab, cache_dir=tmp_path, runner=runner, **kw) as p:
        model, margin, _ = p.model()
    return p, model


def test_second_plan_with_the_same_key_runs_no_estimate(tmp_path):
    runner = FakeRunner()
    first, m1 = plan(tmp_path, runner)
    n_design = len(design_shapes(256))
    assert runner.calls == n_design and first.ran == n_design and first.cached == 0
    second, m2 = plan(tmp_path, runner)
    assert runner.calls == n_design and second.ran == 0 and second.cached == n_design
    assert m2.to_dict() == m1.to_dict()
    assert "0 estimates run, 16 from the cache" in second.summary()


@pytest.mark.parametrize("change", [{"capability": (8, 6)}, {"recipe": Recipe(dtype="float16", optimizer="fused")},
                                    {"vocab": 50304}])
def test_a_changed_key_misses_the_cache(tmp_path, change):
    runner = FakeRunner()
    base, _ = plan(tmp_path, runner)
    other, _ = plan(tmp_path, runner, **change)
    assert other.ran == 16 and other.cached == 0 and runner.calls == 32
    assert other.entry.path != base.entry.path and other.entry.path.is_file()


def test_the_key_holds_what_changes_an_estimate(monkeypatch):
    """torch version, capability, resolved recipe, vocabulary, the estimator's code and the context table."""
    import vramfit.plan.noprofile as npf

    rec = BF16.resolved("cuda", (8, 0)).to_dict()
    key = cache_key(rec, (8, 0), 256)
    assert {"torch", "capability", "recipe", "vocab_size", "estimator", "context_table"} <= set(key)
    assert key["recipe"]["dtype"] == "bfloat16" and key["capability"] == [8, 0] and key["vocab_size"] == 256
    monkeypatch.setattr(npf, "torch_version", lambda: "0.0-other")
    assert key_digest(cache_key(rec, (8, 0), 256)) != key_digest(key)
    monkeypatch.undo()
    monkeypatch.setattr(npf, "code_version", lambda files=None: "edited")
    assert key_digest(cache_key(rec, (8, 0), 256)) != key_digest(key)
    monkeypatch.undo()
    monkeypatch.setattr(npf, "context_version", lambda: "table-2")
    assert key_digest(cache_key(rec, (8, 0), 256)) != key_digest(key)


def test_code_version_follows_the_source(tmp_path, monkeypatch):
    import vramfit.plan.noprofile as npf

    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(npf, "ROOT", tmp_path)
    before = npf.code_version(("a.py",))
    (tmp_path / "a.py").write_text("x = 2\n")
    assert npf.code_version(("a.py",)) != before


@pytest.mark.parametrize("garbage", ["{not json", json.dumps({"key": {}, "model": None}), json.dumps([1, 2]),
                                     "\udcff"])
def test_a_corrupt_entry_is_ignored_with_a_warning_and_rebuilt(tmp_path, garbage):
    runner = FakeRunner()
    good, model = plan(tmp_path, runner)
    good.entry.path.write_text(garbage, encoding="utf-8", errors="surrogateescape")
    again, rebuilt = plan(tmp_path, runner)
    assert any("corrupt cache entry" in w and "rebuilding" in w for w in again.warnings), again.warnings
    assert again.ran == 16 and rebuilt.to_dict() == model.to_dict()
    third, _ = plan(tmp_path, runner)  # the rebuilt file is valid again
    assert third.warnings == [] and third.ran == 0


def test_no_cache_neither_reads_nor_writes(tmp_path):
    runner = FakeRunner()
    plan(tmp_path, runner)
    files = sorted(tmp_path.rglob("*.json"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    off, _ = plan(tmp_path, runner, use_cache=False)
    assert off.ran == 16 and off.entry.path is None and "cache off" in off.summary()
    assert sorted(tmp_path.rglob("*.json")) == files and [f.stat().st_mtime_ns for f in files] == mtimes


def test_rechecks_are_cached_per_config(tmp_path):
    from vramfit.plan.suggest import suggest

    runner = FakeRunner()
    with DryRunPlanner(BF16, (8, 0), 256, cache_dir=tmp_path, runner=runner) as p:
        model, margin, _ = p.model()
        items = suggest(model, margin, 4 * 2**30, top=3, vocab_size=256, n_layer=[2, 4])
        kept = p.verify(items, 4 * 2**30)
    assert p.ran == 16 + 3 and kept
    with DryRunPlanner(BF16, (8, 0), 256, cache_dir=tmp_path, runner=runner) as q:
        model, margin, _ = q.model()
        items = suggest(model, margin, 4 * 2**30, top=4, vocab_size=256, n_layer=[2, 4])
        q.verify(items, 4 * 2**30)
    assert q.ran == 1 and q.cached == 16 + 3  # only the new 4th config is estimated


@pytest.mark.slow
def test_pool_gives_exactly_the_serial_estimates():
    """Two workers (each importing torch once) return what this process computes, in the order asked."""
    rec = tuple(sorted(BF16.to_dict().items()))
    # large enough to differ after the allocator replay's segment rounding (2 MiB / 20 MiB segments)
    jobs = [Job(Shape(2, 4, 256, 256, b, 8192), rec, "cuda", (8, 0)) for b in (1, 16)] + [
        Job(Shape(1, 2, 128, 128, 4, 50304), rec, "cuda", (7, 5)),
        Job(Shape(4, 4, 256, 256, 8, 8192), rec, "cuda", (8, 0))]
    serial = [run_job(j) for j in jobs]
    with EstimatorPool(workers=2) as pool:
        assert pool.run(jobs) == serial
        assert pool.run(jobs[::-1]) == serial[::-1]
    assert len(set(serial)) == 4


def test_jobs_that_share_traced_graphs_are_one_group():
    """Depth and batch size (but a batch of 1) do not change the compiled emulation's graphs; width, block, vocab,
    recipe, target and capability do."""
    rec = tuple(sorted(BF16.to_dict().items()))
    base = Job(Shape(2, 4, 256, 256, 8, 8192), rec, "cuda", (8, 0))
    assert Job(Shape(6, 4, 256, 256, 3, 8192), rec, "cuda", (8, 0)).graphs() == base.graphs()
    others = [(Shape(2, 4, 256, 256, 1, 8192), rec, (8, 0)), (Shape(2, 4, 320, 256, 8, 8192), rec, (8, 0)),
              (Shape(2, 4, 256, 512, 8, 8192), rec, (8, 0)), (Shape(2, 4, 256, 256, 8, 512), rec, (8, 0)),
              (Shape(2, 4, 256, 256, 8, 8192), rec, (9, 0)), (Shape(2, 4, 256, 256, 8, 8192), (), (8, 0))]
    for other in (Job(shape, r, "cuda", cap) for shape, r, cap in others):
        assert other.graphs() != base.graphs(), other
    eager = tuple(sorted(Recipe(dtype="bfloat16", optimizer="fused", compile=False).to_dict().items()))
    a = Job(Shape(2, 4, 256, 256, 8, 8192), eager, "cuda", (8, 0))
    b = Job(Shape(6, 4, 256, 256, 3, 8192), eager, "cuda", (8, 0))
    assert not a.compiles() and a.graphs() != b.graphs()  # nothing traced: no reason to run them in one worker
    assert base.compiles() and not Job(base.shape, rec, "cuda", (6, 1)).compiles()  # compile is off below sm70


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
    from vramfit.plan.estimate_pool import assign

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

    from vramfit.plan.noprofile import cache_root

    monkeypatch.delenv("VRAMFIT_CACHE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "platformdirs", None)  # import platformdirs -> ImportError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "vramfit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "vramfit"
