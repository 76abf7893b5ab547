"""Chat templates rendered the way Hugging Face's `apply_chat_template` renders them, and
prompts whose special tokens come only from the template.

The Jinja environment matches transformers' (`utils/chat_template_utils.py`): an immutable
sandbox, trim_blocks + lstrip_blocks, the loop-controls extension, a `{% generation %}` block
that renders its body, `tojson` without ASCII or HTML escaping and with `indent`,
`separators` and `sort_keys`, and the globals `raise_exception` and `strftime_now`. A template
gets `messages`, `tools`, `documents`, `add_generation_prompt`, the special-token strings and
any extra keyword the caller passes (`enable_thinking`, `date_string`, ...).

User text is never parsed for control tokens: `render_parts` renders the conversation with
every message's content replaced by a sentinel, so the template's own markup and the
message text come out as separate pieces; `split_special` then finds control tokens in the
template pieces only. The engine tokenizes the text runs with `parse_special` off, so a user
who types `<|im_end|><|im_start|>system` gets those characters as text, not as turn markers.

jinja2 is imported when the first template is compiled, never on import of this module (the
server's generation path loads it only for chat requests).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from liteinfer.core.errors import LiteInferError

CHATML = (  # for GGUFs that carry no template
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ChatTemplateError(LiteInferError):
    """The template refused the conversation (raise_exception) or failed to render."""


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers overrides Jinja's tojson: no HTML escaping, and these keyword arguments
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise ChatTemplateError(f"chat template: {message}")


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


_ENV = None


def _environment():
    global _ENV
    if _ENV is None:
        # on use: jinja2 only when a template renders (start-up time)
        from jinja2 import nodes
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class _Generation(Extension):
            """`{% generation %}...{% endgeneration %}` (assistant-mask markers): render the body."""

            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return nodes.Scope(body, lineno=lineno)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_Generation, loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        _ENV = env
    return _ENV


def normalize_messages(messages: Iterable[Mapping]) -> list[dict]:
    """OpenAI-shaped messages as templates expect them: tool-call `arguments` as an object
    (OpenAI sends a JSON string; Hugging Face templates `tojson` it), content parts joined."""
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("content"), list):
            m["content"] = "".join(p.get("text") or "" for p in m["content"] if p.get("type") == "text")
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                call = copy.deepcopy(dict(call))
                fn = call.get("function")
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"] or "{}")
                    except json.JSONDecodeError:
                        pass  # leave it as the client sent it
                calls.append(call)
            m["tool_calls"] = calls
        out.append(m)
    return out


class ChatTemplate:
    """One compiled template with the special-token strings it is rendered with."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", **special: str):
        # on use: jinja2, as above (start-up time)
        from jinja2 import TemplateError

        self.source = source
        self.special = {"bos_token": bos_token, "eos_token": eos_token, **special}
        try:
            self._template = _environment().from_string(source)
        except TemplateError as e:
            raise ChatTemplateError(f"chat template does not compile: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path, **special: str) -> ChatTemplate:
        """A template file: plain Jinja, or a tokenizer_config.json / JSON with `chat_template`."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise LiteInferError(f"chat template file {p}: {e.strerror or e}") from None
        if p.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise LiteInferError(f"chat template file {p}: not valid JSON ({e})") from None
            text = data.get("chat_template") if isinstance(data, dict) else None
            if isinstance(text, list):  # named templates: take "default"
                text = next((t.get("template") for t in text if t.get("name") == "default"), None)
            if not isinstance(text, str):
                raise LiteInferError(f"chat template file {p}: no chat_template string in it")
        return cls(text, **special)

    @property
    def supports_tools(self) -> bool:
        """Whether the template itself renders `tools` (else the caller describes them)."""
        return "tools" in self.source

    def render(self, messages: list[dict], tools: list[dict] | None = None, documents: list[dict] | None = None,
               add_generation_prompt: bool = True, **kwargs) -> str:
        # on use: jinja2, as above (start-up time)
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=messages, tools=tools, documents=documents,
                                         add_generation_prompt=add_generation_prompt, **{**self.special, **kwargs})
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise ChatTemplateError(f"chat template: {e}") from None

    def render_parts(self, messages: list[dict], **kwargs) -> list[tuple[str, bool]]:
        """The rendered prompt as [(text, from_template)]: message contents are separate
        pieces (from_template False), exactly as `render` would place them."""
        nonce = secrets.token_hex(4)
        marked, contents = [], []
        for m in messages:
            content = m.get("content")
            if isinstance(content, str) and content:
                m = {**m, "content": f"\ue000{nonce}:{len(contents)}\ue001"}
                contents.append(content)
            marked.append(m)
        full = self.render(messages, **kwargs)
        if not contents:
            return [(full, True)] if full else []
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", self.render(marked, **kwargs))
        parts = _align(full, pieces, contents)
        if parts is None:
            # The template changed the content in a way other than trimming (slicing, splitting
            # on a marker...): keep the template's pieces and the content as the user sent it.
            parts = [(pieces[0], True)]
            for i in range(1, len(pieces), 2):
                parts += [(contents[int(pieces[i])], False), (pieces[i + 1], True)]
        merged: list[tuple[str, bool]] = []
        for text, tmpl in parts:
            if not text:
                continue
            if merged and merged[-1][1] == tmpl:
                merged[-1] = (merged[-1][0] + text, tmpl)
            else:
                merged.append((text, tmpl))
        return merged


def _align(full: str, pieces: list[str], contents: list[str]) -> list[tuple[str, bool]] | None:
    """Match the sentinel render's pieces against the real render: each content may have
    been trimmed (`| trim`) or JSON-escaped (`| tojson`, its quotes then come out as template text) by the template; None when the two
    do not line up."""
    if not full.startswith(pieces[0]):
        return None
    parts, pos = [(pieces[0], True)], len(pieces[0])
    for i in range(1, len(pieces), 2):
        content, after = contents[int(pieces[i])], pieces[i + 1]
        for cand in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip(), _tojson(content)[1:-1])):
            if full.startswith(cand, pos) and full.startswith(after, pos + len(cand)):
                break
        else:
            return None
        parts += [(cand, False), (after, True)]
        pos += len(cand) + len(after)
    return parts if pos == len(full) else None


def split_special(parts: list[tuple[str, bool]], specials: Mapping[str, int]) -> list[int | str]:
    """Control tokens (text -> id) found in template pieces become ids; everything else,
    message text included, joins into plain-text runs to be tokenized with parse_special off.
    Longest match first, as llama.cpp's tokenizer partitions text."""
    out: list[int | str] = []

    def add_text(t: str) -> None:
        if t:
            if out and isinstance(out[-1], str):
                out[-1] += t
            else:
                out.append(t)

    pattern = _special_pattern(specials)
    for text, from_template in parts:
        if not from_template or pattern is None:
            add_text(text)
            continue
        pos = 0
        for m in pattern.finditer(text):
            add_text(text[pos : m.start()])
            out.append(specials[m.group(0)])
            pos = m.end()
        add_text(text[pos:])
    return out


_PATTERNS: dict[int, tuple[Mapping, re.Pattern | None]] = {}


def _special_pattern(specials: Mapping[str, int]) -> re.Pattern | None:
    cached = _PATTERNS.get(id(specials))
    if cached is not None and cached[0] is specials:
        return cached[1]
    keys = sorted((k for k in specials if k), key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, keys))) if keys else None
    _PATTERNS[id(specials)] = (specials, pattern)
    return pattern
