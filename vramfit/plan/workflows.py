"""The workflows that join the store, fitted model files and suggestions: fitting every device + recipe of a
database, finding the model file, the train command of a suggestion, the suggestions file, comparing a measured
training run with its prediction (the dry-run model for a GPU never profiled is `vramfit.plan.noprofile`)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from vramfit.errors import VramfitError
from vramfit.fit.memmodel import fit_points
from vramfit.fit.profile import Profile, latest
from vramfit.paths import MODELS_DIR, SUGGESTIONS_FILE, Protected, check_output, write_text
from vramfit.plan.suggest import Suggestion
from vramfit.recipe import ALLOC_CONF_VARS
from vramfit.shape import GPT2, KEYS, Shape, arch_options

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are built: predicting from a model file needs no pandas

DEFAULT_DATA_DIR = "data/shakespeare_char"  # the corpus planned for and trained on when none is named


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def model_filename(device: str, recipe_key: str) -> str:
    return f"{slug(device)}-{recipe_key}.json"


def dryrun_estimates(points: pd.DataFrame, target: str = "auto") -> list[int]:
    """The dry-run estimate of each point, on the device type the point ran on (the CPU, or CUDA with the GPU's
    compute capability and the point's recipe), in the units of the fit `target` (nvml: whole device, reserved,
    allocated, tracked; `vramfit.dryrun.estimate.target_bytes`)."""
    from gpt.config import GPTConfig
    from vramfit.dryrun.cache import EstimateCache
    from vramfit.dryrun.estimate import EstimateRequest, parse_capability, target_bytes
    from vramfit.dryrun.estimator import Estimator
    from vramfit.recipe import Recipe

    reqs, targets = [], []
    for row in points.itertuples(index=False):
        cuda = row.device_type == "cuda"
        cap = parse_capability(row.compute_capability) if cuda and row.compute_capability else (8, 0)
        mc = GPTConfig(int(row.n_layer), int(row.n_head), int(row.n_embd), int(row.block_size), int(row.vocab_size))
        reqs.append(EstimateRequest(mc, int(row.batch_size), Recipe.from_dict(json.loads(row.recipe)),
                                    "cuda" if cuda else "cpu", cap, headline_only=True))
        targets.append(target if target != "auto" else ("nvml" if cuda else "tracked"))
    with Estimator("process", cache=EstimateCache.user()) as estimator:
        return [target_bytes(e, t) for e, t in zip(estimator.estimate(reqs), targets, strict=True)]


def fit_store(points: pd.DataFrame, target: str = "auto", regimes: int = 2, dryrun: bool = False,
              allow_shared: bool = False, skipped: list[str] | None = None) -> list[tuple[Profile, pd.DataFrame]]:
    """One fit per (device, recipe) found in `points`; a group that cannot be fitted (too few ok points) is
    skipped, and why goes to `skipped` ("device / recipe: reason"); none fitted is an error. Recipes that
    differ only in their switches (`Recipe.family`: accumulation, checkpointing, optimizer) are one fit that
    prices the switches.
    `dryrun` also fits y = c0 + k*estimate on the dry-run estimates of the points (slower: ~0.1-3 s a point).
    `allow_shared` keeps NVML readings taken while other compute processes shared the GPU."""
    if points.empty:
        raise VramfitError("the database has no points (run `vramfit sweep` first)")
    out, errors = [], []
    from vramfit.fit.features import frame_recipes

    family = [r.family().key() for r in frame_recipes(points)]
    for (_device, _rkey), group in points.assign(_family=family).groupby(["device_name", "_family"], sort=True):
        group = group.drop(columns="_family")
        try:
            est = (lambda ok: dryrun_estimates(ok, target)) if dryrun else None
            out.append((fit_points(group, target=target, regimes=regimes, dryrun=est, allow_shared=allow_shared),
                        group))
        except VramfitError as exc:
            errors.append(f"{_device} / {_rkey}: {exc}")
    if not out:
        raise VramfitError("nothing to fit: " + "; ".join(errors))
    if skipped is not None:
        skipped += errors
    return out


def fit_and_save(points: pd.DataFrame, out_dir: str | Path, target: str = "auto", regimes: int = 2,
                 dryrun: bool = False, allow_shared: bool = False,
                 protected: Protected | None = None, skipped: list[str] | None = None) -> list[tuple[Profile, Path]]:
    """`fit_store`, each report saved as `out_dir/<device>-<recipe>.json` (never over a `protected` file):
    (report, path) per device + recipe; the groups not fitted, and why, go to `skipped`."""
    return [(report, report.save(Path(out_dir) / model_filename(report.device, report.recipe_key), protected))
            for report, _ in fit_store(points, target=target, regimes=regimes, dryrun=dryrun,
                                       allow_shared=allow_shared, skipped=skipped)]


def open_profile(model: str | Path | None, models_dir: str | Path = MODELS_DIR,
                 families: bool = False) -> tuple[Path, Profile]:
    """The profile to use: the file `model` names, else the most recently fitted one in `models_dir`, a GPU's
    before a CPU's (`vramfit.fit.profile.latest`; `families`: one swept with another family's points)."""
    if model:
        return Path(model), Profile.load(model)
    found = latest(models_dir, "cuda", families) or latest(models_dir, "cpu", families)
    if found is None:
        raise VramfitError(f"no fitted model in {models_dir} (run `vramfit sweep` then `vramfit fit`, "
                           "or pass --model FILE)")
    return found


def train_command(s: Suggestion, recipe: dict, data_dir: str = DEFAULT_DATA_DIR,
                  out_dir: str | None = None) -> str:
    """The exact `vramfit train` command for a suggestion under the model's recipe."""
    args = ["vramfit", "train"]
    for key in KEYS:
        args += [f"--{key.replace('_', '-')}", str(getattr(s, key))]
    if (arch := getattr(s, "arch", GPT2)) != GPT2:  # the family and its options (`--arch nanochat --mlp swiglu`)
        for key, value in arch_options(arch).items():
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    for key in ("dtype", "compile", "optimizer", "attn_kernel", "grad_accum", "checkpoint"):
        if recipe.get(key) is not None:
            value = recipe[key]
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    args += ["--data-dir", data_dir, "--out-dir", out_dir or f"out/suggest-{s.rank}"]
    cmd = shlex.join(args)
    if recipe.get("alloc_conf"):
        conf = shlex.quote(recipe["alloc_conf"])
        cmd = " ".join(f"{var}={conf}" for var in ALLOC_CONF_VARS) + f" {cmd}"
    return cmd


