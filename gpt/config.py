"""Model shape and training configuration: plain data, no torch, so planners can read it cheaply.

`resolve_recipe` is the one place where 'auto' settings (dtype, compile, optimizer) become concrete for a device.
"""

from __future__ import annotations

import math
import re
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from gpt.errors import ConfigError

GPT2_VOCAB = 50304  # nanoGPT's vocabulary without a meta.pkl: GPT-2's 50257 BPE tokens, padded to a multiple of 64

ATTN_KERNELS = ("default", "flash", "efficient", "math")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("auto", "fused", "foreach", "loop", "muon", "sgd", "adafactor")
ADAMW = ("fused", "foreach", "loop")  # the AdamW implementations; sgd is SGD with momentum (beta1), adafactor
# torch.optim.Adafactor (factored second moment: one value per row and per column of each matrix)
ARCHS = ("gpt2", "nanochat")
MLPS = ("gelu", "relu2", "swiglu")
# the options of the nanochat family and their values in each family (None: the family's default); GPT-2 (nanoGPT's
# block) has exactly the first column, nanochat's `nanochat/gpt.py` the second, and each can be changed on its own
ARCH_OPTIONS = {
    "n_kv_head": (None, None),  # key/value heads (grouped-query attention); None: n_head
    "window_pattern": ("L", "SSSL"),  # per-layer attention window, tiled: L = the context, S = about a quarter
    "mlp": ("gelu", "relu2"),  # gelu (GPT-2, 4C) | relu2 (nanochat, 4C) | swiglu (Llama: 3 matrices of 8C/3)
    "value_embeds": (False, True),  # value-embedding tables on alternating layers (ResFormer), with their gates
    "qk_norm": (False, True),  # RMSNorm of queries and keys after the rotary embedding
    "resid_scalars": (False, True),  # per-layer resid_lambdas and x0_lambdas
    "smear": (False, True),  # the previous token's embedding mixed in through a 24-channel gate
    "backout": (False, True),  # the mid-layer residual subtracted before the final norm
    "softcap": (0.0, 15.0),  # logits squashed to (-softcap, softcap) by tanh; 0: off
    "vocab_multiple": (1, 64),  # embedding and head padded to a multiple of this (nanoGPT pads vocab_size itself)
}
PARAM_GROUPS = ("embedding", "value_embeds", "matrices", "head", "scalars")
WINDOW_TILE = 128  # nanochat rounds the short window up to FA3's tile
VE_GATE_CHANNELS = 12  # nanochat's value-embedding gate reads the first 12 channels of the block input
SMEAR_CHANNELS = 24  # and the smear gate the first 24 channels of the embedding
ROTARY_BASE = 100000
ROTARY_CACHE = 10  # nanochat precomputes the rotary tables for 10 x the context
# dense bf16/fp16 tensor-core peaks (FLOP/s) for MFU; matched against the CUDA device name
# dense bf16/fp16 tensor-core peak FLOP/s (NVIDIA's datasheets, the sparse figure halved), by the GPU's name as
# NVML / torch.cuda.get_device_name report it, normalised by `gpu_model` (an H100 SXM reports "NVIDIA H100 80GB HBM3",
# a PCIe card "NVIDIA H100 PCIe"): matched whole, so an H100 PCIe (756 TFLOP/s) never takes the SXM's figure, nor an
# A10G or an RTX A1000 the A10's
PEAK_FLOPS = {
    "h200": 989e12,
    "h100": 989e12,
    "h100 pcie": 756e12,
    "h100 nvl": 835e12,
    "a100": 312e12,
    "a100 pcie": 312e12,
    "l40s": 362e12,
    "l4": 121e12,
    "a10": 125e12,
    "rtx 4090": 165e12,
    "rtx 3090": 71e12,
    "rtx 3070": 40e12,
}
_NOT_MODEL = re.compile(r"^(nvidia|geforce|tesla|\d+gb|hbm\d*e?|sxm\d*)$")


