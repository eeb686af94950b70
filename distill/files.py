"""Every file distill writes goes through here: one atomic writer, one sha256, one rule for
outputs, one lock per output, and temporary files that never outlive their process.

- `atomic_write` writes a temp file beside the target (its name carries our pid and host name),
  fsyncs it and
  renames it over the target: a reader never sees half a file, and a failed write (a full disk,
  a read-only folder) leaves the previous file as it was and raises a `WriteError` that says so.
- `check_output` runs before any work: the output is not a folder, its folder can be written, and
  an existing file is never replaced without `force` (unless the caller recognises it, by its
  content, as a file the tool itself regenerates).
- `output_lock` holds an advisory lock beside an output for the whole run, so two runs never
  write the same file; the second one is told who holds it.
- Temporary files and folders made here are removed on any exit the process sees (an exception,
  SIGTERM turned into one by the CLI, a normal exit); those of a process that was killed with -9
  are swept by the next run (`sweep_stale`), recognised by the dead pid in their names; on a
  filesystem shared by several hosts only this host's are judged (another node's pid means
  nothing here, and its live temp file must not be deleted).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distill.errors import UserError

TEMP_PREFIX = "distill-"  # temp folders under the system temp dir: distill-<what>-<pid>-<random>
_live: set[Path] = set()  # temp files and folders this process made and has not removed yet


class WriteError(UserError):
    """A write failed (disk full, no permission); the previous file, if any, is unchanged."""


def loads_json(text: str) -> Any:
    """`json.loads`, with nesting deeper than the parser's stack a ValueError like any other
    malformed text: a crafted file is then one line, not a RecursionError traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def loads_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads`, with nesting deeper than the parser's stack a ValueError (as
    `TOMLDecodeError` is)."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a file, in words for an error ("does not exist", "is a
    folder", ...), or None when it is a regular file (or a link to one). A device or a pipe is
    not "missing": it is there, and reading it would hang or never end."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"is a link to {os.readlink(path)}, which does not exist"
    if path.is_dir():
        return "is a folder"
    if path.exists():
        return "is not a regular file (a device, pipe or socket)"
    return "does not exist"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Temporary files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    _live.discard(path)


@atexit.register
def remove_live_temps() -> None:
    """Remove whatever temp files this process still holds (also called by the CLI on SIGTERM)."""
    for path in list(_live):
        _remove(path)


def host_tag() -> str:
    """This host's name as it appears in temp file names (letters, digits, - and _)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:63] or "host"


def _temp_name(target: Path) -> str:
    return f".{target.name}.{os.getpid()}@{host_tag()}.{os.urandom(4).hex()}.tmp"


def _stale_pid(name: str, pattern: re.Pattern[str]) -> bool:
    m = pattern.fullmatch(name)
    if not m or m.groupdict().get("host") not in (None, host_tag()):
        return False  # another host's: its pid cannot be checked from here
    return int(m.group("pid")) != os.getpid() and not _pid_alive(int(m.group("pid")))


# .NAME.PID@HOST.RANDOM.tmp (before host names: .NAME.PID.RANDOM.tmp, judged as this host's)
_FILE_TEMP = re.compile(r"\..+\.(?P<pid>\d+)(@(?P<host>[A-Za-z0-9_-]+))?\.[0-9a-f]{8}\.tmp")
_DIR_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"[a-z0-9]+-(?P<pid>\d+)-.+")


def sweep_stale(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove temp files in `folder` (and temp folders in the system temp dir when `folder` is
    None) left by distill processes that no longer exist. Returns what was removed."""
    removed: list[Path] = []
    if folder is None:
        base, pattern = Path(tempfile.gettempdir()), _DIR_TEMP
    else:
        base, pattern = Path(folder), _FILE_TEMP
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            if _stale_pid(entry.name, pattern):
                _remove(entry)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def temp_dir(what: str) -> Iterator[Path]:
    """A private temp folder under the system temp dir, removed however the block ends."""
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{what}-{os.getpid()}-"))
    _live.add(path)
    try:
        yield path
    finally:
        _remove(path)


@contextlib.contextmanager
def temp_beside(target: str | os.PathLike) -> Iterator[Path]:
    """A temp path in `target`'s folder (same file system, so it can be renamed onto `target`);
    removed when the block ends unless it was renamed away. The file itself is not created."""
    target = Path(target)
    tmp = target.parent / _temp_name(target)
    _live.add(tmp)
    try:
        yield tmp
    finally:
        _remove(tmp)


# ---------------------------------------------------------------------------------------------
# Writing


def _permissions_of_a_new_file() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_failed(path: Path, e: OSError) -> WriteError:
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full"
    old = "the previous file is unchanged" if path.exists() else "no file was written"
    return WriteError(
        f"could not write {path} ({reason}); {old}; free space or choose another path"
    )


def _os_error_behind(e: BaseException) -> OSError | None:
    """The OSError a writer's own exception stands for: torch.save, onnx.save and other C++
    writers report a failed write (a full disk) as a RuntimeError, with the OSError, where there
    is one, as its cause or context."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


# Less room than this after a failed write means the failure was the disk being full, whatever
# the writer called it (a C++ writer's message names only the byte count it expected).
FULL_DISK_BYTES = 1 << 20


def _room(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return FULL_DISK_BYTES
    return st.f_bavail * st.f_frsize


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write `path` atomically: `write(tmp)` fills a temp file beside it (any writer that takes a
    file name: torch.save, onnx.save, matplotlib), which is fsynced and renamed over `path`.

    Any failure of the writer that comes down to the file system (an OSError, or a writer's own
    error over one, or any error while the disk has no room left) is a WriteError."""
    path = Path(path)
    _ensure_folder(path.parent)
    sweep_stale(path.parent)
    with temp_beside(path) as tmp:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _permissions_of_a_new_file())
            os.replace(tmp, path)
        except Exception as e:
            cause = _os_error_behind(e)
            if cause is None and _room(path.parent) < FULL_DISK_BYTES:
                cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if cause is None:
                raise
            raise _write_failed(path, cause) from None
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` through `atomic_write`, into a Python file object, so that the system's
    own error (ENOSPC) comes back rather than only torch's "unexpected pos" RuntimeError."""
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, save)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{folder} is a file, not a folder; choose another output path") from None
    except OSError as e:
        raise _write_failed(folder, e) from None


