"""Output files, the one way every command writes: never over one of its inputs, atomically when the target is a
regular file, straight into it when it is a stream or a device, and never replacing anything that is not a
regular file. No torch here (vramfit's writers use it too: `vramfit.paths` re-exports it).

- `check_output(path, protected)` refuses an output that is, after symlinks, `..` and hard links (same device and
  inode), one of the protected files (the database, a checkpoint, a model file, an input being read).
- `output_path(path)` is a context manager: it yields where to write. For a regular file (or a new one) that is
  `.<name>.<pid>.tmp` in the target's real folder, renamed over the target on success (its mode kept) and removed
  on failure; temp files of writers that died (their PID is gone) are removed first. For `/dev/stdout`,
  `/dev/null`, `/proc/self/fd/1`, a FIFO or a device node it is the path itself. A folder is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from gpt.errors import OutputError

Protected = Mapping[str, "str | Path | Iterable[str | Path] | None"]


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(real path, (st_dev, st_ino) when it exists)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return real, None
    return real, (st.st_dev, st.st_ino)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether `a` and `b` name one file: the same real path, or the same device and inode (a hard link)."""
    (ra, ia), (rb, ib) = _identity(Path(a)), _identity(Path(b))
    return ra == rb or (ia is not None and ia == ib)


def _paths(value) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    return [Path(v) for v in value if v is not None]


_MAGIC = ((b"SQLite format 3\0", "a SQLite database"), (b"PK\x03\x04", "a PyTorch checkpoint (zip)"),
          (b"\x80", "a pickle (a checkpoint or meta.pkl)"))


def file_kind(path: str | Path) -> str | None:
    """What an existing regular file holds, by its first bytes, when it is something no report, table or plot
    may replace: a SQLite database, a PyTorch checkpoint, a pickle. None otherwise."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def check_output(path: str | Path, protected: Protected, what: str = "output",
                 replaces: tuple[str, ...] = ()) -> Path:
    """`path`, unless it is one of the `protected` files ({label: path or paths}), a folder, or an existing
    database, checkpoint or pickle (`file_kind`) other than the kind this writer `replaces`: then one
    OutputError naming it."""
    path = Path(path)
    for label, value in protected.items():
        for p in _paths(value):
            if same_file(path, p):
                raise OutputError(f"refusing to write {what} {path}: it is {label} {p}")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    kind = file_kind(path)
    if kind is not None and not kind.startswith(replaces):
        raise OutputError(f"refusing to write {what} {path}: it holds {kind}")
    return path


def is_special(path: str | Path) -> bool:
    """A stream, device, FIFO or socket (or a name for one: /dev/..., /proc/...): written in place, never
    replaced."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not stat.S_ISREG(mode):
        return not stat.S_ISDIR(mode)
    real = os.path.realpath(path)
    return str(path.absolute()).startswith(("/dev/", "/proc/")) or real.startswith(("/dev/", "/proc/"))


def describe_os_error(path: str | Path, exc: OSError, what: str = "output") -> str:
    """One line for a failed write (read-only file system, no space, no permission)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    return f"cannot write {what} {path}: {reason}"


@contextmanager
def output_path(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Where to write `path` (see the module doc); OSError while writing becomes one OutputError."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    if is_special(path):
        try:
            yield path
        except BrokenPipeError:
            raise  # a stream whose reader left (`--csv /dev/stdout | head`): the caller's quiet exit
        except OSError as exc:
            raise OutputError(describe_os_error(path, exc, what)) from None
        return
    real = Path(os.path.realpath(path))
    tmp = real.with_name(f".{real.name}.{os.getpid()}.tmp")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(real)
        try:
            mode = stat.S_IMODE(os.stat(real).st_mode)
        except FileNotFoundError:
            mode = None
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, real)
    except OSError as exc:
        raise OutputError(describe_os_error(path, exc, what)) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_bytes(path: str | Path, data: bytes, what: str = "output") -> Path:
    """`data` to `path` through `output_path`."""
    with output_path(path, what) as target, open(target, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, what: str = "output") -> Path:
    """UTF-8 `text` to `path` through `output_path`."""
    return write_bytes(path, text.encode("utf-8"), what)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent(path: Path, what: str) -> None:
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise OutputError(f"{what} {path}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: cannot write in {anchor}")


def writable_file(path: str | Path, what: str = "output") -> Path:
    """`path` can be written as a file (it may not exist yet); else one clear OutputError. Checked before any
    work starts, so that no result is lost to a path that could have been checked first."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} is not writable")
    if not is_special(path):
        _check_parent(path, what)
    return path


def writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """`path` is, or can be created as, a writable folder; else one clear OutputError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {path} is not writable")
        return path
    _check_parent(path, what)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (POSIX: signal 0, EPERM counts as alive; Windows: OpenProcess and its exit
    code, since os.kill would terminate it)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        k32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        h = k32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not h:
            return False
        code = ctypes.c_ulong()
        try:
            return bool(k32.GetExitCodeProcess(h, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        finally:
            k32.CloseHandle(h)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove `.<name>.<pid>.tmp` files beside `path` left by writers that were killed (their PID is gone)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
