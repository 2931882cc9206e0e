"""nanochat's GPT (karpathy/nanochat `nanochat/gpt.py`), written for vramfit with the same interface as `gpt.model.GPT`.

Rotary embeddings (cos/sin buffers for 10x the context, no position table), RMSNorm without parameters, QK-norm,
ReLU^2 (or SwiGLU) MLP, no biases, untied embedding and head, grouped-query attention, per-layer sliding windows,
value embeddings with their gates on alternating layers, per-layer residual scalars, smear and backout, vocab padded
to a multiple of 64, logits soft-capped in fp32. Each option is a `GPTConfig` field.

Precision as nanochat's (`set_compute_dtype`): no autocast; master weights stay fp32 and every linear casts its
weight to the activations' dtype; the embedding tables are stored in bf16 when computing in bf16.
Attention goes through SDPA (nanochat's fallback when FlashAttention-3 is absent): `is_causal` for a full window, an
explicit boolean mask for a short one, `enable_gqa` when K/V have fewer heads; it runs on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt.config import ROTARY_BASE, ROTARY_CACHE, SMEAR_CHANNELS, VE_GATE_CHANNELS, GPTConfig
from gpt.errors import ConfigError
from gpt.model import mfu, run_block, sample


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension, without a weight."""
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Linear):
    """A bias-free linear whose fp32 master weight is cast to the input's dtype in forward (nanochat's autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(dtype=x.dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the head dimension of x (B, T, H, D) by the position's angles (nanochat's sign)."""
    d = x.size(3) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], 3)


def window_mask(t_q: int, t_k: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The boolean mask (True = attend) of causal attention with `window` keys before each query (the query's own
    key besides), queries being the last t_q of t_k positions (nanochat `_sdpa_attention`)."""
    row = (t_k - t_q) + torch.arange(t_q, device=device).unsqueeze(1)
    col = torch.arange(t_k, device=device).unsqueeze(0)
    mask = col <= row
    if 0 <= window < t_k:
        mask = mask & ((row - col) <= window)
    return mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention of (B, T, H, D) queries over (B, T, H_kv, D) keys/values within `window`; (B, T, H, D)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.size(1) != k.size(1)
    t_q, t_k = q.size(2), k.size(2)
    if (window < 0 or window >= t_q) and t_q == t_k:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        mask = window_mask(t_q, t_k, window, q.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qk_norm = config.qk_norm
        C, kv = config.n_embd, config.n_kv_head * config.head_dim
        self.c_q = Linear(C, C, bias=False)
        self.c_k = Linear(C, kv, bias=False)
        self.c_v = Linear(C, kv, bias=False)
        self.c_proj = Linear(C, C, bias=False)
        has_ve = layer_idx in config.value_embed_layers()
        self.ve_gate = Linear(VE_GATE_CHANNELS, config.n_kv_head, bias=False) if has_ve else None

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None, cos_sin: tuple[torch.Tensor, torch.Tensor],
                window: int) -> torch.Tensor:
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value residual (ResFormer): gated per K/V head, gate in (0, 3)
            ve = ve.view(B, T, self.n_kv_head, self.head_dim)
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve
        cos, sin = cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.qk_norm:
            q, k = norm(q), norm(k)
            q, k = q * 1.2, k * 1.2  # sharper attention, the scale split between Q and K (nanochat)
        y = attention(q, k, v, window)
        return self.c_proj(y.contiguous().view(B, T, -1))


class MLP(nn.Module):
    """ReLU^2 (two matrices, 4C) or SwiGLU (three matrices, 8C/3: silu(gate) x up, then down)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C, hidden = config.n_embd, config.mlp_hidden()
        self.c_fc = Linear(C, hidden, bias=False)
        self.c_gate = Linear(C, hidden, bias=False) if config.mlp == "swiglu" else None
        self.c_proj = Linear(hidden, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_gate is not None:
            return self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x))
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None, cos_sin: tuple[torch.Tensor, torch.Tensor],
                window: int) -> torch.Tensor:
        x = x + self.attn(norm(x), ve, cos_sin, window)
        return x + self.mlp(norm(x))


