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
from pydantic import ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from liteinfer.core.errors import LiteInferError, QueueFull
from liteinfer.engines.llama import SamplingParams
from liteinfer.scheduler.continuous import Event, GenRequest
from liteinfer.scheduler.dynamic import BatcherClosed
from liteinfer.server import names
from liteinfer.server.fields import Checked
from liteinfer.server.limits import (
    RequestRejected,
    check_prompt_chars,
    check_stop,
    off_loop_json_route,
    tokenize_bounded,
)
from liteinfer.server.tools import CallStreamer, ChatPlan, ReplySplitter, plan_chat

router = APIRouter(route_class=off_loop_json_route())


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status,
                        headers=headers)


# ---- schemas -----------------------------------------------------------------------------


class _Lenient(Checked):
    """A request object: a field it does not declare is a 400 naming it, unless it is in
    IGNORED (labels such as `user`), null, or its NEUTRAL value (server/fields.py). Types are
    strict: `"stream": "yes"` or `"max_tokens": "5"` is a 400, not a guess (an int is a float)."""

    model_config = ConfigDict(extra="allow", strict=True)


_TEXT_ONLY = "this model takes text only"
# labels: they describe the request to the caller's own bookkeeping, the answer is the same
_LABELS = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})


class ContentPart(_Lenient):
    REASONS = {"image_url": _TEXT_ONLY, "input_audio": _TEXT_ONLY, "file": _TEXT_ONLY}
    type: str
    text: str | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, v: str) -> str:
        if v != "text":
            raise PydanticCustomError("unsupported_content", "'{kind}' content is not supported ({why})",
                                      {"kind": v, "why": _TEXT_ONLY})
        return v


class ToolCallFunction(_Lenient):
    name: str
    arguments: str = "{}"


class ToolCall(_Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Lenient):
    IGNORED = frozenset({"name"})  # a participant's name (a tool result's is passed on)
    NEUTRAL = {"refusal": ""}
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls, replayed
    tool_call_id: str | None = None  # a tool result: the call it answers
    reasoning_content: str | None = None  # an assistant's earlier reasoning: not replayed

    def as_template_message(self) -> dict:
        m: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            m["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            m["tool_call_id"] = self.tool_call_id
        name = (self.model_extra or {}).get("name")
        if self.role == "tool" and isinstance(name, str):
            m["name"] = name
        return m

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(_Lenient):
    IGNORED = frozenset({"include_obfuscation"})  # padding against length side channels: none is added
    include_usage: bool = False


class _SamplingFields(_Lenient):
    IGNORED = _LABELS
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="liteinfer extension: 0 = off")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="liteinfer extension")
    # llama.cpp's sampler seed is 32-bit and 0xFFFFFFFF means "random": a larger seed would wrap
    seed: int | None = Field(None, ge=0, le=0xFFFFFFFE)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    speculative: bool | None = Field(None, description="liteinfer extension: prompt-lookup speculation "
                                     "for this request (null = the server's scheduler.speculative)")

    def sampling(self, default_max: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_tokens=self.max_tokens or default_max, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, seed=self.seed, stop=stop,
                              presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                              logit_bias=_logit_bias(self.logit_bias), speculative=self.speculative)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    out = {}
    for key, value in (bias or {}).items():
        if not key.isdigit():
            raise RequestRejected(400, f"logit_bias: key {key!r} is not a token id", "invalid_logit_bias")
        if not -100 <= value <= 100:
            raise RequestRejected(400, f"logit_bias: {value} for token {key} is outside [-100, 100]",
                                  "invalid_logit_bias")
        out[int(key)] = float(value)
    return out


class ChatCompletionRequest(_SamplingFields):
    # `modalities: ["text"]` asks for the text reply every request gets; audio output is refused
    NEUTRAL = {"parallel_tool_calls": True, "modalities": ["text"]}
    REASONS = {"modalities": "this server writes text only: [\"text\"] is the one value accepted",
               "audio": "this server writes text only"}
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None  # text | json_object | json_schema -> a grammar
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = None  # llama-server's: extra template variables


