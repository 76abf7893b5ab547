"""The tip base: tuning advice as data, one JSON file per topic in `liteinfer/profile/tips/`.

Each tip has an id, a condition (`when`) over the facts of `profile/facts.py`, the
advice, the exact change (`config` fields and/or a `command`), the expected effect, and its
evidence: a case measured with liteinfer (command, machine, numbers, the doc that records it)
or a public source (its link and what it says). The `Tip` model refuses a tip without
evidence, a condition naming an unknown fact, a config change naming an unknown field.

`evaluate()` runs the base against a set of facts; `render_markdown()` writes docs/tips.md.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from liteinfer.core.config import DeviceConfig
from liteinfer.core.errors import LiteInferError
from liteinfer.profile.facts import FACTS, MISSING

TIPS_DIR = Path(__file__).parent / "tips"
EFFECT_RANK = {"large": 3, "medium": 2, "small": 1}
_TEMPLATE = re.compile(r"\{([a-z_][a-z0-9_.]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Measured(_Strict):
    """A case measured with liteinfer: what was run, where, what it gave, and the doc recording it."""

    kind: Literal["measured"]
    command: str = Field(min_length=3)
    machine: str = Field(min_length=3)
    numbers: str = Field(min_length=3)
    doc: str = Field(pattern=r"^(docs/|benchmarks/|README)", description="repo file (and #anchor) recording it")


class Source(_Strict):
    """A public source: its link, its title and what it says that backs the tip."""

    kind: Literal["source"]
    url: str = Field(pattern=r"^https://[^\s]+$")
    title: str = Field(min_length=3)
    says: str = Field(min_length=10)


Evidence = Annotated[Measured | Source, Field(discriminator="kind")]


# --- conditions ---------------------------------------------------------------------------

_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class _Unknown(Exception):
    """The condition needs a fact whose source is absent."""


def _name(node: ast.AST) -> str | None:
    """`cpu.isa` -> "cpu.isa"; None when the node is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def condition_names(expr: str) -> list[str]:
    """Check a condition's syntax; return the facts it names. ValueError on anything else."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"condition {expr!r} is not valid: {e.msg}") from None
    names: list[str] = []

    def walk(n: ast.AST) -> None:
        if isinstance(n, (ast.Name, ast.Attribute)):
            name = _name(n)
            if name in ("true", "false", "none"):
                return
            if name is None or name not in FACTS:
                raise ValueError(f"unknown condition field {name or ast.unparse(n)!r}")
            names.append(name)
            return
        if isinstance(n, ast.Expression):
            walk(n.body)
        elif isinstance(n, ast.BoolOp):
            for v in n.values:
                walk(v)
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.Not, ast.USub)):
            walk(n.operand)
        elif isinstance(n, ast.Compare) and all(type(o) in _CMP or isinstance(o, (ast.In, ast.NotIn))
                                                for o in n.ops):
            walk(n.left)
            for c in n.comparators:
                walk(c)
        elif isinstance(n, ast.BinOp) and type(n.op) in _ARITH:
            walk(n.left)
            walk(n.right)
        elif isinstance(n, (ast.List, ast.Tuple)):
            for e in n.elts:
                walk(e)
        elif isinstance(n, ast.Constant) and isinstance(n.value, (str, int, float, bool, type(None))):
            return
        else:
            raise ValueError(f"condition {expr!r}: {type(n).__name__} is not allowed "
                             "(use and/or/not, comparisons, in, + - * /, constants and fact names)")

    walk(tree)
    return names


def _eval(n: ast.AST, facts: dict[str, Any]) -> Any:
    if isinstance(n, ast.Expression):
        return _eval(n.body, facts)
    if isinstance(n, (ast.Name, ast.Attribute)):
        name = _name(n)
        if name in ("true", "false", "none"):
            return {"true": True, "false": False, "none": None}[name]
        v = facts.get(name, MISSING)
        if v is MISSING:
            raise _Unknown(name)
        return v
    if isinstance(n, ast.Constant):
        return n.value
    if isinstance(n, (ast.List, ast.Tuple)):
        return [_eval(e, facts) for e in n.elts]
    if isinstance(n, ast.BoolOp):
        if isinstance(n.op, ast.And):
            return all(_eval(v, facts) for v in n.values)
        return any(_eval(v, facts) for v in n.values)
    if isinstance(n, ast.UnaryOp):
        v = _eval(n.operand, facts)
        if isinstance(n.op, ast.Not):
            return not v
        return None if v is None else -v
    if isinstance(n, ast.BinOp):
        a, b = _eval(n.left, facts), _eval(n.right, facts)
        if a is None or b is None:
            return None
        if isinstance(n.op, ast.Div) and b == 0:
            return None
        return _ARITH[type(n.op)](a, b)
    if isinstance(n, ast.Compare):
        left = _eval(n.left, facts)
        for op, comp in zip(n.ops, n.comparators):
            right = _eval(comp, facts)
            if isinstance(op, (ast.In, ast.NotIn)):
                ok = right is not None and left in right
                ok = ok if isinstance(op, ast.In) else (right is not None and not ok)
            elif left is None or right is None:  # unknown / unlimited: only == and != decide
                ok = _CMP[type(op)](left, right) if type(op) in (ast.Eq, ast.NotEq) else False
            else:
                ok = _CMP[type(op)](left, right)
            if not ok:
                return False
            left = right
        return True
    raise ValueError(f"cannot evaluate {type(n).__name__}")


# --- the tip ------------------------------------------------------------------------------

CONFIG_FIELDS = {k.removeprefix("config.") for k, f in FACTS.items()
                 if f.source == "config" and k != "config.present"}


def _templates(text: str) -> list[str]:
    bad = [n for n in _TEMPLATE.findall(text) if n not in FACTS]
    if bad:
        raise ValueError(f"unknown field {{{bad[0]}}} in text")
    return _TEMPLATE.findall(text)


class Tip(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: str = Field(min_length=3)
    when: str = Field(min_length=1, description="condition over the facts in profile/facts.py")
    advice: str = Field(min_length=10)
    config: dict[str, Any] = Field(default_factory=dict, description="dotted DeviceConfig field -> value")
    command: str | None = None
    effect: Literal["large", "medium", "small"]
    expect: str = Field(min_length=5, description="the expected effect, in words (numbers only from the evidence)")
    evidence: Evidence
    families: list[str] = Field(default_factory=list, description="device families it is about ([] = any)")
    topic: str = ""  # the file it came from

    @field_validator("when")
    @classmethod
    def _when(cls, v: str) -> str:
        condition_names(v)
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key not in CONFIG_FIELDS:
                raise ValueError(f"unknown config field {key!r}")
            if isinstance(value, str):
                _templates(value)
        return v

    @field_validator("families")
    @classmethod
    def _families(cls, v: list[str]) -> list[str]:
        for f in v:
            if f not in FAMILIES:
                raise ValueError(f"unknown family {f!r} (known: {', '.join(sorted(FAMILIES))})")
        return v

    @model_validator(mode="after")
    def _change(self) -> Tip:
        if not self.config and not self.command:
            raise ValueError("a tip needs a change: `config` fields, a `command`, or both")
        for text in (self.advice, self.command or "", self.expect):
            _templates(text)
        return self

    @property
    def sources(self) -> set[str]:
        """Where the condition's facts come from: probe, config, model, live."""
        return {FACTS[n].source for n in condition_names(self.when)}

    def applies(self, facts: dict[str, Any]) -> bool | None:
        """True / False, or None when a fact it needs is missing (no model, no live server)."""
        try:
            return bool(_eval(ast.parse(self.when, mode="eval"), facts))
        except _Unknown:
            return None


