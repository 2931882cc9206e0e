"""Run a Python module as a child process: one JSON request on stdin, JSON lines back on stdout.

The one runner behind the sweep's worker pool (`vramfit.sweep.pool`) and the dry run's child process
(`vramfit.dryrun.estimator`): it sends the request, kills the child when it runs past its timeout, and hands
back what came out (exit status, stdout's JSON records, stderr) for the caller to judge. A
crash, a hang or garbage on stdout in the child never raises here. Every child learns its parent's PID
(`PARENT_ENV`) so that it can die with it (`die_with_parent`). Root layer: no torch, no other vramfit module
(`pid_alive` is `gpt.files`', one probe for both packages).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gpt.files import pid_alive

__all__ = ["PARENT_ENV", "ChildResult", "LiveChildren", "die_with_parent", "pid_alive", "run_json"]

PARENT_ENV = "VRAMFIT_PARENT_PID"  # set by the process that starts a child: the PID the child must outlive not
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_PERIOD_S = 0.5


def _watchdog(parent: int) -> None:
    while os.getppid() == parent and pid_alive(parent):
        time.sleep(WATCHDOG_PERIOD_S)
    os._exit(1)


def die_with_parent(parent: int | None = None, watchdog: bool = True) -> str:
    """Make this process die with `parent` (default: the PID in `PARENT_ENV`; nothing to do without one).

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL), the kernel's own guarantee (it fires when the parent *thread* that
    started this process exits; our spawners wait for their child in the thread that started it), then a check
    that the parent did not die before it was armed. Elsewhere, or where prctl fails: a daemon thread that exits
    the process within `WATCHDOG_PERIOD_S` of the parent's death (`watchdog=False`: none; the caller checks).
    Returns how: 'prctl', 'watchdog' or '' (no parent given)."""
    if parent is None:
        try:
            parent = int(os.environ.get(PARENT_ENV) or 0)
        except ValueError:
            parent = 0
    if not parent:
        return ""
    how = ""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent is already gone (we were re-parented) or we are not its child
        os._exit(1)
    if not how and watchdog:
        threading.Thread(target=_watchdog, args=(parent,), daemon=True, name="vramfit-parent-watchdog").start()
        how = "watchdog"
    return how


@dataclass(frozen=True)
class ChildResult:
    """What a child left behind. `returncode` < 0: killed by that signal (also after a timeout, by us)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def records(self) -> list[dict]:
        """Every stdout line that is a JSON object, in order; other lines are skipped."""
        out = []
        for line in self.stdout.splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict):
                out.append(d)
        return out

    def last_record(self) -> dict | None:
        """The last non-blank stdout line as a JSON object; None if there is none or it is not one."""
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        if not lines:
            return None
        try:
            d = json.loads(lines[-1])
        except json.JSONDecodeError:
            return None
        return d if isinstance(d, dict) else None

    def signal_name(self) -> str:
        """'SIGKILL', 'signal 99' for an unknown one; '' when the child exited by itself."""
        if self.returncode >= 0:
            return ""
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def exit_text(self) -> str:
        """'killed by SIGABRT' or 'exit code 3'."""
        return f"killed by {self.signal_name()}" if self.returncode < 0 else f"exit code {self.returncode}"

    def stderr_tail(self, n: int) -> str:
        """The last `n` characters of stderr, stripped."""
        return self.stderr.strip()[-n:]

    def last_stderr_line(self) -> str:
        """The last non-blank stderr line ('' if none): where a Python child's one-line `error: ...` ends up."""
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else ""


class LiveChildren:
    """The children `run_json` is waiting on, so that an interrupt can kill them all (thread-safe)."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._procs)

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> None:
        with self._lock:
            for proc in list(self._procs):
                try:
                    proc.kill()
                except OSError:
                    pass


def run_json(cmd: Sequence[str], request: object, timeout: float, *, env: dict[str, str] | None = None,
             live: LiveChildren | None = None) -> ChildResult:
    """Run `cmd` with `json.dumps(request)` on stdin and wait up to `timeout` seconds; past that the child is
    killed and the result says `timed_out` (an exception while waiting kills it too, and is raised).
    `env`: the child's environment (None: this one's), plus `PARENT_ENV`. `live`: where the child is registered
    while it runs."""
    env = {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    if live is not None:
        live.add(proc)
    try:
        try:
            out, err = proc.communicate(json.dumps(request), timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        except BaseException:  # e.g. KeyboardInterrupt while waiting: leave no child behind (as subprocess.run)
            proc.kill()
            proc.wait()
            raise
    finally:
        if live is not None:
            live.discard(proc)
    return ChildResult(proc.returncode, out or "", err or "", timed_out)
