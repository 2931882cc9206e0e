"""SDPA kernel choice and kernel memory, rule by rule from aten/src/ATen/native/transformers/cuda/sdp_utils.cpp
(select_sdp_backend, can_use_flash_attention, can_use_mem_efficient_attention, can_use_cudnn_attention,
check_prefer_cudnn_attention), the kernels' workspaces, and the fp16 loss of CUDA autocast."""

import pytest
import torch

from gpt.config import GPTConfig
from gpt.errors import ConfigError
from vramfit.dryrun import sdpa
from vramfit.dryrun.estimate import EstimateRequest, estimate_step
from vramfit.recipe import Recipe

NO_ENV: dict = {}


def test_flash_rules():
    """check_head_dim_size_flash: <= 256, no multiple-of-8 rule (the kernel pads); check_flash_attention_hardware_
    support: sm80..sm121; check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120."""
    assert sdpa.can_use_flash("float16", 36, (8, 6))
    assert not sdpa.can_use_flash("float16", 264, (8, 0))
    assert not sdpa.can_use_flash("float16", 64, (7, 5)) and not sdpa.can_use_flash("float32", 64, (9, 0))
    assert not sdpa.can_use_flash("bfloat16", 200, (8, 6))  # (192, 224] with gradients on sm86
    assert sdpa.can_use_flash("bfloat16", 200, (8, 6), grad=False) and sdpa.can_use_flash("bfloat16", 200, (8, 0))
    assert sdpa.can_use_flash("bfloat16", 256, (8, 9)) and not sdpa.can_use_flash("bfloat16", 256, (8, 9), dropout=0.1)
    assert not sdpa.can_use_flash("bfloat16", 200, (12, 0))


def test_mem_efficient_alignment():
    """minimum_gemm_alignment: sm80+ 8 (half) / 4 (fp32); sm75 8 (half) / 1 (fp32, no tensor cores)."""
    assert sdpa.gemm_alignment("float16", (8, 0)) == 8 and sdpa.gemm_alignment("float32", (8, 0)) == 4
    assert sdpa.gemm_alignment("float16", (7, 5)) == 8 and sdpa.gemm_alignment("float32", (7, 5)) == 1
    assert sdpa.gemm_alignment("float32", (6, 1)) == 1
    assert sdpa.can_use_efficient("float32", 36, (8, 0)) and not sdpa.can_use_efficient("float16", 36, (8, 0))
    assert sdpa.can_use_efficient("float32", 30, (7, 5)) and not sdpa.can_use_efficient("float32", 30, (8, 0))
    assert not sdpa.can_use_efficient("bfloat16", 64, (7, 5))  # bf16 needs sm80
    assert not sdpa.can_use_efficient("float32", 64, (8, 0), storage_offset=66)  # q/k/v slices misaligned


def test_cudnn_rules_and_priority():
    """check_cudnn_tensor_shapes: head dim multiple of 8, <= 128 (256 on sm90/10.x with cuDNN > 9.22, backward
    then only <= 128, 192/128 or 256); check_prefer_cudnn_attention: first on sm90/sm10x unless deprioritized."""
    assert sdpa.can_use_cudnn("bfloat16", 128, (8, 6)) and not sdpa.can_use_cudnn("bfloat16", 160, (8, 6))
    assert not sdpa.can_use_cudnn("bfloat16", 256, (9, 0), cudnn_version=92200)
    assert sdpa.can_use_cudnn("bfloat16", 256, (9, 0), cudnn_version=92300)
    assert not sdpa.can_use_cudnn("bfloat16", 160, (9, 0), cudnn_version=92300)  # no backward for 160
    assert sdpa.can_use_cudnn("bfloat16", 160, (9, 0), cudnn_version=92300, grad=False)
    assert not sdpa.can_use_cudnn("bfloat16", 36, (9, 0)) and not sdpa.can_use_cudnn("float32", 64, (9, 0))
    assert not sdpa.can_use_cudnn("bfloat16", 64, (9, 0), dropout=0.1)  # not a multiple of 1/16
    assert sdpa.prefer_cudnn((9, 0), env=NO_ENV) and sdpa.prefer_cudnn((10, 0), env=NO_ENV)
    assert not sdpa.prefer_cudnn((8, 0), env=NO_ENV) and not sdpa.prefer_cudnn((12, 0), env=NO_ENV)
    assert not sdpa.prefer_cudnn((9, 0), cuda_version=(12, 8), cudnn_version=91002, env=NO_ENV)
    assert not sdpa.prefer_cudnn((9, 0), env={"TORCH_CUDNN_SDPA_DEPRIORITIZED": "1"})
    assert sdpa.select_kernel("default", "bfloat16", 64, (9, 0), env=NO_ENV) == "cudnn"
    assert sdpa.select_kernel("default", "bfloat16", 36, (9, 0), env=NO_ENV) == "flash"  # cuDNN needs 8 | D
    assert sdpa.select_kernel("default", "bfloat16", 64, (9, 0), env={"TORCH_CUDNN_SDPA_DEPRIORITIZED": "1"}) == \
        "flash"
    assert sdpa.select_kernel("default", "float32", 30, (8, 0)) == "math"
    with pytest.raises(ConfigError, match="cuDNN attention cannot run"):
        sdpa.select_kernel("cudnn", "float32", 64, (9, 0))


