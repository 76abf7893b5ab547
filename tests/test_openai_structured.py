"""What applications built on the OpenAI API ask of the server beyond plain chat, through the
official `openai` client against a real server and the real default model: tool calls
(required, named, streamed, a whole round trip), structured output (json_schema, json_object),
logprobs checked against the engine's own log-softmax, logit_bias, and a 400 naming every
field the server does not implement."""

from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import jsonschema
import pytest

pytestmark = pytest.mark.timeout(600)


def _fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


SHORT = {"type": "string", "maxLength": 40}
TOOLS = [
    _fn("get_weather", "Get the current weather in a city",
        {"city": SHORT, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city", "unit"]),
    _fn("book_flight", "Book a flight",
        {"origin": SHORT, "destination": SHORT, "date": {"type": "string", "format": "date"},
         "passengers": {"type": "integer"}}, ["origin", "destination", "date", "passengers"]),
    _fn("add", "Add two numbers", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"]),
    _fn("set_reminder", "Remind the user of something later",
        {"text": {"type": "string", "maxLength": 80}, "minutes": {"type": "integer"},
         "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3}},
        ["text", "minutes"]),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
# (prompt, the tool that fits it)
TOOL_PROMPTS = [
    ("What's the weather like in Paris right now?", "get_weather"),
    ("Is it raining in Tokyo? Tell me in fahrenheit.", "get_weather"),
    ("How warm is it in Buenos Aires today?", "get_weather"),
    ("Do I need a coat in Oslo?", "get_weather"),
    ("Weather report for Nairobi please, in celsius.", "get_weather"),
    ("Book me a flight from Berlin to Rome on 2025-06-01.", "book_flight"),
    ("I need two seats from New York to Chicago next Friday, 2025-03-14.", "book_flight"),
    ("Fly 3 people from Madrid to Lisbon on 2024-12-24.", "book_flight"),
    ("Get me to London from Dublin on the first of May 2025.", "book_flight"),
    ("Reserve a flight Sydney -> Auckland, 2026-01-10, just me.", "book_flight"),
    ("What is 17 plus 25?", "add"),
    ("Add 3.5 and 4.25 for me.", "add"),
    ("How much is 1000 + 2024?", "add"),
    ("Sum of -7 and 12?", "add"),
    ("I bought apples for 2.40 and bread for 3.10; what's the total?", "add"),
    ("Remind me to call mom in 30 minutes.", "set_reminder"),
    ("Set a reminder to water the plants in two hours.", "set_reminder"),
    ("In 5 minutes remind me that the pasta is ready, tag it kitchen.", "set_reminder"),
    ("Don't let me forget the meeting with Ana in 45 minutes.", "set_reminder"),
    ("Ping me tomorrow morning about the dentist (in 600 minutes), tags: health, calls.", "set_reminder"),
]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def _all(fn, items, workers: int = 10):
    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _check_calls(calls, allowed: set[str]) -> list[dict]:
    """Each call has an id, a known name and arguments that validate against its schema."""
    assert calls, "no tool call"
    out = []
    for c in calls:
        assert c.id and c.type == "function" and c.function.name in allowed, c
        args = json.loads(c.function.arguments)
        jsonschema.validate(args, SCHEMAS[c.function.name])
        out.append(args)
    return out


# ---- tools ------------------------------------------------------------------------------


def test_required_tool_choice_gives_valid_calls_on_20_of_20(client, model_id):
    def ask(item):
        prompt, _ = item
        return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                              tools=TOOLS, tool_choice="required", max_tokens=160, temperature=0)

    # one first: the tools' description (~300 prompt tokens, the same for all) is then a cached
    # prefix for the other 19, as for an application that sends the same tools every time
    replies = [ask(TOOL_PROMPTS[0])] + _all(ask, TOOL_PROMPTS[1:])
    for (prompt, _), r in zip(TOOL_PROMPTS, replies):
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", (prompt, choice)
        _check_calls(choice.message.tool_calls, set(SCHEMAS))
        assert not choice.message.content  # a call, not text


def test_named_tool_choice_gives_valid_calls_of_that_tool_on_20_of_20(client, model_id):
    def ask(item):
        prompt, name = item
        return client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": prompt}], tools=TOOLS, max_tokens=160,
            tool_choice={"type": "function", "function": {"name": name}}, parallel_tool_calls=False,
            temperature=0.7, seed=len(prompt))

    replies = _all(ask, TOOL_PROMPTS)
    for (prompt, name), r in zip(TOOL_PROMPTS, replies):
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", (prompt, choice)
        assert len(choice.message.tool_calls) == 1  # parallel_tool_calls false: one call
        _check_calls(choice.message.tool_calls, {name})


def _stream_reply(stream):
    """(content, tool calls assembled from their deltas as a client does, finish reasons, chunks)."""
    content, calls, finishes, chunks = "", {}, [], []
    for chunk in stream:
        chunks.append(chunk)
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for tc in ch.delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or tc.id
            if tc.function and tc.function.name:
                call["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                call["arguments"] += tc.function.arguments
        if ch.finish_reason:
            finishes.append(ch.finish_reason)
    return content, [calls[i] for i in sorted(calls)], finishes, chunks


def test_streamed_tool_call_deltas_assemble_into_valid_calls(client, model_id):
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Book a flight from Oslo to Paris on 2025-09-09."}],
        tools=TOOLS, tool_choice="required", max_tokens=160, temperature=0, stream=True,
        stream_options={"include_usage": True})
    content, calls, finishes, chunks = _stream_reply(stream)
    assert finishes == ["tool_calls"]
    assert content == ""  # the call never leaks into content
    # the arguments stream as the model writes them: several deltas per call, not one at the end
    arg_deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []
                  if tc.function and tc.function.arguments]
    assert len(arg_deltas) > len(calls)
    assert calls and all(c["id"] and c["id"].startswith("call_") for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 5


@pytest.mark.parametrize("text", [
    '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": {"c": "}{\\"]"}}}, '
    '{"name": "get_weather", "arguments": {"city": "Par\\"is", "unit": "celsius"}}]}',
    '<tool_call>\n{"name": "add", "arguments": {"a": [1, 2]}}\n</tool_call>',
    '{"name": "add", "parameters": {"a": 1}}',
])
def test_call_streamer_sends_names_then_arguments_as_they_grow(text):
    from liteinfer.server.tools import CallStreamer

    for size in (1, 3, 50):
        streamer, calls = CallStreamer(), {}
        for i in range(0, len(text), size):
            for d in streamer.feed(text[i:i + size]):
                c = calls.setdefault(d["index"], {"id": d.get("id"), "name": "", "arguments": ""})
                c["name"] += d.get("function", {}).get("name", "")
                c["arguments"] += d["function"]["arguments"]
        want = [c for c in json.loads("[" + text.replace("<tool_call>", "").replace("</tool_call>", "") + "]")]
        want = want[0]["tool_calls"] if "tool_calls" in want[0] else want
        assert [c["name"] for c in calls.values()] == [w["name"] for w in want]
        assert [json.loads(c["arguments"]) for c in calls.values()] == [w.get("arguments", w.get("parameters"))
                                                                        for w in want]
        assert [c["id"] for c in calls.values()] == [c["id"] for c in streamer.calls]


def test_a_tool_round_trip_streams_to_a_final_answer(client, model_id):
    messages = [{"role": "system", "content": "You are a helpful assistant. Use the tools when needed."},
                {"role": "user", "content": "What is the weather in Paris?"}]
    tools = [TOOLS[0]]
    _, calls, finishes, _ = _stream_reply(client.chat.completions.create(
        model=model_id, messages=messages, tools=tools, tool_choice="required", max_tokens=100, temperature=0,
        stream=True))
    assert finishes == ["tool_calls"] and calls[0]["name"] == "get_weather"
    args = json.loads(calls[0]["arguments"])
    jsonschema.validate(args, SCHEMAS["get_weather"])
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]})
    messages += [{"role": "tool", "tool_call_id": c["id"], "content": "Sunny, 24 degrees celsius."} for c in calls]
    content, calls2, finishes, chunks = _stream_reply(client.chat.completions.create(
        model=model_id, messages=messages, tools=tools, tool_choice="none", max_tokens=60, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert finishes in (["stop"], ["length"]) and not calls2
    assert content.strip() and not content.lstrip().startswith("{")  # an answer in words
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed
    # the call and its result were in the prompt: the same turn without them is shorter
    plain = client.chat.completions.create(model=model_id, messages=messages[:2], max_tokens=1)
    assert chunks[-1].usage.prompt_tokens > plain.usage.prompt_tokens + 15


def test_auto_tool_choice_gives_a_call_or_an_answer(client, model_id):
    def ask(prompt):
        return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                              tools=TOOLS, max_tokens=120, temperature=0)

    prompts = ["What's the weather in Rome?", "Tell me a joke about cats.", "What is 2 plus 2?"]
    for r in _all(ask, prompts):
        choice = r.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            _check_calls(choice.message.tool_calls, set(SCHEMAS))
        else:
            assert choice.message.content and not choice.message.content.lstrip().startswith("{")


# ---- structured output ---------------------------------------------------------------------

NAME = {"type": "string", "maxLength": 40}
JSON_SCHEMAS = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer"}}, "required": ["name", "age"]},
    {"type": "object", "properties": {"title": NAME, "ingredients": {"type": "array", "items": NAME, "minItems": 1,
                                                                      "maxItems": 4}},
     "required": ["title", "ingredients"], "additionalProperties": False},
    {"type": "object", "properties": {"event": NAME, "date": {"type": "string", "format": "date"},
                                      "all_day": {"type": "boolean"}}, "required": ["event", "date", "all_day"]},
    {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                                      "confidence": {"type": "number"}}, "required": ["sentiment", "confidence"]},
    {"type": "object", "properties": {"city": NAME, "country": NAME, "population": {"type": "integer"},
                                      "coords": {"type": "array", "prefixItems": [{"type": "number"},
                                                                                  {"type": "number"}],
                                                 "items": False}},
     "required": ["city", "country", "coords"]},
]
JSON_PROMPTS = [
    "Describe a person called Alice who is 30.", "Make up a person.", "Who is Bob, 52 years old?",
    "Invent a character for a story.", "Give me a pancake recipe.", "A recipe for tomato soup, please.",
    "What do I need for a salad?", "Recipe: chocolate cake.", "The team meeting is on 2025-02-03.",
    "Christmas day 2024 party, all day.", "Dentist appointment on March 5th 2025 at 10am.",
    "My birthday is 1990-07-14.", "I love this phone, it's great!", "The food was cold and awful.",
    "The package arrived on Tuesday.", "Best concert ever!!!", "Tell me about Paris.", "Where is Tokyo?",
    "Describe the city of Lima.", "Facts about Toronto.",
]


