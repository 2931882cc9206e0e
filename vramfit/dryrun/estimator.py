"""The one door to the dry run: `Estimator(where, cache=...).estimate(requests) -> list[Estimate]`.

Where the estimates run is the estimator's business, set by `where`:
- "process": in this process (`fit --dry-run`, whose process holds torch already);
- "child": one fresh `python -m vramfit.dryrun.estimator` process per call (`experiments/bench_public.py`, and
  "warm" where no server can run): an abort there (a torch build that dies on a CUDA code path) or a hang becomes a
  one-line `VramfitError` instead of taking the caller down;
- "warm": the warm estimator process of this cache directory and version, shared by every call and every process
  that asks it (`vramfit estimate`, an adaptive sweep's feasibility filter; `vramfit.dryrun.warm`): started like a
  child on first use, it then answers without importing torch or tracing the compiled step's graphs again; an abort
  or a hang there is the same one-line `VramfitError` (a fresh child where no server can run);
- "pool": warm worker processes, one per core (`suggest --no-profile`; `vramfit.dryrun.pool`).
Every request is looked up in the cache first (`vramfit.dryrun.cache.EstimateCache`; by default this estimator's
memory only), and what runs is kept there, so equal requests run once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from vramfit.child import run_json
from vramfit.dryrun.cache import EstimateCache
from vramfit.dryrun.estimate import Estimate, EstimateRequest, estimate_step
from vramfit.dryrun.pool import WarmWorkers
from vramfit.errors import VramfitError

WHERE = ("process", "child", "warm", "pool")
CHILD = (sys.executable, "-m", "vramfit.dryrun.estimator")


class Estimator:
    """Estimates for requests, in the order asked; see the module docstring for `where`. `workers`: the pool's size
    (default: the cores this process may use); `timeout`: seconds a child may take. Counts the estimates it ran
    (`ran`) and took from the cache (`cached`). A context manager: `close` stops the pool's workers."""

    def __init__(self, where: str = "process", *, cache: EstimateCache | None = None, workers: int | None = None,
                 timeout: float = 600.0) -> None:
        if where not in WHERE:
            raise VramfitError(f"unknown estimator place {where!r}; choose one of {', '.join(WHERE)}")
        self.where = where
        self.cache = cache if cache is not None else EstimateCache()
        self.timeout = timeout
        self.ran = 0
        self.cached = 0
        self.server_pid = 0  # "warm": the server that answered last
        self._pool = WarmWorkers(workers) if where == "pool" else None

    @property
    def workers(self) -> int:
        return self._pool.workers if self._pool is not None else 1

    def __enter__(self) -> Estimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self.cache.close()

    def estimate(self, requests: Sequence[EstimateRequest]) -> list[Estimate]:
        """The estimate of each request (from the cache where it holds one); raises `VramfitError` (or the engine's
        `ConfigError` in this process) for a request that cannot be estimated."""
        found = {r: self.cache.get(r) for r in dict.fromkeys(requests)}
        missing = [r for r, est in found.items() if est is None]
        if missing:
            for r, est in zip(missing, self._run(missing), strict=True):
                self.cache.put(r, est)
                found[r] = est
        self.ran += len(missing)
        self.cached += len(requests) - len(missing)
        return [found[r] for r in requests]  # type: ignore[misc]

    def _run(self, requests: list[EstimateRequest]) -> list[Estimate]:
        if self._pool is not None:
            return self._pool.run(requests)
        if self.where == "child":
            return self._run_child(requests)
        if self.where == "warm":
            return self._run_warm(requests)
        return [estimate_step(r) for r in requests]

    def _run_warm(self, requests: list[EstimateRequest]) -> list[Estimate]:
        """All `requests` in the warm server (a fresh child where none can run or start); the ones it finished
        before failing are kept in the cache."""
        from vramfit.dryrun import warm

        path = warm.socket_path()
        if path is None:
            return self._run_child(requests)
        try:
            reply = warm.ask(path, [r.to_dict() for r in requests], self.timeout)
        except OSError:  # no server here (a cache directory that cannot be written): a fresh child says why, if any
            return self._run_child(requests)
        self.server_pid = reply.pid
        done = [Estimate.from_dict(d["estimate"]) for d in reply.records if "estimate" in d]
        if len(done) == len(requests):
            return done
        for r, est in zip(requests, done, strict=False):
            self.cache.put(r, est)
        if reply.timed_out:
            raise VramfitError(f"the estimator process took more than {self.timeout:.0f} s")
        if reply.error:
            raise VramfitError(reply.error.removeprefix("error: "))
        raise VramfitError("the estimator process died; this torch build cannot trace the step")

    def _run_child(self, requests: list[EstimateRequest]) -> list[Estimate]:
        """All `requests` in one fresh child; the ones it finished before failing are kept in the cache."""
        res = run_json(CHILD, {"requests": [r.to_dict() for r in requests]}, self.timeout)
        done = [Estimate.from_dict(d["estimate"]) for d in res.records() if "estimate" in d]
        if res.ok and len(done) == len(requests):
            return done
        for r, est in zip(requests, done, strict=False):
            self.cache.put(r, est)
        if res.timed_out:
            raise VramfitError(f"the estimator process took more than {self.timeout:.0f} s")
        if res.returncode < 0:
            raise VramfitError(f"the estimator process died ({res.signal_name()}); this torch build cannot trace "
                               "the step")
        if res.returncode != 0:
            raise VramfitError((res.last_stderr_line() or res.exit_text()).removeprefix("error: "))
        raise VramfitError("the estimator process printed no result")


def _main() -> int:
    """`python -m vramfit.dryrun.estimator`: {"requests": [...]} on stdin; one JSON line {"estimate": ...} per
    request, in order; at the first that fails, one `error:` line on stderr and exit 2."""
    from gpt.errors import ConfigError

    try:
        requests = [EstimateRequest.from_dict(d) for d in json.loads(sys.stdin.read())["requests"]]
        for r in requests:
            print(json.dumps({"estimate": estimate_step(r).to_dict()}), flush=True)
    except (ConfigError, VramfitError, ValueError, TypeError, KeyError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
