"""torch.compile emulation in the dry run (`vramfit.dryrun.compiled`): the fusion plan on hand-made graphs, the
compiled estimate against eager and against a real Inductor step on this CPU, and how estimates show both."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from gpt.config import GPTConfig
from vramfit.cli import main
from vramfit.dryrun import compiled
from vramfit.dryrun.compiled import GraphRunner, op_kind, plan_graph
from vramfit.dryrun.estimate import Estimate, EstimateRequest, estimate_step, format_estimate
from vramfit.dryrun.fake_step import StepTracker
from vramfit.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
aten = torch.ops.aten


def _mlp(x, w1, w2):  # noqa: ANN001, ANN202
    h = x @ w1  # extern: materialised
    a = h * 2.0  # pointwise: fused into the next kernel
    g = a + 1.0  # pointwise read by a matmul: realised
    return g @ w2


def _graph():  # noqa: ANN202
    x, w1, w2 = torch.randn(64, 32), torch.randn(32, 128), torch.randn(128, 16)
    return make_fx(_mlp)(x, w1, w2), (x, w1, w2)


def _node(gm, target):  # noqa: ANN001, ANN202
    return next(n for n in gm.graph.nodes if n.target is target)


def test_op_kinds():
    gm, _ = _graph()
    assert op_kind(_node(gm, aten.mm.default)) == "extern"
    assert op_kind(_node(gm, aten.mul.Tensor)) == "pointwise"
    assert op_kind(_node(gm, aten.add.Tensor)) == "pointwise"
    g = make_fx(lambda t: t.view(-1).sum())(torch.randn(4, 4))
    assert op_kind(_node(g, aten.view.default)) == "view" and op_kind(_node(g, aten.sum.default)) == "reduce"


def test_pointwise_chain_is_fused_and_the_matmul_output_lives_until_the_fused_kernel_reads_it():
    gm, _ = _graph()
    plan = plan_graph(gm.graph)
    mm1, mm2 = [n for n in gm.graph.nodes if n.target is aten.mm.default]
    mul, add = _node(gm, aten.mul.Tensor), _node(gm, aten.add.Tensor)
    assert mm1 in plan.materialised and mm2 in plan.materialised
    assert add in plan.materialised  # a matmul reads it: Inductor realises it
    assert mul not in plan.materialised  # computed inside add's kernel
    assert mm1 in plan.drop_after[add]  # h is read by add's kernel (through the fused mul), not dropped at mul
    assert add in plan.drop_after[mm2]


def test_graph_runner_counts_only_materialised_buffers():
    gm, (x, w1, w2) = _graph()
    tracker = StepTracker(rounding=1)
    with tracker:
        tracker.add(x, w1, w2)
        inputs = 4 * (64 * 32 + 32 * 128 + 128 * 16)
        tracker.reset_peak()
        out = GraphRunner(gm, tracker.paused)([x, w1, w2])
    h = 4 * 64 * 128
    # peak: the inputs, h (the realised add is written over it: its last reader, the fused mul never exists) and
    # the second matmul's output
    assert tracker.peak == inputs + h + 4 * 64 * 16
    assert tracker.current == inputs + 4 * 64 * 16  # only the result is left
    assert torch.allclose(out[0] if isinstance(out, (list, tuple)) else out, _mlp(x, w1, w2), atol=1e-4)


def test_scatter_writes_into_its_fused_initial_buffer():
    """Embedding backward under Inductor's decompositions: zeros + index_put(accumulate) is one buffer."""
    def f(w, idx):  # noqa: ANN001, ANN202
        return torch.zeros_like(w).index_put_((idx,), torch.ones(idx.shape[0], w.shape[1]), accumulate=True)

    g = make_fx(f)(torch.randn(100, 8), torch.tensor([1, 2, 3]))
    plan = plan_graph(g.graph)
    assert [n.target.overloadpacket.__name__ for n in plan.materialised] == ["index_put_"]


