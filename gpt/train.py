"""Training: `TrainConfig`, the one-call training step (`Trainer.step`), the loop, checkpoints.

`Trainer.step` is the unit everything else reuses: the loop below, the sweep worker (synthetic tokens) and the
dry-run estimator (fake tensors) all call exactly this step.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gpt.config import ARCH_OPTIONS, GPTConfig, TrainConfig, checkpoint_every, peak_flops_of, resolve_recipe
from gpt.data import Corpus
from gpt.errors import CheckpointError, ConfigError
from gpt.files import Protected, check_output, output_path
from gpt.limits import ADAM_BYTES_PER_PARAM, check_memory
from gpt.model import attention_kernel, build_model, clean_state_dict, param_groups


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N)")
    return name


def device_capability(device: str) -> tuple[int, int] | None:
    """The CUDA compute capability of `device`, or None (CPU, or no CUDA here, as under fake tensors)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(torch.device(device)))


def resolve_for_device(cfg: TrainConfig, device: str) -> tuple[str, bool, str]:
    """(dtype, compile, optimizer) of `cfg` on `device`, decided by `gpt.config.resolve_recipe` with the capability
    of the GPU actually used (compile off below 7.0, where Inductor raises GPUTooOldForTriton)."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return resolve_recipe(cfg.dtype, cfg.compile, cfg.optimizer, device_type, device_capability(device), cfg.arch)


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    started: bool = False  # whether `setup_distributed` created the process group

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun job described by the environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT):
    nccl on CUDA (one GPU per local rank), gloo on the CPU. A no-op when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Dist(rank, local, world, False)
    cuda = resolve_device(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, local, world, True)


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def peak_flops(device: str, cfg: TrainConfig) -> float | None:
    """Peak FLOP/s for MFU: the configured value, else a known GPU's dense tensor-core peak."""
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.startswith("cuda"):
        return peak_flops_of(torch.cuda.get_device_name(torch.device(device)))
    return None


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str, impl: str | None = None,
                        low_precision: bool = False, compiled: bool = False) -> torch.optim.Optimizer:
    """AdamW with weight decay on 2-D tensors only (the implementation set explicitly); with impl 'sgd' SGD with
    momentum `beta1`, with 'adafactor' `torch.optim.Adafactor` (the same groups, `learning_rate`); with 'muon'
    nanochat's MuonAdamW (`muon_optimizer`)."""
    impl = impl or resolve_recipe("float32", False, cfg.optimizer, device_type, arch=cfg.arch)[2]
    if impl == "muon":
        return muon_optimizer(model, cfg, low_precision, compiled)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if impl == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.beta1)
    if impl == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.learning_rate)
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **flags)


def muon_optimizer(model: torch.nn.Module, cfg: TrainConfig, low_precision: bool = False,
                   compiled: bool = False) -> torch.optim.Optimizer:
    """MuonAdamW with nanochat's groups (`GPT.setup_optimizer`): Muon for the blocks' matrices, one group per
    shape (momentum 0.95, 5 iterations, beta2 0.9, weight_decay); AdamW for the rest. nanochat: the head, the
    embedding, the value embeddings (half the embedding lr), resid and x0 lambdas, smear and backout, each with
    its own betas and decay, lrs scaled by (n_embd/768)^-0.5. GPT-2: its own AdamW recipe (learning_rate, beta1,
    beta2; decay on 2-D tensors). Each group's `initial_lr` is what the schedule scales."""
    from gpt.muon import MuonAdamW

    groups = param_groups(model)
    if model.config.arch == "nanochat":
        scale = (model.config.n_embd / 768) ** -0.5
        scalars = groups["scalars"]
        n_res = 2 if model.config.resid_scalars else 0
        adamw = [
            dict(params=groups["head"], lr=cfg.unembedding_lr * scale, betas=(0.8, 0.96), weight_decay=0.01),
            dict(params=groups["embedding"], lr=cfg.embedding_lr * scale, betas=(0.8, 0.995), weight_decay=0.001),
            dict(params=groups["value_embeds"], lr=cfg.embedding_lr * scale * 0.5, betas=(0.8, 0.995),
                 weight_decay=0.01),
            dict(params=scalars[:n_res][:1], lr=cfg.scalar_lr * 0.01, betas=(0.8, 0.95), weight_decay=0.05),
            dict(params=scalars[1:n_res], lr=cfg.scalar_lr, betas=(0.96, 0.95), weight_decay=0.0),
            dict(params=scalars[n_res:], lr=0.2, betas=(0.8, 0.95), weight_decay=0.0),
        ]
        adamw = [dict(g, kind="adamw", eps=1e-10) for g in adamw]
    else:
        rest = groups["embedding"] + groups["value_embeds"] + groups["head"] + groups["scalars"]
        adamw = [dict(kind="adamw", params=[p for p in rest if p.dim() >= 2], weight_decay=cfg.weight_decay),
                 dict(kind="adamw", params=[p for p in rest if p.dim() < 2], weight_decay=0.0)]
        adamw = [dict(g, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=1e-8) for g in adamw]
    matrices = groups["matrices"]
    muon = [dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=cfg.matrix_lr, momentum=0.95,
                 ns_steps=5, beta2=0.9, weight_decay=cfg.weight_decay)
            for shape in sorted({p.shape for p in matrices})]
    optimizer = MuonAdamW([g for g in adamw if g["params"]] + muon, low_precision=low_precision, compiled=compiled)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def mark_batch_dynamic(*tensors: torch.Tensor) -> None:
    """Mark dimension 0 (the batch) of each tensor dynamic for torch.compile, so that one compiled graph serves
    every batch size (Dynamo allocates a symbol for it instead of specialising on the value, and Inductor's FX
    graph cache keys the graph by that symbol). A batch of 0 or 1 is left alone: Dynamo specialises those sizes
    whatever is asked."""
    import torch._dynamo

    for t in tensors:
        if t.dim() and t.size(0) >= 2:  # maybe_: a graph that specialises the batch compiles static, not an error
            torch._dynamo.maybe_mark_dynamic(t, 0)


