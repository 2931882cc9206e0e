"""Issue 17's dynamic batch dimension: the gate, the trainer's marking, what Dynamo compiles, the sweep's plumbing."""

import functools
import json
import sys
import textwrap

import pytest
import torch

from gpt.config import make_config
from gpt.data import synthetic_batch
from gpt.errors import ConfigError
from gpt.train import Trainer, mark_batch_dynamic
from vramfit.errors import VramfitError
from vramfit.store import Store
from vramfit.sweep import dynamic
from vramfit.sweep.dynamic import decide, resolve_measure
from vramfit.sweep.grid import Measure, load_grid
from vramfit.sweep.session import SweepOptions, run_sweep
from vramfit.sweep.whole_grid import GridChooser

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
PROOF = {"cpu": "a bench"}


# ---------------------------------------------------------------------------------------------- the gate


def test_the_gate_uses_the_dynamic_path_by_default_only_where_verified_and_a_cache_is_shared():
    assert decide(None, True, "cpu", True, PROOF).dynamic
    assert not decide(None, True, "cpu", False, PROOF).dynamic  # fresh processes, no shared cache: nothing reused
    unverified = decide(None, True, "cuda", True, PROOF)
    assert not unverified.dynamic and "not verified" in unverified.reason
    assert not decide(False, True, "cpu", True, PROOF).dynamic  # --static-batch wins over the evidence
    assert not decide(None, False, "cpu", True, PROOF).dynamic  # eager: nothing to mark


def test_asking_for_the_dynamic_path_where_it_is_unverified_is_allowed_but_labelled():
    d = decide(True, True, "cuda", True, PROOF)
    assert d.dynamic and "NOT verified" in d.reason and "dynamic" in d.line()
    assert "verified equal" in decide(True, True, "cpu", False, PROOF).reason


def test_asking_for_the_dynamic_path_with_an_eager_recipe_is_an_error():
    with pytest.raises(VramfitError, match="compile = true"):
        decide(True, False, "cpu", True, PROOF)


def test_the_default_follows_the_evidence_table(monkeypatch):
    """The module's own table decides the default: with no evidence for a device the sweep stays static."""
    monkeypatch.setattr(dynamic, "VERIFIED", {})
    assert not decide(None, True, "cuda", True).dynamic and not decide(None, True, "cpu", True).dynamic
    monkeypatch.setattr(dynamic, "VERIFIED", {"cuda": "gpu_evidence"})
    assert decide(None, True, "cuda", True).dynamic


def test_devices_that_disagree_get_the_dynamic_path_only_when_every_compiled_one_does():
    m, d = resolve_measure(Measure(dynamic_batch=True), [("cuda", True), ("cuda", True)], True)
    assert m.dynamic_batch is True and d.dynamic
    with pytest.raises(VramfitError):
        resolve_measure(Measure(dynamic_batch=True), [("cuda", True), ("cuda", False)], True)
    m, d = resolve_measure(Measure(), [("cpu", False)], True)
    assert m.dynamic_batch is False and d.reason == "eager recipe"


# ---------------------------------------------------------------------------------------------- the trainer


def _trainer(**kw) -> Trainer:
    cfg = make_config({**TINY, "device": "cpu", "dtype": "float32", "batch_size": 4, **kw})
    return Trainer(cfg, cfg.model_config(), "cpu")


def _spy(trainer: Trainer) -> list:
    """Replace the compiled forward by the eager model, remembering the dynamic dims of each batch it gets."""
    seen = []

    def forward(x, y):
        key = "_dynamo_weak_dynamic_indices"
        seen.append((getattr(x, key, None), getattr(y, key, None)))
        return trainer.model(x, y)

    trainer.forward = forward
    return seen


@pytest.mark.parametrize("compile_, dynamic_, expected", [(True, True, {0}), (True, False, None)])
def test_the_trainer_marks_the_batch_dimension_only_when_asked(compile_, dynamic_, expected):
    trainer = _trainer(compile=compile_, dynamic_batch=dynamic_)
    seen = _spy(trainer)
    gen = torch.Generator().manual_seed(0)
    trainer.step(lambda: synthetic_batch(4, 16, 64, gen, "cpu"))
    assert seen == [(expected, expected)]


def test_dynamic_batch_without_compile_is_refused():
    with pytest.raises(ConfigError, match="compile"):
        make_config({**TINY, "compile": False, "dynamic_batch": True})
    with pytest.raises(ConfigError, match="compile is off"):  # compile 'auto' resolves to eager on the CPU
        _trainer(dynamic_batch=True)