# Device families a tip may be about; the library's, plus the broad kinds a fixture has.
FAMILIES = {"raspberry-pi", "rockchip", "jetson", "apple", "intel-mini", "amd-mini", "x86-server", "cloud",
            "x86", "arm", "container", "vm"}


class _File(_Strict):
    tips: list[Tip] = Field(min_length=1)


def load_file(path: Path) -> list[Tip]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LiteInferError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LiteInferError(f"{path}: expected an object with a \"tips\" list")
    try:
        tips = _File.model_validate(data).tips
    except ValidationError as e:
        err = e.errors()[0]
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "tips" and isinstance(loc[1], int):
            raw = data["tips"][loc[1]] if isinstance(data["tips"][loc[1]], dict) else {}
            where = f"tip {raw.get('id', '#' + str(loc[1]))!r}: "
            loc = loc[2:]
        field = ".".join(str(x) for x in loc if not str(x).startswith("function-")) or "(tip)"
        raise LiteInferError(f"{path}: {where}field {field}: {err['msg'].removeprefix('Value error, ')}") from None
    for t in tips:
        t.topic = path.stem
    return tips


def load_tips(folders: list[Path] | None = None) -> list[Tip]:
    """Every tip in the folders (default: the package's), ids unique across all files."""
    tips: list[Tip] = []
    for folder in folders or [TIPS_DIR]:
        for path in sorted(Path(folder).glob("*.json")):
            tips.extend(load_file(path))
    seen: dict[str, str] = {}
    for t in tips:
        if t.id in seen:
            raise LiteInferError(f"tip id {t.id!r} is in both {seen[t.id]}.json and {t.topic}.json")
        seen[t.id] = t.topic
    return tips


