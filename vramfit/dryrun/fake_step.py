"""Run the real `gpt.train.Trainer.step` under a live-storage tracker, on fake or real CPU tensors.

This is the engine behind `vramfit.dryrun.estimate`. The trainer and its step are the real ones; what this module adds:

- `StepTracker`: the probe's live-storage tracker (`vramfit.measure.probe.StorageTracker`: the bytes of live
  tensor storages, rounded the way the target allocator rounds, and their peak) extended with the phase (data,
  forward, backward, optimizer) and the op at the peak, and enough of a log to break the peak down into
  parameters, gradients, optimizer state, activations, logits/loss and temporaries afterwards.
- CUDA emulation on fake *CPU* tensors (fake 'cuda' tensors abort CPU-only torch builds in autograd): SDPA is routed
  to the kernel the target GPU would run (flash / memory-efficient / math, with their backward workspaces), autocast
  uses the CPU autocast keys (same policy as CUDA's for every op this GPT uses: matmuls low precision, layer norm
  and log-softmax in fp32), fp16 gets a real GradScaler, and the optimizer implementation is set explicitly.

What to run comes as one `vramfit.dryrun.estimate.EstimateRequest`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from gpt.config import ARCH_OPTIONS, OPTIMIZERS, GPTConfig, TrainConfig, checkpoint_every, resolve_recipe
from gpt.data import synthetic_batch
from gpt.errors import ConfigError
from gpt.model import attention_kernel
from gpt.muon import MuonAdamW, adamw_update, muon_update
from gpt.nanochat_loop import LossOnly, NanoChatLoop
from gpt.nanogpt_loop import NanoGPTLoop
from gpt.train import Trainer
from vramfit.dryrun import context, sdpa
from vramfit.dryrun.allocator import replay
from vramfit.dryrun.estimate import EstimateRequest
from vramfit.measure.probe import StorageTracker

ROUNDING = {"cuda": 512, "cpu": 64}
"""Allocation granularity: the CUDA caching allocator rounds every block up to 512 B (kMinBlockSize); the CPU
allocator aligns to 64 B. Zero-byte storages cost nothing on either."""
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "weight_copies", "logits_loss",
              "inputs", "temporaries", "workspace")
PHASES = ("data", "forward", "backward", "optimizer")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NO_NODE_SEQ = 2**63  # AccumulateGrad and other graph roots carry UINT64_MAX as their sequence number

aten = torch.ops.aten


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class StepResult:
    """What one tracked run of two trainer steps found; `estimate.Estimate` is built from it."""

    peak_bytes: int
    peak_phase: str
    peak_op: str
    peak_step: int
    breakdown: dict[str, int]
    step_peaks: list[int]
    steady_bytes: int  # live bytes after the last step: parameters + optimizer state (+ anything kept)
    target: str
    dtype: str
    optimizer: str
    attention: str
    rounding: int
    fake: bool
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    allocator: dict = field(default_factory=dict)  # CUDA target: the caching allocator replay (allocator.py)
    compiled: bool = False  # the step above is the torch.compile emulation (`vramfit.dryrun.compiled`)
    modes: dict = field(default_factory=dict)  # "eager" (and "compiled"): each run's peak, phase, op, reserved
    cuda_build: dict = field(default_factory=dict)  # CUDA target: the CUDA / cuDNN the kernel choice followed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class StepTracker(StorageTracker):
    """The probe's live-storage tracker (`vramfit.measure.probe.StorageTracker`: storages counted once, rounded to
    `rounding` bytes, with the peak) plus what a dry run reports: the phase, zone and op at the peak, the peak of
    each step, and a log of every storage's bytes to break the peak down afterwards.

    Enter it before the tensors you want counted are created (it only sees op outputs). `workspace(func, args)`
    may return bytes a kernel allocates and frees inside the op (they count towards the peak only).
    """

    def __init__(self, rounding: int = 512, workspace: Callable[[object, tuple], int] | None = None,
                 matmul_workspace: int = 0) -> None:
        super().__init__(round_to=rounding)
        self.rounding = rounding
        self.workspace = workspace
        self.matmul_workspace = matmul_workspace  # per thread, allocated at its first matmul, never freed
        self._matmul_threads: set[str] = set()
        self.origin: dict[int, tuple[str, str, int]] = {}  # sid -> (phase, zone, step)
        self.tags: dict[int, str] = {}  # sid -> category known after the fact (parameters, gradients, ...)
        self.events: list[tuple[int, int]] = []  # (sid, +bytes | -bytes)
        self.peak_info: dict = {}
        self.step_peaks: dict[int, int] = {}
        self.phase = "init"
        self.zone = ""  # "logits" between the final layer norm and the loss, forward and backward
        self.step_no = 0
        self.where = ""  # module path in forward, a label in the optimizer phase
        self.logits_seq = _NO_NODE_SEQ  # autograd sequence number of the final layer norm's output
        self.on_backward_end: Callable[[], None] | None = None  # called once when the backward pass ends
        self.param_sids: set[int | None] = set()  # for telling autocast weight copies from activations
        self._out_zone = ""  # the zone of the outputs of the op being counted

    # --- scalars: what `.item()` reads under fake tensors, which hold no values --------------------------------------
    scalar: float | None = None
    """Set on a fake run whose optimizer reads values (Adafactor: its step count and parameter and update norms,
    in `torch.optim._adafactor`; the compiled MuonAdamW's traced AdamW step: its step size as `add_`'s alpha):
    every `.item()` returns it. Values steer only arithmetic there, never a size."""

    # --- pausing: ops whose outputs a compiled step never materialises (`vramfit.dryrun.compiled`) --------------
    _paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Ops run inside are not counted at all (their outputs are not tracked, no phase or peak update)."""
        before, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is aten._local_scalar_dense.default and self.scalar is not None:
            return self.scalar
        if self._paused:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)

    # --- bookkeeping: the base class counts, these hooks remember ----------------------------------------------
    def _counted(self, sid: int, delta: int) -> None:
        if sid not in self.origin:
            self.origin[sid] = (self.phase, self._out_zone, self.step_no)
        self.events.append((sid, delta))

    def _add_persistent(self, nbytes: int, category: str) -> None:
        """Bytes that no tensor owns (e.g. cuBLAS workspaces from the caching allocator), alive to the end."""
        sid = self._new_sid()
        self.origin[sid] = (self.phase, "", self.step_no)
        self.tags[sid] = category
        self.events.append((sid, nbytes))
        self.current += nbytes

    def tag(self, tensors: Iterator[torch.Tensor] | list[torch.Tensor], category: str) -> None:
        """Label the storages of `tensors` (parameters, gradients, optimizer state) for the breakdown."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                sid = self.sid_of(t)
                if sid is not None:
                    self.tags.setdefault(sid, category)

    def reset_peak(self) -> None:
        super().reset_peak()
        self.peak_info = {"event": len(self.events), "phase": self.phase, "op": "(start)", "step": self.step_no,
                          "workspace": 0}

    def _update_phase(self) -> None:
        if torch._C._current_graph_task_id() != -1:
            self.phase = "backward"
            node = torch._C._current_autograd_node()
            if node is None:
                self.where, self.zone = "", ""
            else:
                self.where = node.name()
                seq = node._sequence_nr()
                self.zone = "logits" if self.logits_seq < seq < _NO_NODE_SEQ else ""
        elif self.phase == "backward":
            self.phase, self.zone, self.where = "optimizer", "", "grad unscale/clip"
            if self.on_backward_end is not None:
                self.on_backward_end()

    # --- the dispatch hooks --------------------------------------------------------------------------------------
    def _before_outputs(self, func, args: tuple) -> None:  # noqa: ANN001
        self._update_phase()
        zone = self.zone
        if self.phase == "forward" and func is aten._to_copy.default and self.sid_of(args[0]) in self.param_sids:
            zone = "weight_copy"
        self._out_zone = zone

    def _after_op(self, func, args: tuple) -> None:  # noqa: ANN001
        if self.matmul_workspace and func in _MATMULS:
            thread = "backward" if self.phase == "backward" else "main"
            if thread not in self._matmul_threads:
                self._matmul_threads.add(thread)
                self._add_persistent(self.matmul_workspace, "workspace")
        ws = self.workspace(func, args) if self.workspace is not None else 0
        if self.current + ws > self.peak:
            self.peak = self.current + ws
            where = f" in {self.where}" if self.where else ""
            self.peak_info = {"event": len(self.events), "phase": self.phase, "op": f"{func}{where}",
                              "step": self.step_no, "workspace": ws}
        if self.current + ws > self.step_peaks.get(self.step_no, 0):
            self.step_peaks[self.step_no] = self.current + ws
        if ws:  # the kernel's own allocation, for the allocator replay: allocated and freed inside the op
            self.events += [(-len(self.events) - 1, ws), (-len(self.events) - 1, -ws)]

    # --- the breakdown -----------------------------------------------------------------------------------------
    def breakdown(self) -> dict[str, int]:
        """Bytes per category of the storages live at the peak (they sum to the peak)."""
        live: dict[int, int] = {}
        for sid, delta in self.events[: self.peak_info.get("event", 0)]:
            live[sid] = live.get(sid, 0) + delta
        out = dict.fromkeys(CATEGORIES, 0)
        for sid, n in live.items():
            if n <= 0:
                continue
            out[self._category(sid)] += n
        out["workspace"] += self.peak_info.get("workspace", 0)
        return out

    def _category(self, sid: int) -> str:
        if sid in self.tags:
            return self.tags[sid]
        phase, zone, _ = self.origin[sid]
        if zone == "weight_copy":
            return "weight_copies"
        if zone == "logits":
            return "logits_loss"
        if phase == "forward":
            return "activations"
        if phase == "data":
            return "inputs"
        return "temporaries"


# --- CUDA emulation ------------------------------------------------------------------------------------------------
def cuda_attention_kernel(requested: str, dtype: str, head_dim: int, capability: tuple[int, int],
                          build: sdpa.CudaBuild | None = None, **shape: object) -> str:
    """The SDPA kernel a CUDA GPU of `capability` runs for this GPT with `build`'s CUDA and cuDNN:
    `vramfit.dryrun.sdpa.select_kernel`, PyTorch's sdp_utils rules (cuDNN / flash / efficient / math). A kernel that
    is forced but cannot run is an error."""
    return sdpa.select_kernel(requested, dtype, head_dim, capability, call=shape, build=build)


class _CudaAttention(TorchFunctionMode):
    """Send `F.scaled_dot_product_attention` to the CUDA kernel's own aten op (autograd and meta kernels included);
    with `half_loss`, run fp16 cross-entropy as CUDA autocast does (`vramfit.dryrun.sdpa` has the why). `kernel`:
    one kernel for every call, or nanochat's per kind of call (`sdpa.nanochat_kernels`: "full" for `is_causal`,
    "window" for an explicit mask); "fa3" runs as the flash op (the same saved output and log-sum-exp; its
    backward workspace is FA3's, see `cuda_kernel_workspace`)."""

    def __init__(self, kernel: str | dict[str, str], half_loss: bool = False) -> None:
        super().__init__()
        self.kernels = kernel if isinstance(kernel, dict) else {"full": kernel}
        self.half_loss = half_loss

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.cross_entropy and self.half_loss and args[0].dtype == torch.float16:
            return sdpa.cuda_half_cross_entropy(*args, **kwargs)
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        return self.attention(*args, **kwargs)

    def attention(self, *args: object, **kwargs: object) -> torch.Tensor:
        """`F.scaled_dot_product_attention` on the CUDA kernel's aten op."""
        q, k, v = args[:3]
        attn_mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        dropout_p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
        is_causal = kwargs.get("is_causal", args[5] if len(args) > 5 else False)
        scale = kwargs.get("scale")
        gqa = bool(kwargs.get("enable_gqa", False))
        if attn_mask is not None and "window" not in self.kernels:
            raise ConfigError("the CUDA attention emulation supports is_causal only, not attn_mask")
        kernel = self.kernels["window" if attn_mask is not None else "full"]
        need_lse = q.requires_grad or k.requires_grad or v.requires_grad
        if kernel == "fa3":  # FA3 takes the window as numbers: no mask, the causal kernel's tensors
            return aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, True, scale=scale)[0]
        if kernel == "math":
            return aten._scaled_dot_product_attention_math(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                                           enable_gqa=gqa)[0]
        bias = None
        if attn_mask is not None:  # sdp's convert_boolean_attn_mask: a float bias (0 / -inf) in q's dtype
            bias = torch.where(attn_mask.logical_not(), float("-inf"), 0.0).to(q.dtype)
            bias = bias.expand(q.size(0), q.size(1), q.size(2), k.size(2))
        if kernel == "cudnn":
            return aten._scaled_dot_product_cudnn_attention(q, k, v, bias, need_lse, dropout_p, is_causal, False,
                                                            scale=scale)[0]
        if kernel == "flash":
            return aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
        return aten._scaled_dot_product_efficient_attention(q, k, v, bias, need_lse, dropout_p, is_causal,
                                                            scale=scale)[0]


