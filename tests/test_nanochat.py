"""nanochat's family (`gpt.nanochat`), its optimizer (`gpt.muon`) and the torch-free counts in `gpt.config`.

The reference is karpathy/nanochat at 92d63d4 (2026-07-03): `nanochat/gpt.py`, `nanochat/optim.py`,
`scripts/base_train.py`. The GPT-2 family is checked unchanged against numbers written by the code before it.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.config import PARAM_GROUPS, GPTConfig, TrainConfig, make_config, nanochat_config, resolve_recipe
from gpt.errors import CheckpointError, ConfigError
from gpt.model import GPT, build_model, param_groups
from gpt.muon import MuonAdamW, orthogonalize
from gpt.nanochat import attention, window_mask
from gpt.sample import Sampler
from gpt.train import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
# tiny nanochat shapes: n_embd >= 24 (the smear gate reads 24 channels), an even head dimension
TINY = dict(n_layer=4, n_head=4, n_embd=32, block_size=32, vocab_size=65, arch="nanochat")
TINY_RUN = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, arch="nanochat", device="cpu",
                eval_iters=2, log_interval=1, warmup_iters=0, decay_lr=False)


def quiet(_msg: str) -> None:
    pass


def nanochat_formula(depth: int, vocab: int = 32768, aspect: int = 64, head_dim: int = 128) -> int:
    """nanochat's parameter count, from the shapes its code builds:
    base_train.py `build_model_meta`: model_dim = ceil(depth * aspect_ratio / head_dim) * head_dim,
        num_heads = model_dim // head_dim, n_kv_head = num_heads;
    gpt.py `GPT.__init__`: padded_vocab = ceil(vocab / 64) * 64; wte and lm_head (padded_vocab, n_embd);
        resid_lambdas, x0_lambdas (n_layer); smear_gate Linear(24, 1), smear_lambda (1), backout_lambda (1);
        value_embeds (padded_vocab, n_kv_head * head_dim) on the layers with `has_ve` (i % 2 == (n_layer-1) % 2);
    `CausalSelfAttention`: c_q (C, C), c_k and c_v (n_kv_head*head_dim, C), c_proj (C, C), ve_gate (n_kv_head, 12)
        on value-embedding layers; `MLP`: c_fc (4C, C), c_proj (C, 4C)."""
    C = -(-depth * aspect // head_dim) * head_dim
    H = C // head_dim
    kv = H * head_dim
    V = -(-vocab // 64) * 64
    n_ve = sum(1 for i in range(depth) if i % 2 == (depth - 1) % 2)
    per_layer = C * C + 2 * C * kv + C * C + 2 * 4 * C * C
    return 2 * V * C + depth * per_layer + n_ve * (V * kv + H * 12) + 2 * depth + 24 + 1 + 1


@pytest.mark.parametrize("depth", range(4, 33))
def test_parameter_count_equals_nanochats_formula(depth):
    cfg = nanochat_config(depth)
    with torch.device("meta"):  # nanochat builds its models on the meta device too: shapes only
        model = build_model(cfg)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == nanochat_formula(depth) == cfg.n_params()
    groups = {g: sum(p.numel() for p in ps) for g, ps in param_groups(model).items()}
    assert groups == cfg.param_counts()  # the torch-free groups are the model's
    assert cfg.n_embd == -(-depth * 64 // 128) * 128 and cfg.head_dim == 128
    # nanochat's estimate_flops: 6 x every Linear's weight + 12 h q min(window, T) per layer
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attn = sum(12 * cfg.n_head * 128 * min(w, 2048) for w in cfg.window_sizes())
    assert cfg.flops_per_token() == 6 * linear + attn


def test_scaling_params_match_nanochats_log():
    """dev/LOG.md (2026-01, "Auto Batch" table) lists nanochat's scaling parameters (transformer matrices + lm_head)
    by depth: d8 42M, d10-16 70M-235M, d18-26 324M-918M, d32 1.7B."""
    def scaling(depth: int) -> float:
        counts = nanochat_config(depth).param_counts()
        return (counts["matrices"] + counts["head"]) / 1e6

    assert round(scaling(8)) == 42 and round(scaling(10)) == 70 and round(scaling(16)) == 235
    assert round(scaling(18)) == 324 and round(scaling(26)) == 918 and round(scaling(32) / 1e3, 1) == 1.7


OPTION_SETS = [
    {},
    {"n_kv_head": 2, "window_pattern": "SL"},
    {"n_kv_head": 1, "mlp": "swiglu", "value_embeds": False},
    {"smear": False, "backout": False, "resid_scalars": False, "qk_norm": False, "softcap": 0.0},
    {"vocab_multiple": 1, "window_pattern": "L", "n_layer": 3},
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_free_counts_and_state_bytes_match_the_real_model(options, dtype):
    cfg = GPTConfig(**{**TINY, **options})
    tc = TrainConfig(**{**TINY, **options, "device": "cpu", "dtype": dtype, "optimizer": "muon",
                        "warmup_iters": 0, "grad_clip": 0.0})
    trainer = Trainer(tc, cfg, device="cpu")
    groups = param_groups(trainer.model)
    assert {g: sum(p.numel() for p in ps) for g, ps in groups.items()} == cfg.param_counts()
    assert sum(cfg.param_counts().values()) == trainer.model.get_num_params(non_embedding=False) == cfg.n_params()
    widths = {g: {p.element_size() for p in ps} for g, ps in groups.items() if ps}
    assert widths == {g: {cfg.param_bytes(dtype)[g]} for g in widths}
    x = torch.randint(65, (2, 32))
    trainer.step(lambda: (x, x))
    state = {g: 0 for g in PARAM_GROUPS}
    owner = {id(p): g for g, ps in groups.items() for p in ps}
    for p, s in trainer.optimizer.state.items():
        state[owner[id(p)]] += sum(t.numel() * t.element_size() for t in s.values() if torch.is_tensor(t))
    assert state == cfg.optimizer_state_bytes("muon", dtype)
    stacks = [(tuple(g["params"][0].shape), len(g["params"])) for g in trainer.optimizer.param_groups
              if g["kind"] == "muon"]
    assert stacks == list(cfg.muon_stacks().items())


def test_muon_keeps_one_state_where_adamw_keeps_two():
    cfg = GPTConfig(**TINY)
    muon, adamw = cfg.optimizer_state_bytes("muon"), cfg.optimizer_state_bytes("fused")
    matrices = cfg.param_counts()["matrices"]
    assert adamw["matrices"] == 8 * matrices  # exp_avg + exp_avg_sq, fp32
    extra = sum(max(r, c) for r, c in cfg.block_matrices())  # the factored second moment
    assert muon["matrices"] == 4 * (matrices + extra) < 0.6 * adamw["matrices"]
    assert {g: muon[g] for g in PARAM_GROUPS if g != "matrices"} == {g: adamw[g] for g in PARAM_GROUPS
                                                                      if g != "matrices"}
    bf16 = cfg.optimizer_state_bytes("muon", "bfloat16")  # bf16 embedding tables: bf16 Adam state
    assert bf16["embedding"] * 2 == muon["embedding"] and bf16["matrices"] == muon["matrices"]
    # and the real AdamW's state (fused) is what the count says
    tc = TrainConfig(**{**TINY, "device": "cpu", "optimizer": "foreach", "warmup_iters": 0})
    trainer = Trainer(tc, cfg, device="cpu")
    x = torch.randint(65, (2, 32))
    trainer.step(lambda: (x, x))
    big = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values() for k, t in s.items()
              if k != "step")
    assert big == sum(adamw.values())


def test_gpt2_groups_and_counts():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    model = GPT(cfg)
    groups = {g: sum(p.numel() for p in ps) for g, ps in param_groups(model).items()}
    assert groups == cfg.param_counts() and sum(groups.values()) == cfg.n_params()
    assert cfg.optimizer_state_bytes("fused") == {g: 8 * n for g, n in groups.items()}
    # Muon on GPT-2: its blocks' 2-D weights (4 shapes); the tied embedding and position table, and the 18 norm
    # weights and biases, stay AdamW
    tc = make_config(dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, device="cpu",
                          optimizer="muon", warmup_iters=0))
    trainer = Trainer(tc, cfg, device="cpu")
    x = torch.randint(50, (2, 16))
    first = trainer.step(lambda: (x, x)).item()
    state = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    assert state == sum(cfg.optimizer_state_bytes("muon").values())
    kinds = sorted((g["kind"], len(g["params"])) for g in trainer.optimizer.param_groups)
    assert kinds == [("adamw", 2), ("adamw", 18), ("muon", 2), ("muon", 2), ("muon", 2), ("muon", 2)]
    for _ in range(5):
        last = trainer.step(lambda: (x, x)).item()
    assert last < first


def test_gpt2_family_is_unchanged():
    """State-dict keys/shapes, the seeded weights and a forward pass, as the code before the nanochat family gave."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    assert cfg.arch == "gpt2" and cfg.bias is True and cfg.window_pattern == "L" and cfg.n_kv_head == 2
    torch.manual_seed(1234)
    model = build_model(cfg)
    assert type(model) is GPT
    keys = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert len(keys) == 29 and keys[:3] == [("transformer.wte.weight", (50, 32)), ("transformer.wpe.weight", (16, 32)),
                                            ("transformer.h.0.ln_1.weight", (32,))]
    assert hashlib.sha256(str(keys).encode()).hexdigest().startswith("09c2c35d25677628838bd0f3df8a08f7")
    weights = b"".join(v.numpy().tobytes() for v in model.state_dict().values())
    assert hashlib.sha256(weights).hexdigest().startswith("bd22ae98d5cf8ccbfa3fe86dc3e9b33e")
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(5))
    logits, loss = model(idx, idx)
    assert loss.item() == pytest.approx(3.5216116905212402, rel=1e-6)
    assert logits[0, 3, :2].tolist() == pytest.approx([0.16503088176250458, 0.0008452958427369595], abs=1e-6)
    assert resolve_recipe("auto", None, "auto", "cpu") == ("float32", False, "fused")
    assert resolve_recipe("auto", None, "auto", "cpu", arch="nanochat") == ("float32", False, "muon")


