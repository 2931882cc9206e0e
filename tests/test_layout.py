"""The architecture's promises that import-linter cannot check: the thin CLI loads torch only for the commands
that train, measure or estimate; a fitted model predicts without scikit-learn."""

import subprocess
import sys
from pathlib import Path

from planner_data import synthetic_points

from vramfit.plan.workflows import fit_and_save

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from vramfit.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "sklearn", "scipy", "pandas", "gpt.model", "gpt.train") if m in sys.modules)
print("LOADED", ",".join(heavy))
sys.exit(rc)
"""


def loaded(*args: str) -> tuple[int, list[str], str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("LOADED")][-1]
    return r.returncode, [m for m in line.removeprefix("LOADED").strip().split(",") if m], r.stdout + r.stderr


def test_help_and_import_do_not_load_torch():
    rc, mods, out = loaded("--help")
    assert rc == 0 and mods == [], out


def test_each_commands_help_loads_nothing_heavy():
    """The cli package registers every command at import; none of their modules imports torch, pandas or
    scikit-learn at module level (each command imports what it needs when it runs). One process, every command."""
    probe = PROBE.replace("rc = main(sys.argv[1:])", "rc = max(main([c, '--help']) for c in sys.argv[1:])")
    commands = ["info", "runs", "export", "sweep", "fit", "predict", "suggest", "estimate", "prepare", "train",
                "sample", "export-nanogpt", "plot", "report"]
    r = subprocess.run([sys.executable, "-c", probe, *commands], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "LOADED ", r.stdout[-500:] + r.stderr[-500:]


def test_suggest_and_predict_from_a_model_file_load_neither_torch_nor_sklearn(tmp_path):
    points = synthetic_points()
    points["device_key"] = "synthetic"
    (_, path), = fit_and_save(points, tmp_path)
    rc, mods, out = loaded("suggest", "--vram", "8G", "--model", str(path), "--data-dir", str(tmp_path / "none"),
                           "--save", str(tmp_path / "s.json"), "--top", "3")
    assert rc == 0 and "#1: vramfit train" in out, out
    assert mods == [], f"suggest loaded {mods}"
    rc, mods, out = loaded("predict", "--n-layer", "4", "--n-head", "4", "--n-embd", "256", "--block-size", "256",
                           "--batch-size", "8", "--model", str(path))
    assert rc == 0 and "predicted peak" in out and mods == [], (mods, out)


def test_estimate_leaves_torch_to_the_warm_estimator_process():
    """`vramfit estimate` asks the warm estimator process (`vramfit.dryrun.warm`), which holds torch: the command's
    own process imports none of it."""
    rc, mods, out = loaded("estimate", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
                           "--batch-size", "1", "--vocab", "64", "--target", "cpu")
    assert rc == 0 and "peak" in out and "torch" not in mods, out


def test_suggest_from_a_warm_dry_run_cache_loads_no_torch(tmp_path):
    """A second `suggest --no-profile` with the same key takes the model and re-checks from the cache: no torch."""
    import json

    from test_noprofile import FormulaEstimator

    from vramfit.dryrun.cache import EstimateCache
    from vramfit.dryrun.estimate import parse_recipe
    from vramfit.plan.noprofile import DryRunPlanner
    from vramfit.plan.suggest import suggest

    cache = tmp_path / "cache"
    with DryRunPlanner(parse_recipe("dtype=bfloat16,optimizer=fused"), (8, 0), 256,
                       estimator=FormulaEstimator(cache=EstimateCache(cache))) as p:  # a first (cold) call's cache
        model, margin, _ = p.model()
        p.verify(suggest(model, margin, 4 * 2**30, top=3, vocab_size=[256]), 4 * 2**30)
    rc, mods, out = loaded("suggest", "--vram", "4G", "--no-profile", "--capability", "8.0", "--vocab", "256",
                           "--top", "3", "--cache-dir", str(cache), "--data-dir", str(tmp_path / "none"), "--json",
                           "--save", str(tmp_path / "s.json"))
    assert rc == 0, out
    doc = json.loads(out[:out.rindex("LOADED")])
    assert doc["dry_run"]["estimates_run"] == 0 and doc["dry_run"]["from_cache"] == 16 + 3
    assert mods == [], f"suggest loaded {mods}"


def test_no_function_below_the_cli_takes_more_than_ten_parameters():
    """Issue 27's rule: only the CLI's command signatures (one parameter per flag) may be longer; below them a
    request, spec or options type carries what belongs together."""
    import ast

    root = Path(__file__).resolve().parents[1]
    long = []
    for path in [*root.glob("vramfit/**/*.py"), *root.glob("gpt/**/*.py")]:
        if "cli" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                n = len(names) - (names[:1] in (["self"], ["cls"]))
                if n > 10:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n})")
    assert not long, long