def test_a_pointwise_kernel_writes_over_a_buffer_it_reads_last():
    """Inductor's in-place reuse (`decide_inplace_update`): the kernel of tanh(h) * 2 (realised: a matmul reads
    it) is h's last reader, reads it at its own index, same dtype and size: it writes over h, no new buffer. Read
    transposed, or read again later, h keeps its buffer."""
    def over(x, w, v):  # noqa: ANN001, ANN202
        h = x @ w
        return (h.tanh() * 2.0) @ v

    def transposed(x, w, v):  # noqa: ANN001, ANN202
        h = x @ w
        return (h.t().tanh() * 2.0) @ v

    def reread(x, w, v):  # noqa: ANN001, ANN202
        h = x @ w
        return (h.tanh() * 2.0) @ v + h.sum(0)[:4]

    x, w, v = torch.randn(16, 8), torch.randn(8, 16), torch.randn(16, 4)
    for fn, inplace in ((over, True), (transposed, False), (reread, False)):
        gm = make_fx(fn)(x, w, v)
        plan = plan_graph(gm.graph)
        mm, mul = _node(gm, aten.mm.default), _node(gm, aten.mul.Tensor)
        assert mul in plan.materialised
        assert (plan.inplace.get(mul) is mm) == inplace, fn.__name__
    gm = make_fx(over)(x, w, v)
    tracker = StepTracker(rounding=1)
    with tracker:
        tracker.add(x, w, v)
        tracker.reset_peak()
        out = GraphRunner(gm, tracker.paused)([x, w, v])
    assert tracker.peak == 4 * (16 * 8 + 8 * 16 + 16 * 4) + 4 * 16 * 16 + 4 * 16 * 4  # h, written over; the result
    assert torch.allclose(out[0] if isinstance(out, (list, tuple)) else out, over(x, w, v), atol=1e-5)


def test_backward_writes_over_donated_saved_buffers_only():
    """AOTAutograd donates the saved tensors no forward input or output aliases
    (`collect_bw_donated_buffer_idxs`): the backward may write over the saved matmul output, not over a saved
    forward output."""
    from torch._functorch.aot_autograd import aot_function

    graphs: dict = {}

    def compiler(name: str):  # noqa: ANN202
        def compile_graph(gm, example_inputs):  # noqa: ANN001, ANN202
            graphs[name] = gm
            return gm
        return compile_graph

    def f(w, x):  # noqa: ANN001, ANN202
        y = x @ w
        t = y.tanh()
        return t, (t * y).sum()

    fn = aot_function(f, compiler("forward"), compiler("backward"), partition_fn=compiled._partition_fn(),
                      decompositions=compiled._decompositions())
    t, loss = fn(torch.randn(8, 8, requires_grad=True), torch.randn(4, 8))
    (loss + t.sum()).backward()
    donated = compiled.donated_buffers(graphs["forward"], graphs["backward"])
    saved = {n.name for n in graphs["backward"].graph.find_nodes(op="placeholder") if n.name.startswith("mm")}
    user = {n.name for n in next(iter(graphs["forward"].graph.find_nodes(op="output"))).args[0][:1]}
    assert saved and saved <= donated and not user & donated


def _estimate(mc: GPTConfig, batch: int, **recipe: object) -> Estimate:
    return estimate_step(EstimateRequest(mc, batch, Recipe(optimizer="fused", **recipe), target="cpu"))


def test_compiled_step_drops_the_fp32_logits_copies():
    """bf16 with a large vocabulary: eager keeps fp32 copies of the logits (upcast, log-softmax, its gradient);
    Inductor fuses them into the loss kernels, so the compiled peak is lower by at least one of them."""
    mc = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=128, vocab_size=8192)
    est = _estimate(mc, 4, dtype="bfloat16", compile=True)
    assert est.compiled and set(est.modes) == {"eager", "compiled"}
    eager, comp = est.modes["eager"]["peak_bytes"], est.modes["compiled"]["peak_bytes"]
    assert est.peak_bytes == comp
    assert eager - comp >= 4 * 128 * 8192 * 4
    assert sum(est.breakdown.values()) == comp
    assert any("torch.compile emulated" in n for n in est.notes)


def test_eager_recipe_has_one_mode_and_is_unchanged():
    mc = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=64, vocab_size=512)
    eager = _estimate(mc, 2, dtype="float32", compile=False)
    both = _estimate(mc, 2, dtype="float32", compile=True)
    assert not eager.compiled and set(eager.modes) == {"eager"}
    assert both.modes["eager"]["peak_bytes"] == eager.peak_bytes
    assert "eager vs compiled" not in format_estimate(eager)
    text = format_estimate(both)
    assert "eager vs compiled" in text and "compiled/eager" in text


def test_graphs_are_traced_once_per_shape_with_a_symbolic_batch():
    """The batch dimension is a symbol in the traced graphs (as `torch._dynamo.mark_dynamic(idx, 0)` makes it for
    torch.compile): a new batch size reuses the three segment graphs; a batch of 1, which PyTorch's ShapeEnv always
    specialises (`symbolic_shapes.py`: sizes 0 and 1 are never symbols), gets its own."""
    mc = GPTConfig(n_layer=3, n_head=2, n_embd=64, block_size=32, vocab_size=256)
    compiled._CACHE.clear()
    a = _estimate(mc, 2, dtype="float32", compile=True)
    keys = set(compiled._CACHE)
    assert sorted(k[0] for k in keys) == ["block", "embed", "head"]
    b = _estimate(mc, 2, dtype="float32", compile=True)
    assert set(compiled._CACHE) == keys  # same shapes: nothing traced again
    assert (a.peak_bytes, a.peak_op) == (b.peak_bytes, b.peak_op)
    _estimate(mc, 5, dtype="float32", compile=True)
    assert set(compiled._CACHE) == keys  # a new batch size: the same graphs
    _estimate(mc, 1, dtype="float32", compile=True)
    assert len(compiled._CACHE) == len(keys) + 3 and all(k[-1] == 1 for k in set(compiled._CACHE) - keys)


