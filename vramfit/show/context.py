"""What `plot` and `report` plan for: the budget, vocabulary and objective of the last `vramfit suggest`.

`suggest` saves its document to results/suggestions.json; the plots and the report read it back so that they rank
in the same vocabulary, for the same budget, and draw the same shape (its #1) as the suggestions the user just
saw. Precedence: an explicit `--vram` / `--data-dir` on the command line, then the last suggest, then the
`--data-dir` default's prepared corpus, then suggest's own defaults (8 GiB, vocab 50304). No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vramfit.corpus import corpus_vocab
from vramfit.errors import VramfitError
from vramfit.plan.budget import resolve_vram
from vramfit.plan.ddp import for_strategy, multi_gpu
from vramfit.plan.suggest import OBJECTIVES, Suggestion, suggest
from vramfit.plan.workflows import DEFAULT_DATA_DIR, SUGGESTIONS_FILE, train_command
from vramfit.shape import DEFAULT_VOCAB, KEYS, Shape
from vramfit.units import parse_size

DEFAULT_VRAM = "8G"


@dataclass
class PlanContext:
    """Budget, vocabulary and objective to rank and draw with, and where each came from."""

    vram_bytes: int
    reserve_bytes: int
    vocab_size: int
    objective: str = "balanced"
    data_dir: str = DEFAULT_DATA_DIR
    gpus: int = 1
    sources: list[str] = field(default_factory=list)  # one phrase per decision, for the page and the CLI
    last: dict | None = None  # the last suggest's document, when it was read
    arch: str | None = None  # the last suggest's --arch (nanochat's), with its shape rule: (aspect ratio, head dim)
    rule: tuple[int, int] = (64, 128)

    @property
    def budget_bytes(self) -> int:
        return self.vram_bytes - self.reserve_bytes

    def last_top(self, device: str, recipe_key: str) -> dict | None:
        """The last suggest's #1 when it planned for this device and recipe (else None)."""
        doc = self.last
        if not doc or doc.get("device") != device or doc.get("recipe_key") != recipe_key:
            return None
        items = doc.get("suggestions") or []
        return items[0] if items and all(k in items[0] for k in KEYS) else None


def _vocab(data_dir: str | Path) -> int | None:
    """A prepared corpus's vocabulary size (`vramfit.corpus.corpus_vocab`), None where there is none."""
    found = corpus_vocab(data_dir)
    return found[0] if found else None


