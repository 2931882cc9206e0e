"""torch.compile emulation for the dry run: what a compiled training step allocates.

`torch.compile(model)` with Inductor changes a step's memory in two ways, and both are emulated here:

1. **What the forward saves for backward.** AOT autograd traces the joint forward+backward graph and Inductor's
   `partition_fn` (`torch._inductor.compile_fx.partition_fn`: Inductor's joint-graph passes, then
   `min_cut_rematerialization_partition(compiler="inductor")`) splits it, saving matmul outputs and small reduction
   results and recomputing cheap pointwise ops in backward. That exact code runs here, with Inductor's
   decomposition table, under FakeTensorMode, with compilers that return the graphs to an interpreter.
2. **Which intermediates exist at all.** Inductor fuses pointwise ops into the kernels that consume them, so their
   outputs never reach memory (GELU, LayerNorm's normalisation, the fp32 upcast of the logits, log-softmax and the
   cross-entropy gradient). `plan_graph` decides, node by node, what Inductor materialises: outputs of extern kernels
   (matmuls, attention, unknown ops) and the tensors they read, reductions, concatenations and scatters, and graph
   outputs; everything else is fused. A materialised buffer lives until the last kernel that reads it, directly or
   through fused pointwise ops; graph inputs are released after their last use (Inductor's boxed calling
   convention). A pointwise kernel that is the last reader of a buffer of its size writes over it (Inductor's
   in-place reuse; in backward also over the saved tensors AOTAutograd donates: the logits' gradient over the saved
   lm_head output). `GraphRunner` executes the graph op by op, counting only the materialised outputs.

The GPT is compiled in segments that share graphs: the embeddings, one transformer block (traced and partitioned
once, run for every block: all blocks have the same shapes) and the head (final LayerNorm, logits, loss). Segment
graphs are cached per shape in the process; each block's and the head's input enters its graph as an add (see
`CompiledGPT._fn`), as the residual stream does in the whole graph, so that the partitioner saves what it saves
there. Approximations (also in the estimate's notes): no pooled reuse of freed buffers (Inductor's wrapper keeps a
freed buffer for a later one of its size) and no Inductor realisation heuristics for pointwise ops read many
times; graph breaks between segments that the real whole-model graph does not have; no CUDA graphs.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import fx

aten, prims = torch.ops.aten, torch.ops.prims

_REDUCE_LIKE = {
    # Inductor writes these to a buffer but fuses the pointwise ops that produce their inputs into the kernel
    "sum", "mean", "amax", "amin", "max", "min", "var_mean", "var", "prod", "argmax", "argmin", "any", "all",
    "logsumexp", "cat", "scatter", "scatter_add", "scatter_reduce", "index_put", "index_put_", "_unsafe_index_put",
    "_unsafe_masked_index_put_accumulate", "_index_put_impl", "index_add", "cumsum",  # scatters write into a copy
}                                                                           # of their (fused) first input
_POINTWISE_EXTRA = {
    # not tagged pointwise in ATen, but lowered by Inductor as pointwise (or indexing) loops
    "convert_element_type", "clone", "_to_copy", "copy", "where", "full", "full_like", "zeros", "zeros_like", "ones",
    "ones_like", "scalar_tensor", "iota", "arange", "rand", "rand_like", "randn", "randn_like", "index", "embedding",
    "gather", "inductor_random", "inductor_seeds", "inductor_lookup_seed", "bernoulli", "lift_fresh_copy",
    "fill", "empty_like",
    "copy_",  # an inference graph's write into a mutated input (kept in the graph): Inductor fuses it into the input
}
_VIEW_NAMES = {"view", "_unsafe_view", "reshape", "permute", "t", "transpose", "expand", "unsqueeze", "squeeze",
               "slice", "select", "alias", "as_strided", "split", "split_with_sizes", "unbind", "diagonal",
               "view_as", "expand_as", "detach"}


def op_kind(node: fx.Node) -> str:
    """'input', 'output', 'getitem', 'view', 'pointwise', 'reduce' or 'extern' for one graph node."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op != "call_function":
        return "extern"
    target = node.target
    if target is operator.getitem:
        return "getitem"
    name = getattr(getattr(target, "overloadpacket", None), "__name__", getattr(target, "__name__", ""))
    if name in _VIEW_NAMES or getattr(target, "is_view", False):
        return "view"
    if name in _REDUCE_LIKE:
        return "reduce"
    if name in _POINTWISE_EXTRA or torch.Tag.pointwise in getattr(target, "tags", ()):
        return "pointwise"
    return "extern"