def test_a_batch_of_one_is_not_marked():
    """Dynamo specialises sizes 0 and 1 whatever is asked (torch/_dynamo/variables/builder.py). The mark is
    `maybe_mark_dynamic` (`_dynamo_weak_dynamic_indices`): a graph that specialises the batch compiles static."""
    one, two = torch.zeros(1, 3), torch.zeros(2, 3)
    mark_batch_dynamic(one, two)
    assert getattr(one, "_dynamo_weak_dynamic_indices", None) is None and two._dynamo_weak_dynamic_indices == {0}


@pytest.fixture
def eager_backend(monkeypatch):
    """torch.compile through Dynamo with the eager backend: Dynamo's graphs, guards and recompiles are real, without
    Inductor's code generation (seconds instead of a minute)."""
    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("dynamic_, graphs, symbolic", [(True, 1, True), (False, 2, False)])
def test_dynamo_compiles_one_graph_for_two_batch_sizes_only_with_the_mark(eager_backend, dynamic_, graphs, symbolic):
    from vramfit.measure.worker import batch_record, dynamo_mark

    before = dynamo_mark()
    trainer = _trainer(compile=True, dynamic_batch=dynamic_)
    gen = torch.Generator().manual_seed(0)
    trainer.step(lambda: synthetic_batch(4, 16, 64, gen, "cpu"))
    first = batch_record(before)
    trainer.step(lambda: synthetic_batch(8, 16, 64, gen, "cpu"))
    rec = batch_record(before)
    assert first["batch_symbolic"] is symbolic  # the first graph: symbolic only when marked
    assert rec["dynamo_graphs"] == graphs  # static: a recompile for batch 8


def test_under_the_plain_tracker_dynamo_does_not_compile_and_under_the_compiled_tracker_it_does(eager_backend):
    """Dynamo skips frames first seen under a non-infra dispatch mode ("non-infra torch dispatch mode present",
    torch/_dynamo/convert_frame.py); `ignore_compile_internals` (torch/utils/_python_dispatch.py) lets it compile."""
    from vramfit.measure.probe import CompiledStorageTracker, StorageTracker
    from vramfit.measure.worker import batch_record, dynamo_mark

    for cls, graphs in ((StorageTracker, 0), (CompiledStorageTracker, 1)):
        torch._dynamo.reset()
        before = dynamo_mark()
        gen = torch.Generator().manual_seed(0)
        with cls() as tracker:
            trainer = _trainer(compile=True)
            trainer.step(lambda: synthetic_batch(4, 16, 64, gen, "cpu"))  # noqa: B023
        assert batch_record(before)["dynamo_graphs"] == graphs, cls.__name__
        assert tracker.peak > 0


@pytest.mark.parametrize("dynamic_", [False, True])
def test_the_cpu_worker_measures_the_compiled_trainer_with_the_batch_dimension_asked_for(eager_backend, dynamic_):
    """The worker's warm-up copy (batch 1) compiles first; without the Dynamo reset after it, automatic dynamic
    shapes would make the measured graph's batch symbolic even when static was asked for."""
    from vramfit.measure.worker import run_point
    from vramfit.recipe import Recipe

    spec = {"point": {**TINY, "batch_size": 4}, "device": "cpu",
            "recipe": Recipe(dtype="float32", compile=True).resolved("cpu").to_dict(),
            "measure": {"min_iters": 3, "max_iters": 4, "window": 2, "threads": 0, "timing_iters": 0,
                        "dynamic_batch": dynamic_}}
    rec = run_point(spec)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["dynamic_batch"] is dynamic_ and rec["batch_symbolic"] is dynamic_
    assert rec["dynamo_graphs"] == 1 and rec["peak_steps"][0] == 2 and rec["alloc_step_peak_bytes"] > 0


def test_a_compiled_cpu_reading_leaves_step_one_out():
    from vramfit.measure.reader import CpuReader

    for compiled, expected in ((False, 4_000_000), (True, 400_000)):
        reader = CpuReader(compiled=compiled)
        reader.start()
        big = torch.empty(1_000_000)  # step 1 (compilation): a large transient, freed by the step's end
        reader.read(1)
        del big
        reader.after_first_step()
        small = torch.empty(100_000)
        rec = reader.read(2)
        reader.stop()
        del small
        assert rec[0] == expected and reader.record["peak_steps"] == [2 if compiled else 1, 2]


# ---------------------------------------------------------------------------------------------- the sweep

ECHO_WORKER = textwrap.dedent("""
    import json, sys
    spec = json.loads(sys.stdin.read())
    print(json.dumps({**spec["point"], "status": "ok", "tracked_bytes": 1, "rss_bytes": 1, "compile": True,
                      "dynamic_batch": spec["measure"]["dynamic_batch"]}))
""")


