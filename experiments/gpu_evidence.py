"""The GPU evidence run: one command, stages in priority order, each bundled under the output folder as it ends.

    bash experiments/gpu_evidence.sh [--out DIR] [--budget-s N] [--list]

Stages (their bodies: experiments/gpu_stages.py; seconds estimated for an H100, `--list` prints them):
  a facts    system facts (nvidia-smi -q, versions, provenance); the measured CUDA context, its limits and local-memory
             reservation, and what the first cuBLAS matmul, SDPA call of each kernel and compiled GPT-2 steps add
  b checks   the assumptions only a GPU can check (issue 12's items 4-9), each able to fail
  c sweep    a compiled bf16 fused-AdamW sweep (GPT-2 124M at block 1024, batch 4/8/16; small shapes whose 1-10 MiB
             tensors stress the allocator), the dry-run estimate beside each point
  d tests    the fork server's fork-safety test and the quick `gpu`-marked tests
  e extra    only if time is left: an emulated 8 GiB card, the dynamic-batch comparison, the demo

Each stage runs in its own process with a time limit; when it ends (done, failed or cut off), its group's files go
into DIR/<group>.tar.gz and DIR/summary.md is rewritten, so a run that is killed keeps every finished stage. At most
8 files result (summary.md + one archive per group), each with the provenance (GPU, driver, torch, CUDA, cuDNN,
Triton, date). Without a CUDA GPU the same plan runs as a rehearsal: the stages that need CUDA say so and skip, the
others run a CPU analogue. Standard library only here (`--list` imports nothing heavy); the stages import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES_PY = ROOT / "experiments" / "gpu_stages.py"
BUDGET_S = 480  # one 10-minute command of the lent machine, with room for its start and one rerun
MAX_FILES = 8
MAX_ARCHIVE_BYTES = 15 * 2**20  # below the 16 MiB a result file may have
MAX_MEMBER_BYTES = 4 * 2**20  # a longer log keeps its tail
KILL_GRACE_S = 6  # SIGINT, then SIGKILL after this long
OVERHEAD_S = 5  # the runner's own start, bundling and summary, kept out of the stages' share of the budget
GROUPS = {"a": "a-facts", "b": "b-checks", "c": "c-sweep", "d": "d-tests", "e": "e-extra"}


@dataclass(frozen=True)
class Stage:
    """One stage: `gpu_s` its estimated seconds on an H100, `cpu_s` on a CPU (the rehearsal; 0: it needs CUDA and
    only says so), `optional` (group e) runs only with time left over."""

    name: str
    group: str
    gpu_s: int
    cpu_s: int
    what: str
    optional: bool = False

    def seconds(self, gpu: bool) -> int:
        return self.gpu_s if gpu else self.cpu_s


STAGES = (
    Stage("facts-system", "a", 10, 10, "nvidia-smi -q, versions, provenance, environment"),
    Stage("facts-context", "a", 35, 0, "CUDA context, limits, local memory; first cuBLAS, SDPA, compiled GPT-2 step"),
    Stage("check-4", "b", 25, 0, "own PID in NVML beside a foreign process"),
    Stage("check-5", "b", 20, 0, "get_device_properties allocates nothing; train --measure's GPU and baseline"),
    Stage("check-6", "b", 25, 0, "emulated 3 GiB card: caps, oom, NVML within the card"),
    Stage("check-7", "b", 10, 0, "NVML counts the allocator's reserved bytes one for one"),
    Stage("check-8", "b", 30, 0, "compiled point: step 1 left out of the peak"),
    Stage("check-9", "b", 25, 0, "NCCL's memory outside the allocator (1 rank)"),
    Stage("sweep-gpt2", "c", 150, 0, "compiled GPT-2 124M, block 1024, batch 4/8/16, estimate beside"),
    Stage("sweep-small", "c", 95, 30, "compiled small shapes (1-10 MiB tensors), estimate beside"),
    Stage("tests", "d", 50, 15, "fork-safety test, quick gpu-marked tests"),
    Stage("emulated-8g", "e", 120, 0, "GPT-2 124M on an emulated 8 GiB card, estimate beside", True),
    Stage("dynamic-batch", "e", 420, 0, "compiled points static vs dynamic batch (bench_dynamic_batch.py)", True),
    Stage("demo", "e", 420, 0, "scripts/demo.sh on this GPU", True),
)


def plan(stages: tuple[Stage, ...], budget_s: float, gpu: bool) -> tuple[list[Stage], list[Stage], list[Stage]]:
    """(planned, optional, skipped): the required stages in priority order that fit `budget_s` together (first
    fit: a stage too long for what is left is skipped, a shorter later one may still fit), the optional stages
    (run only if time is left when they come), and the required stages that did not fit."""
    planned, skipped, used = [], [], 0
    for s in stages:
        if s.optional:
            continue
        if used + s.seconds(gpu) <= budget_s:
            planned.append(s)
            used += s.seconds(gpu)
        else:
            skipped.append(s)
    return planned, [s for s in stages if s.optional], skipped


def list_plan(budget_s: float, gpu: bool) -> str:
    """The stages with their estimated seconds (H100, and here where this machine has no GPU) and the totals."""
    planned, optional, skipped = plan(STAGES, budget_s - OVERHEAD_S, True)
    lines = [f"{'stage':<15}{'group':<11}{'H100 s':>7}" + ("" if gpu else f"{'CPU s':>7}") + "  what"]
    for s in STAGES:
        mark = " (if time is left)" if s.optional else (" (skipped: over the budget)" if s in skipped else "")
        here = "" if gpu else f"{s.cpu_s if s.cpu_s else '-':>7}"
        lines.append(f"{s.name:<15}{GROUPS[s.group]:<11}{s.gpu_s:>7}{here}  {s.what}{mark}")
    extra = sum(s.gpu_s for s in optional)
    lines.append(f"total: {sum(s.gpu_s for s in planned) + OVERHEAD_S} s on an H100 for the {len(planned)} required "
                 f"stages and the runner (budget {budget_s:g} s); optional stages up to {extra} s more, only with "
                 "time left")
    if not gpu:
        cpu_planned = plan(STAGES, budget_s - OVERHEAD_S, False)[0]
        lines.append(f"here (no CUDA GPU): a rehearsal of ~{sum(s.cpu_s for s in cpu_planned)} s; the stages "
                     "marked - need CUDA and only say so")
    return "\n".join(lines)


# --- this machine ---------------------------------------------------------------------------------------------
def gpu_name() -> str | None:
    """The first GPU's name from NVML (pynvml), else nvidia-smi, else None; no CUDA context, no torch."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() > 0:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - no library, no driver: try nvidia-smi
        pass
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30, check=False)
        first = r.stdout.strip().splitlines()[:1]
        return first[0].strip() if r.returncode == 0 and first else None
    except (OSError, subprocess.SubprocessError):
        return None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


