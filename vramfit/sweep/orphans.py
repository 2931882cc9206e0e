"""Orphaned workers: a sweep of a database does not start while a worker of a dead sweep of it still runs.

Workers die with their sweep (`vramfit.child.die_with_parent`: the kernel's PR_SET_PDEATHSIG on Linux, a watchdog
elsewhere), but a resumed sweep must not measure beside one that has not died yet: on a GPU it still holds memory.
Every worker carries its database and its sweep's PID in its environment (`vramfit.sweep.pool.OWNER_ENV`,
`DRIVER_ENV`); an orphan is a process whose database is this one and whose sweep is gone. Listed from /proc on
Linux; elsewhere nothing can be listed (the watchdog ends an orphan within half a second).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vramfit.child import pid_alive
from vramfit.errors import VramfitError
from vramfit.sweep.pool import DRIVER_ENV, OWNER_ENV

WAIT_S_ENV = "VRAMFIT_ORPHAN_WAIT_S"  # how long a sweep waits for orphans to end (default 10 s)


def _environ(pid_dir: Path) -> dict[str, str]:
    try:
        raw = (pid_dir / "environ").read_bytes()
    except OSError:  # gone, or another user's
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep and k in (OWNER_ENV.encode(), DRIVER_ENV.encode()):
            out[k.decode()] = v.decode(errors="replace")
    return out


def orphan_workers(db: str | Path, proc: Path = Path("/proc")) -> list[int]:
    """PIDs of processes measuring for a sweep of `db` whose sweep process is gone (Linux; [] elsewhere)."""
    if not proc.is_dir():
        return []
    want = str(Path(db).resolve())
    me = os.getpid()
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        env = _environ(d)
        if env.get(OWNER_ENV) != want:
            continue
        try:
            driver = int(env.get(DRIVER_ENV, "0"))
        except ValueError:
            driver = 0
        if not pid_alive(driver):
            out.append(int(d.name))
    return sorted(out)


def wait_for_orphans(db: str | Path, wait_s: float | None = None, proc: Path = Path("/proc")) -> None:
    """Return once no orphan worker of `db` runs; raise VramfitError if one still does after `wait_s` seconds
    (None: `WAIT_S_ENV`, else 10)."""
    if wait_s is None:
        try:
            wait_s = float(os.environ.get(WAIT_S_ENV) or 10.0)
        except ValueError:
            wait_s = 10.0
    deadline = time.monotonic() + wait_s
    while True:
        left = orphan_workers(db, proc)
        if not left:
            return
        if time.monotonic() >= deadline:
            pids = ", ".join(map(str, left[:8])) + (" ..." if len(left) > 8 else "")
            raise VramfitError(f"{len(left)} worker process(es) of an earlier, killed sweep of {db} still run "
                               f"(pid {pids}); wait for them to end or kill them, then run the sweep again")
        time.sleep(0.2)