class CompletionRequest(_SamplingFields):
    NEUTRAL = {"echo": False, "best_of": 1, "suffix": ""}
    REASONS = {"suffix": "fill-in-the-middle is not supported", "echo": "the prompt is not echoed",
               "best_of": "one completion is sampled per request"}
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)  # legacy: top alternatives per token


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
    state = request.app.state
    if model and not names.answers_to(svc, model, state.config):
        return None, error_response(404, names.not_found_message(model, state.services, state.config),
                                    "invalid_request_error", "model_not_found")
    if not svc.ready:
        return None, error_response(503, "model is loading", "server_error", "loading", {"Retry-After": "2"})
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
    """The served models and the chat model's aliases; 503 + Retry-After while one loads (an
    empty list would read as "no such model" to a client that checks before it asks)."""
    state = request.app.state
    for svc in state.services.values():
        if not svc.ready:
            if svc.error:
                return error_response(500, f"model failed to load: {svc.error}", "server_error", "load_failed")
            return error_response(503, "model is loading", "server_error", "loading", {"Retry-After": "2"})
    data = [{"id": name, "object": "model", "created": svc.created, "owned_by": "liteinfer"}
            for name, svc in names.listed(state.services, state.config, names.ALL_KINDS)]
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    svc, err = find_service(request, "llm", body.model)
    if err is not None:
        return err
    messages = [m.as_template_message() for m in body.messages]
    limits = request.app.state.config.limits
    try:  # sizes first; rendering a long conversation is CPU work: off the event loop
        check_prompt_chars(sum(len(m["content"]) for m in messages), limits)
        check_stop(body.stop, limits)
        plan, tokens = await asyncio.to_thread(_chat_prompt, svc.engine, body, messages)
    except RequestRejected as e:
        return error_response(e.status, str(e), code=e.code)
    except LiteInferError as e:  # tools, response_format, grammar or template refused
        return error_response(400, str(e))
    except Exception as e:  # template errors are the request's fault (e.g. role order)
        return error_response(400, f"chat template: {e}")
    if body.max_completion_tokens and not body.max_tokens:
        body.max_tokens = body.max_completion_tokens
    return await _generate(request, svc, tokens, body, chat=True, plan=plan)


def _chat_prompt(engine, body: ChatCompletionRequest, messages: list[dict]) -> tuple[ChatPlan, list[int]]:
    """Tools / response_format -> prompt messages and grammar (server/tools.py); the prompt's
    control tokens come from the template only (message text is tokenized as text)."""
    plan = plan_chat(messages, engine.chat_template.source, body.tools, body.tool_choice, body.parallel_tool_calls,
                     body.response_format)
    if plan.grammar:
        engine.check_grammar(plan.grammar)
    tokens = engine.chat_tokens(plan.messages, tools=plan.tools, **(body.chat_template_kwargs or {}))
    plan.open_think = engine.detokenize(tokens[-8:]).rstrip().endswith("<think>")
    return plan, tokens


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
    try:
        check_prompt_chars(len(prompt), request.app.state.config.limits)
        check_stop(body.stop, request.app.state.config.limits)
    except RequestRejected as e:
        return error_response(e.status, str(e), code=e.code)
    return await _generate(request, svc, prompt, body, chat=False)