class Trainer:
    """A GPT, its optimizer and the mixed-precision machinery; `step` trains on one batch."""

    def __init__(self, cfg: TrainConfig, model_config: GPTConfig, device: str | None = None) -> None:
        """nanochat's family computes in the recipe's dtype without autocast (`NanoChatGPT.set_compute_dtype`)."""
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        self.device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        self.dtype, self.compile, self.optimizer_impl = resolve_for_device(cfg, self.device)
        if self.dtype == "float16" and self.device_type == "cpu":
            raise ConfigError("float16 training is CUDA-only here; use bfloat16 or float32 on the CPU")
        if self.optimizer_impl == "muon" and _world()[1] > 1:
            raise ConfigError("optimizer muon runs in one process here (nanochat shards its states across the ranks, "
                              "ZeRO-2 style, which is not built): use optimizer = fused under DDP")
        self.model_config = model_config
        torch.manual_seed(cfg.seed)
        self.model = build_model(model_config)  # built on the CPU; moved only when the device differs
        self.model.checkpoint_every = checkpoint_every(cfg.checkpoint)
        if self.device != "cpu":  # (a no-op move would also fail for fake-tensor parameters in the estimator)
            self.model = self.model.to(self.device)
        ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
        nanochat = model_config.arch == "nanochat"
        if nanochat:
            self.model.set_compute_dtype(ptdtype)
        self.optimizer = configure_optimizer(self.model, cfg, self.device_type, self.optimizer_impl,
                                             low_precision=self.dtype == "bfloat16", compiled=self.compile)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == "float16")
        if self.dtype == "float32" or nanochat:
            self.autocast = contextlib.nullcontext
        else:
            self.autocast = lambda: torch.autocast(device_type=self.device_type, dtype=ptdtype)
        if cfg.dynamic_batch and not self.compile:
            raise ConfigError("dynamic_batch marks the batch dimension for torch.compile, and compile is off on "
                              f"{self.device}: set compile = true")
        self.dynamic_batch = cfg.dynamic_batch
        self.forward = torch.compile(self.model) if self.compile else self.model
        self.eval_forward = self.forward  # no DDP wrapper: evaluation needs no gradient synchronisation
        self.rank, self.world_size = _world()
        self.ddp = None
        if self.world_size > 1:  # launched by torchrun: gradients all-reduced in buckets during backward
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.device).index or 0] if self.device_type == "cuda" else None
            self.ddp = DistributedDataParallel(self.forward, device_ids=ids)
            self.forward = self.ddp
        self.iter_num = 0
        self.best_val_loss = math.inf

    @property
    def tokens_per_iter(self) -> int:
        """Tokens per optimizer step, all ranks together (gradient_accumulation_steps is per rank)."""
        return self.cfg.batch_size * self.cfg.block_size * self.cfg.gradient_accumulation_steps * self.world_size

    def lr_at(self, it: int) -> float:
        """Linear warmup, then cosine decay to min_lr (nanoGPT's schedule)."""
        cfg = self.cfg
        lr, min_lr = cfg.learning_rate, cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
        decay_iters = cfg.lr_decay_iters or cfg.max_iters
        if not cfg.decay_lr:
            return lr
        if it < cfg.warmup_iters:
            return lr * (it + 1) / (cfg.warmup_iters + 1)
        if it >= decay_iters:
            return min_lr
        ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    def step(self, get_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step: `gradient_accumulation_steps` micro-batches of forward and backward (each loss
        divided by the count, the gradients summed in place across them, as nanoGPT does), gradient clipping, the
        optimizer. Returns the (detached, unsynchronised) loss of the step: the mean over its micro-batches."""
        lr = self.lr_at(self.iter_num)
        for group in self.optimizer.param_groups:  # Muon's groups: their own lrs, scaled by the schedule
            group["lr"] = group["initial_lr"] * lr / self.cfg.learning_rate if "initial_lr" in group else lr
        accum = self.cfg.gradient_accumulation_steps
        total = None  # the step's loss with accumulation: the sum of the micro-batches' loss / accum
        self.model.train()
        for k in range(accum):
            x, y = get_batch()
            if self.dynamic_batch:
                mark_batch_dynamic(x, y)
            # under DDP, all-reduce the gradients only in the last micro-step's backward
            sync = self.ddp.no_sync() if self.ddp is not None and k < accum - 1 else contextlib.nullcontext()
            with sync:
                with self.autocast(), attention_kernel(self.cfg.attn_kernel):
                    # keep no reference to the logits: autograd does not need them (log-softmax saves its
                    # output), and holding them through backward costs batch*block*vocab*(2 or 4) bytes at the peak
                    loss = self.forward(x, y)[1] / accum
                self.scaler.scale(loss).backward()
            if accum > 1:
                total = loss.detach() if total is None else total + loss.detach()
        self.optimizer_step()
        return total if total is not None else loss.detach() * accum

    def optimizer_step(self) -> None:
        """After the micro-steps' backward: clip (grad_clip > 0; validated >= 0), step, free the gradients."""
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1

    @torch.no_grad()
    def evaluate(self, corpus: Corpus) -> dict[str, float]:
        """Mean loss over `eval_iters` batches per split; fixed eval batches, training RNG untouched."""
        self.model.eval()
        out = {}
        for split in ("train", "val"):
            gen = torch.Generator().manual_seed(self.cfg.seed + 1)
            losses = torch.zeros(self.cfg.eval_iters)
            for k in range(self.cfg.eval_iters):
                x, y = corpus.get_batch(split, self.cfg.batch_size, self.cfg.block_size, gen, self.device)
                with self.autocast(), attention_kernel(self.cfg.attn_kernel):
                    _, loss = self.eval_forward(x, y)
                losses[k] = loss.item()
            out[split] = float(losses.mean())
        self.model.train()
        return out

    def state(self, batch_rng: torch.Generator, meta: dict | None) -> dict:
        """Checkpoint contents: plain tensors and primitives only (loadable with weights_only=True)."""
        rng = {"torch": torch.get_rng_state(), "batch": batch_rng.get_state()}
        if self.device_type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(torch.device(self.device))
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "model_args": self.model_config.to_dict(),
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "config": self.cfg.to_dict(),
            "meta": meta,
            "rng": rng,
        }

    def load_state(self, ckpt: dict, batch_rng: torch.Generator | None = None) -> None:
        """Restore a checkpoint's weights, optimizer, scaler, iteration and RNG (vramfit's or nanoGPT's)."""
        load_weights(self.model, ckpt["model"])
        if "optimizer" in ckpt:
            base_lrs = [group.get("initial_lr") for group in self.optimizer.param_groups]
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"the checkpoint's optimizer state does not fit this model: {exc}") from None
            for group, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
                if base is not None:  # Muon's groups: this run's configured lrs, not the checkpoint's
                    group["initial_lr"] = base
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iter_num = int(ckpt.get("iter_num", 0))
        self.best_val_loss = float(ckpt.get("best_val_loss", math.inf))
        rng = ckpt.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device_type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], torch.device(self.device))
        if batch_rng is not None and "batch" in rng:
            batch_rng.set_state(rng["batch"])