_MATMULS = frozenset({aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default})


def cublas_workspace_bytes(capability: tuple[int, int]) -> int:
    """cuBLAS workspace PyTorch allocates from the caching allocator for each (handle, stream), i.e. once for the
    forward thread and once for the autograd device thread (`vramfit.dryrun.context.cublas_workspace_bytes`)."""
    return context.cublas_workspace_bytes(capability)


_ATTENTION_OPS = {
    aten._scaled_dot_product_flash_attention_backward.default: ("flash", True),
    aten._scaled_dot_product_efficient_attention_backward.default: ("efficient", True),
    aten._scaled_dot_product_cudnn_attention_backward.default: ("cudnn", True),
    aten._scaled_dot_product_flash_attention.default: ("flash", False),
}


def cuda_kernel_workspace(func, args: tuple, fa3: bool = False) -> int:  # noqa: ANN001
    """Bytes the CUDA attention kernels allocate and free inside the op (`vramfit.dryrun.sdpa`); `fa3`: the flash
    op stands for FlashAttention-3 (nanochat's)."""
    op = _ATTENTION_OPS.get(func)
    if op is None:
        return 0
    kernel, backward = op
    kernel = "fa3" if fa3 and kernel == "flash" else kernel
    q, k = (args[1], args[2]) if backward else (args[0], args[1])
    shape, size = tuple(q.shape), q.element_size()
    if backward:
        return sdpa.backward_workspace(kernel, shape, size, kv_heads=k.size(1))
    return 0 if kernel == "fa3" else sdpa.forward_workspace(kernel, shape, size)


