"""The warm estimator process: one per (cache directory, cache version), shared by every call that asks it.

`Estimator("warm")` sends its requests over a Unix socket in the dry run's cache directory
(`dryrun.cache.cache_root`), named by the cache's version (`dryrun.cache.code_version`: torch, the environment the
emulation reads, the source), so that an edit, another torch or another setting gets a server of its own and never
an older one's answers. The first call starts the server (`python -m vramfit.dryrun.warm SOCKET`, what a fresh child
costs); a later call, from any process, finds torch imported, the fake-tensor caches filled and the compiled
emulation's traced graphs in memory (`vramfit.dryrun.compiled`), so it pays only for the step itself.

The server answers one connection at a time (JSON lines, never pickle: {"requests": [...]} in; {"pid": N}, then
{"estimate": ...} per request or one {"error": "..."} out) and exits after `idle_seconds()` without one, when its
socket file is gone, on {"stop": true}, or after an estimate raised something unexpected (the next call starts a
fresh one). It runs the caller's vramfit (started in its source root) and refuses a socket named for another
version than its own. Its socket is private to this user (mode 0600). An abort or a hang inside an estimate
reaches the caller as a one-line error, as a child's does; the caller kills a server that runs past its timeout.
Where there is no Unix socket (Windows), the path would be too long, or `VRAMFIT_ESTIMATOR_IDLE` is 0, callers run
a fresh child instead (`socket_path` returns None).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vramfit.child import PARENT_ENV
from vramfit.dryrun.cache import ROOT, cache_root, code_version

IDLE_ENV = "VRAMFIT_ESTIMATOR_IDLE"
IDLE_S = 300.0
"""Seconds a server waits for its next request before it exits (`VRAMFIT_ESTIMATOR_IDLE` overrides; 0: no server)."""
START_S = 60.0  # how long a caller waits for a server it started to accept connections
_MAX_PATH = 100  # AF_UNIX paths are limited to 104-108 bytes
SERVER = (sys.executable, "-m", "vramfit.dryrun.warm")


def idle_seconds() -> float:
    """`VRAMFIT_ESTIMATOR_IDLE` (seconds; a bad value counts as the default), else `IDLE_S`."""
    try:
        return max(0.0, float(os.environ.get(IDLE_ENV, IDLE_S)))
    except ValueError:
        return IDLE_S


def socket_path(cache_dir: str | Path | None = None) -> Path | None:
    """Where this version's server listens: `<cache dir>/estimator-<version>.sock`; None where no server can run."""
    if not hasattr(socket, "AF_UNIX") or os.name != "posix" or idle_seconds() <= 0:
        return None
    path = cache_root(cache_dir) / f"estimator-{code_version()}.sock"
    return path if len(os.fsencode(path)) <= _MAX_PATH else None


@dataclass
class Reply:
    """What a server sent back: its pid, the records it finished, and why it stopped short (if it did; neither an
    error nor a timeout: it died)."""

    pid: int = 0
    records: list[dict] = field(default_factory=list)
    error: str = ""  # the server's one-line error for a request it refused
    timed_out: bool = False


