"""Model management, the way Ollama's CLI does it:

    liteinfer pull NAME            catalog name, REPO:FILE or REPO:QUANT from the hub; a bar, a checksum
    liteinfer models [--json]      what the cache holds: size, type, quantization, where it came from
    liteinfer show NAME [--json]   architecture, parameters, context, tensors per type, template, license
    liteinfer rm NAME...           delete from the cache
    liteinfer ps [--url URL]       what a running server has loaded, with its memory (/api/ps)

The cache and the sources are core/catalog.py; what a file is, core/model_info.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

from liteinfer.core.catalog import cache_dir, list_models, load_catalog, local_models, pull, remove
from liteinfer.core.errors import LiteInferError
from liteinfer.core.model_info import model_info

DEFAULT_URL = "http://127.0.0.1:8000"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="fetch a model into the cache (catalog name, REPO:FILE or REPO:QUANT, "
                       ".gguf path), checked against its checksum")
    p.add_argument("name")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=pull_main)
    p = sub.add_parser("models", aliases=["list", "ls"], help="list the models in the cache (and the catalog's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=models_main)
    p = sub.add_parser("show", help="what a model is: architecture, parameters, context, tensors, template, license")
    p.add_argument("name", help="catalog name, REPO:FILE, or a model path")
    p.add_argument("--json", action="store_true")
    p.add_argument("--template", action="store_true", help="print only the chat template")
    p.add_argument("--license", action="store_true", help="print only the license")
    p.set_defaults(func=show_main)
    p = sub.add_parser("rm", help="delete models from the cache")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=rm_main)
    p = sub.add_parser("ps", help="what a running server has loaded (asks its /api/ps)")
    p.add_argument("--url", default=None, help=f"the server (default: $LITEINFER_URL or {DEFAULT_URL})")
    p.add_argument("--api-key", default=None, help="the server's API key (default: $LITEINFER_API_KEY)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=ps_main)


def _mb(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def pull_main(args: argparse.Namespace) -> int:
    print(pull(args.name, progress=not args.quiet))
    return 0


def _describe(path: Path) -> dict:
    try:
        return model_info(path)
    except (ValueError, OSError) as e:
        return {"error": str(e)}


def models_main(args: argparse.Namespace) -> int:
    rows = list_models()
    for r in rows:
        if r["cached"]:
            info = _describe(Path(r["path"]))
            r["quantization"] = info.get("quantization", "")
            r["kind"] = r["kind"] or info.get("kind", "")
            r["parameter_size"] = info.get("parameter_size", "")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    local = [r for r in rows if r["cached"]]
    if local:
        print(f"{'NAME':<28} {'TYPE':<10} {'PARAMS':<7} {'QUANT':<8} {'SIZE':>9}  SOURCE")
        for r in local:
            print(f"{r['name']:<28} {r['kind'] or '-':<10} {r['parameter_size'] or '-':<7} "
                  f"{r['quantization'] or '-':<8} {_mb(r['size']):>9}  {r['source']}")
    else:
        print("no models in the cache yet")
    rest = [r["name"] for r in rows if not r["cached"]]
    if rest:
        print(f"to pull: {', '.join(rest)} (liteinfer pull NAME)")
    print(f"cache: {cache_dir()}")
    return 0


def _local_path(name: str) -> tuple[Path, dict]:
    """A model on this machine (never downloads) and what the cache knows of it."""
    path = pull(name, install=False)
    for m in local_models():
        if m.path == path or m.folder == path:
            return path, {"name": m.name, "source": m.source, "pulled_at": m.pulled_at, "sha256": m.sha256}
    return path, {"name": name, "source": "local file" if Path(name).expanduser().exists() else ""}


def show_main(args: argparse.Namespace) -> int:
    path, known = _local_path(args.name)
    try:
        info = model_info(path)
    except ValueError as e:
        raise LiteInferError(f"{path}: {e}") from None
    entry = load_catalog().get(known["name"])
    if not info["license"] and entry is not None and entry.license:
        info["license"] = f"{entry.license} (from the catalog; the file names none)"
    if not info["kind"] and entry is not None:
        info["kind"] = entry.kind
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    out = {"name": known["name"], "path": str(path), "size": size, "source": known.get("source", ""),
           "pulled_at": known.get("pulled_at", ""), **info}
    if args.template:
        print(info["chat_template"] or "(no chat template in this model)")
        return 0
    if args.license:
        print(info["license"] or "(the model names no license)")
        return 0
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    rows = [("architecture", info["architecture"]), ("name", info["name"]),
            ("parameters", f"{info['parameter_size']} ({info['parameters']:,})" if info["parameters"] else ""),
            ("type", info["kind"]), ("quantization", info["quantization"]),
            ("context length", info["context_length"]), ("embedding length", info["embedding_length"]),
            ("layers", info["layers"]), ("attention heads", info["heads"]), ("kv heads", info["kv_heads"]),
            ("format", info["format"]), ("size", _mb(size)), ("path", str(path)), ("source", out["source"])]
    print(f"  {known['name']}")
    for k, v in rows:
        if v not in (None, ""):
            print(f"    {k:<18} {v}")
    if info["tensors"]:
        print("\n  tensors")
        for t, n in info["tensors"].items():
            print(f"    {t:<18} {n}")
    template = info["chat_template"]
    if template:
        lines = template.strip().splitlines()
        print(f"\n  chat template ({len(lines)} lines; --template prints it whole)")
        for line in lines[:6]:
            print("    " + textwrap.shorten(line, 100, placeholder=" ..."))
        if len(lines) > 6:
            print("    ...")
    if info["license"]:
        first = info["license"].strip().splitlines()[0]
        print(f"\n  license\n    {textwrap.shorten(first, 100, placeholder=' ...')}")
    return 0


def rm_main(args: argparse.Namespace) -> int:
    # the engines' cache of a model's Q4_1 split goes with the model (engines sit above core)
    from liteinfer.engines.q4_1_split import cache_folder

    for name in args.names:
        derived = []
        for m in local_models():
            if name in (m.name, m.folder.name) and m.path.suffix == ".gguf" and m.path.is_file():
                derived.append(cache_folder(m.path))
        m = remove(name)
        extra = ""
        for folder in derived:
            if folder.is_dir():
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                shutil.rmtree(folder)
                extra = f" and its Q4_1 split ({_mb(size)})"
        print(f"deleted {m.name} ({_mb(m.size)}){extra}")
    return 0


def ps_main(args: argparse.Namespace) -> int:
    url = (args.url or os.environ.get("LITEINFER_URL") or DEFAULT_URL).rstrip("/")
    key = args.api_key or os.environ.get("LITEINFER_API_KEY")
    req = urllib.request.Request(url + "/api/ps", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (the user's own server)
            data = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:200]
        try:
            detail = json.loads(detail).get("error", detail)
        except (json.JSONDecodeError, AttributeError):
            pass
        raise LiteInferError(f"{url}/api/ps answered {e.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise LiteInferError(f"no liteinfer server at {url} ({getattr(e, 'reason', e)}): start one with "
                             "`liteinfer serve`, or give --url") from None
    models = data.get("models", [])
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print(f"{url}: no model loaded")
        return 0
    print(f"{'NAME':<28} {'FORMAT':<7} {'PARAMS':<7} {'QUANT':<8} {'FILE':>9} {'CONTEXT':>8} {'SERVER RSS':>11}")
    for m in models:
        d = m.get("details") or {}
        print(f"{m.get('name', ''):<28} {d.get('format', '') or '-':<7} {d.get('parameter_size', '') or '-':<7} "
              f"{d.get('quantization_level', '') or '-':<8} {_mb(m.get('size')):>9} "
              f"{m.get('context_length') or '-':>8} {_mb(m.get('process_rss')):>11}")
    return 0