def gpu_model(name: str) -> str:
    """A GPU's name reduced to its model: lower case, words split at spaces and dashes, without the vendor and
    brand words, the memory size or type and the SXM form factor ("NVIDIA A100-SXM4-40GB" -> "a100")."""
    words = re.split(r"[^a-z0-9]+", str(name).lower())
    return " ".join(w for w in words if w and not _NOT_MODEL.match(w))


def peak_flops_of(name: str) -> float | None:
    """The dense bf16/fp16 peak FLOP/s of the GPU named `name` (PEAK_FLOPS, whole model names), else None."""
    return PEAK_FLOPS.get(gpu_model(name))


# sane upper bounds: far beyond any model trained on one node, small enough that a typo fails at once instead of
# growing memory for minutes (GPT-3 175B: 96 layers, 96 heads, width 12288)
MAX_SIZES = {"n_layer": 4096, "n_head": 4096, "n_embd": 131072, "block_size": 2**20, "vocab_size": 2**24,
             "batch_size": 2**20}
MAX_SEED = 2**32 - 1  # numpy's seed range; torch's generators take it too
MIN_COMPILE_CAPABILITY = (7, 0)  # Inductor/Triton refuse older GPUs (torch._inductor: GPUTooOldForTriton)
MIN_BF16_CAPABILITY = (8, 0)  # native bf16 tensor cores (Ampere); older cards only emulate it


def checkpoint_every(value: str | int) -> int:
    """Activation checkpointing as the trainer applies it: every k-th block (blocks 0, k, 2k, ...) keeps only its
    input and recomputes its forward in backward; 'none' -> 0 (off), 'all' -> 1, 'k' -> k."""
    text = str(value).strip().lower()
    if text in ("none", "0", "false", "off", ""):
        return 0
    if text in ("all", "1", "true", "on"):
        return 1
    if text.isdigit():
        return int(text)
    raise ConfigError(f"checkpoint must be none, all or a block interval k >= 1, got {value!r}")


def check_batch_size(batch_size: int) -> int:
    """A micro-batch size in [1, MAX_SIZES['batch_size']]; else one ConfigError naming the limit."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > MAX_SIZES["batch_size"]:
        raise ConfigError(f"batch_size {batch_size} is beyond the limit of {MAX_SIZES['batch_size']:,}")
    return batch_size


def resolve_recipe(dtype: str, compile: bool | None, optimizer: str, device_type: str,
                   capability: tuple[int, int] | None = None, arch: str = "gpt2",
                   loop: str = "vramfit") -> tuple[str, bool, str]:
    """('auto' dtype, None compile, 'auto' optimizer) made concrete for a device: the one place this is decided.

    CUDA: bf16 from capability 8.0 (fp16 below), compile from 7.0 (Inductor's Triton backend needs it: an explicit
    compile on an older GPU is refused here rather than failing every step); an unknown capability counts as new
    enough. CPU: fp32, eager. The optimizer 'auto' is the family's own: the fused AdamW for GPT-2 (nanoGPT),
    Muon + AdamW for nanochat. `loop="nanogpt"` resolves as nanoGPT's train.py does (`nanogpt_recipe`)."""
    if loop not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    if loop == "nanogpt":
        return nanogpt_recipe(dtype, compile, optimizer, device_type, capability)
    cuda = device_type == "cuda"
    cap = capability or (99, 0)
    if dtype == "auto":
        dtype = ("bfloat16" if cap >= MIN_BF16_CAPABILITY else "float16") if cuda else "float32"
    compile = _compile(compile, cuda and cap >= MIN_COMPILE_CAPABILITY, cuda, cap)
    if optimizer == "auto":
        optimizer = "muon" if arch == "nanochat" else "fused"
    return dtype, compile, optimizer


LOOPS = ("vramfit", "nanogpt", "nanochat")
"""The training loops the dry run steps: vramfit's `Trainer.step`, nanoGPT's train.py (`gpt.nanogpt_loop`) or
nanochat's scripts/base_train.py (`gpt.nanochat_loop`)."""