def load_weights(model: torch.nn.Module, state_dict: dict) -> None:
    """Load a checkpoint's weights (torch.compile's `_orig_mod.` prefixes stripped); a mismatch, a value that is
    not a tensor, or a NaN/inf weight (a diverged run) is one error."""
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"the checkpoint's weight {name!r} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"the checkpoint's weight {name!r} holds NaN or inf (a run that diverged?)")
    try:
        model.load_state_dict(clean_state_dict(state_dict))
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit its model_args: "
                              f"{str(exc).splitlines()[0][:200]}") from None


def check_model_memory(model_config: GPTConfig, device: str) -> None:
    """Refuse, before any allocation, a model whose weights, gradients and AdamW state alone exceed the memory
    available now (RAM on the CPU, the card's free memory on CUDA)."""
    need = ADAM_BYTES_PER_PARAM * model_config.n_params()
    if device.startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(device))[0]
        check_memory(need, f"the model ({model_config.n_params():,} parameters: weights, gradients, AdamW)", free,
                     f"free memory on {device}")
    else:
        check_memory(need, f"the model ({model_config.n_params():,} parameters: weights, gradients, AdamW)")


def _quiet(msg: str) -> None:
    """The log of ranks other than 0."""


CHECKPOINT_KINDS = ("a PyTorch checkpoint", "a pickle")  # what a checkpoint save may replace