class NanoChatGPT(nn.Module):
    """nanochat's GPT; `forward(idx, targets)` returns (logits, loss) like `gpt.model.GPT`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.arch != "nanochat":
            raise ConfigError(f"NanoChatGPT builds arch nanochat, not {config.arch!r}")
        self.config = config
        self.window_sizes = config.window_sizes()
        V, C = config.padded_vocab, config.n_embd
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(V, C),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = Linear(C, V, bias=False)
        if config.resid_scalars:
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        if config.smear:
            self.smear_gate = Linear(SMEAR_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(0.2 * torch.ones(1))
        kv = config.n_kv_head * config.head_dim
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv) for i in config.value_embed_layers()})
        self.compute_dtype = torch.float32
        self.checkpoint_every = 0  # activation checkpointing, set by the trainer (`gpt.model.run_block`)
        cos, sin = self._rotary(config.block_size * ROTARY_CACHE, torch.float32)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    def _rotary(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.transformer.wte.weight.device
        d = self.config.head_dim
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
        return freqs.cos().to(dtype)[None, :, None, :], freqs.sin().to(dtype)[None, :, None, :]

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's `init_weights`: embedding N(0, 0.8), head N(0, 0.001), block matrices uniform with the std of
        1/sqrt(C) (c_fc 0.4x), output projections zero, scalars on their per-layer ramps, gates U(0, 0.02)."""
        C, L = self.config.n_embd, self.config.n_layer
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=0.8)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        s = 3**0.5 * C**-0.5
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)
            for lin in (block.mlp.c_fc, block.mlp.c_gate):
                if lin is not None:
                    nn.init.uniform_(lin.weight, -s * 0.4, s * 0.4)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)
        if self.config.resid_scalars:
            ramp = torch.arange(L, dtype=torch.float32) / max(L - 1, 1)
            self.resid_lambdas.copy_(1.15 - 0.10 * ramp)
            self.x0_lambdas.copy_(0.20 - 0.15 * ramp)
        if self.config.smear:
            nn.init.zeros_(self.smear_lambda)
            nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
        if self.config.backout:
            nn.init.constant_(self.backout_lambda, 0.2)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Compute in `dtype` (nanochat's COMPUTE_DTYPE): rotary tables in it, embedding tables too unless fp16
        (GradScaler cannot unscale fp16 gradients, so nanochat keeps them fp32 then)."""
        self.compute_dtype = dtype
        self.cos, self.sin = self.cos.to(dtype), self.sin.to(dtype)
        if dtype == torch.float16:
            return
        for table in (self.transformer.wte, *self.value_embeds.values()):
            if table.weight.dtype != dtype:  # a new Parameter, not module.to(): that cannot swap fake tensors
                table.weight = nn.Parameter(table.weight.detach().to(dtype))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by optimizer group (`gpt.config.PARAM_GROUPS`), as nanochat's `setup_optimizer` splits
        them; `scalars` holds the per-layer lambdas first, then smear and backout."""
        scalars = [self.resid_lambdas, self.x0_lambdas] if self.config.resid_scalars else []
        scalars += [self.smear_gate.weight, self.smear_lambda] if self.config.smear else []
        scalars += [self.backout_lambda] if self.config.backout else []
        return {"embedding": list(self.transformer.wte.parameters()),
                "value_embeds": list(self.value_embeds.parameters()),
                "matrices": list(self.transformer.h.parameters()),
                "head": list(self.lm_head.parameters()), "scalars": scalars}

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Counted from the tensors; equals `config.n_params` (non_embedding: without the lookup tables)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in (*self.transformer.wte.parameters(), *self.value_embeds.parameters()))
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.size(1)
        if T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = self.embed(idx)
        x_backout = None
        for i in range(self.config.n_layer):
            x = self.layer(i, x, x0, idx, *cos_sin)
            if self.config.backout and i == self.config.n_layer // 2:
                x_backout = x
        return self.head(x, targets, x_backout)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The token embedding in the compute dtype, normed, with the previous token smeared in: the first block's
        input and every block's x0."""
        x = norm(self.transformer.wte(idx).to(self.compute_dtype))
        if self.config.smear:  # mix the previous token's embedding in (cheap bigram information)
            gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[:, 1:, :SMEAR_CHANNELS]))
            x = torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)
        return x

    def layer(self, i: int, x: torch.Tensor, x0: torch.Tensor, idx: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor) -> torch.Tensor:
        """Layer `i`: the residual scalars' mix of x and x0, its value embedding of `idx` (where it has one), its
        block over its window (checkpointed where the trainer says)."""
        if self.config.resid_scalars:
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
        key = str(i)
        ve = self.value_embeds[key](idx).to(x.dtype) if key in self.value_embeds else None
        return run_block(self.transformer.h[i], i, self.checkpoint_every, x, ve, (cos, sin), self.window_sizes[i])

    def head(self, x: torch.Tensor, targets: torch.Tensor | None = None, x_backout: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Backout, the final norm, the logits (soft-capped, in fp32) and with targets the cross-entropy loss."""
        if x_backout is not None:
            x = x - self.backout_lambda.to(x.dtype) * x_backout
        x = norm(x)
        if targets is None:  # inference: only the last position's logits
            x = x[:, [-1], :]
        logits = self.lm_head(x)[..., :self.config.vocab_size].float()
        if self.config.softcap:
            cap = self.config.softcap
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def estimate_mfu(self, tokens_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over `peak_flops`."""
        return mfu(self.config, tokens_per_iter, dt, peak_flops)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, vocab_size: int | None = None) -> torch.Tensor:
        """Sample `max_new_tokens` tokens after the prompt `idx` (B, T), as `gpt.model.GPT.generate`."""
        return sample(self, idx, max_new_tokens, temperature, top_k, generator, vocab_size)
