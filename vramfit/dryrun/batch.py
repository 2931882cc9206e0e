"""Dry-run estimates of many points in ONE child process (`python -m vramfit.dryrun.batch`), so that a crash
of the estimator cannot take a sweep down."""

from __future__ import annotations

import json
import sys

from vramfit.child import run_json
from vramfit.shape import KEYS


def point_key(p: dict) -> tuple[int, ...]:
    """A point's shape as a tuple (the order of KEYS)."""
    return tuple(int(p[k]) for k in KEYS)


def estimate_points(points: list[dict], recipe: dict, target: str, capability: str | None,
                    timeout: float = 600.0, fit_target: str = "auto") -> tuple[dict[tuple, float], str]:
    """Dry-run estimates for `points` in the units of `fit_target` (`vramfit.dryrun.estimate.target_bytes`;
    auto: nvml on CUDA, tracked on the CPU), all in ONE child process (a crash there cannot take the sweep down).
    Returns (key -> bytes, note); a failure gives ({}, why)."""
    req = {"points": points, "recipe": recipe, "target": target, "capability": capability, "fit_target": fit_target}
    res = run_json([sys.executable, "-m", "vramfit.dryrun.batch"], req, timeout)
    if res.timed_out:
        return {}, f"dry-run estimates took more than {timeout:.0f} s"
    out = {point_key(d["point"]): float(d["bytes"]) for d in res.records() if "bytes" in d}
    note = "" if res.returncode == 0 else f"estimator exit {res.returncode}: {res.stderr_tail(200)}"
    return out, note


def _estimate_main() -> int:
    """Child process: read {points, recipe, target, capability}, print one JSON line per estimated point."""
    from gpt.config import GPTConfig
    from vramfit.dryrun.estimate import estimate_step, parse_capability, target_bytes
    from vramfit.recipe import Recipe

    req = json.loads(sys.stdin.read())
    recipe = Recipe.from_dict(req["recipe"])
    cap = parse_capability(req["capability"]) if req.get("capability") else (8, 0)
    fit_target = req.get("fit_target", "auto")
    if fit_target == "auto":
        fit_target = "nvml" if req["target"] == "cuda" else "tracked"
    for p in req["points"]:
        try:
            mc = GPTConfig(p["n_layer"], p["n_head"], p["n_embd"], p["block_size"], p["vocab_size"])
            est = estimate_step(mc, int(p["batch_size"]), recipe, req["target"], cap, headline_only=True)
        except Exception as exc:  # noqa: BLE001 - one bad point does not stop the others
            print(json.dumps({"point": p, "error": str(exc)[:200]}), flush=True)
            continue
        print(json.dumps({"point": p, "bytes": target_bytes(est, fit_target), "peak_bytes": est.peak_bytes}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_estimate_main())
