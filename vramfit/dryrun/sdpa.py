"""Which scaled-dot-product-attention kernel a CUDA GPU runs for this GPT, and what its kernels allocate.

The choice follows `select_sdp_backend` in aten/src/ATen/native/transformers/cuda/sdp_utils.cpp (torch 2.13 era):
the priority order is flash, memory-efficient, math, with cuDNN attention first when `check_prefer_cudnn_attention`
holds (capability 9.0/9.3/10.x with cuDNN > 9.15 on CUDA < 13, 9.x/10.x on CUDA 13; TORCH_CUDNN_SDPA_DEPRIORITIZED=1
turns it off). The CUDA and cuDNN versions are the running torch's where it has them, else CUDA 13.0 / cuDNN 9.19,
and VRAMFIT_CUDA_VERSION / VRAMFIT_CUDNN_VERSION override either (`cuda_build`; each estimate records them).
Each backend's filters, for this GPT's dense, causal, packed-QKV inputs:

- flash (`can_use_flash_attention`): fp16/bf16 (bf16 needs sm80+ anyway), sm80-sm121, head_dim <= 256 (any
  multiple: the kernel pads q, k, v to a multiple of 8 itself), and with gradients on sm86-sm89 / sm120-121 no
  head_dim in (192, 224], nor in (224, 256] with dropout.
- memory-efficient (`can_use_mem_efficient_attention`): sm50-sm121, fp16/fp32 (bf16 from sm80), head_dim a multiple
  of `minimum_gemm_alignment` (sm80+: 8 for fp16/bf16, 4 for fp32; sm70-75: 8 for fp16, 1 for fp32; older: 1), and
  q/k/v storage offsets aligned to that many elements (here: n_embd, as q, k, v are slices of one c_attn output).
- cuDNN (`can_use_cudnn_attention`): fp16/bf16, sm80-sm121, head_dim a multiple of 8 and <= 128 (256 on sm90/10.x
  with cuDNN > 9.22), dropout a multiple of 1/16, batch and heads <= 65535, sequence length > 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gpt.errors import ConfigError

KERNELS = ("cudnn", "flash", "efficient", "math")
CUDNN_VERSION = 91900  # the default build's cuDNN (torch's CUDA 13 wheels ship a cuDNN > 9.15)
CUDA_VERSION = (13, 0)
BUILD_ENV = ("VRAMFIT_CUDA_VERSION", "VRAMFIT_CUDNN_VERSION")  # the user's override of the build emulated


@dataclass(frozen=True)
class CudaBuild:
    """The CUDA and cuDNN versions torch decides the SDPA kernel with (sdp_utils.cpp reads them at run time), and
    where they came from: the running torch, the user's override (BUILD_ENV) or the stated default."""

    cuda: tuple[int, int] = CUDA_VERSION
    cudnn: int = CUDNN_VERSION
    source: str = "default"

    def to_dict(self) -> dict:
        return {"cuda": f"{self.cuda[0]}.{self.cuda[1]}", "cudnn": self.cudnn, "source": self.source}


def _running_torch() -> tuple[str | None, int | None, str]:
    """(torch.version.cuda, torch.backends.cudnn.version(), torch.__version__) of this process's torch; the first
    two None on a build without CUDA (neither call creates a CUDA context)."""
    import torch

    cuda = torch.version.cuda
    try:
        cudnn = torch.backends.cudnn.version() if cuda else None
    except Exception:  # noqa: BLE001 - a CUDA build whose cuDNN cannot be loaded: no version to follow
        cudnn = None
    return cuda, cudnn, torch.__version__


def _parse_cuda(text: str, what: str) -> tuple[int, int]:
    try:
        major, minor = (int(x) for x in str(text).strip().split(".")[:2])
        return major, minor
    except ValueError:
        raise ConfigError(f"{what}: expected a CUDA version like 12.8, got {text!r}") from None


def _parse_cudnn(text: str | int, what: str) -> int:
    """91900, '91900' or '9.19.0' -> 91900 (CUDNN_VERSION = major * 10000 + minor * 100 + patch from cuDNN 9)."""
    s = str(text).strip()
    try:
        if "." in s:
            parts = [int(x) for x in s.split(".")] + [0, 0]
            return parts[0] * 10000 + parts[1] * 100 + parts[2]
        return int(s)
    except ValueError:
        raise ConfigError(f"{what}: expected a cuDNN version like 9.19.0 or 91900, got {text!r}") from None