def nanogpt_adamw(device_type: str) -> str:
    """The AdamW nanoGPT's train.py runs on a device: `fused=True` on CUDA (its `configure_optimizers`), elsewhere
    neither flag, so torch picks: foreach only where every parameter is on a foreach device (CUDA, XPU, MTIA,
    privateuse1; `torch.optim.optimizer._default_to_fused_or_foreach`), so the for-loop AdamW on the CPU."""
    return "fused" if device_type == "cuda" else "loop"


def nanogpt_recipe(dtype: str, compile: bool | None, optimizer: str, device_type: str,
                   capability: tuple[int, int] | None = None) -> tuple[str, bool, str]:
    """(dtype, compile, optimizer) of nanoGPT's train.py on a device. Its dtype defaults to bf16 where the GPU
    supports it (8.0+), else fp16, and applies only on CUDA: on the CPU its autocast context is a nullcontext, so
    it computes in fp32 whatever `dtype` says. It compiles unless told `compile = False` (the CPU too), and picks
    its AdamW itself (`nanogpt_adamw`): another optimizer is refused, not ignored."""
    cuda = device_type == "cuda"
    cap = capability or (99, 0)
    adamw = nanogpt_adamw(device_type)
    if optimizer not in ("auto", adamw):
        raise ConfigError(f"nanoGPT's train.py runs the {adamw} AdamW on {device_type} (fused on CUDA, torch's "
                          f"for-loop default on the CPU), not optimizer {optimizer!r}: drop it, or estimate "
                          "vramfit's loop (--loop vramfit)")
    if not cuda:
        dtype = "float32"
    elif dtype == "auto":
        dtype = "bfloat16" if cap >= MIN_BF16_CAPABILITY else "float16"
    return dtype, _compile(compile, not cuda or cap >= MIN_COMPILE_CAPABILITY, cuda, cap), adamw


