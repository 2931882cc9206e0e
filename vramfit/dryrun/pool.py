"""Warm estimator workers: a process pool, each worker importing torch once, spread over the cores this process may
use (the `Estimator`'s "pool"). Each estimate is a pure function of its request, so the pool returns exactly what
running them one by one in this process would (same order, same bytes); a worker that dies becomes a one-line
`VramfitError`. Requests that share the compiled-step emulation's traced graphs (`graphs`) run in one worker, the
one that traced them before (`assign`)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from vramfit.dryrun.estimate import Estimate, EstimateRequest, estimate_step
from vramfit.errors import VramfitError


def cost(req: EstimateRequest) -> int:
    """A rough relative cost (layers x width x tokens) to start the big ones first."""
    mc, B = req.model, req.batch_size
    return mc.n_layer * mc.n_embd * mc.block_size * B + mc.block_size * B * mc.vocab_size


def compiles(req: EstimateRequest) -> bool:
    """Whether the recipe compiles on the target (`gpt.config.resolve_recipe`; a refused recipe: no)."""
    from gpt.config import resolve_recipe
    from gpt.errors import ConfigError

    r = req.recipe
    try:
        return resolve_recipe(r.dtype, r.compile, r.optimizer, req.target, req.capability, loop=req.loop)[1]
    except ConfigError:
        return False


def graphs(req: EstimateRequest) -> EstimateRequest:
    """The group of requests that share the compiled-step emulation's traced graphs (`vramfit.dryrun.compiled`: any
    depth, any batch size but 1, which is traced on its own): run in one worker, they are traced once. An eager
    recipe traces nothing: each request is its own group."""
    if not compiles(req):
        return req
    return replace(req, model=replace(req.model, n_layer=1), batch_size=min(req.batch_size, 2), headline_only=False)


def _warm(parent: int) -> None:
    """Worker initializer: die with the process that started the pool (`vramfit.child.die_with_parent`: a killed
    `suggest` leaves no worker behind), then import torch and the fake-tensor step once for every estimate this
    worker runs."""
    from vramfit.child import die_with_parent

    die_with_parent(parent)
    import vramfit.dryrun.fake_step  # noqa: F401


def run_group(requests: list[EstimateRequest]) -> list[Estimate]:
    """`estimate_step` for each request, in this process (one task of the pool: requests that share graphs). A group
    at one batch size (a depth sweep, or one suggestion re-checked by `suggest --no-profile`) has the compiled
    step's graphs traced for that size, which costs less than half a symbolic trace (2.0 s against 4.6 s of CPU for
    GPT-2 widths here) and gives the same bytes (`tests/test_compiled.py`); a group of several batch sizes traces
    the batch symbolically, for all of them to share one trace."""
    from vramfit.dryrun import compiled

    symbolic = compiled.SYMBOLIC_BATCH
    compiled.SYMBOLIC_BATCH = symbolic and len({r.batch_size for r in requests}) > 1
    try:
        return [estimate_step(r) for r in requests]
    finally:
        compiled.SYMBOLIC_BATCH = symbolic


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


def assign(groups: dict, workers: int, home: dict) -> dict:
    """Worker of each group of requests ({graphs key: cost}), biggest groups first: the worker that traced its
    graphs before (`home`) unless that worker already has more than twice the least loaded one's work in this call
    (then tracing again elsewhere is cheaper than waiting), else the least loaded one. `home` learns the
    assignments."""
    load = [0] * workers
    out: dict = {}
    for key in sorted(groups, key=lambda k: -groups[k]):
        least = min(range(workers), key=lambda i: load[i])
        w = home[key] if key in home and load[home[key]] <= 2 * load[least] else least
        out[key] = home[key] = w
        load[w] += groups[key]
    return out


class WarmWorkers:
    """Run requests in parallel (or in this process with one worker, or for one request before any worker has
    started). Each worker is its own single-process executor, so requests that share traced graphs go to the worker
    that has them; workers start on first use and stay warm until `close`."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else default_workers()
        self._executors: list[ProcessPoolExecutor] = []
        self._home: dict = {}

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
            self._executors = [ProcessPoolExecutor(1, mp_context=ctx, initializer=_warm, initargs=(os.getpid(),))
                               for _ in range(self.workers)]
        return self._executors[worker]

    def run(self, requests: list[EstimateRequest]) -> list[Estimate]:
        """The estimate of each request, in the order given."""
        groups: dict[EstimateRequest, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(graphs(req), []).append(i)
        if self.workers <= 1 or (len(requests) == 1 and not self._executors):
            out = {i: est for ix in groups.values() for i, est in zip(ix, run_group([requests[i] for i in ix]),
                                                                        strict=True)}
            return [out[i] for i in range(len(requests))]
        costs = {k: sum(cost(requests[i]) for i in ix) for k, ix in groups.items()}
        where = assign(costs, self.workers, self._home)
        out: list[Estimate | None] = [None] * len(requests)
        try:
            order = sorted(groups, key=lambda k: -costs[k])  # big first within a worker: the last to finish is small
            futures = [(groups[k], self._pool(where[k]).submit(run_group, [requests[i] for i in groups[k]]))
                       for k in order]
            for ix, fut in futures:
                for i, value in zip(ix, fut.result(), strict=True):
                    out[i] = value
            return out  # type: ignore[return-value]
        except BrokenProcessPool:
            self.close()
            raise VramfitError("an estimator worker died; this torch build cannot trace the step "
                               "(try `vramfit estimate` on one config to see why)") from None