# --- the run ------------------------------------------------------------------------------------------------------
def train_config(model_config: GPTConfig, batch_size: int, dtype: str, optimizer: str, attn_kernel: str,
                  grad_clip: float, accum: int, checkpoint: str = "none") -> TrainConfig:
    mc = model_config
    arch = {k: getattr(mc, k) for k in ("arch", *ARCH_OPTIONS)}
    return TrainConfig(n_layer=mc.n_layer, n_head=mc.n_head, n_embd=mc.n_embd, block_size=mc.block_size,
                       vocab_size=mc.vocab_size, dropout=mc.dropout, bias=mc.bias, **arch, batch_size=batch_size,
                       gradient_accumulation_steps=accum, grad_clip=grad_clip, device="cpu", dtype=dtype,
                       compile=False, optimizer=optimizer, attn_kernel=attn_kernel, max_iters=2, warmup_iters=1,
                       checkpoint=checkpoint)


def _fake_mode() -> contextlib.AbstractContextManager:
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=False)


def _check_request(req: EstimateRequest, fake: bool, steps: int) -> None:
    """What the request type cannot know: a real run is CPU-only; at least one step."""
    if req.target == "cuda" and not fake:
        raise ConfigError("a real (non-fake) tracked run is CPU-only; use target 'cpu'")
    if req.recipe.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {req.recipe.optimizer!r}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")


