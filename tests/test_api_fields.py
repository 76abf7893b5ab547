"""The honest-fields rule on its own (server/fields.py): a field a request model does not
declare is refused by name, unless it is on the model's ignore list, null, or its neutral
value; nested objects follow their own lists. The server tests check the routes use it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from liteinfer.server.fields import Checked, first_error


class Part(Checked):
    REASONS = {"image_url": "text only"}
    type: str
    text: str | None = None


class Body(Checked):
    IGNORED = frozenset({"user", "metadata"})
    NEUTRAL = {"n": 1, "echo": False, "temperature_scale": 1.0}
    prompt: str
    parts: list[Part] = []


def _error(data: dict) -> str:
    with pytest.raises(ValidationError) as e:
        Body.model_validate(data)
    return first_error(e.value)


def test_declared_and_ignored_fields_pass():
    b = Body.model_validate({"prompt": "hi", "user": "u1", "metadata": {"a": 1}})
    assert b.prompt == "hi"


def test_an_unknown_field_is_refused_by_name():
    assert _error({"prompt": "hi", "logprobs": True}) == "unsupported field: logprobs"


def test_null_and_neutral_values_ask_for_nothing():
    Body.model_validate({"prompt": "hi", "logprobs": None, "n": 1, "echo": False, "temperature_scale": 1})
    assert _error({"prompt": "hi", "n": 2}) == "unsupported field: n"
    assert _error({"prompt": "hi", "n": True}) == "unsupported field: n"  # a bool is not the number 1
    assert _error({"prompt": "hi", "echo": True}) == "unsupported field: echo"


def test_nested_objects_name_their_path_and_reason():
    msg = _error({"prompt": "hi", "parts": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": "x"}]})
    assert msg == "parts.1: unsupported field: image_url (text only)"


def test_first_error_names_the_field_of_a_type_error():
    assert _error({"prompt": 3}) == "prompt: Input should be a valid string"
    with pytest.raises(ValidationError) as e:
        Body.model_validate_json("{nope")
    assert first_error(e.value) == "request body is not valid JSON"
    with pytest.raises(ValidationError) as e:
        Body.model_validate_json("[1, 2]")
    assert first_error(e.value) == "request body must be a JSON object"


def test_config_aliases_are_checked(tmp_path):
    import json

    from liteinfer.core.config import SCHEMA_VERSION, load_config
    from liteinfer.core.errors import LiteInferError

    path = tmp_path / "device_config.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "server": {"aliases": ["llama3.2", "gpt-4o"]}}))
    assert load_config(path).server.aliases == ["llama3.2", "gpt-4o"]
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "server": {"aliases": [" padded"]}}))
    with pytest.raises(LiteInferError, match="field server.aliases: .*surrounding spaces"):
        load_config(path)


class Msg(Checked):
    content: str | list[Part] | None = None


def test_a_union_reports_the_member_that_was_meant():
    """pydantic reports one error per union member it tried ("Input should be a valid string"
    for the list the client sent): the refusal inside the list is what the client needs."""
    with pytest.raises(ValidationError) as e:
        Msg.model_validate({"content": [{"type": "text", "text": "a", "cache_control": {}}]})
    assert first_error(e.value) == "content.0: unsupported field: cache_control"
    with pytest.raises(ValidationError) as e:
        Msg.model_validate({"content": [{"type": "text", "text": 5}]})
    assert first_error(e.value) == "content.0.text: Input should be a valid string"