def _input_nodes(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes]


@dataclass
class GraphPlan:
    """What Inductor would materialise in one graph and when each value can be dropped."""

    materialised: set[fx.Node]
    counted: set[fx.Node]  # materialised nodes and views of them: the tracker counts their outputs
    drop_after: dict[fx.Node, list[fx.Node]]  # values to release after this node ran
    kinds: dict[fx.Node, str] = field(default_factory=dict)
    inplace: dict[fx.Node, fx.Node] = field(default_factory=dict)  # output -> the read buffer it is written over

    @property
    def fused(self) -> int:
        return sum(1 for n, k in self.kinds.items() if k == "pointwise" and n not in self.materialised)


def plan_graph(graph: fx.Graph, donated: frozenset[str] = frozenset()) -> GraphPlan:
    """Decide which nodes Inductor materialises, the last kernel that reads each buffer, and which buffers a kernel
    writes in place of one it reads (`donated`: the names of the graph inputs it may write over)."""
    nodes = list(graph.nodes)
    kinds = {n: op_kind(n) for n in nodes}

    def base(n: fx.Node) -> fx.Node:
        while kinds[n] == "view" and n.all_input_nodes:
            n = n.args[0] if isinstance(n.args[0], fx.Node) else n.all_input_nodes[0]
        return n

    mat: set[fx.Node] = set()
    for n in nodes:
        k = kinds[n]
        if k in ("extern", "output"):
            if k == "extern":
                mat.add(n)
            for a in _input_nodes(n):  # extern kernels and graph outputs need real buffers
                b = base(a)
                if kinds[b] == "pointwise":
                    mat.add(b)
        elif k == "reduce":
            mat.add(n)
        elif k == "getitem" and kinds[base(n.args[0])] != "pointwise":
            mat.add(n)
    # the buffers each kernel reads: materialised values and graph inputs, seen through fused pointwise ops
    reads: dict[fx.Node, frozenset[fx.Node]] = {}
    index = {n: i for i, n in enumerate(nodes)}
    last_use: dict[fx.Node, int] = {}
    for i, n in enumerate(nodes):
        k = kinds[n]
        if k == "input" or k == "getitem":
            reads[n] = frozenset()
            continue
        got: set[fx.Node] = set()
        for a in _input_nodes(n):
            b = base(a)
            if kinds[b] in ("input", "getitem") or b in mat:
                got.add(b)
            else:
                got |= reads.get(b, frozenset())
        reads[n] = frozenset(got)
        if n in mat or k == "output":
            for b in got:
                last_use[b] = max(last_use.get(b, -1), len(nodes) if k == "output" else i)
    drop_after: dict[fx.Node, list[fx.Node]] = {n: [] for n in nodes}
    for n in nodes:
        k = kinds[n]
        if k == "output":
            continue
        users = [index[u] for u in n.users]
        last_direct = max(users, default=index[n])
        if k in ("input", "getitem") or n in mat:
            at = max(last_use.get(n, index[n]), last_direct)
        else:  # fused values and views hold no counted storage of their own (a view's base is kept above)
            at = last_direct
        if at < len(nodes):
            drop_after[nodes[at]].append(n)
    # views of materialised buffers or inputs share their storage: counting them adds nothing; views of fused
    # values must not be counted (their storage does not exist in the compiled step)
    counted = mat | {n for n in nodes if kinds[n] == "view" and (base(n) in mat or kinds[base(n)] == "input")}
    inplace = _inplace(nodes, kinds, mat, reads, drop_after, donated)
    return GraphPlan(mat, counted, drop_after, kinds, inplace)


