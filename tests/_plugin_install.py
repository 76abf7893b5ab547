"""Installing plugin packages for a test the way users do (pip), into a folder of their own:
the shared venv stays as it is, and a subprocess sees the plugins through PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip_install_target(package: Path, target: Path) -> Path:
    """`pip install --target` of a plugin's folder (no deps: liteinfer and its needs are in the venv)."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(package)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return target


def broken_plugin(folder: Path) -> Path:
    """A distribution whose entry point names a module that does not import."""
    info = folder / "liteinfer_broken-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: liteinfer-broken\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[liteinfer.plugins]\nbroken = liteinfer_broken:plugin\n")
    (folder / "liteinfer_broken.py").write_text("import liteinfer_no_such_dependency  # noqa: F401\nplugin = None\n")
    return folder


def env_with(*paths: Path, **extra: str) -> dict[str, str]:
    """os.environ with `paths` first on PYTHONPATH, plus `extra`."""
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), *([old] if old else [])]), **extra}
