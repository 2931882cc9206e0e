"""nanochat's MuonAdamW (karpathy/nanochat `nanochat/optim.py`), single process: Muon for the blocks' matrices,
AdamW for embeddings, head and scalars, in one optimizer.

Muon keeps, per group of same-shape matrices (stacked), one momentum buffer like the stack and a factored second
moment (one value per row of a tall matrix, per column of a wide one); each step it stacks the gradients and the
weights (two temporaries of the stack's size), applies Nesterov momentum, orthogonalises the update with five
Polar Express iterations (a Newton-Schulz quintic with per-step coefficients), renormalises it, scales it per
row/column by the second moment (NorMuon) and applies it with cautious weight decay. As nanochat's step, it
stacks every group's gradients first and copies the updated stacks back last (`MuonAdamW.step`). AdamW does its
arithmetic in fp32 and writes back (bf16 embeddings keep bf16 state). Both steps run compiled when the recipe
compiles (nanochat always compiles them), eagerly otherwise.

Not built here: on N ranks nanochat's optimizer replaces DDP, reduce-scattering the gradients and sharding both
optimizers' states across the ranks (ZeRO-2 style), then all-gathering the updated weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Polar Express coefficients for 5 iterations (Amsel et al. 2025, arXiv:2505.16932), as nanochat uses them
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def orthogonalize(g: Tensor, steps: int = 5, low_precision: bool = False) -> Tensor:
    """The nearest (semi-)orthogonal matrix of each matrix in `g` (..., rows, cols), approximately: rows first
    equilibrated to the mean row norm (MuonEq), the whole scaled below spectral norm 1, then `steps` Polar Express
    iterations X <- aX + (bA + cA^2)X with A = XX^T (X^T X for a tall matrix). bf16 with `low_precision`."""
    X = g.bfloat16() if low_precision else g
    target = X.float().norm(dim=(-2, -1), keepdim=True) / (X.size(-2) ** 0.5)
    row_norm = X.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
    X = X * (target / row_norm).to(X.dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    tall = g.size(-2) > g.size(-1)
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = X.mT @ X if tall else X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + (X @ B if tall else B @ X)
    return X


def muon_update(grads: Tensor, params: Tensor, momentum_buffer: Tensor, second_moment: Tensor, momentum_t: Tensor,
                lr_t: Tensor, wd_t: Tensor, beta2_t: Tensor, ns_steps: int, low_precision: bool) -> None:
    """One Muon step of a stack of same-shape matrices, in place on `params` (nanochat `muon_step_fused`; the
    hyperparameters are 0-D tensors so that a compiled step is not recompiled when they change); `grads` is
    overwritten."""
    momentum = momentum_t.to(grads.dtype)
    momentum_buffer.lerp_(grads, 1 - momentum)
    g = grads.lerp_(momentum_buffer, momentum)  # Nesterov
    g = orthogonalize(g, ns_steps, low_precision).to(params.dtype)
    target_norm = min(g.size(-2), g.size(-1)) ** 0.5  # Muon+: the Frobenius norm of a semi-orthogonal matrix
    g = g * (target_norm / g.float().norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6)).to(g.dtype)
    red_dim = -1 if g.size(-2) >= g.size(-1) else -2  # NorMuon: per-row (tall) or per-column (wide) scale
    beta2 = beta2_t.to(g.dtype)
    v_mean = g.float().square().mean(dim=red_dim, keepdim=True)
    red_size = g.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * red_size).sqrt()
    second_moment.lerp_(v_mean.to(second_moment.dtype), 1 - beta2)
    step_size = second_moment.clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * red_size) * step_size.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * (step_size * (v_norm / v_norm_new.clamp_min(1e-10))).to(g.dtype)
    lr, wd = lr_t.to(g.dtype), wd_t.to(g.dtype)
    mask = (g * params) >= 0  # cautious weight decay: only where the update and the weight agree in sign
    params.sub_(lr * g + lr * wd * params * mask)


def adamw_update(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step_t: Tensor, lr_t: Tensor,
                 beta1_t: Tensor, beta2_t: Tensor, eps_t: Tensor, wd_t: Tensor) -> None:
    """One AdamW step in fp32, written back to tensors of any dtype (nanochat `adamw_step_fused`)."""
    p32, m32, v32, g32 = p.float(), exp_avg.float(), exp_avg_sq.float(), grad.float()
    p32.mul_(1 - lr_t * wd_t)
    m32.lerp_(g32, 1 - beta1_t)
    v32.lerp_(g32.square(), 1 - beta2_t)
    denom = (v32 / (1 - beta2_t**step_t)).sqrt() + eps_t
    p32.add_(m32 / denom, alpha=-(lr_t / (1 - beta1_t**step_t)))
    p.copy_(p32)
    exp_avg.copy_(m32)
    exp_avg_sq.copy_(v32)


class MuonAdamW(torch.optim.Optimizer):
    """Param groups of `kind` 'adamw' (lr, betas, eps, weight_decay) or 'muon' (lr, momentum, ns_steps, beta2,
    weight_decay; all its matrices of one shape). `low_precision`: Muon orthogonalises in bf16 (nanochat does
    when it computes in bf16). `compiled`: both steps through torch.compile (fullgraph, static shapes), as nanochat
    always runs them; eager otherwise."""

    def __init__(self, param_groups: list[dict], low_precision: bool = False, compiled: bool = False) -> None:
        super().__init__(param_groups, defaults={})
        self.low_precision = low_precision
        for group in self.param_groups:
            if group["kind"] == "muon" and len({p.shape for p in group["params"]}) != 1:
                raise ValueError("a Muon group must hold matrices of one shape")
        wrap = (lambda f: torch.compile(f, dynamic=False, fullgraph=True)) if compiled else (lambda f: f)
        self._adamw_step, self._muon_step = wrap(adamw_update), wrap(muon_update)
        # 0-D CPU tensors for the hyperparameters: a compiled step is not recompiled when their values change
        self._t = {k: torch.tensor(0.0) for k in ("step", "lr", "beta1", "beta2", "eps", "wd", "momentum")}

    def _fill(self, **values: float) -> list[Tensor]:
        for k, v in values.items():
            self._t[k].fill_(v)
        return [self._t[k] for k in values]

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        """nanochat's three phases, on one rank: every Muon group's gradients stacked first (its reduce phase),
        then each group updated in order (AdamW in place; Muon on a stack of its weights), then the stacks copied
        back into the weights; so all stacks live until the end of the step, as in nanochat."""
        grads = {i: torch.stack([p.grad for p in g["params"]]) for i, g in enumerate(self.param_groups)
                 if g["kind"] == "muon" and all(p.grad is not None for p in g["params"])}
        gathers = []
        for i, group in enumerate(self.param_groups):
            if group["kind"] == "adamw":
                self._adamw(group)
            elif group["kind"] == "muon":
                if i in grads:
                    gathers.append((group["params"], self._muon(group, grads[i])))
            else:
                raise ValueError(f"unknown optimizer kind {group['kind']!r}")
        for params, stacked in gathers:
            torch._foreach_copy_(params, list(stacked.unbind(0)))

    def _adamw(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            beta1, beta2 = group["betas"]
            scalars = self._fill(step=state["step"], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                 wd=group["weight_decay"])
            self._adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], *scalars)

    def _muon(self, group: dict, grads: Tensor) -> Tensor:
        """The group's update on a stack of its weights (`grads`: its stacked gradients); the updated stack."""
        params = group["params"]
        shape = params[0].shape
        state = self.state[params[0]]  # the group's state lives with its first matrix (nanochat's layout)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros(len(params), *shape, dtype=params[0].dtype,
                                                   device=params[0].device)
            factored = (len(params), shape[-2], 1) if shape[-2] >= shape[-1] else (len(params), 1, shape[-1])
            state["second_momentum_buffer"] = torch.zeros(factored, dtype=params[0].dtype, device=params[0].device)
        stacked = torch.stack(params)
        lr = group["lr"] * max(1.0, shape[-2] / shape[-1]) ** 0.5
        scalars = self._fill(momentum=group["momentum"], lr=lr, wd=group["weight_decay"], beta2=group["beta2"])
        self._muon_step(grads, stacked, state["momentum_buffer"], state["second_momentum_buffer"], *scalars,
                        group["ns_steps"], self.low_precision)
        return stacked