def test_shapes_gqa_windows_value_embeddings():
    cfg = GPTConfig(**{**TINY, "n_kv_head": 2, "block_size": 1024})
    model = build_model(cfg)
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    D = 8
    assert sd["transformer.wte.weight"] == sd["lm_head.weight"] == (128, 32)  # 65 padded to 128, untied
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert sd["transformer.h.0.attn.c_q.weight"] == (32, 32)
    assert sd["transformer.h.0.attn.c_k.weight"] == sd["transformer.h.0.attn.c_v.weight"] == (2 * D, 32)
    assert sorted(k for k in sd if k.startswith("value_embeds")) == ["value_embeds.1.weight", "value_embeds.3.weight"]
    assert sd["value_embeds.1.weight"] == (128, 2 * D)
    assert sd["transformer.h.1.attn.ve_gate.weight"] == (2, 12) and "transformer.h.0.attn.ve_gate.weight" not in sd
    assert sd["resid_lambdas"] == sd["x0_lambdas"] == (4,)
    assert not any("bias" in k or "wpe" in k or "ln" in k for k in sd)  # no biases, no position table, no norms
    assert model.cos.shape == (1, 10 * 1024, 1, D // 2)  # rotary tables for 10x the context, not in the state
    assert cfg.window_sizes() == [256, 256, 256, 1024]  # SSSL: a quarter of 1024, the last layer full
    assert GPTConfig(**{**TINY, "n_layer": 5, "block_size": 2048}).window_sizes() == [512, 512, 512, 2048, 2048]
    assert GPTConfig(**{**TINY, "block_size": 100}).window_sizes() == [128, 128, 128, 100]  # rounded up to 128
    logits, loss = model(torch.randint(65, (2, 20)), torch.randint(65, (2, 20)))
    assert logits.shape == (2, 20, 65) and logits.abs().max() <= 15  # cropped to the vocab, soft-capped
    assert abs(loss.item() - math.log(65)) < 0.2  # head ~N(0, 0.001): uniform at first
    assert model(torch.randint(65, (1, 5)))[0].shape == (1, 1, 65)


def brute_force_attention(q, k, v, window):
    """Causal softmax attention, one query at a time, over the keys at most `window` positions back."""
    B, T, H, D = q.shape
    group = H // k.size(2)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                keys = [s for s in range(T) if s <= t and (window < 0 or t - s <= window)]
                scores = torch.stack([q[b, t, h] @ k[b, s, h // group] for s in keys]) / math.sqrt(D)
                w = torch.softmax(scores, 0)
                out[b, t, h] = sum(wi * v[b, s, h // group] for wi, s in zip(w, keys, strict=True))
    return out


@pytest.mark.parametrize("window", [3, 0, 16, -1])
def test_sliding_window_attention_equals_brute_force(window):
    g = torch.Generator().manual_seed(window + 7)
    q = torch.randn(2, 12, 4, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 12, 2, 8, generator=g, dtype=torch.float64) for _ in range(2))  # GQA: 2 K/V heads
    torch.testing.assert_close(attention(q, k, v, window), brute_force_attention(q, k, v, window))
    mask = window_mask(12, 12, window)
    expected = torch.tensor([[s <= t and (window < 0 or t - s <= window) for s in range(12)] for t in range(12)])
    assert torch.equal(mask, expected)


def test_short_windows_reach_the_model():
    """At a context beyond 4 x 128 the short layers attend to fewer keys: a change far back reaches the output
    only through the full layer."""
    cfg = GPTConfig(**{**TINY, "n_layer": 1, "block_size": 512, "window_pattern": "S"})
    assert cfg.window_sizes() == [512]  # the last layer is always full ...
    cfg = GPTConfig(**{**TINY, "n_layer": 2, "block_size": 512, "window_pattern": "S", "value_embeds": False})
    assert cfg.window_sizes() == [128, 512]
    torch.manual_seed(0)
    model = build_model(cfg)
    for block in model.transformer.h:  # nanochat zero-inits the output projections: make the blocks matter
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
    seen = []
    model.transformer.h[0].attn.register_forward_hook(lambda _m, _i, out: seen.append(out))
    idx = torch.randint(65, (1, 400))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 65
    model(idx, idx), model(changed, changed)
    first, second = seen
    assert torch.equal(first[0, 300], second[0, 300])  # 290 tokens back: beyond layer 0's window of 128
    assert not torch.equal(first[0, 100], second[0, 100])  # 90 tokens back: inside it


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (3, 16, 80)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_newton_schulz_orthogonalises(shape, scale):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))) * scale
    before = torch.linalg.svdvals(g)
    s = torch.linalg.svdvals(orthogonalize(g))
    assert (before.amax(-1) / before.amin(-1)).max() > 2  # a spread spectrum goes in ...
    # ... and comes out near 1 (Polar Express, 5 steps: nanochat's "S' ~ Uniform(0.5, 1.5)", tighter in practice)
    assert s.min() > 0.7 and s.max() < 1.2, (s.min(), s.max())
    low = torch.linalg.svdvals(orthogonalize(g, low_precision=True).float())
    assert low.min() > 0.7 and low.max() < 1.2


def test_muon_state_layout_and_update():
    p = [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(4, 8))]
    scalar = torch.nn.Parameter(torch.zeros(5))
    opt = MuonAdamW([dict(kind="muon", params=p[:3], lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.0),
                     dict(kind="muon", params=p[3:], lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.0),
                     dict(kind="adamw", params=[scalar], lr=0.1, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)])
    before = [t.detach().clone() for t in p]
    for t in (*p, scalar):
        t.grad = torch.randn_like(t)
    opt.step()
    tall, wide = opt.state[p[0]], opt.state[p[3]]
    assert tall["momentum_buffer"].shape == (3, 8, 4) and tall["second_momentum_buffer"].shape == (3, 8, 1)
    assert wide["momentum_buffer"].shape == (1, 4, 8) and wide["second_momentum_buffer"].shape == (1, 1, 8)
    assert p[1] not in opt.state  # one state per stack, kept with its first matrix
    assert all(not torch.equal(a, b) for a, b in zip(before, p, strict=True))
    assert opt.state[scalar]["exp_avg"].shape == (5,) and not torch.equal(scalar, torch.zeros(5))
    with pytest.raises(ValueError, match="one shape"):
        MuonAdamW([dict(kind="muon", params=[p[0], p[3]], lr=0.1, momentum=0.9, ns_steps=5, beta2=0.9,
                        weight_decay=0.0)])


@pytest.mark.slow  # two compilations on the CPU: about a minute
def test_compiled_optimizer_steps_equal_eager():
    """nanochat compiles both steps (fullgraph, static shapes); the recipe's compile does the same here. Hyperparameters
    are 0-D tensors, so a new lr does not recompile."""
    import torch._dynamo

    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        g = torch.Generator().manual_seed(3)
        mats = [torch.nn.Parameter(torch.randn(8, 4, generator=g)) for _ in range(2)]
        table = torch.nn.Parameter(torch.randn(6, 4, generator=g).bfloat16())
        opt = MuonAdamW([dict(kind="muon", params=mats, lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9,
                              weight_decay=0.1),
                         dict(kind="adamw", params=[table], lr=0.1, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.01)],
                        compiled=compiled)
        for _ in range(3):
            for group in opt.param_groups:
                group["lr"] *= 0.5
            for t in (*mats, table):
                t.grad = torch.randn(t.shape, generator=g).to(t.dtype)
            opt.step()
        results.append([t.detach().float().clone() for t in (*mats, table)])
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("optimizer", ["muon", "fused"])
def test_loss_decreases(optimizer):
    cfg = make_config({**TINY_RUN, "optimizer": optimizer, "vocab_size": 65, "learning_rate": 3e-3})
    trainer = Trainer(cfg, cfg.model_config(), device="cpu")
    x = torch.randint(65, (4, 32), generator=torch.Generator().manual_seed(0))
    first = trainer.step(lambda: (x, x)).item()
    for _ in range(7):
        last = trainer.step(lambda: (x, x)).item()
    assert last < first - 0.3, (first, last)


def test_bf16_precision_scheme():
    """bf16 as nanochat computes it: no autocast, fp32 master weights cast inside each linear, bf16 embeddings."""
    cfg = make_config({**TINY_RUN, "dtype": "bfloat16", "vocab_size": 65})
    trainer = Trainer(cfg, cfg.model_config(), device="cpu")
    model = trainer.model
    assert model.transformer.wte.weight.dtype == model.value_embeds["1"].weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == model.transformer.h[0].attn.c_q.weight.dtype == torch.float32
    assert model.cos.dtype == torch.bfloat16 and trainer.optimizer.low_precision
    assert not torch.is_autocast_enabled("cpu")
    with trainer.autocast():
        assert not torch.is_autocast_enabled("cpu")
    dtypes = []
    model.transformer.h[0].attn.c_q.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    x = torch.randint(65, (2, 32))
    loss = trainer.step(lambda: (x, x))
    assert dtypes == [torch.bfloat16] and loss.dtype == torch.float32 and math.isfinite(loss.item())


@pytest.mark.parametrize("kwargs, message", [
    (dict(window_pattern="SSSL"), "nanochat option"),
    (dict(n_kv_head=1), "nanochat option"),
    (dict(mlp="relu2"), "nanochat option"),
    (dict(arch="llama"), "arch must be"),
    (dict(TINY, n_kv_head=3), "n_kv_head must divide"),
    (dict(TINY, window_pattern="SXL"), "window_pattern"),
    (dict(TINY, bias=True), "no bias"),
    (dict(TINY, mlp="gelu"), "relu2 or swiglu"),
    (dict(TINY, dropout=0.1), "no dropout"),
    (dict(TINY, n_embd=16, n_head=2), "smear reads 24"),
    (dict(TINY, n_embd=36, n_head=4), "must be even"),
])
def test_invalid_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**kwargs)