def test_backward_workspaces():
    """flash: softmax_d + dq_accum in fp32 (+ padded copies when 8 does not divide D); efficient: delta, and the
    fp32 grad-Q accumulator only for fp16/bf16 outputs (kNeedsAccumGradQ); cuDNN: softmax sum + dQ accumulator."""
    shape = (2, 4, 200, 64)
    assert sdpa.backward_workspace("flash", shape, 2) == 2 * 4 * 256 * 4 + 2 * 256 * 4 * 64 * 4
    assert sdpa.backward_workspace("flash", (2, 4, 200, 36), 2) > sdpa.backward_workspace("flash", (2, 4, 200, 64), 2)
    fp32 = sdpa.backward_workspace("efficient", shape, 4)
    assert fp32 == 2 * 4 * 224 * 4
    assert sdpa.backward_workspace("efficient", shape, 2) == fp32 + 2 * 4 * 256 * 64 * 4
    assert sdpa.backward_workspace("cudnn", shape, 2) == 6656 + 2 * 4 * 200 * 64 * 4  # 6400 B rounded to 512
    assert sdpa.forward_workspace("flash", shape, 2) == 0 < sdpa.forward_workspace("flash", (2, 4, 200, 36), 2)


def test_fp16_loss_has_no_fp32_copy_of_the_logits():
    """CUDA autocast: log_softmax(half) -> _log_softmax(half_to_float=True), gradient back in fp16. The peak drops
    by about 2 bytes per logit against the CPU-autocast path (fp32 copy); the loss comes out in fp32."""
    mc = GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=8192)
    fp16 = estimate_step(EstimateRequest(mc, 4, Recipe(dtype="float16", compile=False, optimizer="foreach"), "cuda",
                                         (7, 5)))
    assert fp16.peak_op.startswith("aten._log_softmax_backward_data")
    logits = 4 * 256 * 8192
    torch.manual_seed(0)
    x, t = torch.randn(64, 50, dtype=torch.float16), torch.randint(0, 50, (64,))
    ref = torch.nn.functional.cross_entropy(x.float(), t, ignore_index=-1)
    with torch._subclasses.fake_tensor.FakeTensorMode():  # half_to_float runs on meta kernels only
        fx, ft = torch.empty(64, 50, dtype=torch.float16), torch.zeros(64, dtype=torch.long)
        out = sdpa.cuda_half_cross_entropy(fx, ft, ignore_index=-1)
        assert out.dtype == torch.float32 and out.shape == ref.shape
    bf16 = estimate_step(EstimateRequest(mc, 4, Recipe(dtype="bfloat16", compile=False, optimizer="foreach"), "cuda",
                                         (8, 0)))
    assert bf16.breakdown["logits_loss"] - fp16.breakdown["logits_loss"] >= 1.5 * logits


def test_the_kernel_choice_follows_the_running_builds_cuda_and_cudnn():
    """sdp_utils.cpp's check_prefer_cudnn_attention reads the cuDNN and CUDA versions of the running build: on sm90
    a CUDA 12.8 build with cuDNN 9.10 runs flash, a CUDA 13 build cuDNN. The choice takes them from the running torch
    (faked here), else the stated default; VRAMFIT_CUDA_VERSION / VRAMFIT_CUDNN_VERSION override; bad values are one
    clear error."""
    cu128 = lambda: ("12.8", 91002, "2.8.0+cu128")  # noqa: E731
    cpu_build = lambda: (None, None, "2.13.0+cpu")  # noqa: E731
    b = sdpa.cuda_build({}, cu128)
    assert b == sdpa.CudaBuild((12, 8), 91002, "torch 2.8.0+cu128")
    assert sdpa.select_kernel("default", "bfloat16", 64, (9, 0), env=NO_ENV, build=b) == "flash"
    default = sdpa.cuda_build({}, cpu_build)
    assert default == sdpa.CudaBuild((13, 0), 91900, "default")
    assert sdpa.select_kernel("default", "bfloat16", 64, (9, 0), env=NO_ENV, build=default) == "cudnn"
    over = sdpa.cuda_build({"VRAMFIT_CUDA_VERSION": "12.8", "VRAMFIT_CUDNN_VERSION": "9.10.2"}, cpu_build)
    assert (over.cuda, over.cudnn) == ((12, 8), 91002) and over.source.startswith("VRAMFIT_CUDA_VERSION")
    assert sdpa.cuda_build({"VRAMFIT_CUDNN_VERSION": "91600"}, cu128).to_dict() == {
        "cuda": "12.8", "cudnn": 91600, "source": "VRAMFIT_CUDNN_VERSION (else torch 2.8.0+cu128)"}
    with pytest.raises(ConfigError, match="VRAMFIT_CUDA_VERSION"):
        sdpa.cuda_build({"VRAMFIT_CUDA_VERSION": "thirteen"}, cpu_build)


def test_an_estimate_records_the_build_its_kernel_choice_followed(monkeypatch):
    import json

    monkeypatch.setenv("VRAMFIT_CUDA_VERSION", "12.8")
    monkeypatch.setenv("VRAMFIT_CUDNN_VERSION", "91002")
    monkeypatch.delenv("TORCH_CUDNN_SDPA_DEPRIORITIZED", raising=False)
    mc = GPTConfig(n_layer=1, n_head=2, n_embd=128, block_size=64, vocab_size=256)
    req = EstimateRequest(mc, 2, Recipe(dtype="bfloat16", compile=False), "cuda", (9, 0))
    est = estimate_step(req)
    assert est.attention == "flash" and est.cuda_build["cuda"] == "12.8" and est.cuda_build["cudnn"] == 91002
    assert json.loads(json.dumps(est.to_dict()))["cuda_build"]["source"].startswith("VRAMFIT_CUDA_VERSION")
    monkeypatch.setenv("VRAMFIT_CUDA_VERSION", "13.0")
    monkeypatch.setenv("VRAMFIT_CUDNN_VERSION", "91900")
    assert estimate_step(req).attention == "cudnn"