_SAME_INDEX_VIEWS = {"view", "_unsafe_view", "reshape", "alias", "detach", "squeeze", "unsqueeze"}


def _inplace(nodes: list[fx.Node], kinds: dict[fx.Node, str], mat: set[fx.Node],
             reads: dict[fx.Node, frozenset[fx.Node]], drop_after: dict[fx.Node, list[fx.Node]],
             donated: frozenset[str]) -> dict[fx.Node, fx.Node]:
    """The buffers Inductor's fused kernels write in place of a buffer they read (`decide_inplace_update`,
    torch/_inductor/scheduler.py L1466-1600 at torch 2.13.0 cf30153): a pointwise kernel's output takes the storage
    of an input buffer whose last reader it is, read at the output's own index (through pointwise ops and
    reshapes of the same size only), of the same dtype and 95-100 % of its size (`can_match_buffer_size`,
    codegen/wrapper.py L145-170); a graph input only if it is a donated buffer (`WrapperCodeGen.can_reuse`,
    L3927-3941): a saved tensor that no forward input or output and no gradient aliases
    (`collect_bw_donated_buffer_idxs`, torch/_functorch/_aot_autograd/graph_compile.py L587-673). Output node ->
    the buffer whose storage it takes."""
    dropped = {b: n for n in nodes for b in drop_after[n]}
    out: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if kinds[n] != "pointwise" or n not in mat or not isinstance(_val(n), torch.Tensor):
            continue
        for b in sorted(reads[n], key=nodes.index):
            ok_input = kinds[b] != "input" or b.name in donated
            if ok_input and dropped.get(b) is n and _same_buffer(b, n) and _same_index(b, n, kinds, mat):
                out[n] = b
                break
    return out


def _val(n: fx.Node) -> object:
    return n.meta.get("val")


def _same_buffer(b: fx.Node, n: fx.Node) -> bool:
    """Same dtype, contiguous, and n's bytes within 95-100 % of b's (Inductor's `can_match_buffer_size`)."""
    vb, vn = _val(b), _val(n)
    if not (isinstance(vb, torch.Tensor) and vb.dtype == vn.dtype and _contiguous(vb) and _contiguous(vn)):
        return False
    size_b, size_n = vb.numel(), vn.numel()
    if str(size_b) == str(size_n):
        return True
    if isinstance(size_b, int) and isinstance(size_n, int):
        return 0.95 * size_b <= size_n <= size_b
    return False  # symbolic sizes that differ: not statically known to fit (int() would guard the batch symbol)


def _contiguous(t: torch.Tensor) -> bool:
    expected = 1
    for size, stride in reversed(list(zip(t.shape, t.stride(), strict=True))):
        if str(size) != "1" and str(stride) != str(expected):
            return False
        expected = expected * size
    return True


def _same_index(b: fx.Node, n: fx.Node, kinds: dict[fx.Node, str], mat: set[fx.Node]) -> bool:
    """Every way n's kernel reads b is at n's own index: through fused pointwise ops of n's size and reshapes."""
    size = str(_val(n).numel())
    todo, seen = [n], set()
    while todo:
        m = todo.pop()
        for a in m.all_input_nodes:
            if a is b or a in seen or (a in mat and a is not n) or not _reaches(a, b, kinds, mat):
                continue
            seen.add(a)
            v = _val(a)
            if not (kinds[a] == "pointwise" or kinds[a] == "view" and _reshape(a)) or \
                    not isinstance(v, torch.Tensor) or str(v.numel()) != size:
                return False
            todo.append(a)
    return True


def _reshape(n: fx.Node) -> bool:
    target = n.target
    name = getattr(getattr(target, "overloadpacket", None), "__name__", getattr(target, "__name__", ""))
    return name in _SAME_INDEX_VIEWS