def save_suggestions(doc: dict, path: str | Path = SUGGESTIONS_FILE, protected: Protected | None = None) -> Path:
    """The suggest document to `path`, atomically; never over the model file it was planned with or another
    `protected` file ({label: path})."""
    path = check_output(path, {"the model file": doc.get("model_file"), **(protected or {})}, "--suggestions-file")
    return write_text(path, json.dumps(doc, indent=1), "--suggestions-file")


def load_suggestion(rank: int, path: str | Path = SUGGESTIONS_FILE) -> tuple[dict, dict]:
    """(the suggest document, suggestion number `rank`) from a `suggest --json` file or the last suggest run."""
    path = Path(path)
    if not path.is_file():
        raise VramfitError(f"no suggestions at {path} (run `vramfit suggest` first)")
    try:
        doc = json.loads(path.read_text())
        items = doc["suggestions"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError):  # not JSON, not UTF-8, not a suggest document
        raise VramfitError(f"{path} is not a vramfit suggest output") from None
    for item in items:
        if item.get("rank") == rank:
            return doc, item
    raise VramfitError(f"no suggestion #{rank} in {path} (it has {len(items)})")


def suggestion_overrides(doc: dict, item: dict) -> dict:
    """TrainConfig overrides that reproduce a suggestion under its model's recipe."""
    out = {k: item[k] for k in KEYS}
    if item.get("arch") and item["arch"] != GPT2:  # a nanochat suggestion: its family and options
        out.update(arch_options(item["arch"]))
    recipe = doc.get("recipe") or {}
    out.update({k: recipe[k] for k in ("dtype", "compile", "optimizer", "attn_kernel") if recipe.get(k) is not None})
    out.update({k: item[k] for k in ("optimizer", "grad_accum", "checkpoint") if item.get(k) is not None})
    out["out_dir"] = f"out/suggest-{item['rank']}"
    chat = item.get("nanochat")
    if isinstance(chat, dict):  # suggest --like "<base_train command>": nanochat's model and accumulation
        out.update(arch="nanochat", window_pattern=chat.get("window_pattern", "SSSL"),
                   grad_accum=chat.get("grad_accum_steps", 1))
    if doc.get("data_dir"):
        out["data_dir"] = doc["data_dir"]
    return out


