"""The sweep's fork server: import torch, gpt and the worker once, then fork one fresh child per point.

    python -m vramfit.measure.zygote        (started by `vramfit.sweep.forkserver.ForkServer`, never by hand)

It is started with the worker's environment (`vramfit.sweep.pool.worker_env`: the malloc, MKL and thread
settings that glibc, MKL and OpenMP read at process start), imports everything a point needs but never
initialises CUDA, and then reads one JSON request per line on stdin:

    {"op": "run", "id": N, "spec": {...}, "out": path, "err": path}   fork a child that measures the point
    {"op": "kill", "id": N}                                            SIGKILL that child if it still runs

and answers one JSON line per event on stdout: {"ready": pid, "import_s", "threads", "cuda_initialized",
"bad_fork"} once (the last two: `cuda_state`, what the client's `fork_unsafe` decides on), {"id", "pid"} when a
child is forked, {"id", "status"} when it ended (the exit code, or -signal as subprocess reports it). The child
writes its stdout and stderr to the files named in the request (the parent reads them once it ended), so it is the
same worker (`vramfit.measure.worker.main`) in a fresh process with its own allocator and, on a GPU, its own CUDA
context. The zygote dies with its parent (`die_with_parent`, and EOF on stdin), each child with the zygote;
when the zygote leaves, it kills and reaps its children first.
"""

from __future__ import annotations

import time

T_START = time.time()