async def _generate(request: Request, svc, prompt: str | list[int], body: _SamplingFields, chat: bool,
                    plan: ChatPlan | None = None):
    limit = svc.max_seq_len
    if isinstance(prompt, str):
        try:  # CPU work in a worker thread; a huge prompt is refused from a prefix (server/limits.py)
            tokens = await asyncio.to_thread(tokenize_bounded, svc.tokenize, prompt, limit)
        except RequestRejected as e:
            return error_response(e.status, str(e), code=e.code)
    else:
        tokens = prompt
        if len(tokens) >= limit:
            return error_response(400, f"prompt is {len(tokens)} tokens; this model's context holds {limit}",
                                  code="context_length_exceeded")
    if not tokens:
        return error_response(400, "prompt is empty")
    try:
        params = body.sampling(svc.config.server.default_max_tokens)
    except RequestRejected as e:
        return error_response(e.status, str(e), code=e.code)
    n_vocab = svc.engine.n_vocab
    bad = [t for t in params.logit_bias if t >= n_vocab]
    if bad:
        return error_response(400, f"logit_bias: token {bad[0]} is not in the vocabulary (0..{n_vocab - 1})",
                              code="invalid_logit_bias")
    params.max_tokens = min(params.max_tokens, limit - len(tokens))
    if plan is not None:
        params.grammar = plan.grammar
    top = body.top_logprobs if chat else body.logprobs
    params.logprobs = bool(body.logprobs) if chat else body.logprobs is not None
    params.top_logprobs = top or 0
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
    reply = _Reply(svc.engine, chat, plan, params.logprobs, stream=body.stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(svc, gen, queue, meta, reply, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _collect(request, svc, gen, queue, meta, reply)


def _error_status(message: str) -> int:
    return 504 if "timed out" in message else 500


class _Reply:
    """One answer being assembled: reasoning / content / tool calls (server/tools.py's
    ReplySplitter) and logprobs in the chat or the legacy completions shape."""

    def __init__(self, engine, chat: bool, plan: ChatPlan | None, logprobs: bool, stream: bool = False):
        self.engine, self.chat, self.plan, self.want_logprobs = engine, chat, plan, logprobs
        self.splitter = (ReplySplitter(plan.format if plan else "none", reasoning=True,
                                       open_think=plan.open_think if plan else False) if chat else None)
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.logprobs: list[dict] = []
        self.offset = 0
        self.tool_calls: list[dict] | None = None
        # streamed replies whose tool-call section the grammar holds: calls stream as they grow
        self.streamer = CallStreamer() if stream and plan is not None and plan.stream_calls else None
        self.fed = 0  # how much of the splitter's tool-call section the streamer has seen
        self.call_deltas: list[dict] = []

    def _token(self, tok: int) -> tuple[str, bytes]:
        raw = self.engine.token_bytes(tok)
        return raw.decode("utf-8", errors="replace"), raw

    def logprob_entries(self, entries) -> list[dict]:
        out = []
        for e in entries or []:
            text, raw = self._token(e.token)
            tops = []
            for t, lp in e.top:
                t_text, t_raw = self._token(t)
                tops.append({"token": t_text, "logprob": lp, "bytes": list(t_raw)})
            out.append({"token": text, "logprob": e.logprob, "bytes": list(raw), "top_logprobs": tops})
        return out

    def push(self, text: str, entries) -> tuple[str, str, list[dict]]:
        """(reasoning, content, logprob entries) for one event."""
        lps = self.logprob_entries(entries) if self.want_logprobs else []
        self.logprobs += lps
        if self.splitter is None:
            self.text.append(text)
            return "", text, lps
        reasoning, content = self.splitter.push(text)
        self.reasoning.append(reasoning)
        self.text.append(content)
        self._feed_calls()
        return reasoning, content, lps

    def _feed_calls(self) -> None:
        if self.streamer is not None and len(self.splitter.tool_text) > self.fed:
            self.call_deltas += self.streamer.feed(self.splitter.tool_text[self.fed:])
            self.fed = len(self.splitter.tool_text)

    def take_call_deltas(self) -> list[dict]:
        out, self.call_deltas = self.call_deltas, []
        return out

    def finish(self) -> tuple[str, str]:
        if self.splitter is None:
            return "", ""
        streamed = self.streamer is not None and bool(self.streamer.calls)
        reasoning, content, calls = self.splitter.finish(self.plan.functions if self.plan else [],
                                                         keep_unparsed=not streamed)
        self._feed_calls()
        if streamed and calls is not None:
            calls = self.streamer.calls  # the ids the client has already seen
        self.reasoning.append(reasoning)
        self.text.append(content)
        self.tool_calls = calls
        return reasoning, content

    def finish_reason(self, reason: str | None) -> str | None:
        return "tool_calls" if self.tool_calls and reason in ("stop", None) else reason

    def legacy_logprobs(self, entries: list[dict]) -> dict:
        offsets = []
        for e in entries:
            offsets.append(self.offset)
            self.offset += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offsets}

    def message(self) -> dict:
        content = "".join(self.text)
        msg: dict[str, Any] = {"role": "assistant", "content": content if content or not self.tool_calls else None}
        reasoning = "".join(self.reasoning)
        if reasoning:
            msg["reasoning_content"] = reasoning
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


async def _collect(request: Request, svc, gen: GenRequest, queue: asyncio.Queue, meta: dict, reply: _Reply):
    while True:
        try:
            ev = await asyncio.wait_for(queue.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                svc.cancel(gen)
                return Response(status_code=499)
            continue
        if ev.kind == "text":
            reply.push(ev.text, ev.logprobs)
        elif ev.kind == "error":
            return error_response(_error_status(ev.text), ev.text, "server_error")
        elif ev.finish_reason == "abort":  # the server's drain time ran out (server/lifecycle.py)
            return error_response(503, ev.text, "server_error", "shutting_down", {"Retry-After": "5"})
        else:
            reply.finish()
            usage = _usage(ev.usage)
            if reply.chat:
                choice = {"index": 0, "message": reply.message(), "finish_reason": reply.finish_reason(ev.finish_reason),
                          "logprobs": {"content": reply.logprobs} if reply.want_logprobs else None}
                return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
            logprobs = reply.legacy_logprobs(reply.logprobs) if reply.want_logprobs else None
            choice = {"index": 0, "text": "".join(reply.text), "logprobs": logprobs, "finish_reason": ev.finish_reason}
            return {**meta, "object": "text_completion", "choices": [choice], "usage": usage}


def _usage(u: dict | None) -> dict[str, Any]:
    u = u or {}
    return {"prompt_tokens": u.get("prompt_tokens", 0), "completion_tokens": u.get("completion_tokens", 0),
            "total_tokens": u.get("total_tokens", 0),
            "prompt_tokens_details": {"cached_tokens": u.get("cached_tokens", 0)}}


def _chunk(meta: dict, chat: bool, delta: dict | str | None, finish: str | None, logprobs=None) -> str:
    if chat:
        choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = {"content": logprobs}
        obj = {**meta, "object": "chat.completion.chunk", "choices": [choice]}
    else:
        obj = {**meta, "object": "text_completion",
               "choices": [{"index": 0, "text": delta or "", "logprobs": logprobs, "finish_reason": finish}]}
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _deltas(meta: dict, reply: _Reply, reasoning: str, content: str, lps: list[dict]) -> list[str]:
    out = []
    if not reply.chat:
        if content or lps:
            out.append(_chunk(meta, False, content, None, reply.legacy_logprobs(lps) if reply.want_logprobs else None))
        return out
    if reasoning:
        out.append(_chunk(meta, True, {"reasoning_content": reasoning}, None))
    if content or lps:
        out.append(_chunk(meta, True, {"content": content}, None, lps if reply.want_logprobs else None))
    calls = reply.take_call_deltas()
    if calls:
        out.append(_chunk(meta, True, {"tool_calls": calls}, None))
    return out


async def _sse(svc, gen: GenRequest, queue: asyncio.Queue, meta: dict, reply: _Reply, include_usage: bool):
    done, chat = False, reply.chat
    try:
        if chat:
            yield _chunk(meta, chat, {"role": "assistant", "content": ""}, None)
        while not done:
            events = [await queue.get()]
            while not queue.empty():  # coalesce everything ready into one write
                events.append(queue.get_nowait())
            out = []
            for ev in events:
                if ev.kind == "text":
                    out += _deltas(meta, reply, *reply.push(ev.text, ev.logprobs))
                elif ev.kind == "error":
                    out.append(f"data: {json.dumps({'error': {'message': ev.text, 'type': 'server_error'}})}\n\n")
                    out.append("data: [DONE]\n\n")
                    done = True
                    break
                else:
                    out += _deltas(meta, reply, *reply.finish(), [])
                    if reply.tool_calls and reply.streamer is None:  # whole calls, one delta each
                        for i, call in enumerate(reply.tool_calls):
                            out.append(_chunk(meta, True, {"tool_calls": [{"index": i, **call}]}, None))
                    out.append(_chunk(meta, chat, None, reply.finish_reason(ev.finish_reason)))
                    if ev.finish_reason == "abort":  # cut at the end of the server's drain time
                        err = {"message": ev.text, "type": "server_error", "code": "shutting_down"}
                        out.append(f"data: {json.dumps({'error': err})}\n\n")
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
