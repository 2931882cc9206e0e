"""nanoGPT's training loop (karpathy/nanoGPT train.py, lines 290-336) around a `gpt.train.Trainer`'s model,
optimizer and scaler: what the dry run steps for `--loop nanogpt`.

The loop differs from `Trainer.step` in what it keeps alive, and that is all that matters to memory:
- `logits, loss = model(X, Y)` holds the logits through backward, clipping and the optimizer step, and into the
  next micro-step's forward (the name is rebound only when that forward returns: two logits tensors live then);
- the next batch is fetched after the forward and before backward (`X, Y = get_batch('train')`), and the first
  batch before the first iteration;
- each micro-step's loss is divided by `gradient_accumulation_steps`, gradients sum in place across micro-steps;
  `grad_clip != 0` unscales and clips (`clip_grad_norm_`), then the scaler steps, updates, and
  `zero_grad(set_to_none=True)`.
Its optimizer (fused AdamW on CUDA, torch's for-loop default on the CPU) and dtype (fp32 on the CPU) are
`gpt.config.nanogpt_recipe`'s, set on the Trainer when it is built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gpt.model import attention_kernel
from gpt.train import Trainer


class NanoGPTLoop:
    """nanoGPT's iteration over `trainer`'s parts; `step(get_batch)` is one optimizer step, as `Trainer.step`."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.X: torch.Tensor | None = None  # the prefetched batch, carried across iterations as train.py does
        self.Y: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None  # kept alive from one forward to the next
        self.loss: torch.Tensor | None = None

    def step(self, get_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One iteration of train.py's `while True` loop (no evaluation, checkpoint or logging); returns the last
        micro-step's loss divided by the micro-steps, the tensor train.py's `lossf` reads."""
        t = self.trainer
        if self.X is None:
            self.X, self.Y = get_batch()  # "fetch the very first batch", before the loop
        for group in t.optimizer.param_groups:
            group["lr"] = t.lr_at(t.iter_num)  # nanoGPT's schedule (`Trainer.lr_at`)
        accum = t.cfg.gradient_accumulation_steps
        t.model.train()
        for _ in range(accum):
            with t.autocast(), attention_kernel(t.cfg.attn_kernel):
                self.logits, self.loss = t.forward(self.X, self.Y)
                self.loss = self.loss / accum
            self.X, self.Y = get_batch()  # prefetch the next batch while the device runs the forward
            t.scaler.scale(self.loss).backward()
        t.optimizer_step()  # nanoGPT's: clip unless grad_clip is 0, step, zero_grad(set_to_none=True)
        return self.loss.detach()
