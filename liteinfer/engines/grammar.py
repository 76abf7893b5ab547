"""JSON Schema -> GBNF for grammar-constrained sampling (`SamplingParams.grammar`).

The conversion itself is llama-cpp-python's `llama_cpp/llama_grammar.py` (a port of
llama.cpp's json_schema_to_grammar). That file imports only the standard library, but
`import llama_cpp.llama_grammar` would first run the package's __init__, which loads the
high-level `Llama` class and with it numpy, jinja2, diskcache and sqlite3 (~20 MB of RSS the
serving path keeps out, see engines/llama_cpp_lazy.py). So the lazy stand-in package is
registered first and the submodule is imported under it: its __init__ never runs.

The converter ignores what it does not understand (`minimum` on a number, `format: email`,
`not`, a `maxLength` beside a `pattern`...), which would let a reply break the schema
the client asked for. `check_schema` walks the schema first and names every such keyword:
the caller turns that into a 400 instead of silently constraining less.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Iterator

from liteinfer.core.errors import LiteInferError
from liteinfer.engines.llama_cpp_lazy import c_api


class UnsupportedSchema(LiteInferError):
    """The JSON schema uses keywords grammar-constrained decoding cannot enforce."""


# Keywords that describe and do not constrain: accepted and ignored.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "example", "$schema", "$id", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "discriminator"})
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
# Per keyword: which other constraining keywords may sit beside it (the converter picks one
# branch per schema node and drops the rest).
_ALONE = {"$ref": set(), "anyOf": set(), "oneOf": set(), "const": {"type"}, "enum": {"type"}}
_OBJECT = {"type", "properties", "required", "additionalProperties", "allOf"}
_ARRAY = {"type", "items", "prefixItems", "minItems", "maxItems"}
_STRING = {"type", "pattern", "format", "minLength", "maxLength"}


def _problems(schema, path: str, root: dict) -> Iterator[str]:
    where = path or "(root)"
    if isinstance(schema, bool):
        if schema is False:
            yield f"{where}: false (matches nothing)"
        return
    if not isinstance(schema, dict):
        yield f"{where}: a schema must be an object"
        return
    keys = {k for k in schema if k not in _ANNOTATIONS}
    for kw, allowed in _ALONE.items():
        if kw in keys and keys - {kw} - allowed:
            yield f"{where}: {kw} beside {', '.join(sorted(keys - {kw} - allowed))}"
            return
    typ = schema.get("type")
    types = typ if isinstance(typ, list) else [typ] if typ is not None else []
    for t in types:
        if t not in _TYPES:
            yield f"{where}: type {t!r}"
    if isinstance(typ, list) and keys - {"type"}:
        yield f"{where}: a list of types beside {', '.join(sorted(keys - {'type'}))}"
        return
    if "$ref" in keys:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            yield f"{where}: $ref {ref!r} (only local '#/...' references)"
        return
    for kw in ("anyOf", "oneOf"):
        if kw in keys:
            if not isinstance(schema[kw], list) or not schema[kw]:
                yield f"{where}: {kw} must be a non-empty list"
                return
            for i, sub in enumerate(schema[kw]):
                yield from _problems(sub, f"{path}.{kw}[{i}]", root)
            return
    if "const" in keys or "enum" in keys:
        if "enum" in keys and (not isinstance(schema["enum"], list) or not schema["enum"]):
            yield f"{where}: enum must be a non-empty list"
        return
    groups = [g for g in (_OBJECT, _ARRAY, _STRING) if keys & g - {"type"}]
    if len(groups) > 1:
        yield f"{where}: object, array and string keywords mixed ({', '.join(sorted(keys - {'type'}))})"
        return
    known = _OBJECT | _ARRAY | _STRING
    for kw in sorted(keys - known):
        yield f"{where}: {kw}"
    if "format" in keys and schema["format"] not in _FORMATS:
        yield f"{where}: format {schema['format']!r} (supported: {', '.join(sorted(_FORMATS))})"
    if "pattern" in keys:
        pattern = schema["pattern"]
        if not isinstance(pattern, str) or not (pattern.startswith("^") and pattern.endswith("$")):
            yield f"{where}: pattern {pattern!r} must be anchored as ^...$"
    string_kws = keys & {"pattern", "format", "minLength", "maxLength"}
    if "pattern" in string_kws and len(string_kws) > 1 or "format" in string_kws and len(string_kws) > 1:
        yield f"{where}: {', '.join(sorted(string_kws))} together"
    if "prefixItems" in keys and keys & {"items", "minItems", "maxItems"} and schema.get("items") is not False:
        yield f"{where}: prefixItems beside {', '.join(sorted(keys & {'items', 'minItems', 'maxItems'}))}"
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        yield f"{where}: properties must be an object"
        props = {}
    for name, sub in props.items():
        yield from _problems(sub, f"{path}.{name}" if path else name, root)
    required = schema.get("required", [])
    missing = [r for r in required if r not in props] if isinstance(required, list) else ["(not a list)"]
    if missing and "allOf" not in keys:
        yield f"{where}: required names {', '.join(map(str, missing))} not in properties"
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _problems(extra, f"{path}.additionalProperties", root)
    for i, sub in enumerate(schema.get("allOf", [])):
        target = _deref(sub, root) if isinstance(sub, dict) else None
        if not isinstance(target, dict) or "properties" not in target or set(target) - _ANNOTATIONS - _OBJECT:
            yield f"{where}: allOf[{i}] is not an object schema with properties"
        else:
            yield from _problems(target, f"{path}.allOf[{i}]", root)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _problems(items, f"{path}[]", root)
    for i, sub in enumerate(schema.get("prefixItems", []) or []):
        yield from _problems(sub, f"{path}[{i}]", root)


def _deref(schema: dict, root: dict):
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return None
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        schema, seen = target, seen + 1
    return schema


def check_schema(schema) -> None:
    """Raise UnsupportedSchema naming every keyword the grammar could not enforce."""
    found = list(_problems(schema, "", schema if isinstance(schema, dict) else {}))
    if isinstance(schema, dict):
        for name in ("$defs", "definitions"):
            for key, sub in (schema.get(name) or {}).items():
                found += _problems(sub, f"{name}.{key}", schema)
    if found:
        shown = "; ".join(dict.fromkeys(found))
        raise UnsupportedSchema(f"JSON schema not supported for constrained decoding: {shown}")


def _converter():
    c_api()  # the lazy stand-in package: importing its submodule skips llama_cpp/__init__
    return importlib.import_module("llama_cpp.llama_grammar")


def schema_rules(schema, name: str, rules: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Rules for one schema under `name` (its top rule; "" names it root), added to `rules`
    (shared helper rules such as `string` or `space` are defined once). Returns (top rule
    name, rules)."""
    check_schema(schema)
    if schema is True:
        schema = {}
    lg = _converter()
    conv = lg.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    if rules:
        conv._rules.update(rules)
    try:
        resolved = conv.resolve_refs(copy.deepcopy(schema), "input")
        top = conv.visit(resolved, name)
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise UnsupportedSchema(f"JSON schema not supported for constrained decoding: {e}") from None
    return top, dict(conv._rules)


def format_rules(rules: dict[str, str]) -> str:
    return "\n".join(f"{k} ::= {v}" for k, v in sorted(rules.items()))


def literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def json_schema_grammar(schema) -> str:
    """GBNF for replies that are one JSON value matching `schema`."""
    top, rules = schema_rules(schema, "")
    if top != "root":
        rules["root"] = top
    return format_rules(rules)


def json_object_grammar() -> str:
    """GBNF for any JSON object (response_format json_object)."""
    return json_schema_grammar({"type": "object"})
