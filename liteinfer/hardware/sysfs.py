"""Small tolerant readers for /proc, /sys and device-tree files: None or 0 instead of errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path


def read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (OSError, ValueError):
        return None


def read_dt(path: Path) -> str:
    """Device-tree strings are NUL-terminated (lists NUL-separated)."""
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def to_int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def cpu_list(text: str) -> list[int]:
    """Parse the kernel's cpu list format: '0-3,6,8-9'."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        cpus.extend(range(int(a), int(b or a) + 1))
    return cpus


def size_kb(text: str) -> int:
    m = re.match(r"\s*(\d+)\s*([KMG]?)", text)
    if not m:
        return 0
    mult = {"": 1 / 1024, "K": 1, "M": 1024, "G": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * mult)


def run(cmd: list[str], timeout: float = 3.0) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None