SAME_BYTES_CASES = [  # (L, H, C, T, V, dropout), dtype, target, capability
    ((2, 4, 128, 64, 1000, 0.0), "float32", "cpu", (8, 0)),
    ((1, 2, 64, 128, 2048, 0.1), "bfloat16", "cuda", (8, 0)),
    ((2, 4, 144, 64, 512, 0.0), "float16", "cuda", (7, 5)),
]


@pytest.mark.parametrize(("shape", "dtype", "target", "cap"), SAME_BYTES_CASES)
def test_symbolic_batch_graphs_give_the_bytes_of_graphs_traced_for_each_batch(monkeypatch, shape, dtype, target,
                                                                              cap):
    """One trace (at batch 3) run for batches 7 and 2 against a fresh trace per batch: peak allocated, peak
    reserved (the allocator replay sees the same allocation sequence) and the peak's op are identical."""
    L, H, C, T, V, drop = shape
    mc = GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, dropout=drop)
    recipe = Recipe(dtype=dtype, optimizer="fused", compile=True)

    def run(batch: int) -> tuple:
        e = estimate_step(EstimateRequest(mc, batch, recipe, target=target, capability=cap, headline_only=True))
        return e.peak_bytes, e.allocator.get("peak_reserved"), e.peak_op

    compiled._CACHE.clear()
    shared = [run(b) for b in (3, 7, 2)]
    assert len(compiled._CACHE) == 3
    monkeypatch.setattr(compiled, "SYMBOLIC_BATCH", False)
    for batch, got in zip((3, 7, 2), shared, strict=True):
        compiled._CACHE.clear()
        assert run(batch) == got, batch


def test_a_trace_that_specialises_the_batch_is_kept_for_that_batch_only(monkeypatch):
    """If tracing turned the batch symbol into a number (a guard on it), the graphs are cached under the batch."""
    monkeypatch.setattr(compiled, "_still_symbolic", lambda env, size: False)
    mc = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=32, vocab_size=256)
    compiled._CACHE.clear()
    _estimate(mc, 4, dtype="float32", compile=True)
    _estimate(mc, 6, dtype="float32", compile=True)
    assert sorted(k[-1] for k in compiled._CACHE) == [4, 4, 4, 6, 6, 6]


def test_cuda_target_compiles_by_default_and_shows_both_device_figures():
    mc = GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=4096)
    est = estimate_step(EstimateRequest(mc, 4, Recipe(), target="cuda"))
    assert est.compiled and est.attention == "flash"
    for mode in est.modes.values():
        assert mode["device_bytes"] > mode["peak_reserved"] >= mode["peak_bytes"]
    assert est.modes["compiled"]["peak_bytes"] < est.modes["eager"]["peak_bytes"]
    assert est.allocator["peak_allocated"] == est.peak_bytes == est.modes["compiled"]["peak_bytes"]
    off = estimate_step(EstimateRequest(mc, 4, Recipe(compile=False), target="cuda"))
    assert not off.compiled and off.peak_bytes == est.modes["eager"]["peak_bytes"]


def test_cli_estimate_json_shows_eager_and_compiled(capsys):
    args = ["estimate", "--n-layer", "1", "--n-head", "2", "--n-embd", "64", "--block-size", "64",
            "--batch-size", "2", "--vocab", "512", "--target", "cpu", "--recipe", "dtype=float32,compile=true"]
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["compiled"] is True and d["modes"]["compiled"]["peak_bytes"] == d["peak_bytes"]
    assert d["modes"]["eager"]["peak_bytes"] > 0
    assert main(args) == 0
    assert "eager vs compiled" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_estimate_within_5_percent_of_a_real_inductor_step():
    """A real `torch.compile`d Trainer on this CPU (Inductor, C++ backend), measured by the CPU allocator's
    profiler events (`vramfit.measure.probe.allocator_peak`: Inductor's buffers bypass the dispatcher)."""
    shape = (2, 4, 128, 128, 4096, 4, "bfloat16")
    L, H, C, T, V, B, dtype = shape
    est = _estimate(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V), B, dtype=dtype,
                    compile=True)
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_compile.py"), "--child"],
                         input=json.dumps({"shape": shape, "compile": True}), capture_output=True, text=True,
                         timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    real = json.loads(out.stdout.strip().splitlines()[-1])
    assert not real["recompiled"]
    assert abs(est.peak_bytes - real["peak"]) <= 0.05 * real["peak"], (est.peak_bytes, real["peak"])


