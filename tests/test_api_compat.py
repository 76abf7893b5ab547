"""What real applications meet beside chat: llama-server's /tokenize and /detokenize, the
OpenAI routes refusing by name what they do not implement (and accepting what only labels a
request), and the 503 + Retry-After every model route gives while the model loads."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

HI = [{"role": "user", "content": "Hi"}]


def _post(server, route, body, status=200):
    r = httpx.post(server.url + route, json=body, timeout=120)
    assert r.status_code == status, r.text
    return r.json()


def test_tokenize_and_detokenize(server):
    toks = _post(server, "/tokenize", {"content": "Hello world"})["tokens"]
    assert toks and all(isinstance(t, int) for t in toks)
    assert _post(server, "/detokenize", {"tokens": toks}) == {"content": "Hello world"}
    pieces = _post(server, "/tokenize", {"content": "Hello world", "with_pieces": True})["tokens"]
    assert [p["id"] for p in pieces] == toks and "".join(p["piece"] for p in pieces) == "Hello world"
    # a control token is one token, unless special tokens are not parsed
    assert len(_post(server, "/tokenize", {"content": "<|im_start|>"})["tokens"]) == 1
    assert len(_post(server, "/tokenize", {"content": "<|im_start|>", "parse_special": False})["tokens"]) > 1
    # a piece that is part of a character comes as bytes; the pieces join to the text's bytes
    llama = _post(server, "/tokenize", {"content": "🦙 ok", "with_pieces": True})["tokens"]
    raw = b"".join(bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode() for p in llama)
    assert raw == "🦙 ok".encode()
    assert _post(server, "/detokenize", {"tokens": [p["id"] for p in llama]})["content"] == "🦙 ok"


@pytest.mark.parametrize("route,body,status,words", [
    ("/detokenize", {"tokens": [5, -1]}, 400, ["tokens.1", "-1"]),
    ("/detokenize", {"tokens": [10**9]}, 400, ["tokens.0"]),
    ("/tokenize", {"content": 3}, 400, ["content"]),
    ("/tokenize", {"content": "x", "n_probs": 3}, 400, ["unsupported field: n_probs"]),
    ("/tokenize", {"content": "x", "model": "nope"}, 404, ["'nope' not found"]),
])
def test_tokenize_errors(server, route, body, status, words):
    msg = _post(server, route, body, status)["error"]["message"]
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize("route,body,words", [
    ("/v1/chat/completions", {"messages": HI, "frobnicate": 1}, ["unsupported field: frobnicate"]),
    ("/v1/chat/completions", {"messages": HI, "audio": {"voice": "alloy", "format": "wav"}},
     ["unsupported field: audio"]),
    ("/v1/chat/completions", {"messages": HI, "n": 2}, ["n"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "audio": {"id": "a1"}}]},
     ["messages.0", "unsupported field: audio"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]},
     ["messages.0.content.1.type", "'image_url' content is not supported", "text only"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": "AAAA", "format": "wav"}}]}]}, ["messages.0.content.0.type", "input_audio"]),
    ("/v1/chat/completions", {"messages": HI, "stream": True, "stream_options": {"include_usage": True, "x": 1}},
     ["stream_options", "unsupported field: x"]),
    ("/v1/completions", {"prompt": "hi", "echo": True}, ["unsupported field: echo"]),
    ("/v1/completions", {"prompt": "hi", "suffix": "and then"}, ["unsupported field: suffix"]),
    ("/v1/completions", {"prompt": "hi", "best_of": 3}, ["unsupported field: best_of"]),
    ("/v1/embeddings", {"input": "hi", "frobnicate": True}, ["unsupported field: frobnicate"]),
    ("/v1/embeddings", {"input": "hi", "dimensions": 12}, ["dimensions=12", "576"]),  # not cut in silence
])
def test_openai_routes_refuse_what_they_do_not_do(server, route, body, words):
    err = _post(server, route, body, 400)["error"]
    assert all(w in err["message"] for w in words), err["message"]
    assert err["type"] == "invalid_request_error"


def test_labels_and_neutral_values_are_accepted(server):
    labels = {"user": "u-1", "metadata": {"app": "test"}, "store": False, "service_tier": "auto",
              "prompt_cache_key": "k", "safety_identifier": "s", "n": 1, "echo": None}
    r = _post(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 2, **labels})
    assert r["usage"]["completion_tokens"] >= 1
    r = _post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "echo": False, "best_of": 1, "user": "u"})
    assert r["choices"][0]["text"] is not None
    assert _post(server, "/v1/embeddings", {"input": "hi", "user": "u-1"})["data"]


def test_model_routes_answer_503_while_loading(default_model_path):
    """Until the model is loaded, /v1/models, the generation routes and Ollama's routes say
    503 with Retry-After (the load is held at a gate; then the real load runs)."""
    from fastapi.testclient import TestClient

    from liteinfer.core.config import DeviceConfig
    from liteinfer.server.app import create_app

    config = DeviceConfig()
    config.engine.n_ctx = 512
    config.server.aliases = ["llama3.2"]
    app = create_app(config, model=str(default_model_path))
    llm = app.state.services["llm"]
    gate, real_load = threading.Event(), llm.load
    llm.load = lambda: (gate.wait(60), real_load())
    with TestClient(app) as c:
        for method, route, body in (("get", "/v1/models", None),
                                    ("post", "/v1/chat/completions", {"messages": HI}),
                                    ("post", "/v1/completions", {"prompt": "Hi"}),
                                    ("get", "/api/tags", None), ("get", "/api/ps", None),
                                    ("post", "/api/chat", {"model": "llama3.2", "messages": HI}),
                                    ("post", "/api/generate", {"model": "llama3.2", "prompt": "Hi"}),
                                    ("post", "/tokenize", {"content": "Hi"})):
            r = c.request(method, route, json=body)
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, (route, r.text)
            err = r.json()["error"]
            assert "loading" in (err if isinstance(err, str) else err["message"])
        gate.set()
        deadline = time.monotonic() + 120
        while c.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert ids == [default_model_path.stem, "llama3.2"]
        r = c.post("/v1/chat/completions", json={"model": "nope", "messages": HI})
        assert r.status_code == 404 and "llama3.2" in r.json()["error"]["message"]