# --- evaluation ---------------------------------------------------------------------------


def fill(text: str, facts: dict[str, Any]) -> str:
    def one(m: re.Match) -> str:
        v = facts.get(m.group(1), MISSING)
        if isinstance(v, float):
            return f"{v:g}"
        return "?" if v is MISSING or v is None else str(v)

    return _TEMPLATE.sub(one, text)


def _value(v: Any, facts: dict[str, Any]) -> Any:
    if not isinstance(v, str) or not _TEMPLATE.search(v):
        return v
    s = fill(v, facts)
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return s


@dataclass
class Applied:
    tip: Tip
    advice: str
    command: str | None
    changes: dict[str, Any]  # resolved config values that differ from the config now
    expect: str = ""

    @property
    def rank(self) -> tuple:
        live = "live" in self.tip.sources
        return (-EFFECT_RANK[self.tip.effect], not live, self.tip.evidence.kind != "measured", self.tip.topic,
                self.tip.id)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.tip.id, "topic": self.tip.topic, "title": self.tip.title, "effect": self.tip.effect,
                "advice": self.advice, "config": self.changes, "command": self.command,
                "expect": self.expect or self.tip.expect, "evidence": self.tip.evidence.model_dump(),
                "needs": sorted(self.tip.sources)}


def evaluate(tips: list[Tip], facts: dict[str, Any]) -> tuple[list[Applied], dict[str, int]]:
    """The tips that apply, ranked (largest expected effect first, live load first, measured
    before public source), and how many could not be decided for want of each fact source."""
    out: list[Applied] = []
    undecided: dict[str, int] = {}
    for t in tips:
        ok = t.applies(facts)
        if ok is None:
            for s in t.sources:
                if any(facts.get(n, MISSING) is MISSING for n in condition_names(t.when) if FACTS[n].source == s):
                    undecided[s] = undecided.get(s, 0) + 1
            continue
        if not ok:
            continue
        changes = {}
        for key, v in t.config.items():
            new = _value(v, facts)
            if facts.get(f"config.{key}", MISSING) != new:
                changes[key] = new
        if t.config and not changes and not t.command:
            continue  # the config already says so
        out.append(Applied(t, fill(t.advice, facts), fill(t.command, facts) if t.command else None, changes,
                           fill(t.expect, facts)))
    out.sort(key=lambda a: a.rank)
    return out, undecided


