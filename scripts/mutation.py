"""Mutation testing of vramfit's pure-logic modules with mutmut, one module at a time, each against its own fast
unit tests only (the files of small synthetic cases written for it: the end-to-end files that fit 100+ points or
sweep are too slow to run once per mutant); the score per module and every surviving mutant go to
results/bench/mutation.csv.

    python scripts/mutation.py [module ...]        (default: every module; see MODULES; or scripts/mutation.sh)
    python scripts/mutation.py --reasons-only      (re-score the CSV after explaining survivors; no mutmut run)
    MUTATION_JOBS=1 python scripts/mutation.py units

Each module runs in a scratch copy of the repository (mutmut writes its `mutants/` tree there), so the worktree is
never touched. A module's rows in the CSV are replaced, the other modules' rows are kept. A surviving mutant is
explained in scripts/mutation_survivors.toml (verdict "equivalent": no test can tell it apart, it does not count
against the score; "left alone": a real gap, counted as a survivor) keyed by mutant name and the exact change, so
a reason goes stale when the code changes.

score = (killed + timeout) / (mutants - equivalent). Not part of CI (minutes per module): run it before closing
work on these modules.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "results" / "bench" / "mutation.csv"
SURVIVORS = ROOT / "scripts" / "mutation_survivors.toml"
FAST = ["-m", "not slow"]  # tests that need the quick-grid sweep or many dry runs are marked slow


@dataclass(frozen=True)
class Module:
    file: str  # the source file mutated
    mutants: tuple[str, ...]  # mutmut name patterns: which of its functions count
    tests: tuple[str, ...]  # the fast unit test files that cover it


MODULES = {
    "units": Module("vramfit/units.py", ("vramfit.units.*",), ("tests/test_units.py",)),
    "grid": Module("vramfit/sweep/grid.py", ("vramfit.sweep.grid.*",),
                   ("tests/test_grid.py",)),
    "features": Module("vramfit/fit/features.py", ("vramfit.fit.features.*",), ("tests/test_features_logic.py",)),
    "memmodel": Module("vramfit/fit/memmodel.py", ("vramfit.fit.memmodel.*",),
                       ("tests/test_memmodel_logic.py", "tests/test_memmodel_invariants.py")),
    "throughput": Module("vramfit/fit/throughput.py", ("vramfit.fit.throughput.*",),
                         ("tests/test_throughput_logic.py",)),
    "suggest": Module("vramfit/plan/suggest.py", ("vramfit.plan.suggest.*",), ("tests/test_suggest_logic.py",)),
    # the store's queries (reading, resume identity), not its opening checks or writes
    "store": Module("vramfit/store.py", tuple(f"vramfit.store.{n}*" for n in (
        "x_device_key", "x__process_gone", "xǁStoreǁidentity", "xǁStoreǁmeasured_keys", "xǁStoreǁis_measured",
        "xǁStoreǁpoints_frame", "xǁStoreǁpoint_extras", "xǁStoreǁtrain_runs", "xǁStoreǁsweeps_frame")),
        ("tests/test_store_queries.py",)),
    # the worker's stability rule and OOM classification (run_point needs real training: not a unit)
    "worker": Module("vramfit/measure/worker.py", ("vramfit.measure.worker.x__is_oom*",),
                     ("tests/test_worker_logic.py",)),
    "reader": Module("vramfit/measure/reader.py", ("vramfit.measure.reader.x_is_stable*",),
                     ("tests/test_worker_logic.py",)),
    # the NVML probe's PID -> baseline fallback
    "probe": Module("vramfit/measure/probe.py", ("vramfit.measure.probe.xǁNvmlProbeǁ*",),
                    ("tests/test_probe_nvml.py", "tests/test_probe.py")),
}
COLUMNS = ["module", "row", "file", "mutants", "killed", "timeout", "survived", "no_tests", "equivalent", "score",
           "mutant", "status", "change", "verdict", "reason", "date", "commit", "code_hash", "tool", "python", "torch",
           "machine", "jobs", "seconds"]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores"


def provenance(mod: Module, jobs: int) -> dict:
    import mutmut
    import torch

    dirty = "+dirty" if _git("status", "--porcelain", "--", mod.file, *mod.tests) else ""
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": _git("rev-parse", "--short", "HEAD") + dirty,
            "code_hash": hashlib.sha256((ROOT / mod.file).read_bytes()).hexdigest()[:12],
            "tool": f"mutmut {mutmut.__version__}", "python": platform.python_version(), "torch": torch.__version__,
            "machine": machine(), "jobs": jobs}


def scratch_copy(mod: Module) -> Path:
    """The repository's code, tests and pyproject in a temporary folder, with this module's mutmut config."""
    tmp = Path(tempfile.mkdtemp(prefix="vramfit-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in ("vramfit", "gpt", "tests", "experiments"):
        shutil.copytree(ROOT / name, tmp / name, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    cfg = {"source_paths": ["vramfit"], "only_mutate": [mod.file], "also_copy": ["gpt", "experiments"],
           "pytest_add_cli_args_test_selection": [*mod.tests, *FAST],
           "pytest_add_cli_args": ["-q", "-p", "no:cacheprovider"], "use_git_change_detection": False}
    lines = [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in cfg.items()]
    (tmp / "pyproject.toml").write_text(pyproject + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n")
    return tmp


def statuses(tmp: Path, mod: Module) -> dict[str, str]:
    """mutant name -> mutmut status, for the mutants of this module's selected functions."""
    from fnmatch import fnmatch

    from mutmut.stats import status_by_exit_code

    meta = json.loads((tmp / "mutants" / (mod.file + ".meta")).read_text())
    return {k: status_by_exit_code[v] for k, v in meta["exit_code_by_key"].items()
            if any(fnmatch(k, p) for p in mod.mutants)}


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path = sys.argv[1]
print(json.dumps({name: get_diff_for_mutant(name, path=path) for name in sys.argv[2:]}))
"""


def changes(tmp: Path, mod: Module, names: list[str]) -> dict[str, str]:
    """The mutated lines of each mutant, as `- old | + new` (stripped); one process for all of them."""
    if not names:
        return {}
    out = subprocess.run([sys.executable, "-c", _DIFFS, mod.file, *names], cwd=tmp, capture_output=True, text=True,
                         check=True).stdout
    diffs = json.loads(out.splitlines()[-1])
    result = {}
    for name, diff in diffs.items():
        lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        result[name] = " | ".join(f"{ln[0]} {ln[1:].strip()}" for ln in lines)
    return result


def run_module(name: str, mod: Module, jobs: int, reasons: dict) -> list[dict]:
    tmp = scratch_copy(mod)
    t0 = datetime.datetime.now()
    try:
        log = tmp / "mutmut.log"
        with open(log, "w") as f:
            rc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *mod.mutants],
                                cwd=tmp, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{name}: mutmut failed (exit {rc}); see {log}\n" + log.read_text()[-3000:])
        st = statuses(tmp, mod)
        seconds = round((datetime.datetime.now() - t0).total_seconds())
        survivors = sorted(k for k, v in st.items() if v not in ("killed", "timeout"))
        rows = []
        prov = provenance(mod, jobs) | {"seconds": seconds}
        n_equiv = 0
        diffs = changes(tmp, mod, survivors)
        for m in survivors:
            diff = diffs[m]
            known = reasons.get(m, {})
            verdict, reason = "unexplained", ""
            if known and known.get("change") == diff:
                verdict, reason = known["verdict"], known["reason"]
            elif known:
                verdict, reason = "stale", f"the reason on file was for another change: {known.get('change')}"
            n_equiv += verdict == "equivalent"
            rows.append({"module": name, "row": "survivor", "file": mod.file, "mutant": m, "change": diff,
                         "verdict": verdict, "reason": reason, "status": st[m]} | prov)
        unused = sorted(k for k in reasons if k in st and k not in survivors)
        if unused:
            print(f"  {len(unused)} reasons in {SURVIVORS.name} are for mutants now killed: " + ", ".join(unused))
        count = {s: sum(v == s for v in st.values()) for s in ("killed", "timeout", "survived", "no tests")}
        caught = count["killed"] + count["timeout"]
        denom = len(st) - n_equiv
        summary = {"module": name, "row": "module", "file": mod.file, "mutants": len(st), "killed": count["killed"],
                   "timeout": count["timeout"], "survived": count["survived"], "no_tests": count["no tests"],
                   "equivalent": n_equiv, "score": round(caught / denom, 4) if denom else 1.0} | prov
        print(f"{name}: {len(st)} mutants, {caught} caught, {len(survivors)} survived ({n_equiv} equivalent): "
              f"score {summary['score']:.1%} ({seconds} s)", flush=True)
        for r in rows:
            if r["verdict"] != "equivalent":
                print(f"  {r['verdict']}: {r['mutant']}: {r['change']}", flush=True)
        return [summary, *rows]
    finally:
        if not os.environ.get("MUTATION_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  kept {tmp}")


def write_rows(new: list[dict], modules: set[str]) -> None:
    old = []
    if CSV.is_file():
        with open(CSV, newline="") as f:
            old = [r for r in csv.DictReader(f) if r["module"] not in modules]
    order = {m: i for i, m in enumerate(MODULES)}
    rows = sorted(old + new, key=lambda r: (order.get(r["module"], 99), r["row"] != "module", r.get("mutant", "")))
    CSV.parent.mkdir(parents=True, exist_ok=True)
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def apply_reasons(reasons: dict) -> None:
    """Re-read the CSV, apply the survivors file to its survivor rows and re-score each module (no mutmut run):
    for when a survivor gets its reason after the run."""
    with open(CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["row"] == "survivor":
            known = reasons.get(r["mutant"], {})
            if known.get("change") == r["change"]:
                r["verdict"], r["reason"] = known["verdict"], known["reason"]
    for m in (r for r in rows if r["row"] == "module"):
        equiv = sum(r["row"] == "survivor" and r["module"] == m["module"] and r["verdict"] == "equivalent"
                    for r in rows)
        caught, denom = int(m["killed"]) + int(m["timeout"]), int(m["mutants"]) - equiv
        m["equivalent"], m["score"] = equiv, round(caught / denom, 4) if denom else 1.0
    write_rows(rows, {r["module"] for r in rows})


def main(argv: list[str]) -> int:
    reasons = tomllib.loads(SURVIVORS.read_text()) if SURVIVORS.is_file() else {}
    if argv == ["--reasons-only"]:
        apply_reasons(reasons)
        print(f"re-scored {CSV.relative_to(ROOT)} with {SURVIVORS.name}")
        return 0
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"error: unknown module {unknown[0]!r} (modules: {', '.join(MODULES)})", file=sys.stderr)
        return 2
    jobs = int(os.environ.get("MUTATION_JOBS", "2"))
    for name in names:
        rows = run_module(name, MODULES[name], jobs, reasons)
        write_rows(rows, {name})
    print(f"wrote {CSV.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