@dataclass
class _Plan:
    """What the request resolves to on the target: the recipe, the attention kernel and the notes."""

    dtype: str
    optimizer: str
    attention: str
    notes: list[str]
    compile: bool = False
    cuda_build: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)  # nanochat: the kernel per kind of attention call


def _resolve(req: EstimateRequest) -> _Plan:
    r, mc, target = req.recipe, req.model, req.target
    dtype, use_compile, impl = resolve_recipe(r.dtype, r.compile, r.optimizer, target, req.capability, mc.arch,
                                              loop=req.loop)
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(_DTYPES)}, got {dtype!r}")
    if dtype == "float16" and target == "cpu":
        raise ConfigError("float16 training is CUDA-only here; use bfloat16 or float32 on the CPU")
    notes = []
    if use_compile:
        notes.append(COMPILE_NOTE)
    head_dim = mc.n_embd // mc.n_head
    if target != "cuda":
        return _Plan(dtype, impl, r.attn_kernel, notes, use_compile)
    build = sdpa.cuda_build()
    call = dict(n_embd=mc.n_embd, batch=req.batch_size, n_head=mc.n_head, seq_len=mc.block_size, dropout=mc.dropout)
    if mc.arch == "nanochat":
        kernels = sdpa.nanochat_kernels(r.attn_kernel, dtype, head_dim, req.capability, gqa=mc.n_kv_head != mc.n_head,
                                        call=call, build=build)
        short = min(mc.window_sizes()) < mc.block_size
        attention = kernels["full"] if kernels["full"] == kernels["window"] or not short else \
            f"{kernels['full']} (full windows), {kernels['window']} (short windows, masked)"
        return _Plan(dtype, impl, attention, notes, use_compile, build.to_dict(), kernels)
    attention = cuda_attention_kernel(r.attn_kernel, dtype, head_dim, req.capability, build, **call)
    return _Plan(dtype, impl, attention, notes, use_compile, build.to_dict())


