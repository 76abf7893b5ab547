"""Crash-safe file output: write beside the target under a recognisable name, then rename.

A crash or a bad input never leaves a half-written model, config or recipe behind, and what
a killed process left (`.NAME.PID.XXXX.tmp` files, `.NAME.TAG.PID.XXXX` folders next to the
target) is removed by the next run that writes the same target, once that PID is gone.
A full disk or a read-only folder is a one-line LiteInferError naming the path and what it
needs, not an internal error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from liteinfer.core.errors import LiteInferError

LEGACY_STALE_S = 3600  # a temp file without a PID in its name (older liteinfer) counts as left over after this


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale(folder: Path, name: str) -> list[Path]:
    """Remove what killed runs left for target `name` in `folder`: `.NAME.[TAG.]PID.XXXXXXXX[.tmp]`
    whose PID is not running (and PID-less `.NAME.XXXXXXXX.tmp` an hour old); returns them."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    pattern = re.compile(re.escape(f".{name}.") + r"(?:[a-z]+\.)?(?:(\d+)\.)?[a-z0-9_]{8}(?:\.tmp)?")
    for entry in folder.iterdir():
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            if m.group(1) is not None:
                if _pid_alive(int(m.group(1))):
                    continue
            elif time.time() - entry.lstat().st_mtime < LEGACY_STALE_S:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except (OSError, ValueError):
            continue  # another process cleaned it, or it is not ours to remove
    return removed


def disk_error(e: OSError, path: str | os.PathLike, need_bytes: int | None = None) -> LiteInferError | None:
    """A LiteInferError for a full disk, a read-only file system or a folder we may not write;
    None for other errors."""
    path = Path(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = _free_bytes(path)
        need = f"; it needs about {_mb(need_bytes)}" if need_bytes else ""
        have = f" ({_mb(free)} free)" if free is not None else ""
        return LiteInferError(f"no space left writing {path}{have}{need}: free some space on that disk or "
                              "write somewhere else")
    if e.errno == errno.EROFS:
        return LiteInferError(f"cannot write {path}: the file system is read-only; write somewhere else")
    if e.errno in (errno.EACCES, errno.EPERM):
        return LiteInferError(f"cannot write {path}: permission denied on {Path(e.filename or path).parent}")
    return None


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"


@contextlib.contextmanager
def translate_disk_errors(path: str | os.PathLike, need_bytes: int | None = None) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        err = disk_error(e, path, need_bytes)
        if err is None:
            raise
        raise err from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, need_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path` (`.NAME.PID.XXXX.tmp`); on success rename it over `path`,
    else delete it. Left-overs of killed runs for the same target are removed first."""
    path = Path(path)
    with translate_disk_errors(path, need_bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with translate_disk_errors(path, need_bytes):
            yield tmp_path
            if tmp_path.exists():  # mkstemp makes 0600 files; give the usual umask-based mode
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def scratch_dir(target: str | os.PathLike, tag: str = "work", need_bytes: int | None = None) -> Iterator[Path]:
    """A scratch folder beside `target` (`.NAME.TAG.PID.XXXX`), removed on exit; left-overs of
    killed runs for the same target are removed first."""
    target = Path(target)
    prefix = f".{target.name}.{tag}."
    with translate_disk_errors(target, need_bytes):
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=target.parent))
    try:
        with translate_disk_errors(target, need_bytes):
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, need_bytes: int | None = None) -> Iterator[Path]:
    """Like atomic_output for a folder: fill the yielded folder, then it replaces `path`."""
    path = Path(path)
    with scratch_dir(path, "tmp", need_bytes) as tmp:
        staged = tmp / path.name
        yield staged
        with translate_disk_errors(path, need_bytes):
            if path.exists():
                shutil.rmtree(path)
            os.replace(staged, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path, need_bytes=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())
