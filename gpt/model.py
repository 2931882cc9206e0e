"""GPT-2 style language model (nanoGPT-compatible state-dict keys).

The attention kernel is chosen by the caller with :func:`attention_kernel`, a context manager around the
forward pass, because the kernel (flash / memory-efficient / math) changes training memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt.config import ATTN_KERNELS, GPTConfig
from gpt.errors import ConfigError


@contextlib.contextmanager
def attention_kernel(name: str) -> Iterator[None]:
    """Restrict scaled_dot_product_attention to one kernel ('default' leaves PyTorch's choice)."""
    if name not in ATTN_KERNELS:
        raise ConfigError(f"unknown attention kernel {name!r}; choose one of {', '.join(ATTN_KERNELS)}")
    if name == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    with sdpa_kernel(backend):
        yield


def run_block(block: nn.Module, i: int, every: int, *args: object) -> torch.Tensor:
    """Block `i` of a model checkpointed every `every` blocks (0: none): a checkpointed block keeps only its inputs
    and recomputes its forward in backward (torch's non-reentrant `torch.utils.checkpoint`, which replays the RNG
    state, so dropout masks are the same); without grad there is nothing to save and it runs plainly."""
    if every and i % every == 0 and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token + position embeddings, pre-LN blocks, final LN, lm_head tied to wte."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.checkpoint_every = 0  # activation checkpointing, set by the trainer (`run_block`)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled residual projections (GPT-2 paper)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Counted from the tensors (tied weights once); equals `config.n_params`."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.embed(idx)
        for i, block in enumerate(self.transformer.h):
            x = run_block(block, i, self.checkpoint_every, x)
        return self.head(x, targets)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings (and dropout): the input of the first block."""
        _, t = idx.size()
        if t > self.config.block_size:
            raise ConfigError(f"sequence length {t} exceeds block_size {self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))

    def head(self, x: torch.Tensor, targets: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final layer norm, logits and (with targets) the cross-entropy loss."""
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:  # inference: only the last position's logits
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss

    def estimate_mfu(self, tokens_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over `peak_flops`."""
        return mfu(self.config, tokens_per_iter, dt, peak_flops)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        vocab_size: int | None = None,
    ) -> torch.Tensor:
        """Sample `max_new_tokens` tokens after the prompt `idx` (B, T); with `vocab_size` (the tokenizer's), only
        ids below it: a vocabulary padded past the corpus's (nanoGPT's 50304 for GPT-2's 50257, a `--vocab-size`
        above a char corpus's) has rows no tokenizer can decode."""
        return sample(self, idx, max_new_tokens, temperature, top_k, generator, vocab_size)


def mfu(config: GPTConfig, tokens_per_iter: int, dt: float, peak_flops: float) -> float:
    """Model FLOPs utilisation of either family: achieved training FLOP/s over `peak_flops` (0 without a time or
    a peak)."""
    if dt <= 0 or peak_flops <= 0:
        return 0.0
    return config.flops_per_token() * tokens_per_iter / dt / peak_flops


@torch.no_grad()
def sample(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None,
           vocab_size: int | None = None) -> torch.Tensor:
    """Sample from either family: the context cropped to block_size, the last position's logits / temperature
    (ids from `vocab_size` on excluded), top-k, multinomial."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
        logits, _ = model(idx_cond)
        logits = logits[:, -1, :].float() / temperature
        if vocab_size is not None:
            logits[:, vocab_size:] = -float("inf")
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        probs = F.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def build_model(config: GPTConfig) -> nn.Module:
    """The model of `config.arch`: nanoGPT's GPT-2 (`GPT`) or nanochat's (`gpt.nanochat.NanoChatGPT`)."""
    if config.arch == "nanochat":
        from gpt.nanochat import NanoChatGPT  # imports this module: a top-level import would be a cycle

        return NanoChatGPT(config)
    return GPT(config)


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters of either family by optimizer group (`gpt.config.PARAM_GROUPS`): GPT-2's tied embedding and
    position table are `embedding`, its blocks' 2-D weights `matrices`, its norms and biases `scalars`."""
    if hasattr(model, "param_groups"):
        return model.param_groups()
    blocks = {id(p) for p in model.transformer.h.parameters() if p.dim() == 2}
    embedding = [model.transformer.wte.weight, model.transformer.wpe.weight]
    taken = blocks | {id(p) for p in embedding}
    return {"embedding": embedding, "value_embeds": [],
            "matrices": [p for p in model.transformer.h.parameters() if id(p) in blocks], "head": [],
            "scalars": [p for p in model.parameters() if id(p) not in taken]}


def clean_state_dict(state_dict: dict) -> dict:
    """Strip torch.compile's `_orig_mod.` prefix and old nanoGPT's causal-mask buffers (`.attn.bias`)."""
    prefix = "_orig_mod."
    out = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
    return {k: v for k, v in out.items() if not k.endswith(".attn.bias")}