def cuda_build(env: Mapping[str, str] | None = None,
               running: Callable[[], tuple[str | None, int | None, str]] = _running_torch) -> CudaBuild:
    """The build the kernel choice follows: VRAMFIT_CUDA_VERSION / VRAMFIT_CUDNN_VERSION where set (either alone),
    else the running torch's where it was built with CUDA and cuDNN, else the default (CUDA 13.0, cuDNN 9.19)."""
    env = os.environ if env is None else env
    cuda_v, cudnn_v, torch_v = running()
    build = CudaBuild()
    if cuda_v and cudnn_v:
        build = CudaBuild(_parse_cuda(cuda_v, "torch.version.cuda"), int(cudnn_v), f"torch {torch_v}")
    over = {k: env[k] for k in BUILD_ENV if env.get(k)}
    if over:
        build = CudaBuild(_parse_cuda(over[BUILD_ENV[0]], BUILD_ENV[0]) if BUILD_ENV[0] in over else build.cuda,
                          _parse_cudnn(over[BUILD_ENV[1]], BUILD_ENV[1]) if BUILD_ENV[1] in over else build.cudnn,
                          " + ".join(over) + f" (else {build.source})")
    return build


def _low(dtype: str) -> bool:
    return dtype in ("float16", "bfloat16")