def _grid(compile_: bool, **measure):
    return load_grid(None, {**{k: [v] for k, v in TINY.items()}, "batch_size": [2, 4]},
                     recipe_overrides={"compile": compile_}, measure_overrides=measure)


@pytest.mark.parametrize("asked", [True, False])
def test_the_sweep_hands_the_decision_to_each_worker_and_stores_it_per_point(tmp_path, asked):
    db = tmp_path / "db.sqlite"
    lines = []
    run_sweep(_grid(True, dynamic_batch=asked), SweepOptions(db, device="cpu", log=lines.append, live=False,
                                                             worker_cmd=[sys.executable, "-c", ECHO_WORKER]),
              GridChooser())
    with Store(db) as s:
        df = s.points_frame()
        extras = s.point_extras([int(i) for i in df.point_id])
        grid_json = json.loads(s.conn.execute("SELECT grid_json FROM sweeps").fetchone()[0])
    assert [e["dynamic_batch"] for e in extras.values()] == [asked, asked]
    assert grid_json["measure"]["dynamic_batch"] is asked  # the sweep's row says what it decided
    assert any(line.startswith(f"compiled points: batch dimension {'dynamic' if asked else 'static'}")
               for line in lines)


def test_the_flag_with_an_eager_recipe_is_one_error_line_and_no_database(tmp_path, capsys):
    from vramfit.cli import main

    db = tmp_path / "db.sqlite"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["sweep", "--device", "cpu", *args, "--batch-size", "2", "--dynamic-batch", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error: --dynamic-batch"), err
    assert not db.exists()


def test_the_grid_key_is_read_as_a_boolean(tmp_path):
    assert _grid(True, dynamic_batch=False).measure.dynamic_batch is False
    assert _grid(True).measure.dynamic_batch is None
    with pytest.raises(VramfitError, match="dynamic_batch must be true or false"):
        _grid(True, dynamic_batch="yes")


@pytest.mark.slow
def test_a_compiled_cpu_point_reads_what_the_compiled_dry_run_predicts():
    """Real Inductor (C++ backend) on this CPU: the worker's tracked_bytes of a compiled point (live tensors between
    steps + the CPU allocator's peak of a steady step, Inductor's buffers included) against the dry run's compiled
    estimate, which `experiments/bench_compile.py` checks within 1.2 % of the same profiler measurement. The
    dispatcher-only figure misses Inductor's buffers and the gradients of the compiled backward."""
    from gpt.config import GPTConfig
    from vramfit.dryrun.estimate import EstimateRequest, estimate_step
    from vramfit.measure.worker import run_point
    from vramfit.recipe import Recipe

    shape = dict(n_layer=2, n_head=4, n_embd=128, block_size=128, vocab_size=4096)
    recipe = Recipe(dtype="float32", compile=True, optimizer="fused")
    spec = {"point": {**shape, "batch_size": 4}, "device": "cpu", "recipe": recipe.resolved("cpu").to_dict(),
            "measure": {"min_iters": 3, "max_iters": 4, "window": 2, "threads": 0, "timing_iters": 0}}
    rec = run_point(spec)
    assert rec["status"] == "ok", rec.get("error")
    est = estimate_step(EstimateRequest(GPTConfig(**shape), 4, recipe, target="cpu", headline_only=True)).peak_bytes
    assert abs(rec["tracked_bytes"] - est) <= 0.05 * est, (rec["tracked_bytes"], est)
    assert rec["tracked_dispatch_bytes"] < 0.9 * rec["tracked_bytes"]


@pytest.mark.slow
def test_train_measure_of_a_compiled_cpu_run_counts_inductors_buffers(char_corpus, tmp_path):
    """`vramfit train --measure` with compile on the CPU: the trainer really compiles under the probe (no eager
    fallback), and once stable one step runs under the CPU allocator's profiler, so the stored tracked bytes
    include Inductor's buffers: within 5 % of the compiled dry-run estimate; the dispatcher-only figure is lower."""
    from gpt.config import GPTConfig, make_config
    from vramfit.dryrun.estimate import EstimateRequest, estimate_step
    from vramfit.measure.train_measure import train_and_measure
    from vramfit.recipe import Recipe

    shape = dict(n_layer=2, n_head=4, n_embd=64, block_size=64)
    cfg = make_config({**shape, "batch_size": 4, "device": "cpu", "dtype": "float32", "compile": True,
                       "optimizer": "fused", "max_iters": 10, "eval_interval": 1000, "log_interval": 1000,
                       "data_dir": str(char_corpus), "out_dir": str(tmp_path / "out"), "warmup_iters": 1})
    result, rec = train_and_measure(cfg, log=lambda line: None)
    assert rec["status"] == "ok" and rec["compile"] is True
    assert rec["peak_steps"][0] == 2  # step 1 compiles: out of the peaks
    vocab = rec["vocab_size"]
    est = estimate_step(EstimateRequest(GPTConfig(**shape, vocab_size=vocab), 4, Recipe(dtype="float32", compile=True,
                        optimizer="fused"), target="cpu", headline_only=True)).peak_bytes
    assert abs(rec["tracked_bytes"] - est) <= 0.05 * est, (rec["tracked_bytes"], est)
    assert rec["tracked_dispatch_bytes"] < rec["tracked_bytes"]


@pytest.mark.slow
def test_a_compiled_cpu_point_over_the_emulated_card_is_an_oom():
    """The emulated cap is enforced by the storage tracker, which does not see Inductor's buffers: a compiled point
    whose true reading (live + the allocator's step peak) exceeds the cap is an oom, not an ok point above it."""
    from vramfit.measure.worker import run_point
    from vramfit.recipe import Recipe

    shape = dict(n_layer=2, n_head=4, n_embd=128, block_size=128, vocab_size=4096)
    spec = {"point": {**shape, "batch_size": 4}, "device": "cpu", "emulate_bytes": 26_000_000,
            "recipe": Recipe(dtype="bfloat16", compile=True, optimizer="fused").resolved("cpu").to_dict(),
            "measure": {"min_iters": 3, "max_iters": 4, "window": 2, "threads": 0, "timing_iters": 0}}
    rec = run_point(spec)
    assert rec["tracked_dispatch_bytes"] < 26_000_000 < rec["tracked_bytes"]  # the tracker alone would pass it
    assert rec["status"] == "oom" and "emulated capacity" in rec["error"]


def test_a_worker_whose_recipe_does_not_compile_ignores_the_dynamic_batch_it_was_handed():
    """A sweep decides dynamic_batch once for all its devices; a device where the recipe resolves to eager (compile
    'auto' on the CPU) trains unmarked instead of failing every point."""
    from vramfit.measure.worker import run_point

    spec = {"point": {**TINY, "batch_size": 4}, "device": "cpu", "recipe": {"dtype": "float32"},
            "measure": {"min_iters": 3, "max_iters": 4, "window": 2, "threads": 0, "timing_iters": 0,
                        "dynamic_batch": True}}
    rec = run_point(spec)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["compile"] is False and "dynamic_batch" not in rec


def test_a_sweep_in_the_other_batch_mode_than_the_stored_points_is_refused_and_writes_nothing(tmp_path):
    """Stored compiled points measured with a static batch: a sweep with --dynamic-batch on the same device and
    recipe would skip them as measured (a resume) or mix the two kinds in one fit; it is refused, the database
    byte for byte as it was. The same mode resumes."""
    import hashlib

    db = tmp_path / "db.sqlite"
    worker = [sys.executable, "-c", ECHO_WORKER]
    options = SweepOptions(db, device="cpu", log=lambda line: None, worker_cmd=worker, live=False)
    run_sweep(_grid(True, dynamic_batch=False), options, GridChooser())
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(VramfitError, match="static batch dimension: rerun with --static-batch"):
        run_sweep(_grid(True, dynamic_batch=True), options, GridChooser())
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    res = run_sweep(_grid(True, dynamic_batch=False), options, GridChooser())
    assert res.resumed == 2


def test_train_measure_profiles_a_step_with_nothing_else_in_its_window():
    """After the readings settle, a compiled CPU trainer's next step runs under the CPU allocator's profiler, but
    not a step whose iteration is followed by an evaluation and a checkpoint (`gpt.train`: every eval_interval and
    the last iteration) nor past the last one: those wait for a clean iteration, or the record says none was left."""
    import types

    from vramfit.measure.train_measure import StepProbe

    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = types.SimpleNamespace(model=model, optimizer=opt,
                                    cfg=types.SimpleNamespace(max_iters=10, eval_interval=5))
    with StepProbe("cpu", compiled=True) as probe:
        probe._stop()
        probe._pending = True
        for it in (5, 10):  # an eval follows 5; 10 is the last
            trainer.iter_num = it
            probe(trainer)
            assert probe._window is None
        trainer.iter_num = 6
        probe(trainer)  # opens the window over step 7
        assert probe._window is not None
        torch.ones(1000)  # "step 7": 4000 bytes allocated and freed
        trainer.iter_num = 7
        probe(trainer)  # closes it
        rec = probe.record
        assert probe._window is None and rec["compiled_reading"] == "allocator"
        assert rec["alloc_step_peak_bytes"] >= 4000 and rec["tracked_bytes"] == rec["alloc_step_peak_bytes"] + 4 * 20