COMPILE_NOTE = ("torch.compile emulated: Inductor's partitioner decides what the forward saves, pointwise ops are "
                "fused away, kernels write over buffers they read last; approximated: each block is its own graph, "
                "no pooled buffer reuse, no CUDA graphs (see README, dry run)")


def _emulate_fp16(trainer: Trainer, fake: bool) -> None:
    """fp16 exists only on the emulated GPU: the trainer was built as fp32; switch its autocast and scaler."""
    trainer.dtype = "float16"
    trainer.autocast = lambda: torch.autocast(device_type="cpu", dtype=torch.float16)
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)
    if fake and not getattr(trainer.optimizer, "_step_supports_amp_scaling", False):
        # the unfused path asks found_inf.item(), which has no value under fake tensors: assume finite
        sc = trainer.scaler
        sc._maybe_opt_step = lambda opt, state, *a, **k: opt.step(*a, **k)  # type: ignore[method-assign]


def _batches(tracker: StepTracker, batch_size: int, model_config: GPTConfig, target: str,
             loop: str = "vramfit") -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """The trainer's `get_batch`: marks the data phase; on the GPU only the device copies of x and y exist. nanoGPT's
    on the CPU: the offsets (`torch.randint`, alive until x and y are stacked), then x and y stacked from numpy
    (whose arrays the CPU allocator never sees)."""
    B, T, V = batch_size, model_config.block_size, model_config.vocab_size
    gen = torch.Generator().manual_seed(1337)

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        tracker.phase, tracker.zone, tracker.where = "data", "", ""
        if target == "cuda":
            return torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
        if loop == "nanogpt":
            ix = torch.randint(V, (B,), generator=gen)  # noqa: F841 - alive while x and y are made, as in train.py
            return torch.randint(V, (B, T), generator=gen), torch.randint(V, (B, T), generator=gen)
        return synthetic_batch(B, T, V, gen, "cpu")

    return get_batch


