"""nanochat's training loop (karpathy/nanochat `scripts/base_train.py`, lines 331-333 and 510-540 at 92d63d4) around
a `gpt.train.Trainer`'s model, optimizer and scaler: what the dry run steps for `--loop nanochat`.

The loop differs from `Trainer.step` in what it keeps alive and what its compiled graph returns:
- `loss = model(x, y)`: nanochat's GPT returns the loss alone when given targets (`nanochat/gpt.py` L518-522), so
  the compiled graph has no logits output (`LossOnly`; `torch.compile(model, dynamic=False)`, base_train L246);
- its data loader (`nanochat/dataloader.py` L112-161) allocates its buffers once and yields views of them: a
  row buffer (B x (T+1) tokens) and a staging buffer (2 x B x T) on the host, and one device buffer (2 x B x T)
  holding x and y, overwritten in place by each batch; the first batch is fetched before the loop, the next one
  after each micro-step's backward;
- each micro-step's loss is divided by the micro-steps (`grad_accum_steps`), gradients sum in place across them;
  no gradient clipping; the GradScaler (fp16 only) unscales before the step; then
  `model.zero_grad(set_to_none=True)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gpt.model import attention_kernel
from gpt.train import Trainer


class LossOnly(nn.Module):
    """`model(x, y)` returning the loss alone, as nanochat's GPT does given targets (the logits are no output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model(idx, targets)[1]


class Loader:
    """nanochat's data loader's buffers, filled from `get_batch`'s (x, y): `host` buffers (row and staging) where
    host memory is what is measured (training on the CPU), the device buffer always."""

    def __init__(self, get_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], batch: int, block: int,
                 device: str, host: bool = True) -> None:
        self.get_batch, self.B, self.T, self.device, self.host = get_batch, batch, block, device, host
        self.row: torch.Tensor | None = None
        self.staging: torch.Tensor | None = None
        self.device_buffer: torch.Tensor | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch written over the buffers (made by the first call); (inputs, targets): views of the
        device buffer."""
        B, T = self.B, self.T
        x, y = self.get_batch()
        if self.device_buffer is None:
            if self.host:
                self.row = torch.empty((B, T + 1), dtype=torch.long)
                self.staging = torch.empty(2 * B * T, dtype=torch.long)
            self.device_buffer = torch.empty(2 * B * T, dtype=torch.long, device=self.device)
        if self.row is not None:
            self.row[:, :-1].copy_(x)
            self.row[:, -1:].copy_(y[:, -1:])
            self.staging[: B * T].view(B, T).copy_(self.row[:, :-1])
            self.staging[B * T:].view(B, T).copy_(self.row[:, 1:])
            self.device_buffer.copy_(self.staging)
        else:
            self.device_buffer[: B * T].view(B, T).copy_(x)
            self.device_buffer[B * T:].view(B, T).copy_(y)
        del x, y
        return self.device_buffer[: B * T].view(B, T), self.device_buffer[B * T:].view(B, T)


class NanoChatLoop:
    """base_train's iteration over `trainer`'s parts; `step(get_batch)` is one optimizer step, as `Trainer.step`.
    `forward(x, y) -> loss` defaults to `LossOnly(model)`, compiled where the trainer compiles; `host`: count the
    loader's host buffers (the CPU is the device)."""

    def __init__(self, trainer: Trainer, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 host: bool = True) -> None:
        self.trainer = trainer
        if forward is None:
            forward = LossOnly(trainer.model)
            forward = torch.compile(forward, dynamic=False) if trainer.compile else forward
        self.forward = forward
        self.host = host
        self.loader: Loader | None = None
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None  # the last micro-step's loss, alive until the next is computed
        self.train_loss: torch.Tensor | None = None

    def step(self, get_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One iteration of base_train's `while True` loop (no evaluation, sampling, checkpoint or logging); returns
        the last micro-step's loss (detached), as its `train_loss`."""
        t = self.trainer
        if self.loader is None:  # the loader is made, and the first batch fetched, before the loop
            self.loader = Loader(get_batch, t.cfg.batch_size, t.cfg.block_size, t.device, self.host)
            self.x, self.y = self.loader.next()
        accum = t.cfg.gradient_accumulation_steps
        t.model.train()
        for _ in range(accum):
            with t.autocast(), attention_kernel(t.cfg.attn_kernel):
                self.loss = self.forward(self.x, self.y)
            self.train_loss = self.loss.detach()
            self.loss = self.loss / accum
            t.scaler.scale(self.loss).backward()
            self.x, self.y = self.loader.next()  # prefetch the next batch (in place)
        lr = t.lr_at(t.iter_num)
        for group in t.optimizer.param_groups:  # Muon's groups: their own lrs, scaled by the schedule
            group["lr"] = group["initial_lr"] * lr / t.cfg.learning_rate if "initial_lr" in group else lr
        if t.scaler.is_enabled():
            t.scaler.unscale_(t.optimizer)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.model.zero_grad(set_to_none=True)
        t.iter_num += 1
        return self.train_loss