def save_checkpoint(state: dict, path: str | Path, protected: Protected | None = None) -> Path:
    """Write atomically through `gpt.files.output_path` (never over a `protected` file: {label: path})."""
    path = check_output(path, protected or {}, "checkpoint", CHECKPOINT_KINDS)
    with output_path(path, "checkpoint") as target:
        torch.save(state, target)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """Load with `weights_only=True`; one clear error for a missing or unreadable file."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler-policy errors vary by torch version
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]  # an empty file: no message at all
        raise CheckpointError(f"cannot read checkpoint {path}: {why}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a GPT checkpoint (needs 'model' and 'model_args')")
    for key in ("model", "model_args"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path} is not a GPT checkpoint (its {key!r} is a {type(ckpt[key]).__name__}, "
                                  "not a dict)")
    return ckpt


@dataclass
class TrainResult:
    iter_num: int
    losses: list[tuple[int, float]]  # (iteration, training loss) at each log line
    evals: list[tuple[int, float, float]]  # (iteration, train loss, val loss)
    ms_per_iter: float
    tokens_per_s: float
    mfu: float | None
    best_val_loss: float
    ckpt_path: str | None


def train(cfg: TrainConfig, log: Callable[[str], None] = print,
          on_step: Callable[[Trainer], None] | None = None) -> TrainResult:
    """The training loop: logs, evaluates, checkpoints; resumes from `out_dir/ckpt.pt`.

    `on_step(trainer)` runs after every optimizer step (e.g. a memory probe). Launched by torchrun (WORLD_SIZE > 1)
    it trains with DistributedDataParallel: gradient_accumulation_steps is divided across the ranks (the tokens
    per optimizer step stay the same), each rank draws its own batches, and only rank 0 logs, evaluates and
    writes checkpoints."""
    dist_info = setup_distributed(cfg.device)
    ok = False
    try:
        result = _train(cfg, log, on_step, dist_info)
        ok = True
        return result
    finally:
        if dist_info.started:
            import gc

            import torch.distributed as dist

            gc.collect()  # free the DDP reducer, which holds the process group, before the group goes
            if ok:
                dist.barrier()  # leave together: a rank that exits while its peer still uses gloo aborts it
            dist.destroy_process_group()


def _train(cfg: TrainConfig, log: Callable[[str], None], on_step: Callable[[Trainer], None] | None,
           dist_info: Dist) -> TrainResult:
    world = dist_info.world_size
    if world > 1:
        accum = cfg.gradient_accumulation_steps
        if accum > world and accum % world:
            raise ConfigError(f"gradient_accumulation_steps ({accum}) must divide by the number of processes "
                              f"({world})")
        device = cfg.device
        if resolve_device(device).startswith("cuda"):
            device = f"cuda:{dist_info.local_rank}"
        cfg = replace(cfg, gradient_accumulation_steps=max(1, accum // world), device=device)
        if not dist_info.master:
            log = _quiet
    corpus = Corpus.open(cfg.data_dir)
    ckpt_path = Path(cfg.out_dir) / "ckpt.pt"
    protected = {"the training data": corpus.files()}
    check_output(ckpt_path, protected, "checkpoint", CHECKPOINT_KINDS)  # a folder, the corpus: refused now
    ckpt = None
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(ckpt_path)
        model_config = GPTConfig.from_dict(ckpt["model_args"])
        shape = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "arch", *ARCH_OPTIONS)
        cfg = replace(cfg, **{k: getattr(model_config, k) for k in shape})  # the checkpoint's shape wins
    else:
        model_config = cfg.model_config(corpus.vocab_size)
    if model_config.vocab_size < corpus.vocab_size:
        raise ConfigError(f"vocab_size {model_config.vocab_size} is smaller than the corpus's {corpus.vocab_size}")
    corpus.check_block_size(cfg.block_size)
    check_model_memory(model_config, resolve_device(cfg.device))
    trainer = Trainer(cfg, model_config)
    batch_rng = torch.Generator().manual_seed(cfg.seed + dist_info.rank)  # each rank its own batches
    if ckpt is not None:
        trainer.load_state(ckpt, batch_rng)
        if dist_info.rank:  # the checkpoint holds rank 0's batch stream
            batch_rng.manual_seed(cfg.seed + dist_info.rank + 7919 * trainer.iter_num)
        log(f"resumed from {ckpt_path} at iteration {trainer.iter_num}")
        del ckpt
    n = model_config.n_params(non_embedding=True)
    log(f"model: {n / 1e6:.2f}M parameters (non-embedding), {trainer.device}, {trainer.dtype}, "
        f"tokens/iter {trainer.tokens_per_iter:,}" + (f" ({world} processes, DDP)" if world > 1 else ""))
    peak = peak_flops(trainer.device, cfg)

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        return corpus.get_batch("train", cfg.batch_size, cfg.block_size, batch_rng, trainer.device)

    losses: list[tuple[int, float]] = []
    evals: list[tuple[int, float, float]] = []
    timed_iters, timed_s = 0, 0.0
    saved = None
    t_log, it_log = time.perf_counter(), trainer.iter_num
    first_interval = True
    while trainer.iter_num < cfg.max_iters:
        loss = trainer.step(get_batch)
        if on_step is not None:
            on_step(trainer)
        it = trainer.iter_num
        last = it == cfg.max_iters
        if it % cfg.log_interval == 0 or last:
            lossf = loss.item()  # synchronises
            now = time.perf_counter()
            dt = (now - t_log) / max(1, it - it_log)
            if not first_interval or it - it_log > 2:
                timed_iters, timed_s = timed_iters + (it - it_log), timed_s + (now - t_log)
            first_interval = False
            losses.append((it, lossf))
            mfu = trainer.model.estimate_mfu(trainer.tokens_per_iter, dt, peak) if peak else None
            mfu_s = f", mfu {mfu * 100:.1f}%" if mfu is not None else ""
            log(f"iter {it}: loss {lossf:.4f}, {dt * 1000:.1f} ms/iter, "
                f"{trainer.tokens_per_iter / dt:,.0f} tok/s{mfu_s}")
            t_log, it_log = time.perf_counter(), it
        if ((cfg.eval_interval and it % cfg.eval_interval == 0) or last) and dist_info.master:
            t0 = time.perf_counter()
            result = trainer.evaluate(corpus)
            evals.append((it, result["train"], result["val"]))
            log(f"eval {it}: train loss {result['train']:.4f}, val loss {result['val']:.4f}")
            improved = result["val"] < trainer.best_val_loss
            trainer.best_val_loss = min(trainer.best_val_loss, result["val"])
            if improved or cfg.always_save_checkpoint or last:
                saved = save_checkpoint(trainer.state(batch_rng, corpus.meta), ckpt_path, protected)
                log(f"saved checkpoint to {saved}")
            t_log += time.perf_counter() - t0  # eval time is not training time
    ms = timed_s / timed_iters * 1000 if timed_iters else float("nan")
    tps = trainer.tokens_per_iter / (ms / 1000) if timed_iters else float("nan")
    mfu = trainer.model.estimate_mfu(trainer.tokens_per_iter, ms / 1000, peak) if peak and timed_iters else None
    return TrainResult(trainer.iter_num, losses, evals, ms, tps, mfu, trainer.best_val_loss,
                       str(saved) if saved else None)
