"""Tool calls, structured replies and reasoning for the OpenAI chat route: what goes into the
prompt and the grammar, and how the reply is read back.

Formats, chosen by what the chat template itself knows:
- "hermes" (Qwen 2.5+, Hermes, SmolLM3...): the template renders `tools`; the model writes
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks.
- "llama3": the template renders `tools`; the model writes `{"name": ..., "parameters": {...}}`.
- "mistral": `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (the marker is a control
  token; its text may or may not reach us, the JSON list is what is parsed).
- "generic", for templates without tool support (the default SmolLM2's): the tools are
  described in the system prompt and the reply is constrained by a grammar to either
  `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or a plain answer that does not start
  with "{". History (assistant tool calls, role "tool" results) is replayed in the same words.

With tool_choice "required" or a named function, every format's reply is grammar-constrained
to a call whose arguments match the tool's JSON schema; with "auto" the generic format still
constrains (call or answer), the native ones leave the choice to the model and parse.

`ReplySplitter` reads the generated text as it streams: `<think>...</think>` goes to
reasoning_content, a tool-call section is held back and parsed at the end, the rest is
content, released as soon as it cannot be the start of a marker.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from liteinfer.core.errors import LiteInferError
from liteinfer.engines.chat_template import normalize_messages
from liteinfer.engines.grammar import (
    format_rules,
    json_object_grammar,
    json_schema_grammar,
    literal,
    schema_rules,
)

ANY_TEXT_NOT_JSON = 'answer ::= [^{ \\t\\n] [^\\x00]*'


class ToolRequestError(LiteInferError):
    """The request's tools / tool_choice / response_format cannot be served (HTTP 400)."""


def template_format(source: str) -> str:
    """Which tool-call format a chat template speaks ("generic" if none)."""
    if "tools" not in source:
        return "generic"
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    if "<|start_header_id|>" in source and "parameters" in source:
        return "llama3"
    return "generic"


def _functions(tools: list[dict]) -> list[dict]:
    out = []
    for t in tools:
        if t.get("type", "function") != "function" or not isinstance(t.get("function"), dict):
            raise ToolRequestError("only tools of type 'function' are supported")
        fn = t["function"]
        if not isinstance(fn.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", fn["name"]):
            raise ToolRequestError(f"tool name {fn.get('name')!r} must be 1-64 letters, digits, _ . -")
        out.append(fn)
    names = [f["name"] for f in out]
    if len(set(names)) != len(names):
        raise ToolRequestError("tool names must be unique")
    return out


@dataclass
class ChatPlan:
    """What the route renders, constrains and parses for one chat request."""

    messages: list[dict]
    tools: list[dict] | None = None  # passed to the template (native formats)
    grammar: str | None = None
    format: str = "none"  # tool-call format to parse; "none" = no tools in play
    functions: list[dict] = field(default_factory=list)
    parallel: bool = True
    # the prompt ends inside an opened <think> (DeepSeek-R1 / Qwen3 templates write it into
    # the generation prompt): the reply starts as reasoning and only `</think>` ends it
    open_think: bool = False
    # the grammar holds a tool-call section to the call format: its calls can stream as they grow
    stream_calls: bool = False


def _call_rules(functions: list[dict], fmt: str, rules: dict[str, str]) -> list[str]:
    """One GBNF rule per function: a call object with its name and schema-checked arguments."""
    key = "parameters" if fmt == "llama3" else "arguments"
    calls = []
    for i, fn in enumerate(functions):
        params = fn.get("parameters") or {"type": "object"}
        try:
            args, rules_new = schema_rules(params, f"args{i}", rules)
        except LiteInferError as e:
            raise ToolRequestError(f"tool {fn['name']}: {e}") from None
        rules.clear()
        rules.update(rules_new)
        name = f"call{i}"
        rules[name] = (f'"{{" space {literal(json.dumps("name"))} space ":" space '
                       f'{literal(json.dumps(fn["name"]))} space "," space {literal(json.dumps(key))} space ":" '
                       f'space {args} "}}" space')
        calls.append(name)
    return calls


def tool_grammar(functions: list[dict], fmt: str, parallel: bool, answer: str | None = None) -> str:
    """GBNF for a reply that calls one of `functions` (several if `parallel`); with `answer`
    (a rule body) the reply may instead be that answer (tool_choice auto, generic format)."""
    rules: dict[str, str] = {}
    calls = _call_rules(functions, fmt, rules)
    rules["call"] = " | ".join(calls)
    more = "*" if parallel else ""
    if fmt == "hermes":
        rules["root"] = f'"<tool_call>\\n" call "\\n</tool_call>" ("\\n<tool_call>\\n" call "\\n</tool_call>"){more}'
        if not parallel:
            rules["root"] = '"<tool_call>\\n" call "\\n</tool_call>"'
    elif fmt == "mistral":
        rules["root"] = f'"[" space call ("," space call){more} "]"' if parallel else '"[" space call "]"'
    elif fmt == "llama3":
        rules["root"] = "call"
    else:
        items = 'call ("," space call)*' if parallel else "call"
        rules["root"] = f'"{{" space {literal(json.dumps("tool_calls"))} space ":" space "[" space {items} "]" space "}}"'
    if answer is not None:
        rules["tool-reply"] = rules.pop("root")
        rules["root"] = "tool-reply | answer"
        rules["answer"] = answer
    return format_rules(rules)


def response_format_grammar(response_format: dict | None) -> str | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_object_grammar()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec and "name" not in spec:
            raise ToolRequestError("response_format json_schema needs a json_schema object with a schema")
        schema = spec.get("schema", {})
        try:
            return json_schema_grammar(schema)
        except LiteInferError as e:
            raise ToolRequestError(f"response_format: {e}") from None
    raise ToolRequestError(f"response_format type {kind!r} is not supported (text, json_object, json_schema)")


def _generic_prompt(functions: list[dict], choice) -> str:
    lines = [json.dumps({"name": f["name"], "description": f.get("description", ""),
                         "parameters": f.get("parameters") or {"type": "object"}}, ensure_ascii=False)
             for f in functions]
    shape = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments as JSON>}}]}'
    if choice == "auto":
        how = f"To call tools, reply with only this JSON: {shape}. Otherwise answer the user in plain text."
    elif isinstance(choice, dict):
        how = f"Call the tool {choice['function']['name']}: reply with only this JSON: {shape}."
    else:
        how = f"You must call one or more tools: reply with only this JSON: {shape}."
    return "You can use these tools:\n" + "\n".join(lines) + "\n" + how


