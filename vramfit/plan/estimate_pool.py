"""Many dry-run estimates at once: a process pool of estimator workers, each importing torch once, spread over the
cores this process may use. Each estimate is a pure function of its config, so the pool returns exactly what
running them one by one in this process would (same order, same bytes); a worker that dies becomes a one-line
`VramfitError`."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from vramfit.errors import VramfitError


@dataclass(frozen=True)
class Job:
    """One dry-run estimate: the shape (SHAPE_KEYS order), the recipe (as a dict), target and capability."""

    shape: tuple[int, int, int, int, int, int]
    recipe: tuple[tuple[str, object], ...]
    target: str
    capability: tuple[int, int]

    def cost(self) -> int:
        """A rough relative cost (layers x width x tokens) to start the big ones first."""
        L, _, C, T, B, V = self.shape
        return L * C * T * B + T * B * V

    def graphs(self) -> tuple:
        """The jobs that share the compiled-step emulation's traced graphs (`vramfit.dryrun.compiled`: any depth,
        any batch size but 1, which is traced on its own): run in one worker, they are traced once."""
        _, H, C, T, B, V = self.shape
        return H, C, T, V, B if B < 2 else 0, self.recipe, self.target, self.capability


def _warm() -> None:
    """Worker initializer: import torch and the fake-tensor step once for every estimate this worker runs."""
    import vramfit.dryrun.fake_step  # noqa: F401


def run_jobs(jobs: list[Job]) -> list[int]:
    """`run_job` for each job, in this process (one task of the pool: jobs that share their traced graphs)."""
    return [run_job(j) for j in jobs]


def run_job(job: Job) -> int:
    """What the device would show for one job (`vramfit.dryrun.estimate.device_bytes`), in this process."""
    from gpt.config import GPTConfig
    from vramfit.dryrun.estimate import device_bytes, estimate_step
    from vramfit.recipe import Recipe

    L, H, C, T, B, V = job.shape
    return device_bytes(estimate_step(GPTConfig(L, H, C, T, V), B, Recipe.from_dict(dict(job.recipe)),
                                      job.target, job.capability, headline_only=True))


def default_workers() -> int:
    """The cores this process may run on (`VRAMFIT_WORKERS` overrides)."""
    env = os.environ.get("VRAMFIT_WORKERS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise VramfitError(f"VRAMFIT_WORKERS must be a whole number, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class EstimatorPool:
    """Run `Job`s in parallel (or in this process with one worker); use as a context manager."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else default_workers()
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> EstimatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # fork is cheapest while this process holds no torch (nothing to copy-on-write, no threads); otherwise
            # spawn, which is also the only safe choice once torch has started its own threads
            method = "fork" if sys.platform == "linux" and "torch" not in sys.modules else "spawn"
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                                 initializer=_warm)
        return self._executor

    def run(self, jobs: list[Job]) -> list[int]:
        """Device bytes of each job, in the order given."""
        if not jobs:
            return []
        if self.workers <= 1 or (len(jobs) == 1 and self._executor is None):
            return [run_job(j) for j in jobs]
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.graphs(), []).append(i)
        # big first (the last to finish is small); one task per group of jobs sharing their traced graphs
        tasks = sorted(groups.values(), key=lambda ix: -sum(jobs[i].cost() for i in ix))
        out: list[int] = [0] * len(jobs)
        try:
            futures = [(ix, self._pool().submit(run_jobs, [jobs[i] for i in ix])) for ix in tasks]
            for ix, fut in futures:
                for i, value in zip(ix, fut.result(), strict=True):
                    out[i] = value
            return out
        except BrokenProcessPool:
            self._executor = None
            raise VramfitError("an estimator worker died; this torch build cannot trace the step "
                               "(try `vramfit estimate` on one config to see why)") from None
