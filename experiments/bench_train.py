"""Training speed of the real trainer step: ms/iter, tokens/s and MFU for named configs on this device.

    python experiments/bench_train.py [--device cpu|cuda] [--iters 10] [--configs tiny-char,...]

MFU is against the device's peak: a known GPU's dense bf16 peak, or on the CPU the measured fp32 matmul
throughput of this machine (so CPU MFU reads "fraction of what a big GEMM achieves here").
"""

from __future__ import annotations

import argparse
import time

import torch

from gpt.config import GPTConfig, make_config
from gpt.data import synthetic_batch
from gpt.train import Trainer, peak_flops, resolve_device

CONFIGS = {
    # name: (n_layer, n_head, n_embd, block_size, batch_size, vocab_size)
    "tiny-char": (4, 4, 128, 128, 16, 65),
    "shakespeare-char": (6, 6, 384, 256, 8, 65),  # nanoGPT's config/train_shakespeare_char.py shape, batch 8
    "gpt2-mini": (6, 6, 384, 256, 4, 50304),
    "gpt2-small": (12, 12, 768, 1024, 12, 50304),
}


def matmul_peak(device: str, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of a square fp32 matmul (bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench(name: str, device: str, iters: int, compile_: bool | None) -> dict:
    L, H, C, T, B, V = CONFIGS[name]
    cfg = make_config(dict(n_layer=L, n_head=H, n_embd=C, block_size=T, batch_size=B, device=device,
                           compile=compile_, max_iters=iters + 3))
    trainer = Trainer(cfg, GPTConfig(L, H, C, T, V))
    gen = torch.Generator().manual_seed(0)

    def batch():
        return synthetic_batch(B, T, V, gen, trainer.device)

    for _ in range(3):  # warm-up: Adam state, compile, allocator
        trainer.step(batch)
    trainer.step(batch).item()
    t = time.perf_counter()
    for _ in range(iters):
        loss = trainer.step(batch)
    loss.item()
    dt = (time.perf_counter() - t) / iters
    peak = peak_flops(trainer.device, cfg) or matmul_peak(trainer.device)
    return dict(config=name, params=f"{GPTConfig(L, H, C, T, V).n_params() / 1e6:.1f}M", tokens=B * T,
                ms=dt * 1000, tok_s=B * T / dt, mfu=trainer.model.estimate_mfu(B * T, dt, peak) * 100,
                dtype=trainer.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--configs", default="tiny-char,shakespeare-char,gpt2-mini")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    compile_ = {"auto": None, "on": True, "off": False}[args.compile]
    print(f"device: {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| config | params | tokens/iter | dtype | ms/iter | tokens/s | MFU % |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        r = bench(name.strip(), device, args.iters, compile_)
        print(f"| {r['config']} | {r['params']} | {r['tokens']} | {r['dtype']} | {r['ms']:.1f} | "
              f"{r['tok_s']:,.0f} | {r['mfu']:.1f} |")


if __name__ == "__main__":
    main()
