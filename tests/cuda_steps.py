"""Real eager training steps on the GPU, for the tests that hold the dry run against `max_memory_allocated`."""

from __future__ import annotations


def eager_cuda_peak(mc, batch: int, dtype: str, optimizer: str, attn_kernel: str = "default") -> int:
    """`torch.cuda.max_memory_allocated()` over two eager steps of vramfit's trainer (grad clip 1.0, no accumulation),
    the step `estimate_step(...).peak_bytes` predicts; the trainer is freed after."""
    import torch

    from gpt.data import synthetic_batch
    from gpt.train import Trainer
    from vramfit.dryrun.fake_step import train_config

    cfg = train_config(mc, batch, dtype, optimizer, attn_kernel, grad_clip=1.0, accum=1)
    cfg.device, cfg.compile = "cuda", False
    torch.cuda.empty_cache()
    trainer = Trainer(cfg, mc, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        trainer.step(lambda: synthetic_batch(batch, mc.block_size, mc.vocab_size, gen, "cuda"))
    torch.cuda.synchronize()
    real = torch.cuda.max_memory_allocated()
    del trainer
    torch.cuda.empty_cache()
    return real
