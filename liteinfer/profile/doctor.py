"""`liteinfer doctor`'s tips: the tip base (profile/tips.py) evaluated against this machine,
its config, a model's metadata (`--model`) and a running server's load (`--server URL`),
printed ranked by expected effect; `--apply` writes their config changes after a yes.

Light at import (argparse only): `liteinfer --help` registers doctor's arguments from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_tip_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--model", default=None, help="GGUF file or catalog name whose metadata the tips may use "
                   "(default: the config's model when it is already on this machine)")
    d.add_argument("--server", metavar="URL", default=None,
                   help="also watch a running server's /metrics and advise on its live load")
    d.add_argument("--window", type=float, default=10.0, help="seconds to watch --server (default 10)")
    d.add_argument("--api-key", default=None, help="API key for --server's /metrics")
    d.add_argument("--apply", action="store_true", help="write the applicable tips' config changes (asks first)")
    d.add_argument("--yes", action="store_true", help="with --apply: do not ask")
    d.add_argument("--all-tips", action="store_true", help="list every tip with why it does or does not apply")
    d.add_argument("--tips", action="append", default=[], metavar="DIR", help=argparse.SUPPRESS)  # extra tip files


def _model_path(args: argparse.Namespace, cfg) -> tuple[Path | None, str | None]:
    """The GGUF whose header the tips read, and a note when none could be found."""
    # on use: the catalog and config import pydantic models (start-up)
    from liteinfer.core.catalog import cache_dir, load_catalog, pull
    from liteinfer.core.config import DeviceConfig

    if args.model:  # asked for by name: resolve it as every command does
        path = pull(args.model, install=False)
    elif args.root != "/":
        return None, None  # a recorded machine: no model unless named
    else:  # the model this machine's server would load, only if it is already here (no download, no copy)
        name = (cfg or DeviceConfig()).model
        entry = load_catalog().get(name)
        path = Path(name).expanduser() if entry is None else cache_dir() / entry.name / entry.file
        if not path.exists():
            return None, (f"model facts skipped: {name} is not on this machine yet (liteinfer pull {name}, "
                          "or --model FILE)")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        path = ggufs[0] if ggufs else None
    return path, None


class TipReport:
    def __init__(self, applied, undecided: dict[str, int], total: int, facts: dict[str, Any], notes: list[str],
                 all_tips: list | None = None) -> None:
        self.applied, self.undecided, self.total, self.facts, self.notes = applied, undecided, total, facts, notes
        self.all_tips = all_tips

    def to_json(self) -> dict[str, Any]:
        # on use: pydantic-backed tip models (start-up)
        from liteinfer.profile.facts import MISSING

        out = {"tips": [a.to_json() for a in self.applied], "tips_total": self.total,
               "tips_undecided": self.undecided, "tip_notes": self.notes,
               "live": {k: v for k, v in self.facts.items() if k.startswith("live.") and v is not MISSING}}
        if self.all_tips is not None:
            out["all_tips"] = self.all_tips
        return out

    def lines(self) -> list[str]:
        out = [f"tips:    {len(self.applied)} of {self.total} apply here, largest expected effect first"
               + (" (`--json` for every field)" if self.applied else "")]
        for i, a in enumerate(self.applied, 1):
            t = a.tip
            out.append(f"  {i}. [{t.effect}] {t.id} ({t.topic}): {a.advice}")
            if a.changes:
                out.append("     change: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in a.changes.items()))
            if a.command:
                out.append(f"     run:    {a.command}")
            out.append(f"     expect: {a.expect or t.expect}")
            e = t.evidence
            if e.kind == "measured":
                out.append(f"     measured: `{e.command}` on {e.machine}: {e.numbers} ({e.doc})")
            else:
                out.append(f"     source: {e.title} <{e.url}>")
        skipped = {"model": "a model (--model)", "live": "a running server (--server URL)"}
        for source, n in sorted(self.undecided.items()):
            out.append(f"  ({n} more tips need {skipped.get(source, source)} to decide)")
        for note in self.notes:
            out.append(f"  ({note})")
        if self.all_tips is not None:
            out.append("every tip:")
            for row in self.all_tips:
                out.append(f"  {row['state']:9} {row['id']} ({row['topic']}): {row['when']}")
        return out


def tip_report(args: argparse.Namespace, probe, cfg) -> TipReport:
    # on use: pydantic, the tip base and the GGUF reader (start-up of `liteinfer --help`)
    from liteinfer.profile import facts as F
    from liteinfer.profile.tips import TIPS_DIR, evaluate, load_tips

    tips = load_tips([TIPS_DIR, *map(Path, args.tips)])
    facts = {**F.probe_facts(probe), **F.config_facts(cfg), **F.missing("model"), **F.missing("live")}
    notes: list[str] = []
    path, note = _model_path(args, cfg)
    if note:
        notes.append(note)
    if path is not None:
        facts.update(F.model_facts(path, cfg, probe.effective_memory_mb))
    if args.server:
        # on use: only --server reads a live server
        from liteinfer.profile.live import watch

        print(f"watching {args.server}/metrics for {args.window:g} s ...", file=sys.stderr)
        facts.update(watch(args.server, args.window, args.api_key))
    applied, undecided = evaluate(tips, facts)
    rows = None
    if args.all_tips:
        ids = {a.tip.id for a in applied}
        rows = []
        for t in tips:
            state = t.applies(facts)
            rows.append({"id": t.id, "topic": t.topic, "when": t.when,
                         "state": "applies" if t.id in ids else "done" if state else
                         "undecided" if state is None else "no"})
    return TipReport(applied, undecided, len(tips), facts, notes, rows)


def apply_tips(report: TipReport, cfg, path: str | None, yes: bool) -> int:
    """Write the applicable tips' config changes to `path` (or ./device_config.json) after a yes."""
    # on use: pydantic (start-up)
    from liteinfer.core.config import DeviceConfig, save_config
    from liteinfer.profile.tips import apply_changes

    target = Path(path or "device_config.json")
    new, done = apply_changes(cfg or DeviceConfig(), report.applied)
    if not done:
        print("apply:   no config changes to make", file=sys.stderr)
        return 0
    print(f"apply:   {len(done)} change(s) to {target}:", file=sys.stderr)
    for key, old, value, tip in done:
        print(f"  {key}: {json.dumps(old)} -> {json.dumps(value)}  ({tip})", file=sys.stderr)
    if not yes:
        print(f"write them to {target}? [y/N] ", end="", file=sys.stderr, flush=True)  # stdout may be --json
        answer = sys.stdin.readline()
        if answer.strip().lower() not in ("y", "yes"):
            print("apply:   nothing written", file=sys.stderr)
            return 0
    save_config(new, target)
    print(f"apply:   wrote {target}", file=sys.stderr)
    return len(done)