def _reaches(a: fx.Node, b: fx.Node, kinds: dict[fx.Node, str], mat: set[fx.Node]) -> bool:
    """Whether `a` is computed from buffer `b` inside one kernel (through fused values and views only)."""
    todo, seen = [a], set()
    while todo:
        m = todo.pop()
        if m is b:
            return True
        if m in seen or kinds[m] not in ("pointwise", "view") or (m in mat and m is not a):
            continue
        seen.add(m)
        todo.extend(m.all_input_nodes)
    return False


_PAUSED: list[Callable[[], contextlib.AbstractContextManager]] = [contextlib.nullcontext]
"""How to stop the current run's storage tracker from counting (set by `CompiledGPT`): cached graphs outlive the
tracker they were compiled under."""


class GraphRunner:
    """Runs an AOT graph op by op (boxed calling convention: the argument list is emptied, inputs are released
    after their last use), with the storage tracker counting only the outputs Inductor materialises."""

    _boxed_call = True

    def __init__(self, gm: fx.GraphModule, paused: Callable[[], contextlib.AbstractContextManager] | None = None,
                 donated: frozenset[str] = frozenset()) -> None:
        self.gm = gm
        self.plan = plan_graph(gm.graph, donated)
        self._paused = paused

    def paused(self) -> contextlib.AbstractContextManager:
        return (self._paused or _PAUSED[0])()

    def __call__(self, args: list) -> object:
        env: dict[fx.Node, object] = {}
        inputs, k = list(args), 0
        args.clear()
        plan = self.plan
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":  # env holds the only reference: dropped after the input's last use
                env[node], inputs[k] = inputs[k], None
                k += 1
            elif node.op == "output":
                return fx.graph.map_arg(node.args[0], lambda n: env[n])
            else:
                a = fx.graph.map_arg(node.args, lambda n: env[n])
                kw = fx.graph.map_arg(node.kwargs, lambda n: env[n])
                fn = getattr(self.gm, node.target) if node.op == "call_module" else node.target
                over = plan.inplace.get(node)
                with contextlib.nullcontext() if node in plan.counted and over is None else self.paused():
                    env[node] = fn(*a, **kw)
                if over is not None:  # written over `over`'s storage: a view of it, no new bytes
                    env[node] = _written_over(env[over], env[node])
            for done in plan.drop_after[node]:
                env.pop(done, None)
        raise RuntimeError("graph without output")