def apply_changes(cfg: DeviceConfig, applied: list[Applied]) -> tuple[DeviceConfig, list[tuple[str, Any, Any, str]]]:
    """The config with the tips' changes (highest-ranked tip first wins a field); the list of
    (field, old, new, tip id). Raises LiteInferError when a value does not validate."""
    data = cfg.model_dump()
    done: list[tuple[str, Any, Any, str]] = []
    taken: set[str] = set()
    for a in applied:
        for key, new in a.changes.items():
            if key in taken:
                continue
            taken.add(key)
            node = data
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            done.append((key, node.get(last), new, a.tip.id))
            node[last] = new
    try:
        return DeviceConfig.model_validate(data), done
    except ValidationError as e:
        err = e.errors()[0]
        raise LiteInferError(f"a tip's change does not validate: field {'.'.join(map(str, err['loc']))}: "
                             f"{err['msg']}") from None


# --- docs/tips.md -------------------------------------------------------------------------

DOC_HEADER = """# Tuning tips: the reference

<!-- generated by `python scripts/gen_tips_doc.py` from liteinfer/profile/tips/*.json: edit those, not this -->

Every tip the advisor knows, by topic. `liteinfer doctor` evaluates the same data against
your machine, config, model (`--model`) and live load (`--server URL`) and prints only the
tips that apply, ranked by expected effect; `--apply` writes their config changes after you
confirm. The measured sections of the [tuning manual](tuning.md) explain the big levers;
this page is the long list. Each tip names its evidence: **measured** = a case measured with
liteinfer (the command, the machine and the numbers, recorded in the doc it links), or
**source** = a public source, linked, with what it says.

{counts}

## Live load: `liteinfer doctor --server URL`

`liteinfer doctor --server http://127.0.0.1:8000 --window 30` reads the server's `/metrics`
every half second for the window (`--api-key KEY` when keys are set) and turns it into the
`live.*` facts below: how often the queue sat at `server.max_queue` and how many requests got
429, TTFT and engine-step p95 against the server's targets, KV-cache fill and KV-full
preemptions, CPU taken by other processes, hypervisor steal, time the cgroup's CPU quota held the
server back, the clock against its maximum and
the hottest temperature sensor (the last three only where the kernel exposes them), free
memory, threads, sequences per step and prefix-cache reuse. The `live` tips need them; the
machine tips are evaluated on the machine doctor runs on.

## Adding a tip

1. Pick the topic file in `liteinfer/profile/tips/` (or add `<topic>.json`) and append to
   its `"tips"` list:

   ```json
   {{
     "id": "threads-example",
     "title": "One line",
     "when": "cpu.big_little and config.engine.n_threads > cpu.big_count",
     "advice": "What to do and why; {{cpu.big_count}} is filled in from the facts.",
     "config": {{"engine.n_threads": "{{cpu.big_count}}"}},
     "command": "taskset -c {{cpu.big_cpus}} liteinfer serve --config device_config.json",
     "effect": "large",
     "expect": "What changes, in words; numbers only from the evidence.",
     "families": ["rockchip"],
     "evidence": {{"kind": "source", "url": "https://...", "title": "...", "says": "what the page says"}}
   }}
   ```

   `id`: unique, lowercase and dashes. `config` (dotted `DeviceConfig` fields) and/or
   `command`: the change; `{{fact}}` is filled in. `effect`: large, medium or small (how tips
   are ranked). `families`: optional, the device families it is about. `evidence`: a public
   source as above, or a case measured with liteinfer:
   `{{"kind": "measured", "command": "...", "machine": "...", "numbers": "...", "doc": "docs/tuning.md#..."}}`.
2. `when` may use `and`, `or`, `not`, comparisons, `in`, `+ - * /`, constants and the facts
   listed under [Facts](#facts); a tip needing model facts applies only with a model, one
   needing `live.*` facts only with `--server`. An unknown fact, an unknown config field, a
   tip without evidence or without a change is refused when the base loads, with the file,
   the tip id and the field.
3. Regenerate this page: `python scripts/gen_tips_doc.py`, and run
   `.venv/bin/python -m pytest tests/test_tips.py -q` (schema, fixtures, this page up to date).
4. Check it on a machine where it should apply: `liteinfer doctor`, or on a recorded tree,
   `liteinfer doctor --root tests/fixtures/hw/<machine>`.
"""


