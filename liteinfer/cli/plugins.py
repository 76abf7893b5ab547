"""`liteinfer plugins`: the installed plugins, their versions and what each adds.

    liteinfer plugins            # one line per plugin; a plugin that failed says why
    liteinfer plugins --json

Commands and serve options are those the plugin registered on this run's parser; routes come from calling its
router factories (so this command imports FastAPI when a plugin has routes).
"""

from __future__ import annotations

import argparse
import json

from liteinfer.core.plugins import GROUP, Loaded, registry


def _routes(entry: Loaded, routers: list) -> list[str]:
    out = []
    for owner, router in routers:
        if owner is entry:
            for r in router.routes:
                methods = ",".join(sorted(getattr(r, "methods", None) or [])) or "WS"
                out.append(f"{methods} {r.path}")
    return out


def describe() -> list[dict]:
    reg = registry()
    routers = reg.routers() if any(e.plugin.routes for e in reg.loaded) else []
    rows = []
    for e in reg.loaded:
        p = e.plugin
        rows.append({
            "name": p.name, "version": e.version, "dist": e.dist, "entry_point": e.entry_point,
            "description": p.description, "status": "error" if e.errors else "ok",
            "commands": e.commands, "serve_options": e.serve_options, "routes": _routes(e, routers),
            "engines": [{"suffix": t.suffix, "description": t.description,
                         "kinds": [k for k, f in (("llm", t.load_llm), ("oneshot", t.load_oneshot)) if f]}
                        for t in p.engines],
            "catalog": [{"source": c.name, "names": list(c.names())} for c in p.catalog],
            "config": sorted(p.config), "errors": list(e.errors),
        })
    for f in reg.failed:
        rows.append({"name": f.name, "version": f.version, "dist": f.dist, "status": "failed", "errors": [f.error]})
    return rows


def _line(row: dict) -> str:
    head = f"{row['name']:<12} {row['version'] or '-':<9} {row['dist'] or '(in-process)':<24}"
    if row["status"] == "failed":
        return f"{head} FAILED: {row['errors'][0]}"
    parts = []
    if row["commands"]:
        parts.append("commands: " + ", ".join(row["commands"]))
    if row["serve_options"]:
        parts.append("serve options: " + ", ".join(row["serve_options"]))
    if row["routes"]:
        parts.append("routes: " + ", ".join(row["routes"]))
    if row["engines"]:
        parts.append("engines: " + ", ".join(f"{t['suffix']} ({t['description']})" for t in row["engines"]))
    if row["catalog"]:
        parts.append("catalog: " + ", ".join(f"{c['source']} ({len(c['names'])} models)" for c in row["catalog"]))
    if row["config"]:
        parts.append("config: " + ", ".join(f"plugins.{s}" for s in row["config"]))
    if row["errors"]:
        parts.append("left out: " + "; ".join(row["errors"]))
    return f"{head} {'; '.join(parts) or 'adds nothing'}"


def plugins_main(args: argparse.Namespace) -> int:
    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no plugins installed (packages register through the entry-point group {GROUP!r})")
        return 0
    for row in rows:
        print(_line(row))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="installed plugins, their versions and what each adds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=plugins_main)