def _written_over(buffer: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in the storage of `buffer` (from its start, as Inductor's `reinterpret_tensor(buf, ..., 0)`)."""
    out = buffer.as_strided(value.shape, value.stride(), 0)
    with torch.no_grad():
        out.copy_(value)
    return out


def donated_buffers(forward: fx.GraphModule, backward: fx.GraphModule) -> frozenset[str]:
    """The backward's inputs that Inductor may write over: the saved tensors whose storage no forward input, no
    forward output the user gets and no gradient shares (`collect_bw_donated_buffer_idxs`,
    torch/_functorch/_aot_autograd/graph_compile.py L587-673 at torch 2.13.0 cf30153; on by default:
    `torch._functorch.config.donated_buffer`)."""
    from torch._functorch._aot_autograd.graph_compile import collect_fw_donated_buffer_idxs

    if not torch._functorch.config.donated_buffer:
        return frozenset()
    saved = [n for n in backward.graph.find_nodes(op="placeholder") if not n.name.startswith("tangents")]
    fw_outs = list(next(iter(forward.graph.find_nodes(op="output"))).args[0])
    user = fw_outs[: len(fw_outs) - len(saved)]
    bw_outs = next(iter(backward.graph.find_nodes(op="output"))).args[0]

    def vals(nodes: list) -> list:
        return [n.meta.get("val") if isinstance(n, fx.Node) else None for n in nodes]

    tensors = [n for n in saved if isinstance(n.meta.get("val"), torch.Tensor)]
    idx = collect_fw_donated_buffer_idxs(vals(forward.graph.find_nodes(op="placeholder")), vals(user),
                                         vals(list(bw_outs)), vals(tensors))
    return frozenset(tensors[i].name for i in idx)


# --- the compiled GPT ---------------------------------------------------------------------------------------------
def _partition_fn() -> Callable:
    """Inductor's `partition_fn`, with Inductor's virtualised fake mode set as `compile_fx` sets it around AOT
    autograd (its joint-graph passes read `V.fake_mode`, e.g. `replace_random` for dropout's seeds)."""
    from torch._guards import detect_fake_mode
    from torch._inductor.compile_fx import partition_fn
    from torch._inductor.virtualized import V

    def partition(gm: fx.GraphModule, joint_inputs: list, **kwargs: object) -> tuple:
        with V.set_fake_mode(detect_fake_mode(joint_inputs)):
            return partition_fn(gm, joint_inputs, **kwargs)

    return partition


def _decompositions() -> dict:
    from torch._inductor.decomposition import select_decomp_table

    return select_decomp_table()


_CACHE: dict[tuple, Callable] = {}  # (segment, shapes, dtype, attention) -> the aot_function, traced on first use
_CACHE_SIZE = 96


def _compiled(key: tuple, fn: Callable, graphs: dict) -> Callable:
    """`aot_function(fn)` with Inductor's partitioner and decompositions and `GraphRunner` as the compiler."""
    if key in _CACHE:
        return _CACHE[key]
    from torch._functorch.aot_autograd import aot_function

    def compiler(name: str) -> Callable:
        def compile_graph(gm: fx.GraphModule, example_inputs: list) -> GraphRunner:
            mine = graphs.setdefault(key[0], {})
            mine[name] = gm
            forward = mine.get("forward")
            return GraphRunner(gm, donated=donated_buffers(forward, gm) if name == "backward" and forward else
                               frozenset())
        return compile_graph

    out = aot_function(fn, compiler("forward"), compiler("backward"), partition_fn=_partition_fn(),
                       decompositions=_decompositions())
    while len(_CACHE) >= _CACHE_SIZE:  # oldest first: a planner sweeps batch sizes in order
        del _CACHE[next(iter(_CACHE))]
    _CACHE[key] = out
    return out


class CompiledStep:
    """Stands in for `torch.compile(fn, dynamic=False, fullgraph=True)` of an optimizer step function (nanochat
    compiles its Muon and AdamW steps: `gpt.muon.MuonAdamW(compiled=True)`): traced once per input shapes (on
    stand-ins, uncounted) by AOT autograd with Inductor's decompositions, the in-place updates of its inputs kept in
    the graph (Inductor writes them into the inputs' buffers), and run by `GraphRunner`, which counts only what
    Inductor materialises (matmul outputs such as Newton-Schulz's, reductions)."""

    def __init__(self, fn: Callable, paused: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.fn, self.paused = fn, paused

    def __call__(self, *args: object) -> None:
        spec = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
        key = ("step", self.fn.__name__, spec)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if key not in _CACHE:
            from torch._functorch.aot_autograd import aot_function

            fixed, n = {i: a for i, a in enumerate(args) if not isinstance(a, torch.Tensor)}, len(args)

            def step(*ts: torch.Tensor) -> tuple:  # closes over no tensor: the cached graph keeps none alive
                given = iter(ts)
                self.fn(*(fixed[i] if i in fixed else next(given) for i in range(n)))
                return ()

            compiled = aot_function(step, lambda gm, example_inputs: GraphRunner(gm, self.paused),
                                    decompositions=_decompositions(), keep_inference_input_mutations=True)
            with self.paused():
                compiled(*(torch.empty(t.shape, dtype=t.dtype) for t in tensors))
            while len(_CACHE) >= _CACHE_SIZE:
                del _CACHE[next(iter(_CACHE))]
            _CACHE[key] = compiled
        _CACHE[key](*tensors)


@contextlib.contextmanager
def _swap_params(module: torch.nn.Module, names: list[str], values: list[torch.Tensor]) -> Iterator[None]:
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(module, dict(zip(names, values, strict=True))):
        yield


@dataclass
class Segment:
    """One compiled graph of the model: the module whose parameters `names` are swapped for the graph's inputs
    (a representative: every run of the segment passes its own parameters), and what it calls."""

    module: torch.nn.Module
    names: list[str]
    call: Callable


def gpt2_segments(model: torch.nn.Module) -> tuple[dict[str, Segment], list[tuple[str, str, list[str]]]]:
    """GPT-2's segments (embeddings, one block shared by all blocks, head) and the run order: (segment, label,
    the parameter names of that run)."""
    block = model.transformer.h[0]
    named = dict(model.named_parameters(remove_duplicate=False))  # lm_head.weight is tied to wte's
    head = [n for n in named if n.startswith(("transformer.ln_f", "lm_head"))]
    local = [n for n, _ in block.named_parameters()]
    segments = {"embed": Segment(model, ["transformer.wte.weight", "transformer.wpe.weight"], model.embed),
                "block": Segment(block, local, block), "head": Segment(model, head, model.head)}
    order = [("embed", "embed", segments["embed"].names)]
    order += [("block", f"transformer.h.{i}", [f"transformer.h.{i}.{n}" for n in local])
              for i in range(len(model.transformer.h))]
    return segments, order + [("head", "head", head)]


def nanochat_segments(model: torch.nn.Module) -> tuple[dict[str, Segment], list[tuple[str, str, list[str]]]]:
    """nanochat's segments: the embedding (with smear), one graph per kind of layer (its window, and whether it
    has a value embedding; the residual scalars' mix included) and the head (backout, norm, soft-capped logits,
    loss); and the run order as `gpt2_segments`'."""
    cfg = model.config
    embed = ["transformer.wte.weight"] + (["smear_gate.weight", "smear_lambda"] if cfg.smear else [])
    head = ["lm_head.weight"] + (["backout_lambda"] if cfg.backout else [])
    scalars = ["resid_lambdas", "x0_lambdas"] if cfg.resid_scalars else []
    ve = set(cfg.value_embed_layers())
    local = [n for n, _ in model.transformer.h[0].named_parameters() if not n.startswith("attn.ve_gate")]

    def names(i: int) -> list[str]:
        own = local + (["attn.ve_gate.weight"] if i in ve else [])
        return [f"transformer.h.{i}.{n}" for n in own] + ([f"value_embeds.{i}.weight"] if i in ve else []) + scalars

    segments = {"embed": Segment(model, embed, model.embed), "head": Segment(model, head, model.head)}
    order = [("embed", "embed", embed)]
    for i, window in enumerate(model.window_sizes):
        kind = f"layer-w{window}{'-ve' if i in ve else ''}"
        if kind not in segments:  # the first layer of a kind represents it
            segments[kind] = Segment(model, names(i), lambda *a, i=i: model.layer(i, *a))
        order.append((kind, f"transformer.h.{i}", names(i)))
    return segments, order + [("head", "head", head)]


class CompiledGPT:
    """Stands in for `torch.compile(model)` in `Trainer.step`: `forward(idx, targets) -> (logits, loss)` (the loss
    alone with `loss_only`) through the emulated compiled segments (`gpt2_segments`, `nanochat_segments`). Build
    it, then `warm_up` once outside the tracked steps (tracing and partitioning happen there, like torch.compile's
    first call)."""

    def __init__(self, model: torch.nn.Module, paused: Callable[[], contextlib.AbstractContextManager],
                 on_segment: Callable[[str], None] | None = None, signature: tuple = (),
                 loss_only: bool = False) -> None:
        self.model = model
        self.loss_only = loss_only  # forward returns the loss alone (nanochat's GPT given targets)
        self.paused = paused
        _PAUSED[0] = paused
        self.on_segment = on_segment or (lambda name: None)
        self.graphs: dict[str, dict[str, fx.GraphModule]] = {}
        self.nanochat = getattr(model.config, "arch", "gpt2") == "nanochat"
        self.segments, order = (nanochat_segments if self.nanochat else gpt2_segments)(model)
        named = dict(model.named_parameters(remove_duplicate=False))
        self.order = [(seg, label, [named[n] for n in names]) for seg, label, names in order]
        self.signature = signature  # the graphs' cache key without the batch size (see `warm_up`)
        self._key: tuple = signature
        self._fns: dict[str, Callable] = {}

    def _fn(self, segment: str) -> Callable:
        if segment not in self._fns:
            seg = self.segments[segment]
            if segment == "embed":
                def fn(params: list, *args: torch.Tensor) -> object:
                    with _swap_params(seg.module, seg.names, params):
                        return seg.call(*args)
            else:
                # `x + zero`: in the real whole-model graph a block's (a layer's, the head's) input is the previous
                # residual add, a fusible node, not a graph input. Inductor's partitioner then bans recomputing the
                # block's second residual add, read far from its producer (`ban_recompute_used_far_apart`,
                # torch/_functorch/config.py; the `ban_if_used_far_apart` pass of solve_min_cut in
                # torch/_functorch/partitioners.py, lines 2474-2500 at torch 2.13.0 cf30153), and saves the fp32
                # input of ln_2 instead of the bf16 attention output: +2 bytes x n_embd per token per block under
                # autocast. A placeholder is not fusible, so a segment that took x as its input saved less than
                # the real graph (-1 % on real bf16 CPU Inductor steps).
                loss_only = self.loss_only and segment == "head"

                def fn(params: list, x: torch.Tensor, zero: torch.Tensor, *args: torch.Tensor) -> object:
                    with _swap_params(seg.module, seg.names, params):
                        out = seg.call(x + zero, *args)
                    return out[1] if loss_only else out
            self._fns[segment] = _compiled((segment, *self._key), fn, self.graphs)
        return self._fns[segment]

    def _extra(self, idx: torch.Tensor) -> tuple:
        """nanochat's layers also read x0, the tokens (value embeddings) and the rotary tables."""
        if not self.nanochat:
            return ()
        T = idx.size(1)
        return idx, self.model.cos[:, :T], self.model.sin[:, :T]

    def __call__(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple:
        return self._run(idx, targets, [params for _, _, params in self.order], self._extra(idx))

    def _run(self, idx: torch.Tensor, targets: torch.Tensor, params: list[list[torch.Tensor]], extra: tuple,
             order: list[tuple[str, str, list]] | None = None) -> tuple:
        order = order or self.order
        x = x0 = x_backout = zero = None
        middle = self.model.config.n_layer // 2
        for (seg, label, _), ps in zip(order, params, strict=True):
            self.on_segment(label)
            if seg == "embed":
                x = x0 = self._fn(seg)(ps, idx)
                with self.paused():
                    zero = torch.zeros((), dtype=x.dtype)
            elif seg == "head":
                back = (x_backout,) if x_backout is not None else ()
                return self._fn(seg)(ps, x, zero, targets, *back)
            else:
                x = self._fn(seg)(ps, x, zero, *((x0, *extra) if self.nanochat else ()))
                if self.nanochat and self.model.config.backout and label == f"transformer.h.{middle}":
                    x_backout = x
        raise RuntimeError("a segment order without a head")

    def warm_up(self, idx: torch.Tensor, targets: torch.Tensor) -> None:
        """Trace, partition and run one uncounted step on stand-in parameters, so that the graphs are compiled
        (forward and backward) before the tracked steps start. The model's own parameters are not touched.

        The batch dimension is traced symbolically (`symbolic_batch`), so one set of graphs serves every batch
        size of a shape; a batch of 1 (which PyTorch's shape environment always specialises) or a trace that
        specialised the batch anyway is cached under its own batch size."""
        batch = int(idx.shape[0])
        symbolic = batch >= 2 and SYMBOLIC_BATCH
        keys = [self.signature, (*self.signature, batch)] if symbolic else [(*self.signature, batch)]
        hit = next((k for k in keys if all((seg, *k) in _CACHE for seg in self.segments)), None)
        if hit is not None:
            self._key = hit
            return
        if symbolic:
            self._key = self.signature
            try:
                if symbolic_batch(self._run_warm_up, idx, targets):
                    return
            except Exception:  # noqa: BLE001 - an op that cannot trace a symbolic batch: trace this size instead
                pass
            for seg in self.segments:  # the batch was specialised: these graphs hold for this batch size only
                _CACHE.pop((seg, *self.signature), None)
            self._fns.clear()
        self._key = keys[-1]
        self._run_warm_up(idx, targets)

    def _run_warm_up(self, idx: torch.Tensor, targets: torch.Tensor) -> None:
        """One run of each segment (nanochat: the first layer of each kind, backout on the last one run) on
        stand-ins of the parameters and of the rotary tables."""
        def stand_in(ps: list[torch.Tensor], grad: bool = True) -> list[torch.Tensor]:
            return [torch.empty(p.shape, dtype=p.dtype).requires_grad_(grad) for p in ps]

        with self.paused():
            order, seen = [], set()
            for step in self.order:
                if step[0] not in seen:
                    seen.add(step[0])
                    order.append(step)
            if self.nanochat and self.model.config.backout:  # the head takes x_backout: mark a layer as the middle
                middle = f"transformer.h.{self.model.config.n_layer // 2}"
                order = [(s, middle if s.startswith("layer") else label, p) for s, label, p in order]
            extra = self._extra(idx)
            extra = (idx, *stand_in(extra[1:], grad=False)) if extra else ()
            on_segment, self.on_segment = self.on_segment, lambda name: None
            try:
                out = self._run(idx, targets, [stand_in(p) for _, _, p in order], extra, order)
            finally:
                self.on_segment = on_segment
            (out if self.loss_only else out[1]).backward()


SYMBOLIC_BATCH = True
"""Trace the batch dimension symbolically (one trace per shape); False: one trace per batch size (the tests compare
the two, which must give the same bytes)."""


def symbolic_batch(run: Callable[[torch.Tensor, torch.Tensor], None], idx: torch.Tensor,
                   targets: torch.Tensor) -> bool:
    """Run `run(idx, targets)` (the warm-up that traces the graphs) in a fake-tensor mode of its own whose shape
    environment makes dimension 0 of the token batches a symbol, as `torch._dynamo.mark_dynamic(idx, 0)` does for
    torch.compile. False if tracing specialised the batch to a number (the graphs then hold for this size only)."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():  # the run's own fake mode and tracker stay outside
        env = ShapeEnv()
        mode = FakeTensorMode(shape_env=env, allow_non_fake_inputs=False)
        dims = [DimDynamic.DYNAMIC] + [DimDynamic.STATIC] * (idx.dim() - 1)
        ctx = StatelessSymbolicContext(dynamic_sizes=dims)
        sym_idx = mode.from_tensor(idx, symbolic_context=ctx, source=ConstantSource("idx"))
        sym_targets = mode.from_tensor(targets, symbolic_context=ctx, source=ConstantSource("targets"))
        torch._check(sym_idx.shape[0] == sym_targets.shape[0])
        with mode:
            run(sym_idx, sym_targets)
        return _still_symbolic(env, sym_idx.shape[0])


def _still_symbolic(env: object, size: torch.SymInt) -> bool:
    """True if the shape environment kept `size` a free symbol (no replacement by a number, no guard on it)."""
    expr = env.replace(size.node.expr)  # type: ignore[attr-defined]
    if not expr.free_symbols:
        return False
    syms = expr.free_symbols
    for guard in env.guards:  # type: ignore[attr-defined]
        g = env.replace(guard.expr)  # type: ignore[attr-defined]
        if g.free_symbols & syms and g != True:  # noqa: E712 - a sympy boolean; Eq(s0, s0) is trivially True
            return False
    return True