def test_still_symbolic_reads_the_shape_environment():
    """A batch symbol stays free after an equality with another batch symbol (idx vs targets), and is no longer
    free after a branch on its value (ShapeEnv records a guard) or a `torch._check` pinning it to a number."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    def fresh() -> tuple:
        env = ShapeEnv()
        mode = FakeTensorMode(shape_env=env)
        ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
        a = mode.from_tensor(torch.empty(4, 3), symbolic_context=ctx, source=ConstantSource("a"))
        b = mode.from_tensor(torch.empty(4, 3), symbolic_context=ctx, source=ConstantSource("b"))
        return env, a.shape[0], b.shape[0]

    env, a, b = fresh()
    torch._check(a == b)
    assert compiled._still_symbolic(env, a)
    env, a, _ = fresh()
    if a > 2:  # a guard: Python branched on the batch's value
        pass
    assert not compiled._still_symbolic(env, a)
    env, a, _ = fresh()
    torch._check(a == 4)
    assert not compiled._still_symbolic(env, a)


def test_a_batch_that_cannot_be_traced_symbolically_is_traced_at_its_size(monkeypatch):
    def fail(*args: object) -> bool:
        raise RuntimeError("data-dependent")

    monkeypatch.setattr(compiled, "symbolic_batch", fail)
    mc = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=32, vocab_size=256)
    compiled._CACHE.clear()
    est = _estimate(mc, 4, dtype="float32", compile=True)
    assert est.compiled and sorted(k[-1] for k in compiled._CACHE) == [4, 4, 4]


def _saved_activation_bytes(gm: torch.fx.GraphModule, user_outputs: int, firsts: tuple[int, int]) -> int:
    """Bytes of what a partitioned forward graph saves for backward whose first dimension is the batch (B or B*T):
    the activations, without parameters and their low-precision copies."""
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    vals = [n.meta.get("val") for n in out[user_outputs:] if n is not None]
    return sum(v.numel() * v.element_size() for v in vals
               if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] in firsts)


def test_segments_save_what_the_whole_model_graph_saves(monkeypatch):
    """The block and head segments save, per token, exactly what Inductor's partitioner saves when it sees the
    whole model as one graph (what torch.compile traces): under bf16 autocast that is the fp32 input of each
    layer norm, not the bf16 attention output (the partitioner's `ban_recompute_used_far_apart` rule). The same
    partitioner, decompositions and fake tensors as `vramfit.dryrun.compiled`, on the model traced in one piece."""
    import contextlib

    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gpt.model import build_model

    monkeypatch.setattr(compiled, "SYMBOLIC_BATCH", False)
    B, T = 5, 32
    mc = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=T, vocab_size=256)
    graphs: dict = {}

    def compiler(name: str):  # noqa: ANN202
        def compile_graph(gm, example_inputs):  # noqa: ANN001, ANN202
            graphs[name] = gm
            return GraphRunner(gm)
        return compile_graph

    with FakeTensorMode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model = build_model(mc)
        named = dict(model.named_parameters(remove_duplicate=False))
        stand_in = {id(p): torch.empty(p.shape, requires_grad=True) for p in named.values()}

        def whole(params: list, idx: torch.Tensor, targets: torch.Tensor) -> tuple:
            with compiled._swap_params(model, list(named), params):
                return model(idx, targets)

        idx = torch.zeros(B, T, dtype=torch.long)
        fn = aot_function(whole, compiler("forward"), compiler("backward"), partition_fn=compiled._partition_fn(),
                          decompositions=compiled._decompositions())
        fn([stand_in[id(p)] for p in named.values()], idx, idx.clone())
        segmented = compiled.CompiledGPT(model, contextlib.nullcontext, signature=("test-whole-graph",))
        segmented.warm_up(idx, idx.clone())
    firsts = (B, B * T)
    want = _saved_activation_bytes(graphs["forward"], 2, firsts)
    seg = segmented.graphs
    got = (_saved_activation_bytes(seg["embed"]["forward"], 1, firsts)
           + mc.n_layer * _saved_activation_bytes(seg["block"]["forward"], 1, firsts)
           + _saved_activation_bytes(seg["head"]["forward"], 2, firsts))
    # equal up to the layer norms' statistics ([B, T, 1] each, saved as mean and rstd or as rstd / C); before the
    # segments took their input as an add, they saved 2 x n_embd bytes per token per block less
    assert abs(got - want) <= 4 * B * T * (2 * mc.n_layer + 1), (got, want)