# ---------------------------------------------------------------------------------------------
# Outputs


def check_output(
    path: str | os.PathLike,
    force: bool,
    suffixes: tuple[str, ...] = (".pt",),
    *,
    flag: str = "--out",
    ours: Callable[[Path], bool] | None = None,
) -> Path:
    """Validate an output path before any work.

    The file must end in one of `suffixes`, not be a folder, lie under a folder that exists or
    can be created (no part of the way is a file) and can be written; an existing file is only
    replaced with `force`, or when `ours(path)` recognises it as a file the tool regenerates.
    """
    path = Path(path).expanduser()
    if suffixes and path.suffix not in suffixes:
        raise UserError(f"{flag} {path} should end in {' or '.join(suffixes)}; rename it")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file path")
    check_folder(path.parent, f"{flag} {path}")
    if path.exists() and not force and not (ours is not None and ours(path)):
        raise UserError(
            f"{path} already exists; pass --force to overwrite it or choose another path"
        )
    return path


def check_folder(folder: str | os.PathLike, what: str) -> None:
    """`folder` exists or can be created (no part of the way is a file) and can be written."""
    existing = Path(folder) if str(folder) else Path(".")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write in {existing}; choose a writable folder")


def _lock_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a file or a run folder) for the block.

    A second process asking for the same lock gets a UserError naming the holder. The lock is an
    flock on `.NAME.lock` beside `path`, released by the kernel however the holder dies, so a
    killed run never blocks the next one.
    """
    if not enabled:
        yield
        return
    path = Path(path)
    lock = _lock_file(path)
    _ensure_folder(lock.parent)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{path} is being written by another distill run ({holder}); wait for it to "
                "finish or choose another output"
            ) from None
        # The holder before us may have removed the file between our open and our lock: then
        # we hold a lock on a file nobody else will see; start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}".encode(), 0)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