def test_json_schema_replies_validate_on_20_of_20(client, model_id):
    items = [(p, JSON_SCHEMAS[i // 4]) for i, p in enumerate(JSON_PROMPTS)]

    def ask(item):
        prompt, schema = item
        return client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": prompt}], max_tokens=160, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema,
                                                                    "strict": True}})

    for (prompt, schema), r in zip(items, _all(ask, items)):
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (prompt, choice)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_schema_streamed_and_json_object(client, model_id):
    schema = JSON_SCHEMAS[0]
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Describe Carol, 41."}], max_tokens=100,
        temperature=0.9, seed=7, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    content, _, finishes, _ = _stream_reply(stream)
    assert finishes == ["stop"]
    jsonschema.validate(json.loads(content), schema)

    def ask(prompt):
        return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                              max_tokens=200, temperature=0, response_format={"type": "json_object"},
                                              extra_body={"speculative": False})

    # (greedy SmolLM2 asked for "a JSON object describing a dog" adds keys breed_info_1, _2...
    # until max_tokens: an object has no size limit; these prompts end under plain greedy steps,
    # so no drafts: a step with drafts can flip a near-tie, docs/api.md)
    prompts = ["List three colors as JSON.", "Reply with a JSON object holding your name.", "Hello!"]
    for r in _all(ask, prompts):
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize("schema,words", [
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}, ["n", "minimum"]),
    ({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}}, ["format 'email'"]),
    ({"type": "object", "not": {"required": ["x"]}}, ["not"]),
])
def test_a_schema_the_grammar_cannot_enforce_is_refused_by_name(client, model_id, schema, words):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "x", "schema": schema}})
    msg = e.value.body["message"]
    assert all(w in msg for w in words), msg