def test_muon_is_refused_under_ddp(monkeypatch):
    """nanochat's optimizer shards its states across ranks (ZeRO-2 style); not built here, so refused, not faked."""
    monkeypatch.setattr("gpt.train._world", lambda: (0, 2))
    cfg = make_config({**TINY_RUN, "vocab_size": 65})
    with pytest.raises(ConfigError, match="one process"):
        Trainer(cfg, cfg.model_config(), device="cpu")


def test_config_files_and_overrides_pick_the_family():
    cfg = make_config({"arch": "nanochat", "n_kv_head": "2", "window_pattern": "sl", "value_embeds": "false"})
    assert cfg.bias is False and cfg.arch == "nanochat"
    mc = cfg.model_config(65)
    assert (mc.n_kv_head, mc.window_pattern, mc.value_embeds, mc.mlp, mc.padded_vocab) == (2, "SL", False, "relu2", 128)
    assert make_config({}).bias is True and make_config({}).model_config(65).arch == "gpt2"
    with pytest.raises(ConfigError, match="arch must be"):
        make_config({"arch": "llama"})


def test_train_checkpoint_resume_sample(char_corpus, corpus_text, tmp_path):
    base = dict(TINY_RUN, data_dir=str(char_corpus), eval_interval=3, max_iters=6, learning_rate=3e-3)
    full = train(make_config(dict(base, out_dir=str(tmp_path / "a"))), log=quiet)
    train(make_config(dict(base, out_dir=str(tmp_path / "b"), max_iters=3)), log=quiet)
    # resume takes the family and its options from the checkpoint, not from the (GPT-2 default) command line
    resumed = train(make_config(dict(base, out_dir=str(tmp_path / "b"), init_from="resume", arch="gpt2")),
                    log=quiet)
    assert resumed.iter_num == 6
    assert [loss for _, loss in resumed.losses] == pytest.approx([loss for it, loss in full.losses if it > 3],
                                                                 rel=1e-5, abs=1e-6)
    ckpt = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["arch"] == "nanochat" and ckpt["config"]["optimizer"] == "auto"
    kinds = [g["kind"] for g in ckpt["optimizer"]["param_groups"]]
    assert "muon" in kinds and "adamw" in kinds  # auto = nanochat's own optimizer
    sampler = Sampler(tmp_path / "b" / "ckpt.pt", device="cpu")
    assert type(sampler.model).__name__ == "NanoChatGPT"
    prompt = corpus_text[:5]
    out = sampler.complete(prompt, max_new_tokens=40)[0]  # past block_size 32: the context is cropped
    assert out.startswith(prompt) and len(out) == len(prompt) + 40
    from gpt.export import export_nanogpt

    with pytest.raises(CheckpointError, match="no nanoGPT layout"):
        export_nanogpt(tmp_path / "b" / "ckpt.pt", tmp_path / "exported")