def gemm_alignment(dtype: str, capability: tuple[int, int]) -> int:
    """`minimum_gemm_alignment`: 4 from sm80, raised to 128 bits / element when tensor cores run the GEMMs."""
    tensor_cores = capability[0] >= 8 or (capability[0] >= 7 and _low(dtype))
    align = 4 if capability[0] >= 8 else 1
    return max(align, 128 // (16 if _low(dtype) else 32)) if tensor_cores else align


def can_use_flash(dtype: str, head_dim: int, capability: tuple[int, int], grad: bool = True,
                  dropout: float = 0.0) -> bool:
    if not _low(dtype) or not (8, 0) <= capability <= (12, 1) or head_dim > 256:
        return False
    if dtype == "bfloat16" and capability < (8, 0):
        return False
    sm86_89 = (8, 6) <= capability <= (8, 9) or (12, 0) <= capability <= (12, 1)
    if grad and sm86_89 and not (head_dim <= 192 or (dropout == 0.0 and head_dim > 224)):
        return False
    return True


def can_use_efficient(dtype: str, head_dim: int, capability: tuple[int, int], storage_offset: int = 0) -> bool:
    if not (5, 0) <= capability <= (12, 1):
        return False
    if dtype == "bfloat16" and capability < (8, 0):
        return False
    align = gemm_alignment(dtype, capability)
    if head_dim % align or head_dim <= 0:
        return False
    return capability < (8, 0) or storage_offset % align == 0


def can_use_cudnn(dtype: str, head_dim: int, capability: tuple[int, int], *, batch: int = 1, n_head: int = 1,
                  seq_len: int = 2, dropout: float = 0.0, grad: bool = True,
                  cudnn_version: int = CUDNN_VERSION) -> bool:
    if not _low(dtype) or not (8, 0) <= capability <= (12, 1) or cudnn_version < 90000:
        return False
    if dropout * 16.0 != int(dropout * 16.0) or batch > 65535 or n_head > 65535 or seq_len <= 1:
        return False
    sm90_10x = capability == (9, 0) or capability[0] == 10
    d256 = sm90_10x and cudnn_version > 92200
    if head_dim % 8 or head_dim > (256 if d256 else 128):
        return False
    return not (grad and d256 and 128 < head_dim < 256)


def prefer_cudnn(capability: tuple[int, int], cudnn_version: int = CUDNN_VERSION,
                 cuda_version: tuple[int, int] = CUDA_VERSION, env: dict | None = None) -> bool:
    """`check_prefer_cudnn_attention`: cuDNN first in the priority order on Hopper / Blackwell datacenter GPUs."""
    env = os.environ if env is None else env
    if env.get("TORCH_CUDNN_SDPA_DEPRIORITIZED", "").lower() in ("1", "true", "on", "yes"):
        return False
    major, minor = capability
    if cuda_version < (13, 0):
        return cudnn_version > 91500 and major in (9, 10) and minor in (0, 3)
    return cudnn_version > 91500 and major in (9, 10)


CALL_DEFAULTS = {"n_embd": 0, "batch": 1, "n_head": 1, "seq_len": 2, "dropout": 0.0, "grad": True, "gqa": False,
                 "mask": False}


def select_kernel(requested: str, dtype: str, head_dim: int, capability: tuple[int, int], *,
                  call: dict | None = None, env: dict | None = None, build: CudaBuild | None = None) -> str:
    """The kernel PyTorch runs ('default' = its priority order) with `build`'s CUDA and cuDNN (default:
    `cuda_build(env)`) for an SDPA call whose other facts are `call` (`CALL_DEFAULTS`' keys: the model width, batch,
    heads, sequence length, dropout, whether a gradient is needed, whether K/V have fewer heads (`enable_gqa`) and
    whether an explicit `attn_mask` is passed); a forced kernel that cannot run is an error. sdp_utils.cpp: flash
    refuses any attn_mask (`check_for_attn_mask`) and admits GQA (`check_batch_size_and_num_heads_dense<true>`);
    memory-efficient takes a mask but no GQA (`..._dense<false>`); cuDNN takes both; math takes everything."""
    unknown = set(call or {}) - set(CALL_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown SDPA call facts: {sorted(unknown)}")
    c = {**CALL_DEFAULTS, **(call or {})}
    n_embd, batch, n_head, seq_len, dropout, grad, gqa, mask = (c[k] for k in CALL_DEFAULTS)
    build = build or cuda_build(env)
    ok = {
        "cudnn": can_use_cudnn(dtype, head_dim, capability, batch=batch, n_head=n_head, seq_len=seq_len,
                               dropout=dropout, grad=grad, cudnn_version=build.cudnn),
        "flash": not mask and can_use_flash(dtype, head_dim, capability, grad, dropout),
        "efficient": not gqa and can_use_efficient(dtype, head_dim, capability, n_embd),
        "math": True,
    }
    cc = f"{capability[0]}.{capability[1]}"
    if requested != "default":
        if requested not in ok:
            raise ConfigError(f"unknown attention kernel {requested!r}")
        if not ok[requested]:
            name = {"flash": "flash attention", "efficient": "memory-efficient attention",
                    "cudnn": "cuDNN attention"}[requested]
            raise ConfigError(f"{name} cannot run {dtype} with head_dim {head_dim} on compute capability {cc} "
                              "(see PyTorch's sdp_utils.cpp)")
        return requested
    order = KERNELS if prefer_cudnn(capability, build.cudnn, build.cuda, env=env) else KERNELS[1:]
    return next(k for k in order if ok[k])


FA3_ENV = "VRAMFIT_FA3"  # "0": the target has no FlashAttention-3 (no `kernels` package, no Hugging Face hub)


def fa3_loads(capability: tuple[int, int], dtype: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether nanochat trains with FlashAttention-3 (`nanochat/flash_attention.py`, `_load_flash_attention_3` and
    `_resolve_use_fa3`): its kernels are built for Hopper (sm90: varunneal/flash-attention-3), Ada and Ampere (sm80,
    sm86, sm89: kernels-community/flash-attn3), not Blackwell; and FA3 runs only bf16 (fp16/fp32 use SDPA).
    VRAMFIT_FA3=0 says the kernels cannot be fetched there (they come from the Hugging Face hub)."""
    env = os.environ if env is None else env
    if env.get(FA3_ENV, "").strip().lower() in ("0", "false", "off", "no"):
        return False
    return dtype == "bfloat16" and (capability[0] == 9 or capability in ((8, 0), (8, 6), (8, 9)))


def nanochat_kernels(requested: str, dtype: str, head_dim: int, capability: tuple[int, int], *, gqa: bool,
                     call: dict | None = None, env: Mapping[str, str] | None = None,
                     build: CudaBuild | None = None) -> dict[str, str]:
    """The kernel of nanochat's attention per kind of layer: "full" (a window covering the context) and "window"
    (a short sliding window). `nanochat/flash_attention.py` `flash_attn_func`: FA3 for every layer where it loads
    (`fa3_loads`; `requested` 'default' only), else SDPA (`_sdpa_attention`): `is_causal=True` for a full window,
    an explicit boolean mask for a short one, `enable_gqa` when K/V have fewer heads; PyTorch then picks the kernel
    of each call (`select_kernel`: flash cannot take the mask, memory-efficient cannot take GQA)."""
    if requested == "default" and fa3_loads(capability, dtype, env):
        return {"full": "fa3", "window": "fa3"}
    facts = {**(call or {}), "gqa": gqa}
    return {"full": select_kernel(requested, dtype, head_dim, capability, call=facts, env=env, build=build),
            "window": select_kernel(requested, dtype, head_dim, capability, call={**facts, "mask": True}, env=env,
                                    build=build)}


def _round(n: int, m: int) -> int:
    return -(-n // m) * m


def _fa3_head_dim(d: int) -> int:
    """FA3's `round_up_headdim`: the head dims its kernels are instantiated for."""
    return next((r for r in (64, 96, 128, 192, 256) if d <= r), _round(d, 32))


def backward_workspace(kernel: str, shape: tuple[int, int, int, int], dtype_bytes: int, kv_heads: int | None = None
                       ) -> int:
    """Bytes an attention backward kernel allocates and frees inside the op, for q of `shape` (B, H, T, D) and K/V
    of `kv_heads` heads (default H):

    - flash (flash_api.cpp mha_bwd): softmax_d (B, H, T128) and dq_accum (B, T128, H, D32 or 256) in fp32; with a
      head dim that is not a multiple of 8, padded copies of q, k, v, out, dout and dq, dk, dv (D8); under GQA
      dk and dv at the query heads' width (dk_expanded, dv_expanded), summed into the K/V heads afterwards;
    - FA3 (flash-attention hopper/flash_api.cpp mha_bwd): softmax_d and softmax_lse_log2 (B, H, T128) and dq_accum
      (B, H, T128 x D') in fp32, D' FA3's rounded head dim; under GQA dk_accum and dv_accum (B, H_kv, T128 x D')
      in fp32 (T rounded to 128: its largest backward tile);
    - memory-efficient (attention_backward.cu, Kernel::Params::workspace_size): delta (B, H, T32) in fp32, plus the
      fp32 grad-Q accumulator (B, H, T64, D32) when the output is fp16/bf16 (kNeedsAccumGradQ);
    - cuDNN (cudnn frontend SDPA backward): softmax_sum (B, H, T) and a dQ accumulator (B, H, T, D) in fp32.
    Each rounded to 512 B."""
    b, h, t, d = shape
    kv = h if kv_heads is None else kv_heads
    if kernel == "flash":
        ws = _round(b * h * _round(t, 128) * 4, 512)
        ws += _round(b * _round(t, 128) * h * (_round(d, 32) if d <= 192 else 256) * 4, 512)
        if d % 8:
            ws += 7 * _round(b * h * t * _round(d, 8) * dtype_bytes, 512)
        if kv != h:
            ws += 2 * _round(b * t * h * _round(d, 8) * dtype_bytes, 512)
        return ws
    if kernel == "fa3":
        t128, d3 = _round(t, 128), _fa3_head_dim(d)
        ws = 2 * _round(b * h * t128 * 4, 512) + _round(b * h * t128 * d3 * 4, 512)
        return ws + (2 * _round(b * kv * t128 * d3 * 4, 512) if kv != h else 0)
    if kernel == "efficient":
        ws = _round(b * h * _round(t, 32) * 4, 512)
        if dtype_bytes == 2:
            ws += _round(b * h * _round(t, 64) * _round(d, 32) * 4, 512)
        return ws
    if kernel == "cudnn":
        return _round(b * h * t * 4, 512) + _round(b * h * t * d * 4, 512)
    return 0


def forward_workspace(kernel: str, shape: tuple[int, int, int, int], dtype_bytes: int) -> int:
    """Flash pads q, k, v (and its output) to a head dim multiple of 8 inside the forward op."""
    b, h, t, d = shape
    if kernel == "flash" and d % 8:
        return 4 * _round(b * h * t * _round(d, 8) * dtype_bytes, 512)
    return 0


def cuda_half_cross_entropy(logits, target, *args, **kwargs):  # noqa: ANN001, ANN201
    """F.cross_entropy on fp16 logits as CUDA autocast runs it: autocast casts log_softmax with
    `fp32_set_opt_dtype`, and `at::log_softmax` on a CUDA half tensor asked for float calls
    `_log_softmax(input, dim, half_to_float=true)` (aten/src/ATen/native/SoftMax.cpp): the fp32 result is made
    without an fp32 copy of the logits, and its backward returns the gradient in fp16. CPU autocast instead copies
    the logits to fp32 first. The rest is nll_loss, as in cross_entropy's composite."""
    import torch
    import torch.nn.functional as F

    names = ("weight", "size_average", "ignore_index", "reduce", "reduction", "label_smoothing")
    kw = {**dict(zip(names, args, strict=False)), **kwargs}
    if kw.get("label_smoothing") or logits.dim() != 2:
        return F.cross_entropy(logits, target, **kw)
    kw.pop("label_smoothing", None)
    lsm = torch.ops.aten._log_softmax.default(logits, 1, True)
    return F.nll_loss(lsm, target, **kw)