# ---- logprobs, logit_bias ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exact_server(default_model_path, tmp_path_factory):
    """A server without the prefix cache: a prompt's KV is computed the same way every time
    (a reused prefix was computed in another batch shape, and its last bits differ), so its
    logprobs can be compared with the engine's to 1e-3."""
    from conftest import ServerProcess

    from liteinfer.core.config import SCHEMA_VERSION

    path = tmp_path_factory.mktemp("exact") / "device_config.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "scheduler": {"prefix_cache": False}}))
    srv = ServerProcess("-m", str(default_model_path), "--ctx", "4096", "--config", str(path))
    yield srv
    srv.stop()


def _reference(engine, prompt_tokens: list[int], n: int):
    """The engine's own greedy continuation of `prompt_tokens`, run as the server runs a lone
    request (the prompt in one decode, then one token per decode), and per generated token
    the log-softmax of the logits row it came from, in float64: [(token, logprob, row)]."""
    import numpy as np

    from liteinfer.engines.llama import SamplingParams

    cache, engine.prefix_cache = engine.prefix_cache, False
    seq = engine.start(prompt_tokens, SamplingParams(temperature=0, max_tokens=n))
    out = []
    try:
        for _ in range(n):
            engine.step([(seq, seq.n_pending)])
            row = engine._logits_row(-1).astype(np.float64)  # the row the token was sampled from
            lp = row - row.max()
            lp -= np.log(np.exp(lp).sum())
            tok = seq.tokens[-1]
            out.append((tok, float(lp[tok]), lp))
            if engine.is_eog(tok):
                break
    finally:
        engine.release(seq, keep_prefix=False)
        engine.prefix_cache = cache
    return out