def _compile(trainer: Trainer, tracker: StepTracker, mc: GPTConfig, cfg: TrainConfig, target: str,
             attention: str, loss_only: bool = False) -> None:
    """Replace the trainer's forward by the torch.compile emulation, compiled here (uncounted, like torch.compile's
    first call) on stand-in parameters; the module hooks that fire while tracing leave no state behind.
    `loss_only`: the compiled model returns the loss alone (nanochat's loop: `gpt.nanochat_loop.LossOnly`)."""
    from vramfit.dryrun.compiled import CompiledGPT

    def on_segment(name: str, loss: torch.Tensor | None = None) -> None:
        if loss is not None:  # the head ran: its backward node and everything after it is the logits zone
            node = loss.grad_fn
            tracker.logits_seq = node._sequence_nr() - 1 if node is not None else _NO_NODE_SEQ
            tracker.zone, tracker.where = "", ""
            return
        tracker.phase, tracker.where = "forward", f"compiled {name}"
        tracker.zone = "logits" if name == "head" else ""

    signature = (target, mc.block_size, mc.n_embd, mc.n_head, mc.vocab_size, mc.dropout, mc.bias,
                 trainer.dtype, attention)
    if mc.arch != "gpt2":  # every option shapes some graph (the residual scalars: the depth too)
        signature += tuple(sorted(mc.to_dict().items()))
    if loss_only:
        signature += ("loss only",)
    model = CompiledGPT(trainer.model, tracker.paused, on_segment, signature, loss_only)
    if isinstance(trainer.optimizer, MuonAdamW):  # nanochat compiles both steps of its optimizer too
        from vramfit.dryrun.compiled import CompiledStep

        opt = trainer.optimizer
        opt._muon_step, opt._adamw_step = (CompiledStep(f, tracker.paused) for f in (muon_update, adamw_update))
        tracker.scalar = 1.0
    with tracker.paused():
        idx = torch.zeros(cfg.batch_size, mc.block_size, dtype=torch.long)
        with trainer.autocast(), attention_kernel(trainer.cfg.attn_kernel):
            model.warm_up(idx, idx.clone())
    tracker.phase, tracker.zone, tracker.where, tracker.logits_seq = "init", "", "", _NO_NODE_SEQ
    trainer.forward = model