# --- bundling ---------------------------------------------------------------------------------------------------
def _member(path: Path) -> tuple[bytes, str]:
    """A file's bytes for an archive, a long one cut to its tail (text) or left out (binary), and a note."""
    size = path.stat().st_size
    if size <= MAX_MEMBER_BYTES:
        return path.read_bytes(), ""
    if path.suffix in (".log", ".txt", ".md", ".csv", ".json"):
        with path.open("rb") as f:
            f.seek(size - MAX_MEMBER_BYTES)
            return b"[... cut: the last 4 MiB follow]\n" + f.read(), f"{path.name}: cut to its last 4 MiB"
    return b"", f"{path.name}: {size} bytes, left out (over 4 MiB)"


def bundle(group_dir: Path, dest: Path, extra: dict[str, bytes]) -> int:
    """Write `group_dir` (stage folders) plus `extra` files as the gzipped tar `dest`, atomically (a temporary file
    beside it, renamed); members are added smallest first and the archive stays below MAX_ARCHIVE_BYTES (what does
    not fit is named in MANIFEST.txt). Returns the archive's size."""
    files = sorted((p for p in group_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    tmp = dest.with_name(f".{dest.name}.tmp")
    notes, budget = [], MAX_ARCHIVE_BYTES - 2**16
    with tarfile.open(tmp, "w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))

        for name, data in extra.items():
            add(name, data)
        for p in files:
            data, note = _member(p)
            if note:
                notes.append(note)
            if not data:
                continue
            if tar.offset + len(data) > budget:  # uncompressed, so the archive stays below it
                notes.append(f"{p.relative_to(group_dir)}: left out (the archive is at its size limit)")
                continue
            add(str(p.relative_to(group_dir)), data)
        add("MANIFEST.txt", ("\n".join(notes) or "every file is here") .encode() + b"\n")
    os.replace(tmp, dest)
    return dest.stat().st_size


# --- the run ----------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@dataclass
class Outcome:
    stage: Stage
    status: str  # ok | fail | timeout | skip | interrupted
    seconds: float
    note: str
    lines: list[str]


class Run:
    """One evidence run into `out` (see the module docstring)."""

    def __init__(self, out: Path, budget_s: float, gpu: str | None, python: str) -> None:
        self.out, self.budget_s, self.gpu, self.python = out, budget_s, gpu, python
        self.start = time.time()
        self.deadline = self.start + budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="vramfit-evidence-"))
        self.outcomes: list[Outcome] = []
        self.skipped: list[tuple[Stage, str]] = []
        self.provenance: dict = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "gpu": gpu or "none (CPU rehearsal)"}

    def left(self) -> float:
        return self.deadline - time.time()

    def say(self, msg: str) -> None:
        print(f"[gpu_evidence {time.time() - self.start:5.0f}s] {msg}", flush=True)

    def run_stage(self, s: Stage) -> Outcome:
        work = self.scratch / GROUPS[s.group] / s.name
        work.mkdir(parents=True, exist_ok=True)
        # twice its estimate, and never past the budget: a stage that overruns is stopped (SIGINT, SIGKILL after
        # KILL_GRACE_S, then 5 s to die) with time left to bundle what it finished
        limit = min(max(s.seconds(bool(self.gpu)) * 2, 30), self.left() - KILL_GRACE_S - 5 - 3)
        env = {**os.environ, "VRAMFIT_EVIDENCE_DEADLINE": f"{time.time() + limit:.0f}",
               "VRAMFIT_EVIDENCE_GPU": self.gpu or "", "PYTHONPATH": os.pathsep.join(
                   filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.say(f"start {s.name} ({s.what}; up to {limit:.0f} s)")
        t0, status = time.time(), "ok"
        with (work / "stage.log").open("wb") as log:
            proc = subprocess.Popen([self.python, str(STAGES_PY), s.name, str(work)], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=max(1.0, limit))
            except subprocess.TimeoutExpired:
                status = "timeout"
            except Interrupted:
                status = "interrupted"
            finally:
                if proc.poll() is None:
                    _stop(proc)
        result = _read_json(work / "result.json")
        if status == "ok":
            status = result.get("status") or ("fail" if proc.returncode else "ok")
        note = result.get("note") or ("" if proc.returncode == 0 else f"exit {proc.returncode}; see stage.log")
        if status in ("timeout", "interrupted"):
            note = f"cut off after {time.time() - t0:.0f} s (what it finished is kept); " + note
        if not result:  # cut off or crashed before it wrote its result: the runner writes it
            (work / "result.json").write_text(json.dumps({"status": status, "note": note, "lines": []}))
        return Outcome(s, status, time.time() - t0, note, list(result.get("lines") or []))

    def record_skip(self, s: Stage, why: str) -> Outcome:
        work = self.scratch / GROUPS[s.group] / s.name
        work.mkdir(parents=True, exist_ok=True)
        (work / "result.json").write_text(json.dumps({"status": "skip", "note": why}))
        return Outcome(s, "skip", 0.0, why, [])

    def finish_stage(self, o: Outcome) -> None:
        """Bundle the stage's group and rewrite the summary (the moment the stage ended)."""
        group = GROUPS[o.stage.group]
        if o.stage.name == "facts-system":
            self.provenance.update(_read_json(self.scratch / group / o.stage.name / "provenance.json"))
        status = {x.stage.name: {"status": x.status, "seconds": round(x.seconds, 1), "note": x.note}
                  for x in self.outcomes if x.stage.group == o.stage.group}
        extra = {"provenance.json": json.dumps(self.provenance, indent=1).encode(),
                 "stages.json": json.dumps(status, indent=1).encode()}
        size = bundle(self.scratch / group, self.out / f"{group}.tar.gz", extra)
        self.write_summary()
        self.say(f"{o.stage.name}: {o.status} in {o.seconds:.0f} s{': ' + o.note if o.note else ''} "
                 f"-> {group}.tar.gz ({size / 2**20:.2f} MiB)")

    def write_summary(self, final: bool = False) -> None:
        p = self.provenance
        lines = [f"# GPU evidence: {p.get('gpu')}", "",
                 f"- GPU {p.get('gpu')}, driver {p.get('driver')}, {p.get('gpus', '?')} GPU(s) visible",
                 f"- torch {p.get('torch')}, CUDA {p.get('cuda')}, cuDNN {p.get('cudnn')}, Triton {p.get('triton')}, "
                 f"Python {p.get('python')}",
                 f"- date {p.get('date')}, commit {p.get('commit')}, host {p.get('host')}",
                 f"- budget {self.budget_s:g} s, {'finished' if final else 'running'} after "
                 f"{time.time() - self.start:.0f} s; `bash experiments/gpu_evidence.sh`", "",
                 "| stage | group | status | seconds | estimated | note |", "|---|---|---|---:|---:|---|"]
        for o in self.outcomes:
            lines.append(f"| {o.stage.name} | {GROUPS[o.stage.group]} | **{o.status}** | {o.seconds:.0f} | "
                         f"{o.stage.seconds(bool(self.gpu))} | {o.note.replace('|', '/')[:300]} |")
        for s, why in self.skipped:
            lines.append(f"| {s.name} | {GROUPS[s.group]} | skipped | - | {s.seconds(bool(self.gpu))} | {why} |")
        lines.append("")
        for o in self.outcomes:
            if o.lines:
                lines += [f"## {o.stage.name}: {o.stage.what}", "", *o.lines, ""]
        tmp = self.out / ".summary.md.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.out / "summary.md")

    def go(self, planned: list[Stage], optional: list[Stage]) -> int:
        try:
            for s in planned + optional:
                need = s.seconds(bool(self.gpu))
                if need == 0:  # a CUDA stage on a machine without a GPU: it says so, in its group's archive
                    o = self.record_skip(s, "needs CUDA: no CUDA GPU here (CPU rehearsal)")
                elif self.left() < KILL_GRACE_S + 8 + (need if s.optional else min(need, 5)):
                    self.skipped.append((s, f"out of time ({self.left():.0f} s left, ~{need} s needed)"))
                    self.say(f"skip {s.name}: out of time")
                    continue
                else:
                    o = self.run_stage(s)
                self.outcomes.append(o)
                self.finish_stage(o)
                if o.status == "interrupted":
                    raise Interrupted("stage interrupted")
        except Interrupted as why:
            for tmp in self.out.glob(".*.tmp"):  # a bundle or summary cut off while being written
                tmp.unlink(missing_ok=True)
            self.say(f"interrupted ({why}): the finished stages are in {self.out}")
            self.write_summary(final=True)
            return 130
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.write_summary(final=True)
        failed = [o.stage.name for o in self.outcomes if o.status == "fail"]
        self.say(f"done in {time.time() - self.start:.0f} s: {self.out}/summary.md"
                 + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT the stage's process group (a sweep then stops cleanly), SIGKILL it after KILL_GRACE_S."""
    for sig, wait in ((signal.SIGINT, KILL_GRACE_S), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def prepare_out(out: Path) -> None:
    """Create `out`; this run's names replace a previous run's (summary.md and the group archives); anything else
    there is left alone, but counts against the 8 files: refused beyond that."""
    out.mkdir(parents=True, exist_ok=True)
    ours = {"summary.md", *(f"{g}.tar.gz" for g in GROUPS.values())}
    for name in ours:
        (out / name).unlink(missing_ok=True)
    others = [p.name for p in out.iterdir() if p.name not in ours]
    if len(others) + len(ours) > MAX_FILES:  # summary.md + one archive per group must fit within the 8 files
        raise SystemExit(f"error: {out} holds {len(others)} other files ({', '.join(sorted(others)[:5])}...): "
                         f"give an empty --out folder (at most {MAX_FILES} files may result)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="experiments/gpu_evidence.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="output folder (default: results/gpu/<gpu-name>/)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"seconds for the whole run (default {BUDGET_S})")
    ap.add_argument("--list", action="store_true", help="print the stages and their estimated seconds, run nothing")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        print(f"error: --budget-s must be positive, got {args.budget_s:g}", file=sys.stderr)
        return 2
    name = gpu_name()
    if args.list:
        print(list_plan(args.budget_s, bool(name)))
        return 0
    out = Path(args.out) if args.out else ROOT / "results" / "gpu" / slug(name or "cpu")
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        prepare_out(out)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    python = os.environ.get("VRAMFIT_PYTHON") or sys.executable
    planned, optional, skipped = plan(STAGES, args.budget_s - OVERHEAD_S, bool(name))
    run = Run(out, args.budget_s, name, python)
    for s in skipped:
        run.skipped.append((s, f"over the budget (~{s.seconds(bool(name))} s)"))
    run.say(f"{name or 'no CUDA GPU: CPU rehearsal'}; output {out}; budget {args.budget_s:g} s; python {python}")
    if skipped:
        run.say("skipped for the budget: " + ", ".join(f"{s.name} (~{s.seconds(bool(name))} s)" for s in skipped))
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    return run.go(planned, optional)


if __name__ == "__main__":
    sys.exit(main())