def read_last_suggest(path: str | Path) -> dict | None:
    """The document `vramfit suggest` saved (None when there is none); a file that is not one is a user error."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        ok = isinstance(doc, dict) and int(doc["budget_bytes"]) > 0 and isinstance(doc["suggestions"], list)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise VramfitError(f"{path} is not a vramfit suggest output (delete it or pass --suggestions-file FILE)")
    return doc


def _last_vocab(doc: dict) -> int | None:
    vocabs = {s.get("vocab_size") for s in doc["suggestions"] if isinstance(s, dict)}
    if len(vocabs) == 1 and isinstance(v := vocabs.pop(), int) and v > 0:
        return v
    return _vocab(doc["data_dir"]) if doc.get("data_dir") else None


def plan_context(vram: str | None = None, suggestions: str | Path = SUGGESTIONS_FILE,
                 data_dir: str | None = None) -> PlanContext:
    """The budget and vocabulary `plot` and `report` use (see the module docstring for the precedence)."""
    doc = read_last_suggest(suggestions)
    sources: list[str] = []
    if vram is not None:
        vram_b, reserve_b = resolve_vram(vram)[0], 0
        sources.append(f"budget {vram} from --vram")
    elif doc is not None:
        reserve_b = int(doc.get("reserve_bytes") or 0)
        vram_b = reserve_b + int(doc["budget_bytes"])
        sources.append(f"budget from the last `vramfit suggest` ({suggestions})")
    else:
        vram_b, reserve_b = parse_size(DEFAULT_VRAM), 0
        sources.append(f"budget {DEFAULT_VRAM} (default; no --vram and no {suggestions})")
    if vram_b - reserve_b <= 0:
        raise VramfitError("the budget must be positive (is --reserve larger than --vram?)")
    vocab = None
    if data_dir is not None:
        vocab = _vocab(data_dir)
        if vocab is None:
            raise VramfitError(f"no prepared corpus in {data_dir} (missing or unreadable meta.json; "
                               "run `vramfit prepare`)")
        sources.append(f"vocab {vocab} from {Path(data_dir) / 'meta.json'}")
    elif doc is not None and (vocab := _last_vocab(doc)) is not None:
        sources.append(f"vocab {vocab} from the last `vramfit suggest`")
    elif (vocab := _vocab(DEFAULT_DATA_DIR)) is not None:
        sources.append(f"vocab {vocab} from {Path(DEFAULT_DATA_DIR) / 'meta.json'}")
    else:
        vocab = DEFAULT_VOCAB
        sources.append(f"vocab {vocab} (GPT-2 BPE, padded: no prepared corpus)")
    objective = doc.get("objective") if doc is not None and doc.get("objective") in OBJECTIVES else "balanced"
    arch = (doc or {}).get("arch")
    if arch:
        sources.append(f"family {arch} from the last `vramfit suggest`")
    return PlanContext(vram_b, reserve_b, int(vocab), objective,
                       data_dir or (doc or {}).get("data_dir") or DEFAULT_DATA_DIR,
                       int((doc or {}).get("gpus") or 1), sources, doc, arch,
                       (int(doc.get("aspect_ratio") or 64), int(doc.get("head_dim") or 128)) if arch else (64, 128))


def per_gpu_model(report, ctx: PlanContext):  # noqa: ANN001, ANN201 - a Profile; its model or a DdpMemoryModel
    """The report's model per GPU for the last suggest's --gpus (DDP buckets, and NCCL's buffers where the profile
    is a GPU's)."""
    return for_strategy(report.model, ctx.gpus, None, device_type=report.device_type)


def ranked(report, ctx: PlanContext, top: int = 5) -> list[Suggestion]:
    """The report's model ranked as suggest ranks: same vocabulary, budget, objective and, for a profile that plans
    it, family (nanochat's models by its rule) (empty when nothing fits or the budget is below the device's
    constant)."""
    model = per_gpu_model(report, ctx)
    family = {}
    if ctx.arch and report.plans_families:
        from vramfit.plan.nanochat import rule_models
        from vramfit.plan.suggest import DEFAULT_SPACE

        family = {"arch": ctx.arch, "models": rule_models(DEFAULT_SPACE["n_layer"], *ctx.rule, ctx.arch)}
    try:
        items = suggest(model, report.margin_rel, ctx.budget_bytes, ctx.objective, top=top,
                        vocab_size=[ctx.vocab_size], **family,
                        command=lambda s: train_command(s, report.recipe, ctx.data_dir))
    except VramfitError:
        return []
    return multi_gpu(items, ctx.gpus)


def feasibility_shape(report, ctx: PlanContext, items: list[Suggestion], fallback: Shape) -> Shape:
    """The shape the feasibility plot and the calculator start from: the last suggest's #1 for this device, recipe
    and vocabulary, else the top ranked suggestion, else `fallback` (the largest measured shape)."""
    last = ctx.last_top(report.device, report.recipe_key)
    if last is not None and int(last["vocab_size"]) == ctx.vocab_size:  # not when --data-dir changed the vocab
        return Shape.of(last)
    if items:
        return Shape.of(items[0])
    return fallback


FEASIBILITY_BLOCKS = (64, 128, 256, 512, 1024, 2048)
FEASIBILITY_BATCHES = tuple(range(1, 65))


def grid_axes(blocks=FEASIBILITY_BLOCKS, batches=FEASIBILITY_BATCHES,
              mark: dict | None = None) -> tuple[list[int], list[int]]:
    """The block and batch axes of a feasibility grid, widened to hold the marked config (block_size, batch_size)."""
    blocks, batches = sorted(set(blocks)), sorted(set(batches))
    if mark is not None:
        blocks = sorted(set(blocks) | {int(mark["block_size"])})
        top = int(mark["batch_size"])
        if top > batches[-1]:
            step = max(1, top // 64)
            batches = sorted(set(range(1, int(top * 1.25) + step, step)) | {top})
    return blocks, batches