def _compile(compile: bool | None, default: bool, cuda: bool, cap: tuple[int, int]) -> bool:
    """`compile`, else `default`; an explicit compile on a GPU too old for Inductor's Triton backend is refused
    here rather than failing every step."""
    if compile is None:
        return default
    if compile and cuda and cap < MIN_COMPILE_CAPABILITY:
        raise ConfigError(f"compile needs CUDA compute capability >= {MIN_COMPILE_CAPABILITY[0]}.0 (Inductor's Triton "
                          f"backend); this GPU is {cap[0]}.{cap[1]}: set compile = false")
    return bool(compile)


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT model: GPT-2 as nanoGPT has it (`arch="gpt2"`) or nanochat's block (`arch="nanochat"`).

    The options after `arch` (see ARCH_OPTIONS) default to the family's values; on nanochat each can be set on its
    own, GPT-2 has only its own. `bias` defaults to True for GPT-2 and must stay False for nanochat."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = GPT2_VOCAB
    dropout: float = 0.0
    bias: bool | None = None
    arch: str = "gpt2"
    n_kv_head: int | None = None
    window_pattern: str | None = None
    mlp: str | None = None
    value_embeds: bool | None = None
    qk_norm: bool | None = None
    resid_scalars: bool | None = None
    smear: bool | None = None
    backout: bool | None = None
    softcap: float | None = None
    vocab_multiple: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > MAX_SIZES[name]:
                raise ConfigError(f"{name} {value} is beyond the limit of {MAX_SIZES[name]:,}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name, value in resolve_arch(self.arch, self.n_head, self.bias,
                                        {k: getattr(self, k) for k in ARCH_OPTIONS}).items():
            object.__setattr__(self, name, value)
        if self.arch == "nanochat":
            self._check_nanochat()

    def _check_nanochat(self) -> None:
        H, KV, C = self.n_head, self.n_kv_head, self.n_embd
        checks = [
            (isinstance(KV, int) and not isinstance(KV, bool) and 1 <= KV <= H and H % KV == 0,
             f"n_kv_head must divide n_head ({H}), got {KV!r}"),
            (isinstance(self.window_pattern, str) and bool(self.window_pattern)
             and set(self.window_pattern) <= {"S", "L"}, f"window_pattern must be letters S and L, got "
                                                         f"{self.window_pattern!r}"),
            (self.mlp in ("relu2", "swiglu"), f"mlp must be relu2 or swiglu for nanochat, got {self.mlp!r}"),
            (not self.bias, "nanochat's linears have no bias: set bias = false"),
            (self.dropout == 0.0, "nanochat's block has no dropout: set dropout = 0"),
            ((C // H) % 2 == 0, f"the head dimension n_embd/n_head ({C // H}) must be even (rotary embeddings)"),
            (not self.smear or C >= SMEAR_CHANNELS, f"smear reads {SMEAR_CHANNELS} channels: n_embd must be >= "
                                                     f"{SMEAR_CHANNELS} (or smear = false)"),
            (not self.value_embeds or C >= VE_GATE_CHANNELS,
             f"the value-embedding gate reads {VE_GATE_CHANNELS} channels: n_embd must be >= {VE_GATE_CHANNELS}"),
            (isinstance(self.softcap, int | float) and self.softcap >= 0, f"softcap must be >= 0, got "
                                                                           f"{self.softcap!r}"),
            (isinstance(self.vocab_multiple, int) and 1 <= self.vocab_multiple <= 4096,
             f"vocab_multiple must be in 1..4096, got {self.vocab_multiple!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and the head: vocab_size rounded up to vocab_multiple (nanochat: 64)."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    def window_sizes(self) -> list[int]:
        """Each layer's attention window (keys before the query; the context = full): `window_pattern` tiled over the
        layers, the last layer always full; the short window is a quarter of the context rounded up to 128
        (nanochat `GPT._compute_window_sizes`)."""
        long = self.block_size
        short = -(-long // 4 // WINDOW_TILE) * WINDOW_TILE
        sizes = [long if self.window_pattern[i % len(self.window_pattern)] == "L" else short
                 for i in range(self.n_layer)]
        sizes[-1] = long
        return sizes

    def value_embed_layers(self) -> list[int]:
        """The layers with a value embedding: alternating, the last always included (nanochat `has_ve`)."""
        if not self.value_embeds:
            return []
        return [i for i in range(self.n_layer) if i % 2 == (self.n_layer - 1) % 2]

    def mlp_hidden(self) -> int:
        """Width of the MLP's hidden layer: 4C, or 8C/3 for SwiGLU (same parameters and FLOPs, nanochat LOG.md)."""
        return (8 * self.n_embd) // 3 if self.mlp == "swiglu" else 4 * self.n_embd

    def block_matrices(self) -> list[tuple[int, int]]:
        """(out, in) of every 2-D tensor inside the blocks, in model order: what Muon optimises."""
        C, kv, F = self.n_embd, self.n_kv_head * self.head_dim, self.mlp_hidden()
        if self.arch == "gpt2":
            layer = [(3 * C, C), (C, C), (F, C), (C, F)]
            return layer * self.n_layer
        out = []
        ve = set(self.value_embed_layers())
        for i in range(self.n_layer):
            out += [(C, C), (kv, C), (kv, C), (C, C)]
            out += [(self.n_kv_head, VE_GATE_CHANNELS)] if i in ve else []
            out += [(F, C), (F, C), (C, F)] if self.mlp == "swiglu" else [(F, C), (C, F)]
        return out

    def muon_stacks(self) -> dict[tuple[int, int], int]:
        """The stacks Muon forms, (out, in) -> how many matrices, in its order (sorted shapes): each step stacks a
        group's gradients and weights, so the largest stack sizes Muon's transient memory."""
        shapes = self.block_matrices()
        return {shape: shapes.count(shape) for shape in sorted(set(shapes))}

    def param_counts(self) -> dict[str, int]:
        """Parameters by optimizer group (PARAM_GROUPS): token (and position) embeddings, value embeddings, the
        blocks' 2-D matrices, the untied head, and every other tensor (norm weights, biases, per-layer scalars,
        gates outside the blocks). Torch-free; sums to `n_params()`."""
        L, C, T, V = self.n_layer, self.n_embd, self.block_size, self.padded_vocab
        matrices = sum(r * c for r, c in self.block_matrices())
        if self.arch == "gpt2":
            return {"embedding": V * C + T * C, "value_embeds": 0, "matrices": matrices, "head": 0,
                    "scalars": count_params(L, C, T, V, self.bias) - V * C - T * C - matrices}
        scalars = (2 * L if self.resid_scalars else 0) + (SMEAR_CHANNELS + 1 if self.smear else 0)
        scalars += 1 if self.backout else 0
        return {"embedding": V * C, "value_embeds": len(self.value_embed_layers()) * V * self.n_kv_head * self.head_dim,
                "matrices": matrices, "head": V * C, "scalars": scalars}

    def param_bytes(self, dtype: str = "float32") -> dict[str, int]:
        """Bytes per parameter of each group under a recipe dtype: fp32 master weights, except nanochat's embedding
        tables, kept in bf16 when the recipe computes in bf16 (nanochat `init_weights`; fp16 keeps them fp32)."""
        low = self.arch == "nanochat" and dtype == "bfloat16"
        return {g: 2 if low and g in ("embedding", "value_embeds") else 4 for g in PARAM_GROUPS}

    def optimizer_state_bytes(self, optimizer: str, dtype: str = "float32") -> dict[str, int]:
        """Bytes of optimizer state per group. AdamW: exp_avg and exp_avg_sq, each in its parameter's dtype. Muon
        (the blocks' matrices; nanochat `MuonAdamW._compute_muon`): one momentum buffer like the matrix and a
        factored second moment of max(rows, cols) entries, both in the matrix's dtype (fp32); every other group is
        AdamW. SGD: one momentum buffer like each parameter. Adafactor (`torch.optim.Adafactor`): a row and a column
        factor of each matrix (rows + cols entries), a full second moment of each vector, in the parameter's dtype.
        Per-tensor step counters are not counted."""
        counts, width = self.param_counts(), self.param_bytes(dtype)
        if optimizer == "sgd":
            return {g: counts[g] * width[g] for g in PARAM_GROUPS}
        if optimizer == "adafactor":
            return {g: sum(r + c if r else c for r, c in shapes) * width[g]
                    for g, shapes in self.param_shapes().items()}
        out = {g: 2 * counts[g] * width[g] for g in PARAM_GROUPS}
        if optimizer == "muon":
            out["matrices"] = sum(r * c + max(r, c) for r, c in self.block_matrices()) * width["matrices"]
        return out

    def param_shapes(self) -> dict[str, list[tuple[int, int]]]:
        """(rows, cols) of every parameter tensor by group, rows 0 for a vector: what a factored optimizer keeps.
        Torch-free; the sizes sum to `param_counts`."""
        L, C, T, V = self.n_layer, self.n_embd, self.block_size, self.padded_vocab
        mats = self.block_matrices()
        if self.arch == "gpt2":
            b = [(0, 3 * C), (0, C), (0, 4 * C), (0, C)] if self.bias else []
            norm = [(0, C), (0, C)] if self.bias else [(0, C)]
            vectors = (norm + norm + b) * L + norm
            return {"embedding": [(V, C), (T, C)], "value_embeds": [], "matrices": mats, "head": [],
                    "scalars": vectors}
        kv = self.n_kv_head * self.head_dim
        scalars = [(0, L), (0, L)] if self.resid_scalars else []
        scalars += [(1, SMEAR_CHANNELS), (0, 1)] if self.smear else []
        scalars += [(0, 1)] if self.backout else []
        return {"embedding": [(V, C)], "value_embeds": [(V, kv)] * len(self.value_embed_layers()),
                "matrices": mats, "head": [(V, C)], "scalars": scalars}

    def n_params(self, non_embedding: bool = False) -> int:
        """Exact parameter count. GPT-2: lm_head tied to wte, `non_embedding` drops the position table (nanoGPT).
        nanochat: `non_embedding` drops the lookup tables (token and value embeddings), keeping the head."""
        if self.arch == "gpt2":
            return count_params(self.n_layer, self.n_embd, self.block_size, self.vocab_size, self.bias,
                                non_embedding)
        counts = self.param_counts()
        total = sum(counts.values())
        return total - counts["embedding"] - counts["value_embeds"] if non_embedding else total

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM appendix B accounting as in nanoGPT; for nanochat as
        its `estimate_flops`: 6 x the weights of every linear (head and smear gate included) plus attention over
        each layer's window."""
        L, H, Q, T = self.n_layer, self.n_head, self.head_dim, self.block_size
        if self.arch == "gpt2":
            return 6 * self.n_params(non_embedding=True) + 12 * L * H * Q * T
        counts = self.param_counts()
        linear = counts["matrices"] + counts["head"] + (SMEAR_CHANNELS if self.smear else 0)
        return 6 * linear + sum(12 * H * Q * min(w, T) for w in self.window_sizes())


def resolve_arch(arch: str, n_head: int, bias: bool | None, options: dict) -> dict:
    """The family's defaults filled into `options` (None = default), and `bias`; GPT-2 accepts only its own values."""
    if arch not in ARCHS:
        raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    column = ARCHS.index(arch)
    out = {k: (ARCH_OPTIONS[k][column] if v is None else v) for k, v in options.items()}
    out["n_kv_head"] = n_head if out["n_kv_head"] is None else out["n_kv_head"]
    if isinstance(out["window_pattern"], str):
        out["window_pattern"] = out["window_pattern"].upper()
    out["bias"] = (arch == "gpt2") if bias is None else bias
    if arch == "gpt2":
        gpt2 = {**{k: v[0] for k, v in ARCH_OPTIONS.items()}, "n_kv_head": n_head}
        for k, v in gpt2.items():
            if out[k] != v:
                raise ConfigError(f"{k} = {out[k]!r} is a nanochat option (GPT-2 has {v!r}): set arch = nanochat")
    return out


def nanochat_config(depth: int, *, aspect_ratio: int = 64, head_dim: int = 128, max_seq_len: int = 2048,
                    vocab_size: int = 32768, window_pattern: str = "SSSL", **options) -> GPTConfig:
    """The model `nanochat -m scripts.base_train --depth D` trains (`build_model_meta`): width = depth x aspect
    ratio rounded up to a multiple of head_dim, heads = width / head_dim, as many K/V heads, its context and
    window pattern; vocab 32768 is nanochat's tokenizer (`tok_train.py --vocab-size`)."""
    if depth < 1 or aspect_ratio < 1 or head_dim < 1:
        raise ConfigError("depth, aspect_ratio and head_dim must be positive")
    width = -(-depth * aspect_ratio // head_dim) * head_dim
    heads = width // head_dim
    return GPTConfig(n_layer=depth, n_head=heads, n_embd=width, block_size=max_seq_len, vocab_size=vocab_size,
                     arch="nanochat", n_kv_head=heads, window_pattern=window_pattern, **options)


def count_params(n_layer, n_embd, block_size, vocab_size, bias=True, non_embedding: bool = False):
    """GPT-2 parameter count; plain arithmetic, so it works elementwise on numpy arrays too."""
    L, C, T, V = n_layer, n_embd, block_size, vocab_size
    b = 1 if bias else 0
    ln = C + b * C
    attn = 3 * C * C + b * 3 * C + C * C + b * C
    mlp = 4 * C * C + b * 4 * C + 4 * C * C + b * C
    total = V * C + T * C + L * (2 * ln + attn + mlp) + ln
    return total - T * C if non_embedding else total


@dataclass
class TrainConfig:
    """Everything a training run needs, flat like nanoGPT's config (model shape included)."""

    # model shape (vocab comes from the corpus unless set)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: int | None = None
    dropout: float = 0.0
    bias: bool | None = None  # None: the family's (True for gpt2, False for nanochat)
    # model family and its options (None: the family's default; see ARCH_OPTIONS)
    arch: str = "gpt2"  # gpt2 (nanoGPT) | nanochat
    n_kv_head: int | None = None
    window_pattern: str | None = None
    mlp: str | None = None
    value_embeds: bool | None = None
    qk_norm: bool | None = None
    resid_scalars: bool | None = None
    smear: bool | None = None
    backout: bool | None = None
    softcap: float | None = None
    vocab_multiple: int | None = None
    # data and I/O
    data_dir: str = "data/shakespeare_char"
    out_dir: str = "out"
    init_from: str = "scratch"  # scratch | resume
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    always_save_checkpoint: bool = False
    # optimisation
    batch_size: int = 12
    gradient_accumulation_steps: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # default: max_iters
    min_lr: float | None = None  # default: learning_rate / 10
    seed: int = 1337
    # recipe: what changes memory besides the shape
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool | None = None  # None: on for CUDA
    optimizer: str = "auto"  # auto (gpt2: fused, nanochat: muon) | fused | foreach | loop | muon | sgd | adafactor
    checkpoint: str = "none"  # activation checkpointing: none | all | k (every k-th block)
    # optimizer = muon: nanochat's learning rates (base_train.py), scaled over time by the schedule above
    # (lr_at(it) / learning_rate); the AdamW ones by (n_embd / 768) ** -0.5 as nanochat does
    matrix_lr: float = 0.02  # Muon, the blocks' matrices
    embedding_lr: float = 0.3  # AdamW, token embedding (value embeddings: half)
    unembedding_lr: float = 0.008  # AdamW, the head
    scalar_lr: float = 0.5  # AdamW, per-layer scalars
    attn_kernel: str = "default"  # default | flash | efficient | math
    dynamic_batch: bool = False  # compile with a dynamic batch dimension (torch._dynamo.mark_dynamic); needs compile
    peak_tflops: float | None = None  # for MFU; default: known GPU peaks
    extra: dict = field(default_factory=dict, repr=False)  # unknown TOML tables kept for provenance

    def __post_init__(self) -> None:
        if self.bias is None and self.arch in ARCHS:
            self.bias = self.arch == "gpt2"
        checks = [
            (self.init_from in ("scratch", "resume"), f"init_from must be scratch or resume, got {self.init_from!r}"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.attn_kernel in ATTN_KERNELS, f"attn_kernel must be one of {', '.join(ATTN_KERNELS)}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.batch_size <= MAX_SIZES["batch_size"],
             f"batch_size {self.batch_size} is beyond the limit of {MAX_SIZES['batch_size']:,}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self._checkpoint_ok(), f"checkpoint must be none, all or a block interval k >= 1, got "
                                    f"{self.checkpoint!r}"),
            (self.gradient_accumulation_steps <= MAX_SIZES["batch_size"],
             f"gradient_accumulation_steps {self.gradient_accumulation_steps} is beyond the limit of "
             f"{MAX_SIZES['batch_size']:,}"),
            (self.max_iters >= 0, f"max_iters must be >= 0, got {self.max_iters}"),
            (min(self.matrix_lr, self.embedding_lr, self.unembedding_lr, self.scalar_lr) > 0,
             "matrix_lr, embedding_lr, unembedding_lr and scalar_lr must be > 0"),
            (self.eval_iters >= 1, f"eval_iters must be >= 1, got {self.eval_iters}"),
            *self._hyper_parameter_checks(),
            (not (self.dynamic_batch and self.compile is False),
             "dynamic_batch marks the batch dimension for torch.compile: it needs compile = true"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        self.model_config()  # validates the shape early, before any data is read

    def _checkpoint_ok(self) -> bool:
        try:
            checkpoint_every(self.checkpoint)
        except ConfigError:
            return False
        return True

    def _hyper_parameter_checks(self) -> list[tuple[bool, str]]:
        """(ok, message) per optimisation setting: finite, in its range (NaN fails every comparison)."""
        def finite(name: str, low: float, high: float = math.inf, open_low: bool = False, open_high: bool = False,
                   optional: bool = False) -> tuple[bool, str]:
            v = getattr(self, name)
            if optional and v is None:
                return True, ""
            ok = (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                  and (v > low if open_low else v >= low) and (v < high if open_high else v <= high))
            span = (f"{'>' if open_low else '>='} {low:g}" if high == math.inf else
                    f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}")
            return ok, f"{name} must be a finite number {span}, got {v!r}"

        return [
            finite("learning_rate", 0, open_low=True),
            finite("min_lr", 0, optional=True),
            finite("weight_decay", 0),
            finite("beta1", 0, 1, open_high=True),
            finite("beta2", 0, 1, open_high=True),
            finite("grad_clip", 0),
            finite("peak_tflops", 0, open_low=True, optional=True),
            (self.log_interval >= 1, f"log_interval must be >= 1, got {self.log_interval}"),
            (self.eval_interval >= 0, f"eval_interval must be >= 0 (0: only at the end), got {self.eval_interval}"),
            (self.warmup_iters >= 0, f"warmup_iters must be >= 0, got {self.warmup_iters}"),
            (self.lr_decay_iters is None or self.lr_decay_iters >= 0,
             f"lr_decay_iters must be >= 0, got {self.lr_decay_iters}"),
            (0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED:,}] (2**32 - 1), got {self.seed}"),
        ]

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        """The GPTConfig of this run (`vocab_size` from the corpus when the config leaves it unset)."""
        vocab = self.vocab_size or vocab_size or GPT2_VOCAB
        return GPTConfig(self.n_layer, self.n_head, self.n_embd, self.block_size, vocab, self.dropout, self.bias,
                         self.arch, **{k: getattr(self, k) for k in ARCH_OPTIONS})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def _coerce(name: str, value: object, hint: object) -> object:
    """Convert a TOML or command-line value to a TrainConfig field's type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = args[0] if args else hint
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(base, '__name__', base)}") from None


ALIASES = {"grad_accum": "gradient_accumulation_steps"}  # the recipe's name for nanoGPT's field


def make_config(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a flat mapping of field -> value (dashes allowed, ALIASES read as their field), typed
    and validated."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)} - {"extra"}
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in known:
            raise ConfigError(f"unknown config key {key!r}")
        out[name] = _coerce(name, value, hints[name])
    return replace(base, **out) if base is not None else TrainConfig(**out)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Read a TOML config (flat keys, or [model]/[train]/[recipe] tables) or a nanoGPT Python config (`.py`,
    parsed as data by `gpt.pyconfig`) and apply overrides. Never exec'd.

    A nanoGPT file's keys that vramfit has no use for (wandb, backend, and any unknown name, which nanoGPT's
    configurator also leaves unused) are kept in `extra['nanogpt_ignored']`."""
    values: dict = {}
    extra: dict = {}
    if path is not None and Path(path).suffix == ".py":
        from gpt.pyconfig import nanogpt_values

        values, ignored = nanogpt_values(path)
        known = {f.name for f in fields(TrainConfig)} - {"extra"}
        ignored |= {k: values.pop(k) for k in list(values) if k not in known}
        extra = {"nanogpt_config": str(path), "nanogpt_ignored": ignored}
    elif path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"no such config file: {p}")
        try:
            doc = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p} is not valid TOML: {exc}") from None
        for key, value in doc.items():
            if isinstance(value, dict) and key in ("model", "train", "recipe", "data"):
                values.update(value)
            elif isinstance(value, dict):
                extra[key] = value
            else:
                values[key] = value
    values.update(overrides or {})
    cfg = make_config(values)
    cfg.extra = extra
    return cfg