def _predicted_lines(profile: Profile, record: dict, recipe) -> list[str]:  # noqa: ANN001 - a Recipe
    """The profile's prediction of a measured run (memory, and the time of an optimizer step where it has a
    throughput model) beside the reading; a profile of varied switches prices the run's own recipe."""
    from vramfit.fit.memmodel import TARGETS
    from vramfit.units import format_size

    col, shape = TARGETS[profile.target], Shape.of(record)
    own = recipe if profile.switches else None
    try:
        pred = float(profile.memory(shape, own)[0]) if own is not None else \
            float(profile.model.predict(profile.model.columns(shape.as_dict(), shape.arch))[0])
    except VramfitError as exc:
        return [f"no prediction of this run's recipe: {exc}"]
    margin, lines = pred * profile.margin_rel, []
    if record.get(col) is not None:
        err = (pred - record[col]) / record[col]
        lines.append(f"predicted {format_size(pred)} (+ margin {format_size(margin)}) vs measured "
                     f"{format_size(record[col])} ({profile.target}): error {err:+.2%}"
                     + ("" if pred + margin >= record[col] else "  [measured exceeds prediction + margin]"))
        record["predicted_bytes"] = int(pred)
    else:
        lines.append(f"no {profile.target} reading on this device to compare with the prediction")
    ms = profile.step_ms(shape, own) if profile.throughput is not None else None
    if ms is not None and record.get("ms_per_iter"):
        lines.append(f"predicted {float(ms[0]):,.1f} ms per optimizer step vs measured {record['ms_per_iter']:,.1f} "
                     f"ms/iter: error {(float(ms[0]) - record['ms_per_iter']) / record['ms_per_iter']:+.2%}")
    return lines


def compare_and_store(cfg, record: dict, doc: dict | None, db: str | Path) -> list[str]:
    """Lines comparing the measured stable memory with the model's prediction; the run stored as a point."""
    from vramfit.measure import devices
    from vramfit.recipe import Recipe
    from vramfit.store import Store
    from vramfit.units import format_size

    # the GPU the run actually trained on (its UUID from torch), not NVML's first one; the recipe as resolved there
    facts = devices.facts_for_uuid(record.get("gpu_uuid")) or devices.resolve(cfg.device)[0]
    recipe = Recipe(dtype=record.get("dtype") or cfg.dtype, compile=record.get("compile", cfg.compile),
                    optimizer=cfg.optimizer, attn_kernel=cfg.attn_kernel, grad_accum=cfg.gradient_accumulation_steps,
                    checkpoint=cfg.checkpoint)
    recipe = facts.resolve(recipe)
    lines = []
    measured_keys = [k for k in ("nvml_bytes", "reserved_bytes", "allocated_bytes", "tracked_bytes", "rss_bytes")
                     if record.get(k) is not None]
    lines.append(f"measured (stable: {record.get('stable')} after {record.get('iters', 0)} steps): "
                 + ", ".join(f"{k.removesuffix('_bytes')} {format_size(record[k])}" for k in measured_keys))
    profile = None
    if doc and doc.get("model_file") and Path(doc["model_file"]).is_file():
        profile = Profile.load(doc["model_file"])
    if profile is not None:
        lines += _predicted_lines(profile, record, recipe)
    with Store(db) as store:
        env = store.environment(facts.to_dict(), recipe, record.get("emulate_bytes"))
        point_id = store.insert_point(record, env, None, source="train")
    lines.append(f"stored as point {point_id} (source train) in {db}")
    return lines