import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from vramfit.child import PARENT_ENV, die_with_parent  # noqa: E402

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def preload() -> None:
    """Import what a point imports (the worker imports these lazily), without touching CUDA."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401 - torch.optim imports it on first use

    import gpt.config  # noqa: F401
    import gpt.data  # noqa: F401
    import gpt.train  # noqa: F401
    import vramfit.measure.probe  # noqa: F401
    import vramfit.measure.reader  # noqa: F401
    import vramfit.measure.worker  # noqa: F401
    import vramfit.recipe  # noqa: F401


def cuda_state() -> dict:
    """What this process did to CUDA that a forked child could not survive (the fork-safety test, run once the
    imports are done): `cuda_initialized` (a child cannot use its parent's context), and `bad_fork`, whether a
    child's first CUDA call would fail: PyTorch's cudaGetDeviceCount wrapper calls poison_fork()
    (torch/csrc/cuda/Module.cpp), whose pthread_atfork handler marks every later child as in a bad fork
    ("Cannot re-initialize CUDA in forked subprocess"). That shows only in a child: one is forked to ask
    `torch.cuda._is_in_bad_fork()` (always False on a build without CUDA)."""
    import torch

    state = {"cuda_initialized": bool(torch.cuda.is_initialized()), "bad_fork": None}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, b"1" if torch.cuda._is_in_bad_fork() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        answer = os.read(r, 1)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    state["bad_fork"] = answer == b"1" if answer else None
    return state


_MADV_POPULATE_READ = 22  # linux/mman.h (5.14+)
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_file_pages(maps: str = "/proc/self/maps", pagemap: str = "/proc/self/pagemap") -> list[tuple[int, int]]:
    """(address, length) runs of this process's file-backed, readable pages that are in its page tables now.

    fork copies the page-table entries of anonymous memory but not of file mappings (the kernel lets page faults
    refill them), so a forked child would fault in again, *during its measurement*, library pages that a spawned
    worker mapped while importing: +2.3 MB of RSS per point on the quick grid. The zygote lists them once;
    each child maps them again before it measures (`populate`). [] where /proc is missing."""
    runs: list[tuple[int, int]] = []
    try:
        with open(maps) as f, open(pagemap, "rb") as pm:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or parts[4] == "0" or not parts[1].startswith("r") or parts[5].startswith("["):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                pm.seek(lo // PAGE * 8)
                raw = pm.read((hi - lo) // PAGE * 8)
                start = None
                for i in range(len(raw) // 8):
                    present = raw[8 * i + 7] & 0x80  # bit 63 of the little-endian entry
                    if present and start is None:
                        start = i
                    elif not present and start is not None:
                        runs.append((lo + start * PAGE, (i - start) * PAGE))
                        start = None
                if start is not None:
                    runs.append((lo + start * PAGE, hi - lo - start * PAGE))
    except (OSError, ValueError):
        return []
    return runs


def populate(runs: list[tuple[int, int]]) -> int:
    """Map `runs` into this process's page tables (madvise MADV_POPULATE_READ; reading a byte per page where that
    is missing); returns the bytes populated."""
    import ctypes

    if not runs:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    done = 0
    for addr, length in runs:
        if madvise(addr, length, _MADV_POPULATE_READ) != 0:
            for a in range(addr, addr + length, PAGE):
                ctypes.string_at(a, 1)
        done += length
    return done


def malloc_as_env() -> bool:
    """Set glibc's thresholds from MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ with mallopt, as glibc did at
    the zygote's start from the same variables (a forked child inherits that state; this makes it explicit, and
    also turns glibc's dynamic threshold off, as the variable does). False where not glibc or nothing is set."""
    import ctypes

    wanted = [(p, os.environ.get(v)) for p, v in ((_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
                                                  (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"))]
    wanted = [(p, int(v)) for p, v in wanted if v and v.strip().isdigit()]
    if not wanted:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in wanted)


def _child(req: dict, zygote: int, runs: list[tuple[int, int]]) -> None:
    """In the forked child: stdio to the request's files, die with the zygote, the malloc settings, then the
    worker's own `main` with its clock started at the fork. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for src, dst in ((devnull, 0), (out, 1), (err, 2)):
            os.dup2(src, dst)
            os.close(src)
        os.environ[PARENT_ENV] = str(zygote)
        from vramfit.measure import worker

        worker.T_START = time.time()  # a forked point's clock: 'process_start' is the fork, 'import' ~0
        worker.FORK_INFO.update(forked=True, malloc_env=malloc_as_env(), populated_bytes=populate(runs))
        code = worker.main([json.dumps(req["spec"])])
    except BaseException:  # noqa: BLE001 - whatever happens, never return into the zygote's loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class Zygote:
    """The request loop (see the module docstring)."""

    def __init__(self, parent: int) -> None:
        self.parent, self.pid = parent, os.getpid()
        self.runs = resident_file_pages()
        self.children: dict[int, int] = {}  # pid -> request id
        self.by_id: dict[int, int] = {}  # request id -> pid
        self.buf = b""

    def send(self, msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    def fork(self, req: dict) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req, self.pid, self.runs)
        self.children[pid] = req["id"]
        self.by_id[req["id"]] = pid
        self.send({"id": req["id"], "pid": pid})

    def kill(self, rid: int) -> None:
        pid = self.by_id.get(rid)
        if pid is not None:  # not reaped yet: the PID cannot have been reused
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rid = self.children.pop(pid, None)
            if rid is not None:
                self.by_id.pop(rid, None)
                self.send({"id": rid, "status": os.waitstatus_to_exitcode(status)})

    def handle(self, line: bytes) -> None:
        try:
            req = json.loads(line)
        except json.JSONDecodeError:
            return
        if req.get("op") == "run":
            self.fork(req)
        elif req.get("op") == "kill":
            self.kill(int(req["id"]))

    def shutdown(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def loop(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD wakes select
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        stdin = sys.stdin.fileno()
        try:
            while True:
                ready, _, _ = select.select([stdin, wake_r], [], [], 1.0)
                if wake_r in ready:
                    os.read(wake_r, 4096)
                if stdin in ready:
                    chunk = os.read(stdin, 1 << 16)
                    if not chunk:  # the parent closed the pipe or died
                        return
                    self.buf += chunk
                    while b"\n" in self.buf:
                        line, self.buf = self.buf.split(b"\n", 1)
                        self.handle(line)
                self.reap()
                if os.getppid() != self.parent:  # where no prctl: the parent is gone
                    return
        finally:
            self.shutdown()


def main() -> int:
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    die_with_parent(parent, watchdog=False)  # the loop checks the parent itself: no thread in a fork server
    preload()
    zyg = Zygote(parent)
    zyg.send({"ready": os.getpid(), "import_s": round(time.time() - T_START, 3),
              "threads": threading.active_count(), "file_pages_bytes": sum(n for _, n in zyg.runs), **cuda_state()})
    zyg.loop()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