def counts(tips: list[Tip]) -> dict[str, dict[str, int]]:
    by_topic: dict[str, dict[str, int]] = {}
    for t in tips:
        row = by_topic.setdefault(t.topic, {"measured": 0, "source": 0})
        row[t.evidence.kind] += 1
    return by_topic


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(tips: list[Tip]) -> str:
    rows = counts(tips)
    m = sum(r["measured"] for r in rows.values())
    s = sum(r["source"] for r in rows.values())
    table = ["| topic | tips | measured with liteinfer | public source |", "|---|---|---|---|"]
    for topic in sorted(rows):
        r = rows[topic]
        table.append(f"| [{topic}](#{topic}) | {r['measured'] + r['source']} | {r['measured']} | {r['source']} |")
    table.append(f"| **all** | **{m + s}** | **{m}** | **{s}** |")
    out = [DOC_HEADER.format(counts="\n".join(table)).rstrip(), ""]
    out += ["## By device family", "",
            "Tips about one kind of machine (the rest apply wherever their condition holds):", ""]
    for fam in sorted(FAMILIES):
        ids = sorted(t.id for t in tips if fam in t.families)
        if ids:
            out.append(f"- **{fam}** ({len(ids)}): " + ", ".join(f"`{i}`" for i in ids))
    out.append("")
    for topic in sorted(rows):
        out += [f"## {topic}", ""]
        for t in sorted((t for t in tips if t.topic == topic), key=lambda t: (-EFFECT_RANK[t.effect], t.id)):
            out.append(f"### `{t.id}`: {t.title}")
            out.append("")
            fam = f"; families: {', '.join(t.families)}" if t.families else ""
            out.append(f"- **when** `{t.when}` ({t.effect} effect{fam})")
            out.append(f"- **advice**: {t.advice}")
            if t.config:
                out.append("- **config**: " + ", ".join(f"`{k} = {v!r}`".replace("'", '"') for k, v in t.config.items()))
            if t.command:
                out.append(f"- **command**: `{t.command}`")
            out.append(f"- **expect**: {t.expect}")
            e = t.evidence
            if isinstance(e, Measured):
                out.append(f"- **measured**: `{e.command}` on {e.machine}: {e.numbers} ([{e.doc}]({_rel(e.doc)}))")
            else:
                out.append(f"- **source**: [{e.title}]({e.url}): {e.says}")
            out.append("")
    out += ["## Facts", "", "What a condition may name (`liteinfer/profile/facts.py`).", "",
            "| fact | from | meaning |", "|---|---|---|"]
    for name, f in sorted(FACTS.items()):
        if f.source == "config" and name not in ("config.present", "config.model"):
            continue  # one row for them below: the doc does not go stale when a config field is added
        out.append(f"| `{name}` | {f.source} | {_md(f.doc)} |")
    out.append("| `config.<section>.<field>` | config | every field of `DeviceConfig` (`liteinfer/core/config.py`), "
               "e.g. `config.engine.n_threads`, `config.scheduler.max_batch`; the defaults when no config is found |")
    return "\n".join(out) + "\n"


def _rel(doc: str) -> str:
    """A repo path as a link from docs/tips.md."""
    return doc.removeprefix("docs/") if doc.startswith("docs/") else f"../{doc}"
