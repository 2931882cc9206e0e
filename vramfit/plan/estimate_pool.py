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
from vramfit.shape import Shape


@dataclass(frozen=True)
class Job:
    """One dry-run estimate: the shape, the recipe (as sorted items), target and capability."""

    shape: Shape
    recipe: tuple[tuple[str, object], ...]
    target: str
    capability: tuple[int, int]

    def cost(self) -> int:
        """A rough relative cost (layers x width x tokens) to start the big ones first."""
        L, _, C, T, B, V = self.shape.as_tuple()
        return L * C * T * B + T * B * V

    def graphs(self) -> tuple:
        """The jobs that share the compiled-step emulation's traced graphs (`vramfit.dryrun.compiled`: any depth,
        any batch size but 1, which is traced on its own): run in one worker, they are traced once. An eager
        recipe traces nothing: each job is its own group."""
        _, H, C, T, B, V = self.shape.as_tuple()
        if not self.compiles():
            return self.shape, self.recipe, self.target, self.capability
        return H, C, T, V, B if B < 2 else 0, self.recipe, self.target, self.capability

    def compiles(self) -> bool:
        """Whether the recipe compiles on the target (`gpt.config.resolve_recipe`; a refused recipe: no)."""
        from gpt.config import resolve_recipe
        from gpt.errors import ConfigError

        r = dict(self.recipe)
        try:
            return resolve_recipe(r.get("dtype", "auto"), r.get("compile"), r.get("optimizer", "auto"), self.target,
                                  self.capability)[1]
        except ConfigError:
            return False


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

    L, H, C, T, B, V = job.shape.as_tuple()
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


def assign(groups: dict[tuple, int], workers: int, home: dict[tuple, int]) -> dict[tuple, int]:
    """Worker of each group of jobs ({graphs key: cost}), biggest groups first: the worker that traced its graphs
    before (`home`) unless that worker already has more than twice the least loaded one's work in this call (then
    tracing again elsewhere is cheaper than waiting), else the least loaded one. `home` learns the assignments."""
    load = [0] * workers
    out: dict[tuple, int] = {}
    for key in sorted(groups, key=lambda k: -groups[k]):
        least = min(range(workers), key=lambda i: load[i])
        w = home[key] if key in home and load[home[key]] <= 2 * load[least] else least
        out[key] = home[key] = w
        load[w] += groups[key]
    return out


class EstimatorPool:
    """Run `Job`s in parallel (or in this process with one worker); use as a context manager. Each worker is its
    own single-process executor, so jobs that share traced graphs (`Job.graphs`) go to the worker that has them."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else default_workers()
        self._executors: list[ProcessPoolExecutor] = []
        self._home: dict[tuple, int] = {}

    def __enter__(self) -> EstimatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ex in self._executors:
            ex.shutdown(wait=True, cancel_futures=True)
        self._executors, self._home = [], {}

    def _pool(self, worker: int) -> ProcessPoolExecutor:
        if not self._executors:
            # fork is cheapest while this process holds no torch (nothing to copy-on-write, no threads); otherwise
            # spawn, which is also the only safe choice once torch has started its own threads
            method = "fork" if sys.platform == "linux" and "torch" not in sys.modules else "spawn"
            ctx = multiprocessing.get_context(method)
            self._executors = [ProcessPoolExecutor(1, mp_context=ctx, initializer=_warm) for _ in range(self.workers)]
        return self._executors[worker]

    def run(self, jobs: list[Job]) -> list[int]:
        """Device bytes of each job, in the order given."""
        if not jobs:
            return []
        if self.workers <= 1 or (len(jobs) == 1 and not self._executors):
            return [run_job(j) for j in jobs]
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.graphs(), []).append(i)
        costs = {k: sum(jobs[i].cost() for i in ix) for k, ix in groups.items()}
        where = assign(costs, self.workers, self._home)
        out: list[int] = [0] * len(jobs)
        try:
            order = sorted(groups, key=lambda k: -costs[k])  # big first within a worker: the last to finish is small
            futures = [(groups[k], self._pool(where[k]).submit(run_jobs, [jobs[i] for i in groups[k]]))
                       for k in order]
            for ix, fut in futures:
                for i, value in zip(ix, fut.result(), strict=True):
                    out[i] = value
            return out
        except BrokenProcessPool:
            self.close()
            raise VramfitError("an estimator worker died; this torch build cannot trace the step "
                               "(try `vramfit estimate` on one config to see why)") from None
