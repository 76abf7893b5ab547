"""OpenAI-compatible wire protocol: the error shape, the service lookup every route uses, and
the /v1 chat, completions and models routes (request schemas included).

Errors are OpenAI-shaped JSON: {"error": {"message", "type", "code"}}. Streaming is SSE in
the chunk format ending with `data: [DONE]`; each write carries every event that is ready,
so a busy server sends fewer, larger writes instead of one syscall per token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from liteinfer.core.errors import LiteInferError, QueueFull
from liteinfer.engines.llama import SamplingParams
from liteinfer.scheduler.continuous import Event, GenRequest
from liteinfer.scheduler.dynamic import BatcherClosed

router = APIRouter()


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status,
                        headers=headers)


# ---- schemas -----------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we don't use (user, logit_bias...)


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingFields(_Lenient):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="liteinfer extension: 0 = off")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="liteinfer extension")
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, default_max: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_tokens=self.max_tokens or default_max, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, seed=self.seed, stop=stop,
                              presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]


# ---- which service a request names -----------------------------------------------------

_WHAT = {"llm": ("chat", "without --no-llm"), "embedding": ("embedding", "with --embedding-model"),
         "classifier": ("image classifier", "with --classifier-model")}


def find_service(request: Request, kind: str, model: str | None = None):
    """(service, None) when the app runs a ready `kind` service that `model` (if given) names,
    else (None, an error response): 404 none of that kind or another name, 503 still loading."""
    svc = request.app.state.services.get(kind)
    if svc is None:
        what, how = _WHAT[kind]
        return None, error_response(404, f"this server has no {what} model (serve {how})", code="model_not_found")
    if not svc.ready:
        return None, error_response(503, "model is loading", "server_error", "loading", {"Retry-After": "2"})
    if model and model not in svc.aliases:
        return None, error_response(404, f"model {model!r} not found; available: {svc.name}",
                                    "invalid_request_error", "model_not_found")
    return svc, None


async def run_batched(coro, timeout_s: float):
    """Await a batched service call: (result, None), or (None, an error response) for its
    failures: bad input 400, queue full 429 with Retry-After, shutting down 503, timeout 504."""
    try:
        return await asyncio.wait_for(coro, timeout_s), None
    except QueueFull as e:
        retry = str(int(e.retry_after_s))
        return None, error_response(429, f"server busy: {e}; retry after {retry} s", "rate_limit_error",
                                    "queue_full", {"Retry-After": retry})
    except BatcherClosed as e:
        return None, error_response(503, str(e), "server_error", "shutting_down")
    except LiteInferError as e:
        return None, error_response(400, str(e), code="invalid_input")
    except asyncio.TimeoutError:
        return None, error_response(504, f"no result within {timeout_s:g} s", "server_error", "timeout")


# ---- routes ------------------------------------------------------------------------------


@router.get("/v1/models")
async def list_models(request: Request):
    data = [{"id": svc.name, "object": "model", "created": svc.created, "owned_by": "liteinfer"}
            for svc in request.app.state.services.values() if svc.ready]
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    svc, err = find_service(request, "llm", body.model)
    if err is not None:
        return err
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        prompt = svc.apply_chat_template(messages)
    except Exception as e:  # template errors are the request's fault (e.g. role order)
        return error_response(400, f"chat template: {e}")
    if body.max_completion_tokens and not body.max_tokens:
        body.max_tokens = body.max_completion_tokens
    return await _generate(request, svc, prompt, body, chat=True)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    svc, err = find_service(request, "llm", body.model)
    if err is not None:
        return err
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            return error_response(400, "only one prompt per request is supported")
        prompt = prompt[0]
    return await _generate(request, svc, prompt, body, chat=False)


async def _generate(request: Request, svc, prompt: str, body: _SamplingFields, chat: bool):
    tokens = svc.tokenize(prompt)
    if not tokens:
        return error_response(400, "prompt is empty")
    limit = svc.max_seq_len
    if len(tokens) >= limit:
        return error_response(400, f"prompt is {len(tokens)} tokens; this model's context holds {limit}",
                              code="context_length_exceeded")
    params = body.sampling(svc.config.server.default_max_tokens)
    params.max_tokens = min(params.max_tokens, limit - len(tokens))
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(ev: Event) -> None:  # called on the engine thread
        loop.call_soon_threadsafe(queue.put_nowait, ev)

    gen = GenRequest(tokens, params, emit, timeout_s=svc.config.server.request_timeout_s)
    try:
        svc.submit(gen)
    except QueueFull as e:
        return error_response(429, f"server busy: {e}; retry later", "rate_limit_error", "queue_full",
                              {"Retry-After": "1"})
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    meta = {"id": rid, "created": int(time.time()), "model": svc.name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(svc, gen, queue, meta, chat, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _collect(request, svc, gen, queue, meta, chat)


def _error_status(message: str) -> int:
    return 504 if "timed out" in message else 500


async def _collect(request: Request, svc, gen: GenRequest, queue: asyncio.Queue, meta: dict, chat: bool):
    parts: list[str] = []
    while True:
        try:
            ev = await asyncio.wait_for(queue.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                svc.cancel(gen)
                return Response(status_code=499)
            continue
        if ev.kind == "text":
            parts.append(ev.text)
        elif ev.kind == "error":
            return error_response(_error_status(ev.text), ev.text, "server_error")
        else:
            text = "".join(parts)
            usage = _usage(ev.usage)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "finish_reason": ev.finish_reason}
                return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": ev.finish_reason}
            return {**meta, "object": "text_completion", "choices": [choice], "usage": usage}


def _usage(u: dict | None) -> dict[str, Any]:
    u = u or {}
    return {"prompt_tokens": u.get("prompt_tokens", 0), "completion_tokens": u.get("completion_tokens", 0),
            "total_tokens": u.get("total_tokens", 0),
            "prompt_tokens_details": {"cached_tokens": u.get("cached_tokens", 0)}}


def _chunk(meta: dict, chat: bool, text: str | None, finish: str | None, first: bool = False) -> str:
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = {**meta, "object": "chat.completion.chunk", "choices": [choice]}
    else:
        obj = {**meta, "object": "text_completion",
               "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(svc, gen: GenRequest, queue: asyncio.Queue, meta: dict, chat: bool, include_usage: bool):
    done = False
    try:
        if chat:
            yield _chunk(meta, chat, None, None, first=True)
        while not done:
            events = [await queue.get()]
            while not queue.empty():  # coalesce everything ready into one write
                events.append(queue.get_nowait())
            out = []
            for ev in events:
                if ev.kind == "text":
                    out.append(_chunk(meta, chat, ev.text, None))
                elif ev.kind == "error":
                    out.append(f"data: {json.dumps({'error': {'message': ev.text, 'type': 'server_error'}})}\n\n")
                    out.append("data: [DONE]\n\n")
                    done = True
                    break
                else:
                    out.append(_chunk(meta, chat, None, ev.finish_reason))
                    if include_usage:
                        usage_obj = {**meta, "object": "chat.completion.chunk" if chat else "text_completion",
                                     "choices": [], "usage": _usage(ev.usage)}
                        out.append(f"data: {json.dumps(usage_obj)}\n\n")
                    out.append("data: [DONE]\n\n")
                    done = True
                    break
            yield "".join(out)
    finally:
        if not done:  # client went away mid-stream: free its slot and KV at the next step
            svc.cancel(gen)