def ask(path: Path, requests: list[dict], timeout: float) -> Reply:
    """Send `requests` to the server at `path` (started first if none answers) and read its answers; a server that
    runs past `timeout` seconds is killed. OSError: no server could be started (`_start`)."""
    deadline = time.monotonic() + timeout
    sock = _connect(path) or _start(path, deadline)
    reply = Reply()
    with sock:
        try:
            sock.sendall(json.dumps({"requests": requests}).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            for record in _lines(sock, deadline):
                if "pid" in record:
                    reply.pid = int(record["pid"])
                elif "error" in record:
                    reply.error = str(record["error"])
                else:
                    reply.records.append(record)
        except TimeoutError:
            reply.timed_out = True
            if reply.pid:
                with contextlib.suppress(OSError):
                    os.kill(reply.pid, signal.SIGKILL)
        except OSError:  # reset by a server that died mid-answer
            pass
    return reply


def stop(path: Path) -> bool:
    """Ask the server at `path` to exit now; False if none answered."""
    sock = _connect(path)
    if sock is None:
        return False
    with sock, contextlib.suppress(OSError):
        sock.sendall(b'{"stop": true}\n')
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    return True


def stop_all(cache_dir: str | Path | None = None) -> int:
    """Stop every server of every version in the cache directory; how many answered."""
    return sum(stop(p) for p in sorted(cache_root(cache_dir).glob("estimator-*.sock")))


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:  # no file, or a stale one of a server that is gone
        sock.close()
        return None


def _start(path: Path, deadline: float) -> socket.socket:
    """Start a server for `path` (detached: it outlives this process) and connect once it listens; OSError where
    it cannot (a cache directory that cannot be written, a server that failed to start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    with open(path.with_suffix(".log"), "wb") as log:  # the server's stderr: what it said when it failed to start
        proc = subprocess.Popen([*SERVER, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, env=env, cwd=ROOT, start_new_session=True)  # this vramfit, not cwd's
    end = min(deadline, time.monotonic() + START_S)
    while time.monotonic() < end:
        sock = _connect(path)
        if sock is not None:
            return sock
        if proc.poll() not in (None, 0):  # 0: it found another server already listening, which we will reach
            break
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        proc.kill()
    raise OSError(f"the estimator process did not start (see {path.with_suffix('.log')})")


def _lines(sock: socket.socket, deadline: float):  # noqa: ANN202 - an iterator of JSON objects
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in done:
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict):
                    yield record


# --- the server ---------------------------------------------------------------------------------------------------
def serve(path: Path, idle: float) -> int:
    """Listen on `path` until idle for `idle` seconds (or stopped); 0 also when another server already listens."""
    import fcntl

    if path.name != f"estimator-{code_version()}.sock":  # another source than the caller's: never answer for it
        print(f"error: this estimator's version {code_version()} is not the one of {path.name}", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with open(path.with_suffix(".lock"), "w") as lock:  # one binder at a time: a stale file is replaced once
        fcntl.flock(lock, fcntl.LOCK_EX)
        other = _connect(path)
        if other is not None:
            other.close()
            return 0
        path.unlink(missing_ok=True)
        umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(umask)
        sock.listen(16)
    ours = os.stat(path).st_ino
    import vramfit.dryrun.fake_step  # noqa: F401 - torch and the step, while the first caller's request waits

    sock.settimeout(1.0)
    last = time.monotonic()
    try:
        while True:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                if time.monotonic() - last > idle or not _still_ours(path, ours):
                    return 0
                continue
            with conn:
                keep = _answer(conn)
            last = time.monotonic()
            if not keep:
                return 0
    finally:
        sock.close()
        if _still_ours(path, ours):
            path.unlink(missing_ok=True)


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _answer(conn: socket.socket) -> bool:
    """Answer one connection; False: stop serving (asked to, or an estimate failed unexpectedly)."""
    try:
        return _answer_on(conn)
    except OSError:  # the caller went away (timed out, interrupted): serve the next one
        return True


def _answer_on(conn: socket.socket) -> bool:
    from gpt.errors import ConfigError
    from vramfit.dryrun.estimate import EstimateRequest, estimate_step
    from vramfit.errors import VramfitError

    conn.settimeout(60.0)
    data = b""
    while chunk := conn.recv(1 << 16):
        data += chunk
    out = conn.makefile("w")
    try:
        msg = json.loads(data)
        if msg.get("stop"):
            return False
        out.write(json.dumps({"pid": os.getpid()}) + "\n")
        out.flush()
        for d in msg["requests"]:
            out.write(json.dumps({"estimate": estimate_step(EstimateRequest.from_dict(d)).to_dict()}) + "\n")
            out.flush()
        return True
    except (ConfigError, VramfitError, ValueError, TypeError, KeyError, AttributeError) as exc:
        out.write(json.dumps({"error": _one_line(exc)}) + "\n")
        return True
    except Exception as exc:  # noqa: BLE001 - said to the caller; a fresh server answers the next call
        out.write(json.dumps({"error": f"internal error in the estimator process: {type(exc).__name__}: "
                                       f"{_one_line(exc)}"}) + "\n")
        return False
    finally:
        with contextlib.suppress(OSError):
            out.close()


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1]), idle_seconds()))