def _tracked_steps(cfg: TrainConfig, model_config: GPTConfig, plan: _Plan, tracker: StepTracker,
                   get_batch: Callable, *, target: str, fake: bool, steps: int, compiled: bool = False,
                   loop: str = "vramfit") -> int:
    """Build the Trainer and run `steps` steps of `loop` under `tracker` (and fake tensors); the live bytes after
    them. `compiled`: through the torch.compile emulation (`vramfit.dryrun.compiled`); `loop` "nanogpt": nanoGPT's
    train.py iteration (`gpt.nanogpt_loop`) instead of `Trainer.step`, "nanochat": base_train.py's
    (`gpt.nanochat_loop`; the loader's host buffers counted on the CPU target only)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))  # Trainer seeds the global RNG: leave ours alone
        if fake:
            stack.enter_context(_fake_mode())
        stack.enter_context(tracker)
        trainer = Trainer(cfg, model_config, device="cpu")
        if fake and trainer.optimizer_impl == "adafactor":
            tracker.scalar = 1.0
        if plan.dtype == "float16":
            _emulate_fp16(trainer, fake)
        if target == "cuda":
            mode = _CudaAttention(plan.kernels or plan.attention, half_loss=plan.dtype == "float16")
            stack.enter_context(mode)
            if trainer.model.checkpoint_every:  # a block recomputed in backward runs outside the mode: route there too
                stack.enter_context(mock.patch.object(F, "scaled_dot_product_attention", mode.attention))
        hooks = _install_hooks(trainer, tracker)
        if compiled:
            _compile(trainer, tracker, model_config, cfg, target, plan.attention, loss_only=loop == "nanochat")
        if loop == "nanochat":
            forward = trainer.forward if compiled else LossOnly(trainer.model)
            step = NanoChatLoop(trainer, forward, host=target == "cpu").step
        else:
            step = NanoGPTLoop(trainer).step if loop == "nanogpt" else trainer.step
        try:
            tracker.reset_peak()
            for i in range(steps):
                tracker.step_no = i + 1
                step(get_batch)
            tracker.phase, tracker.where = "done", ""
        finally:
            for h in hooks:
                h.remove()
        steady = tracker.current
        del trainer, step
    return steady


def run_step(req: EstimateRequest, *, fake: bool = True, steps: int = 2, rounding: int | None = None) -> StepResult:
    """Build the real Trainer and run `steps` real `Trainer.step` calls under a `StepTracker`.

    With a compiling recipe both the eager and the compiled step run (shown side by side); `req.headline_only`
    runs only the one the result reports.

    `fake=True` uses FakeTensorMode (no memory, no data: any shape runs); `fake=False` trains for real on the CPU
    (used to check the fake run). `target='cuda'` emulates that GPU on CPU tensors (see the module docstring)."""
    _check_request(req, fake, steps)
    t0 = time.perf_counter()
    mc, target, capability = req.model, req.target, req.capability
    plan = _resolve(req)
    rounding = rounding or ROUNDING[target]
    # fp16 exists only on the emulated GPU: build the trainer as fp32 (`_emulate_fp16` switches it)
    # the recipe's switches run as the trainer runs them (its grad_accum, where set, is the request's accumulation)
    accum = req.recipe.grad_accum if req.recipe.grad_accum > 1 else req.gradient_accumulation_steps
    # micro-steps 3..N start from the state micro-step 2 starts from (gradients accumulated; the previous
    # micro-step's tensors released, or in nanoGPT's loop its logits and the prefetched batch held), so their peaks
    # are micro-step 2's: N > 2 runs as 2 (nanoGPT's GPT-2 config has 40). Checked against real runs of 3 and 4
    # (tests/test_estimate_switches.py, experiments/bench_nanogpt_loop.py).
    accum = min(accum, 2)
    cfg = train_config(mc, req.batch_size, "float32" if plan.dtype == "float16" else plan.dtype, plan.optimizer,
                       "default" if target == "cuda" else req.recipe.attn_kernel, req.grad_clip, accum,
                       req.recipe.checkpoint)
    if plan.compile and checkpoint_every(req.recipe.checkpoint):
        raise ConfigError("activation checkpointing under torch.compile is not emulated by the dry run yet: "
                          "estimate it eager (compile=false)")
    runs = {}
    modes = ("eager", "compiled") if plan.compile else ("eager",)
    for mode in modes[-1:] if req.headline_only else modes:
        t = time.perf_counter()
        workspace = functools.partial(cuda_kernel_workspace, fa3=plan.kernels.get("full") == "fa3")
        tracker = StepTracker(rounding, workspace if target == "cuda" else None,
                              cublas_workspace_bytes(capability) if target == "cuda" else 0)
        get_batch = _batches(tracker, req.batch_size, mc, target, req.loop)
        steady = _tracked_steps(cfg, mc, plan, tracker, get_batch, target=target, fake=fake, steps=steps,
                                compiled=mode == "compiled", loop=req.loop)
        alloc = replay(tracker.events, req.recipe.alloc_conf).to_dict() if target == "cuda" else {}
        runs[mode] = (tracker, steady, alloc, time.perf_counter() - t)
    tracker, steady, alloc, _ = runs["compiled" if plan.compile else "eager"]
    info = tracker.peak_info
    return StepResult(
        peak_bytes=tracker.peak, peak_phase=info["phase"], peak_op=info["op"], peak_step=info["step"],
        breakdown=tracker.breakdown(), step_peaks=[tracker.step_peaks.get(i + 1, 0) for i in range(steps)],
        steady_bytes=steady, target=target, dtype=plan.dtype, optimizer=plan.optimizer, attention=plan.attention,
        rounding=rounding, fake=fake, notes=plan.notes, seconds=time.perf_counter() - t0, allocator=alloc,
        compiled=plan.compile, modes={mode: _mode_summary(*run, steps) for mode, run in runs.items()},
        cuda_build=plan.cuda_build,
    )


def _mode_summary(tracker: StepTracker, steady: int, alloc: dict, seconds: float, steps: int) -> dict:
    """One run's headline numbers, for showing the eager and compiled steps side by side."""
    info = tracker.peak_info
    out = {"peak_bytes": tracker.peak, "peak_phase": info["phase"], "peak_op": info["op"],
           "step_peaks": [tracker.step_peaks.get(i + 1, 0) for i in range(steps)], "seconds": round(seconds, 3)}
    if alloc:
        out["peak_reserved"] = alloc["peak_reserved"]
    return out