def _compare(entries: list[dict], ref, engine, n_top: int) -> None:
    import numpy as np

    assert len(entries) == len([r for r in ref if not engine.is_eog(r[0])]) or len(entries) == len(ref)
    for e, (tok, lp, row) in zip(entries, ref):
        assert bytes(e["bytes"]) == engine.token_bytes(tok), (e, tok)
        assert abs(e["logprob"] - lp) < 1e-3, (e["token"], e["logprob"], lp)
        tops = e["top_logprobs"]
        assert len(tops) == n_top
        values = [t["logprob"] for t in tops]
        assert values == sorted(values, reverse=True)  # most likely first
        assert tops[0]["logprob"] == pytest.approx(e["logprob"], abs=1e-6)  # greedy took the best
        best = np.sort(row)[::-1][:n_top]
        assert np.allclose(values, best, atol=1e-3), (values, best)


def test_chat_logprobs_match_the_engines_log_softmax(exact_server, serving_engine):
    server = exact_server
    messages = [{"role": "user", "content": "Name three animals that live in the sea."}]
    body = {"messages": messages, "max_tokens": 12, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    entries = r.json()["choices"][0]["logprobs"]["content"]
    ref = _reference(serving_engine, serving_engine.chat_tokens(messages), 12)
    _compare(entries, ref, serving_engine, 5)
    assert "".join(e["token"] for e in entries) == r.json()["choices"][0]["message"]["content"]
    # streamed: the same entries, spread over the chunks
    streamed = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=300) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                ch = json.loads(line[6:])["choices"][0]
                streamed += (ch.get("logprobs") or {}).get("content") or []
    assert [e["token"] for e in streamed] == [e["token"] for e in entries]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in entries], abs=1e-6)