def _generic_history(messages: list[dict]) -> list[dict]:
    """Assistant tool calls and tool results as plain turns, in the reply format the prompt
    describes (templates without tool support render only role + content)."""
    out: list[dict] = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})}
                     for c in m["tool_calls"]]
            text = json.dumps({"tool_calls": calls}, ensure_ascii=False)
            out.append({"role": "assistant", "content": ((m.get("content") or "") + "\n" + text).strip()})
        elif m.get("role") == "tool":
            result = f"Tool result ({m.get('name') or m.get('tool_call_id') or 'tool'}): {m.get('content') or ''}"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "_tool": True})
        else:
            out.append({**m, "content": m.get("content") or ""})
    for m in out:
        m.pop("_tool", None)
    return out


def plan_chat(messages: list[dict], template_source: str, tools: list[dict] | None = None,
              tool_choice=None, parallel_tool_calls: bool | None = None,
              response_format: dict | None = None) -> ChatPlan:
    """Prompt messages, template tools, grammar and reply format for a chat request."""
    messages = normalize_messages(messages)
    answer_grammar = response_format_grammar(response_format)
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or not name:
            raise ToolRequestError("tool_choice must be 'none', 'auto', 'required' or "
                                   "{'type': 'function', 'function': {'name': ...}}")
    elif choice not in ("none", "auto", "required"):
        raise ToolRequestError(f"tool_choice {choice!r}: expected 'none', 'auto', 'required' or a named function")
    fmt = template_format(template_source)
    if not tools or choice == "none":
        if choice not in ("none", "auto") and not tools:
            raise ToolRequestError(f"tool_choice {choice!r} needs tools")
        if fmt != "generic":
            return ChatPlan(messages, grammar=answer_grammar)
        if tools and not answer_grammar:
            # tools offered but not to be called now: the replayed history shows calls as JSON
            # replies, and a small model answers the tool result with another one; the
            # answer's grammar keeps it to text (it does not start with "{")
            answer_grammar = "root ::= " + ANY_TEXT_NOT_JSON.split(" ::= ", 1)[1]
        return ChatPlan(_generic_history(messages), grammar=answer_grammar)
    functions = _functions(tools)
    # OpenAI's default allows several calls; in the generic format (models never trained on tool
    # calls) a grammar that allows "one more call" lets a small model repeat the same call until
    # max_tokens (SmolLM2 did, greedy): there, several calls are opt-in (parallel_tool_calls: true)
    parallel = parallel_tool_calls is True if fmt == "generic" else parallel_tool_calls is not False
    if isinstance(choice, dict):
        wanted = choice["function"]["name"]
        functions = [f for f in functions if f["name"] == wanted]
        if not functions:
            raise ToolRequestError(f"tool_choice names {wanted!r}, which is not among the tools")
    plan = ChatPlan(messages, format=fmt, functions=functions, parallel=parallel)
    if fmt == "generic":
        note = _generic_prompt(functions, choice)
        msgs = _generic_history(messages)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {**msgs[0], "content": msgs[0]["content"] + "\n\n" + note}
        else:
            msgs.insert(0, {"role": "system", "content": note})
        plan.messages = msgs
        answer = None
        if choice == "auto":
            answer = ANY_TEXT_NOT_JSON.split(" ::= ", 1)[1]
            if answer_grammar:  # the answer itself is structured: its rules join under "answer"
                sub = dict(line.split(" ::= ", 1) for line in answer_grammar.splitlines())
                answer_root = sub.pop("root")
                grammar = tool_grammar(functions, fmt, parallel, answer=answer_root)
                merged = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
                plan.grammar = format_rules({**sub, **merged})
                return plan
        plan.grammar = tool_grammar(functions, fmt, parallel, answer=answer)
        plan.stream_calls = True
        return plan
    plan.tools = tools
    if choice != "auto":
        plan.grammar = tool_grammar(functions, fmt, parallel)
        plan.stream_calls = True
    elif answer_grammar:
        raise ToolRequestError("response_format with tool_choice 'auto' is supported for templates without "
                               "native tool calls only")
    return plan