def _install_hooks(trainer: Trainer, tracker: StepTracker) -> list:
    """Module hooks for phase, zone and module path; optimizer hooks for the tags. All removed after the run."""
    model, opt = trainer.model, trainer.optimizer
    params = list(model.parameters())
    tracker.tag(params, "parameters")
    tracker.param_sids = {tracker.sid_of(p) for p in params} - {None}
    stack: list[str] = []
    handles = []

    head_starts = "lm_head" if "ln_f" not in model.transformer else None  # nanochat: no final norm module

    def pre(name: str):
        def hook(module, args):  # noqa: ANN001
            if module is model:
                tracker.phase, tracker.zone = "forward", ""
            elif name == head_starts and isinstance(args[0], torch.Tensor) and args[0].grad_fn is not None:
                tracker.zone, tracker.logits_seq = "logits", args[0].grad_fn._sequence_nr()
            stack.append(name)
            tracker.where = name or "GPT"
        return hook

    def post(name: str):
        def hook(module, args, output):  # noqa: ANN001
            if stack:
                stack.pop()
            tracker.where = stack[-1] if stack else ""
            if name == "transformer.ln_f":
                tracker.zone = "logits"
                if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                    tracker.logits_seq = output.grad_fn._sequence_nr()
            elif module is model:
                tracker.zone = ""
        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))

    def backward_end() -> None:
        tracker.tag((p.grad for p in params if p.grad is not None), "gradients")

    def step_pre(optimizer, args, kwargs):  # noqa: ANN001
        if tracker.phase == "backward":  # grad_clip=0 and no scaler: first op after backward is the step
            tracker.phase = "optimizer"
            backward_end()
        tracker.tag((p.grad for p in params if p.grad is not None), "gradients")
        tracker.where = "optimizer.step"

    def step_post(optimizer, args, kwargs):  # noqa: ANN001
        tracker.tag((v for state in optimizer.state.values() for v in state.values()), "optimizer_state")
        tracker.where = "optimizer.zero_grad"

    tracker.on_backward_end = backward_end
    handles.append(opt.register_step_pre_hook(step_pre))
    handles.append(opt.register_step_post_hook(step_post))
    return handles
