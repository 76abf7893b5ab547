"""POST /tokenize and POST /detokenize with llama-server's shapes, on the chat model's vocabulary.

    {"content": "Hello", "add_special": false, "parse_special": true, "with_pieces": false}
        -> {"tokens": [19556]}          with_pieces: {"tokens": [{"id": 19556, "piece": "Hello"}]}
    {"tokens": [19556]} -> {"content": "Hello"}

A piece that is not whole UTF-8 (part of a character) comes as its list of bytes, as in
llama-server. Special tokens detokenize to nothing (they are control tokens, not text).
Errors are OpenAI-shaped, like llama-server's.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import Field

from liteinfer.server import names
from liteinfer.server.fields import Checked
from liteinfer.server.openai import error_response

router = APIRouter()


class TokenizeRequest(Checked):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    model: str | None = None


class DetokenizeRequest(Checked):
    tokens: list[int] = Field(max_length=1_000_000)
    model: str | None = None


def _llm(request: Request, model: str | None):
    services, config = request.app.state.services, request.app.state.config
    svc = services.get("llm")
    if svc is None:
        return None, error_response(404, "this server has no chat model to tokenize with", code="model_not_found")
    if model and not names.answers_to(svc, model, config):
        return None, error_response(404, names.not_found_message(model, services, config), code="model_not_found")
    if not svc.ready:
        return None, error_response(503, "model is loading", "server_error", "loading", {"Retry-After": "2"})
    return svc, None


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    svc, err = _llm(request, body.model)
    if err is not None:
        return err
    engine = svc.engine
    args = (body.content, body.add_special, body.parse_special)
    # a long text is CPU work: off the event loop
    ids = engine.tokenize(*args) if len(body.content) < 50_000 else await asyncio.to_thread(engine.tokenize, *args)
    if not body.with_pieces:
        return {"tokens": ids}
    out = []
    for t in ids:
        raw = engine.token_bytes(t)
        try:
            piece: str | list[int] = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        out.append({"id": t, "piece": piece})
    return {"tokens": out}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    svc, err = _llm(request, body.model)
    if err is not None:
        return err
    n_vocab = svc.engine.n_vocab
    for i, t in enumerate(body.tokens):
        if not 0 <= t < n_vocab:
            return error_response(400, f"tokens.{i}: {t} is not a token of this model (ids 0..{n_vocab - 1})",
                                  code="invalid_input")
    return {"content": svc.engine.detokenize(body.tokens)}