def test_cli_train_arch_nanochat(char_corpus, tmp_path):
    """`vramfit train --arch nanochat ...`: the family is one more `--key value` override."""
    args = ["train", "--arch", "nanochat", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size",
            "32", "--batch-size", "2", "--max-iters", "2", "--eval-iters", "1", "--device", "cpu", "--data-dir",
            str(char_corpus), "--out-dir", str(tmp_path / "out"), "--n-kv-head", "1", "--mlp", "swiglu"]
    proc = subprocess.run([sys.executable, "-m", "vramfit.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "done: 2 iterations" in proc.stdout
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["mlp"] == "swiglu" and ckpt["model_args"]["n_kv_head"] == 1
    bad = subprocess.run([sys.executable, "-m", "vramfit.cli", *args[:-4], "--n-kv-head", "3"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                                            "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "n_kv_head" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_training_and_state_bytes(compile):
    """On a GPU: nanochat's precision (bf16 resolved from 'auto'), eager and compiled, GQA and short windows (an
    explicit mask, so not the flash kernel), Muon in bf16; the state on the device is what the count says."""
    cfg = make_config({**TINY_RUN, "device": "cuda", "dtype": "auto", "compile": compile, "vocab_size": 65,
                       "n_embd": 64, "n_kv_head": 1, "block_size": 512, "window_pattern": "SL"})
    trainer = Trainer(cfg, cfg.model_config())
    assert trainer.dtype == "bfloat16" and trainer.optimizer_impl == "muon"
    x = torch.randint(65, (2, 512), device="cuda")
    losses = [trainer.step(lambda: (x, x)).item() for _ in range(4)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    state = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.is_cuda)
    assert state == sum(cfg.model_config().optimizer_state_bytes("muon", "bfloat16").values())


@pytest.mark.parametrize("dtype, optimizer", [("float32", "fused"), ("bfloat16", "muon")])
def test_dry_run_sees_the_nanochat_step_byte_for_byte(dtype, optimizer):
    """The fake-tensor dry run of the real Trainer step equals the real tracked step on the CPU (GQA, a short
    window, value embeddings, bf16 embedding tables, Muon's stacks and temporaries)."""
    from vramfit.dryrun.estimate import EstimateRequest
    from vramfit.dryrun.fake_step import run_step
    from vramfit.recipe import Recipe

    mc = GPTConfig(**{**TINY, "n_layer": 2, "block_size": 512, "n_kv_head": 1, "window_pattern": "SL"})
    req = EstimateRequest(mc, 2, Recipe(dtype=dtype, optimizer=optimizer), target="cpu")
    fake = run_step(req, fake=True)
    real = run_step(req, fake=False)
    assert fake.peak_bytes == real.peak_bytes > 0


@pytest.mark.parametrize("depths, power", [((8,), 18), ((10, 12, 16), 19), ((18, 20, 26), 20), ((32, 50), 21)])
def test_base_train_auto_total_batch_matches_nanochats_log(depths, power):
    """dev/LOG.md's "Auto Batch" table: d8 2^18, d10-16 2^19, d18-26 2^20, d32-50 2^21 (base_train's Power Lines
    rule; the data:param ratio cancels out, so any --target-param-data-ratio gives the same batch)."""
    from gpt.basetrain import read_base_train

    for depth in depths:
        for ratio in ("12", "8"):
            run = read_base_train(["--depth", str(depth), "--target-param-data-ratio", ratio])
            assert run.total_batch_size == 2**power and run.world_size == 1
            assert run.grad_accum_steps == 2**power // (32 * 2048)


def test_base_train_commands_read_as_data():
    from gpt.basetrain import read_base_train

    # runs/speedrun.sh: 8 GPUs, d24, device batch 16 -> 2^20 tokens = 16 x 2048 x 8 x 4 micro-steps
    speedrun = ("torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth=24 "
                "--target-param-data-ratio=8 --device-batch-size=16 --fp8 --run=$WANDB_RUN")
    run = read_base_train(speedrun)
    assert (run.world_size, run.device_batch_size, run.total_batch_size, run.grad_accum_steps) == (8, 16, 2**20, 4)
    assert run.config == nanochat_config(24) and run.config.n_embd == 1536 and run.config.n_head == 12
    assert run.ignored == {"fp8": True, "run": "$WANDB_RUN"}
    assert run.command(device_batch_size=8) == (
        "torchrun --standalone --nproc_per_node=8 -m scripts.base_train --depth=24 --device-batch-size=8 "
        "--target-param-data-ratio=8.0 --fp8 '--run=$WANDB_RUN'")
    # runs/runcpu.sh: head dim 64, full windows, 512 context, an explicit total batch of one micro-batch
    cpu = read_base_train("python -m scripts.base_train --depth=6 --head-dim=64 --window-pattern=L --max-seq-len=512 "
                          "--device-batch-size=32 --total-batch-size=16384 --core-metric-every=-1")
    mc = cpu.config
    assert (mc.n_embd, mc.n_head, mc.block_size, mc.window_pattern) == (384, 6, 512, "L")
    assert cpu.grad_accum_steps == 1 and cpu.ignored == {"core_metric_every": "-1"}
    assert read_base_train("nanochat --depth 20").config == nanochat_config(20)
    for bad, message in [("--depth x", "cannot read"), ("--depth 0", "must be >= 1"), ("--depth", "needs a value"),
                         ("--device-batch-size 3 --total-batch-size 1000", "multiple of"),
                         ("torchrun --nproc_per_node=x -m scripts.base_train", "positive integer"),
                         ("--depth 12 extra", "unexpected argument")]:
        with pytest.raises(ConfigError, match=message):
            read_base_train(bad)
