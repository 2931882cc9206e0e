"""The client side of the sweep's fork server (`vramfit.measure.zygote`): start it once, fork a child per point.

A `ForkServer` is one zygote started with one worker environment; `run` has it fork a child for a point, waits
for the child's end up to a timeout (past it the zygote kills the child), and hands back the same `ChildResult`
as `vramfit.child.run_json`, so that a forked point and a spawned one become records by the same code
(`vramfit.sweep.pool.WorkerPool`). When the zygote itself dies, every point waiting on it ends as an error and the
next `run` finds it dead (the pool then starts another).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from vramfit.child import PARENT_ENV, ChildResult

__all__ = ["FORK_ENV", "ForkServer", "ForkServerError", "fork_available", "fork_unsafe"]

ZYGOTE_CMD = [sys.executable, "-m", "vramfit.measure.zygote"]
FORK_ENV = "VRAMFIT_WORKERS"  # 'spawn' forces one fresh interpreter per point; 'fork' (default where possible)
READY_TIMEOUT_S = 300.0
KILL_GRACE_S = 30.0


class ForkServerError(RuntimeError):
    """The zygote could not be started or died."""


def fork_available() -> tuple[bool, str]:
    """(whether points can be forked from a zygote here, why not): Linux and other POSIX systems but macOS, where
    fork after importing system frameworks is unsafe and Python's own default is spawn; never on Windows."""
    if os.environ.get(FORK_ENV, "").strip().lower() == "spawn":
        return False, f"{FORK_ENV}=spawn"
    if not hasattr(os, "fork") or os.name == "nt":
        return False, "no fork on Windows"
    if sys.platform == "darwin":
        return False, "fork is unsafe on macOS (Python's default there is spawn)"
    return True, ""


def fork_unsafe(info: dict, device: str) -> str:
    """Why a point on `device` must not be forked from a zygote whose ready message was `info` (its
    `vramfit.measure.zygote.cuda_state`), '' when it may: a CUDA point needs a parent that neither initialised CUDA
    nor asked it for its devices (after which torch fails a forked child's first CUDA call). A CPU point never uses
    CUDA (its worker sees no GPU), so it forks either way."""
    if not str(device).startswith("cuda"):
        return ""
    if info.get("cuda_initialized"):
        return "the fork server initialised CUDA"
    if info.get("bad_fork"):
        return "the fork server asked CUDA for its devices, so a forked child could not use CUDA"
    return ""


class _Pending:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.status: int | None = None
        self.done = threading.Event()
        self.started = threading.Event()


class ForkServer:
    """One zygote (see the module docstring). Thread-safe; start it in the thread that will use it (on Linux the
    zygote dies with the thread that started it)."""

    def __init__(self, env: dict[str, str], cmd: list[str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="vramfit-fork-"))
        self.err_path = self.tmp / "zygote.err"
        self._err = open(self.err_path, "wb")  # noqa: SIM115 - closed in close()
        env = {**env, PARENT_ENV: str(os.getpid())}
        self.proc = subprocess.Popen(list(cmd or ZYGOTE_CMD), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, env=env)
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self.info: dict = {}
        self._reader = threading.Thread(target=self._read, daemon=True, name="vramfit-forkserver")
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT_S) or not self.alive:
            why = self._why_dead()
            self.close()
            raise ForkServerError(f"the fork server did not start: {why}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self._reader.is_alive()

    def _why_dead(self) -> str:
        code = self.proc.poll()
        tail = self.err_path.read_bytes()[-800:].decode(errors="replace").strip() if self.err_path.exists() else ""
        return f"exit {code}; stderr: {tail}" if code is not None else f"not ready; stderr: {tail}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                try:
                    msg = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if "ready" in msg:
                    self.info = msg
                    self._ready.set()
                    continue
                with self._lock:
                    p = self._pending.get(msg.get("id"))
                if p is None:
                    continue
                if "pid" in msg:
                    p.pid = int(msg["pid"])
                    p.started.set()
                if "status" in msg:
                    p.status = int(msg["status"])
                    p.done.set()
        finally:  # the zygote is gone: nobody will report the rest
            self._ready.set()
            with self._lock:
                for p in self._pending.values():
                    p.started.set()
                    p.done.set()

    def _send(self, msg: dict) -> None:
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()

    def run(self, spec: dict, timeout: float) -> ChildResult:
        """Fork a child that runs the worker on `spec`; wait up to `timeout` s (then it is killed)."""
        rid = next(self._ids)
        out, err = self.tmp / f"{rid}.out", self.tmp / f"{rid}.err"
        p = _Pending()
        with self._lock:
            self._pending[rid] = p
        try:
            try:
                self._send({"op": "run", "id": rid, "spec": spec, "out": str(out), "err": str(err)})
            except (OSError, ValueError) as exc:
                raise ForkServerError(f"the fork server is gone ({exc}): {self._why_dead()}") from exc
            timed_out = not p.done.wait(timeout)
            if timed_out:
                self.kill(rid)
                p.done.wait(KILL_GRACE_S)
            if p.status is None:
                raise ForkServerError(f"the fork server died while point {rid} ran: {self._why_dead()}")
            return ChildResult(p.status, _text(out), _text(err), timed_out)
        finally:
            with self._lock:
                self._pending.pop(rid, None)
            for f in (out, err):
                with contextlib.suppress(OSError):
                    f.unlink()

    def kill(self, rid: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._send({"op": "kill", "id": rid})

    def kill_all(self) -> None:
        """Kill every child still running (on interrupt); the zygote stays."""
        with self._lock:
            ids = list(self._pending)
        for rid in ids:
            self.kill(rid)

    def close(self) -> None:
        """Close the zygote's stdin (it kills and reaps its children, then exits) and remove the temp files."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        with contextlib.suppress(OSError, ValueError):
            self._err.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""