def test_completion_logprobs_through_the_openai_client(exact_server, serving_engine):
    from openai import OpenAI

    client = OpenAI(base_url=exact_server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    prompt = "The capital of France is"
    r = client.completions.create(model=client.models.list().data[0].id, prompt=prompt, max_tokens=6,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    ref = _reference(serving_engine, serving_engine.tokenize(prompt), 6)
    assert "".join(lp.tokens) == r.choices[0].text
    for i, (tok, value, _row) in enumerate(ref[:len(lp.tokens)]):
        assert lp.tokens[i].encode() == serving_engine.token_bytes(tok)
        assert abs(lp.token_logprobs[i] - value) < 1e-3
        tops = list(lp.top_logprobs[i].values())
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_logit_bias_minus_100_removes_a_token(client, server, model_id):
    prompt = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    base = client.chat.completions.create(model=model_id, messages=prompt, max_tokens=8, temperature=0,
                                          logprobs=True)
    first = base.choices[0].logprobs.content[0]
    ids = httpx.post(server.url + "/tokenize", json={"content": first.token}, timeout=30).json()["tokens"]
    assert len(ids) == 1, (first.token, ids)
    banned = client.chat.completions.create(model=model_id, messages=prompt, max_tokens=8, temperature=0,
                                            logprobs=True, logit_bias={str(ids[0]): -100})
    tokens = [e.token for e in banned.choices[0].logprobs.content]
    assert first.token not in tokens, (first.token, tokens)
    # +100 makes the token the only choice
    forced = client.chat.completions.create(model=model_id, messages=prompt, max_tokens=3, temperature=0.8,
                                            logit_bias={str(ids[0]): 100})
    assert forced.choices[0].message.content == first.token * 3


# ---- refused fields -------------------------------------------------------------------------

HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("extra,words", [
    ({"audio": {"voice": "alloy", "format": "wav"}}, ["unsupported field: audio"]),
    ({"modalities": ["text", "audio"]}, ["unsupported field: modalities", "text only"]),
    ({"modalities": ["audio"]}, ["unsupported field: modalities"]),
    ({"prediction": {"type": "content", "content": "x"}}, ["unsupported field: prediction"]),
    ({"reasoning_effort": "low"}, ["unsupported field: reasoning_effort"]),
    ({"verbosity": "low"}, ["unsupported field: verbosity"]),
    ({"web_search_options": {}}, ["unsupported field: web_search_options"]),
    ({"functions": [{"name": "f", "parameters": {}}]}, ["unsupported field: functions"]),
    ({"function_call": "auto"}, ["unsupported field: function_call"]),
    ({"n": 2}, ["n"]),
    ({"top_logprobs": 21, "logprobs": True}, ["top_logprobs"]),
    ({"logit_bias": {"hello": 5}}, ["logit_bias", "'hello'"]),
    ({"logit_bias": {"5": 200}}, ["logit_bias", "200"]),
    ({"logit_bias": {"99999999": -1}}, ["logit_bias", "99999999", "vocabulary"]),
    ({"tools": [{"type": "code_interpreter"}]}, ["function"]),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, ["'nope'"]),
    ({"tool_choice": "required"}, ["needs tools"]),
    ({"response_format": {"type": "xml"}}, ["response_format", "'xml'"]),
])
def test_unsupported_fields_are_a_400_naming_them(client, model_id, extra, words):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=HI, max_tokens=2, extra_body=extra)
    assert e.value.status_code == 400
    msg = e.value.body["message"]
    assert all(w in msg for w in words), msg


def test_text_modality_and_neutral_values_are_accepted(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=HI, max_tokens=2, modalities=["text"],
                                       parallel_tool_calls=True, tools=TOOLS, tool_choice="none",
                                       response_format={"type": "text"})
    assert r.choices[0].message.content is not None and not r.choices[0].message.tool_calls