# ---- reading the reply ------------------------------------------------------------------


def _call(name: str, arguments) -> dict:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _decode_objects(text: str) -> list:
    """Every JSON value in `text`, one after the other (separators ; , whitespace skipped)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in " \t\r\n;,":
            i += 1
            continue
        value, i = dec.raw_decode(text, i)
        out.append(value)
    return out


def parse_tool_calls(text: str, fmt: str, functions: list[dict]) -> list[dict] | None:
    """OpenAI tool_calls from a tool-call section, None if it is not one (then it is content)."""
    known = {f["name"] for f in functions}
    try:
        if fmt == "hermes":
            bodies = re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.S)
            if not bodies:
                return None
            raw = [json.loads(b) for b in bodies]
        elif fmt == "mistral":
            body = text.replace("[TOOL_CALLS]", "").strip()
            raw = json.loads(body)
            raw = raw if isinstance(raw, list) else [raw]
        elif fmt == "llama3":
            raw = _decode_objects(text.replace("<|python_tag|>", "").strip())
        else:
            obj = json.loads(text)
            raw = obj.get("tool_calls") if isinstance(obj, dict) else None
            if not isinstance(raw, list):
                return None
    except (json.JSONDecodeError, ValueError):
        return None
    calls = []
    for c in raw:
        if not isinstance(c, dict) or c.get("name") not in known:
            return None
        args = c.get("arguments", c.get("parameters", {}))
        calls.append(_call(c["name"], args))
    return calls or None


_TOOL_MARKERS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]"}
_LEADING_JSON = {"generic": "{", "llama3": "{", "mistral": "["}


class ReplySplitter:
    """Generated text -> reasoning / content / tool-call section, as it streams."""

    def __init__(self, fmt: str = "none", reasoning: bool = True, open_think: bool = False):
        self.fmt = fmt
        self.reasoning = reasoning
        # start | think | content | tools; `open_think`: the prompt already opened <think>
        self.state = "think" if reasoning and open_think else "start"
        self.pending = ""
        self.tool_text = ""

    def _markers(self) -> list[str]:
        m = _TOOL_MARKERS.get(self.fmt)
        return [m] if m else []

    def push(self, text: str) -> tuple[str, str]:
        """(reasoning, content) ready to emit."""
        self.pending += text
        reasoning, content = "", ""
        while True:
            if self.state == "start":
                stripped = self.pending.lstrip()
                if not stripped:
                    return reasoning, content
                if self.reasoning and stripped.startswith("<think>"):
                    self.pending, self.state = stripped[len("<think>"):], "think"
                    continue
                if self.reasoning and "<think>".startswith(stripped):
                    return reasoning, content
                lead = _LEADING_JSON.get(self.fmt)
                if lead and stripped.startswith(lead) or any(stripped.startswith(m) for m in self._markers()):
                    self.state, self.tool_text, self.pending = "tools", stripped, ""
                    return reasoning, content
                if any(m.startswith(stripped) for m in self._markers()):
                    return reasoning, content
                self.state = "content"
                continue
            if self.state == "think":
                i = self.pending.find("</think>")
                if i >= 0:
                    reasoning += self.pending[:i]
                    self.pending, self.state = self.pending[i + len("</think>"):].lstrip(), "start"
                    self.reasoning = False
                    continue
                keep = _partial_suffix(self.pending, ["</think>"])
                reasoning += self.pending[: len(self.pending) - keep]
                self.pending = self.pending[len(self.pending) - keep:]
                return reasoning, content
            if self.state == "content":
                markers = self._markers()
                hits = [(self.pending.find(m), m) for m in markers if m in self.pending]
                if hits:
                    i, _ = min(hits)
                    content += self.pending[:i]
                    self.tool_text, self.pending, self.state = self.pending[i:], "", "tools"
                    return reasoning, content
                keep = _partial_suffix(self.pending, markers)
                content += self.pending[: len(self.pending) - keep]
                self.pending = self.pending[len(self.pending) - keep:]
                return reasoning, content
            # tools: hold everything until the end
            self.tool_text += self.pending
            self.pending = ""
            return reasoning, content

    def finish(self, functions: list[dict], keep_unparsed: bool = True) -> tuple[str, str, list[dict] | None]:
        """(reasoning, content, tool_calls) left at the end of the reply. A tool-call section
        that does not parse becomes content, unless `keep_unparsed` is false (its calls were
        streamed already)."""
        reasoning, content = "", ""
        if self.state == "think":
            reasoning, self.pending = self.pending, ""
        content += self.pending
        self.pending = ""
        calls = None
        if self.tool_text:
            calls = parse_tool_calls(self.tool_text, self.fmt, functions) if functions else None
            if calls is None and keep_unparsed:
                content += self.tool_text
        if self.state == "start" and not content:
            content = ""
        return reasoning, content, calls


class CallStreamer:
    """OpenAI tool-call deltas from a grammar-constrained tool-call section as it grows: a
    call's id and name as soon as its `"name": "...", "arguments": ` is written, then its
    arguments object piece by piece (clients concatenate them). The grammar guarantees the
    shape (name first, then an arguments object); anything else stops streaming and leaves
    the calls to the end of the reply."""

    _HEAD = re.compile(r'"name"\s*:\s*"([A-Za-z0-9_.\-]{1,64})"\s*,\s*"(?:arguments|parameters)"\s*:\s*')

    def __init__(self):
        self.text = ""
        self.pos = 0  # scanned up to here
        self.calls: list[dict] = []  # as streamed: OpenAI tool_calls
        self.in_args = False
        self.depth, self.in_str, self.esc = 0, False, False
        self.off = False

    def feed(self, text: str) -> list[dict]:
        """Deltas (`delta.tool_calls` entries) for `text`, the next piece of the section."""
        self.text += text
        out: list[dict] = []
        while not self.off:
            if not self.in_args:
                m = self._HEAD.search(self.text, self.pos)
                if m is None or m.end() >= len(self.text):
                    break  # no head yet, or the arguments' first character not yet written
                if self.text[m.end()] != "{":
                    self.off = True
                    break
                call = _call(m.group(1), "")
                self.calls.append(call)
                out.append({"index": len(self.calls) - 1, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}})
                self.pos, self.in_args, self.depth, self.in_str, self.esc = m.end(), True, 0, False, False
            start, i, end = self.pos, self.pos, None
            while i < len(self.text):
                ch = self.text[i]
                i += 1
                if self.in_str:
                    if self.esc:
                        self.esc = False
                    elif ch == "\\":
                        self.esc = True
                    elif ch == '"':
                        self.in_str = False
                elif ch == '"':
                    self.in_str = True
                elif ch in "{[":
                    self.depth += 1
                elif ch in "}]":
                    self.depth -= 1
                    if self.depth == 0:
                        end = i
                        break
            piece = self.text[start:i]
            self.pos = i
            if piece:
                self.calls[-1]["function"]["arguments"] += piece
                out.append({"index": len(self.calls) - 1, "function": {"arguments": piece}})
            if end is None:
                break
            self.in_args = False
        return out


def _partial_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest tail of `text` that could grow into one of `markers`."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best
