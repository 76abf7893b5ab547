"""Honest request bodies: a field the server does not implement is refused by name.

Every request model (OpenAI's and Ollama's) derives from `Checked`. A field it declares is
implemented; a field listed in its `IGNORED` is accepted and has no effect on the answer
(`user`, `metadata`, `store`...); any other field gets a 400 `unsupported field: NAME` instead
of being dropped in silence. A field sent as null, or with the value that means "off" in its
class's `NEUTRAL` (`"n": 1`, `"echo": false`), asks for nothing and is accepted.

Supporting a new field is one line: declare it on the model. Making one ignorable is one
line: add it to `IGNORED`.

    class CompletionRequest(Checked):
        IGNORED = frozenset({"user"})
        NEUTRAL = {"echo": False, "best_of": 1}
        prompt: str

`first_error(exc)` turns a pydantic ValidationError into one line that names the field
(`messages.0.content: ...`, `unsupported field: tools`), for routes that validate by hand.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError


class Checked(BaseModel):
    """A request object whose unknown fields are refused by name (see the module docstring)."""

    model_config = ConfigDict(extra="allow")
    IGNORED: ClassVar[frozenset[str]] = frozenset()
    NEUTRAL: ClassVar[dict[str, Any]] = {}
    # a field refused with its own reason (e.g. "suffix": "fill-in-the-middle is not supported")
    REASONS: ClassVar[dict[str, str]] = {}

    @model_validator(mode="after")
    def _refuse_unknown(self):
        for name, value in (self.model_extra or {}).items():
            if name in self.IGNORED or value is None:
                continue
            if name in self.NEUTRAL and _same(value, self.NEUTRAL[name]):
                continue
            reason = self.REASONS.get(name)
            raise PydanticCustomError("unsupported_field", "unsupported field: {field}{reason}",
                                      {"field": name, "reason": f" ({reason})" if reason else ""})
        return self


def _same(value: Any, neutral: Any) -> bool:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)  # `"n": true` is not `"n": 1`

    if number(value) and number(neutral):
        return value == neutral
    return type(value) is type(neutral) and value == neutral


def first_error(exc: ValidationError) -> str:
    """One line for a pydantic ValidationError: `where: what`, where is the field's dotted path."""
    return describe(exc.errors())


# loc entries pydantic adds for the member of a union it tried ("str", "list[...]"): not fields
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none", "bytes"})


def _field_path(loc) -> str:
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    return ".".join(parts)


def describe(errors: list[dict]) -> str:
    """The most telling of pydantic's (or FastAPI's) errors as one line naming the field: a
    refused field over a type mismatch (a union reports one error per member it tried), the
    deepest path otherwise."""
    if not errors:
        return "invalid request"
    if any(e.get("type") == "json_invalid" for e in errors):
        return "request body is not valid JSON"
    ours = [e for e in errors if str(e.get("type", "")).startswith("unsupported")]
    err = ours[0] if ours else max(errors, key=lambda e: len(_field_path(e.get("loc", ())).split(".")))
    where = _field_path(err.get("loc", ()))
    msg = err.get("msg", "invalid request")
    if err.get("type") == "model_type" and not where:
        msg = "request body must be a JSON object"
    return f"{where}: {msg}" if where else msg
