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
from fastapi.responses import JSONResponse
from pydantic import Field

from liteinfer.server import names
from liteinfer.server.fields import Checked
from liteinfer.server.limits import RequestRejected, check_prompt_chars, off_loop_json_route
from liteinfer.server.openai import error_response

router = APIRouter(route_class=off_loop_json_route())
OFF_LOOP_ITEMS = 4096  # characters or tokens: more is CPU work for a worker thread, not the event loop


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
    try:
        check_prompt_chars(len(body.content), request.app.state.config.limits)
    except RequestRejected as e:
        return error_response(e.status, str(e), code=e.code)
    if len(body.content) < OFF_LOOP_ITEMS:
        return _tokenize(svc.engine, body)
    # 1 M characters are ~250 k tokens: tokenizing, piece lookups and the JSON of the answer
    # take a second of CPU, in a worker thread instead of on the event loop
    return await asyncio.to_thread(_tokenize, svc.engine, body)


def _tokenize(engine, body: TokenizeRequest) -> JSONResponse:
    ids = engine.tokenize(body.content, body.add_special, body.parse_special)
    if not body.with_pieces:
        return JSONResponse({"tokens": ids})
    out = []
    for t in ids:
        raw = engine.token_bytes(t)
        try:
            piece: str | list[int] = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        out.append({"id": t, "piece": piece})
    return JSONResponse({"tokens": out})


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    svc, err = _llm(request, body.model)
    if err is not None:
        return err
    if len(body.tokens) < OFF_LOOP_ITEMS:
        return _detokenize(svc.engine, body.tokens)
    return await asyncio.to_thread(_detokenize, svc.engine, body.tokens)


def _detokenize(engine, tokens: list[int]):
    n_vocab = engine.n_vocab
    for i, t in enumerate(tokens):
        if not 0 <= t < n_vocab:
            return error_response(400, f"tokens.{i}: {t} is not a token of this model (ids 0..{n_vocab - 1})",
                                  code="invalid_input")
    return JSONResponse({"content": engine.detokenize(tokens)})
