"""Ollama's API on the same port: /api/chat, /api/generate, /api/embed, /api/embeddings,
/api/tags, /api/show, /api/ps, /api/version, so Ollama's own clients work unchanged.

Requests use Ollama's field names (`options.num_predict`, `temperature`, `top_k`, `top_p`,
`min_p`, `seed`, `stop`, `repeat_penalty`, `presence_penalty`, `frequency_penalty`,
`num_ctx`) and Ollama's defaults (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1,
no token limit but the context). Replies stream as NDJSON unless `"stream": false`, and end
with Ollama's counters (`total_duration`, `prompt_eval_count`, `eval_duration`..., in ns).

A field this server does not implement gets a 400 naming it (fields.Checked), in Ollama's
error shape `{"error": "..."}`; load-time options that only tune speed (`num_thread`,
`num_gpu`, `use_mmap`...) and `keep_alive` are accepted and change nothing: the server was
configured when it started and keeps its model loaded while it runs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import psutil
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field, ValidationError

from liteinfer import __version__
from liteinfer.core.errors import LiteInferError, QueueFull
from liteinfer.core.gguf_header import read_header
from liteinfer.core.model_info import FILE_TYPES, size_label
from liteinfer.engines.grammar import check_schema, json_object_grammar, json_schema_grammar
from liteinfer.engines.llama import SamplingParams
from liteinfer.scheduler.continuous import Event, GenRequest
from liteinfer.scheduler.dynamic import BatcherClosed
from liteinfer.server import names
from liteinfer.server.fields import Checked, first_error
from liteinfer.server.limits import (
    RequestRejected,
    check_prompt_chars,
    check_stop,
    json_answer,
    tokenize_bounded,
)
from liteinfer.server.tools import ChatPlan, ReplySplitter, plan_chat

router = APIRouter()

NEVER = "2262-04-11T23:47:16Z"  # /api/ps: when a model that stays loaded expires (Go's max time)


def ollama_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.response = ollama_error(status, message, headers)


# ---- request schemas -----------------------------------------------------------------------

_TEXT_ONLY = "this model takes text only"


class Options(Checked):
    """Ollama's `options`. Load-time ones that tune only speed are accepted and ignored."""

    IGNORED = frozenset({"num_gpu", "main_gpu", "num_thread", "num_batch", "numa", "low_vram", "use_mmap",
                         "use_mlock", "f16_kv",
                         "num_keep",  # kept tokens on a context shift: this server never shifts (prompt too long: 400)
                         "penalize_newline",  # Ollama itself ignores it now
                         "mirostat_tau", "mirostat_eta"})  # used only by mirostat, refused unless 0
    NEUTRAL = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0, "repeat_last_n": 64, "logits_all": False,
               "vocab_only": False, "embedding_only": False}
    REASONS = {"mirostat": "Mirostat sampling is not implemented", "typical_p": "typical sampling is not "
               "implemented", "tfs_z": "tail-free sampling is not implemented", "repeat_last_n": "the "
               "penalty window is fixed at 64 tokens"}

    num_predict: int | None = Field(None, ge=-2, description="-1 / -2: until the model stops or the context is full")
    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.9, ge=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    repeat_penalty: float = Field(1.1, ge=0.0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_ctx: int | None = Field(None, ge=1, description="a smaller context for this request; not above the server's")


class ToolCallFunction(Checked):
    IGNORED = frozenset({"index"})  # the call's place in its reply: the list order says it
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(Checked):
    id: str | None = None
    function: ToolCallFunction


class Message(Checked):
    IGNORED = frozenset({"thinking"})  # an earlier turn's reasoning: this model has none to continue
    NEUTRAL = {"images": []}
    REASONS = {"images": _TEXT_ONLY}

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_name: str | None = None  # a tool result: the tool that gave it
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls, replayed

    def as_template_message(self) -> dict:
        """OpenAI's message shape, which the chat templates and server/tools.py take."""
        m: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_name:
            m["name"] = self.tool_name
        if self.tool_calls:
            m["tool_calls"] = [{"id": c.id or f"call_{i}", "type": "function",
                                "function": {"name": c.function.name, "arguments": c.function.arguments}}
                               for i, c in enumerate(self.tool_calls)]
        return m


class _Generation(Checked):
    IGNORED = frozenset({"keep_alive"})  # the model stays loaded while the server runs
    NEUTRAL = {"think": False}
    REASONS = {"think": "this model does not think"}

    model: str = ""
    format: str | dict | None = None
    options: Options | None = None
    stream: bool = True
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20, description="alternatives per token, with logprobs")


class ChatBody(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None  # OpenAI's function tools (Ollama uses the same shape)


class GenerateBody(_Generation):
    NEUTRAL = {**_Generation.NEUTRAL, "suffix": "", "images": [], "context": [], "template": ""}
    REASONS = {**_Generation.REASONS, "suffix": "fill-in-the-middle is not supported", "images": _TEXT_ONLY,
               "context": "the deprecated context memory is not kept: send the conversation to /api/chat",
               "template": "the model's own chat template is used; send a ready prompt with raw: true"}

    prompt: str = ""
    system: str | None = None
    raw: bool = False


class EmbedBody(Checked):
    IGNORED = frozenset({"keep_alive", "options"})  # sampling options mean nothing to an embedding
    model: str = ""
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)


class EmbeddingsBody(Checked):
    IGNORED = frozenset({"keep_alive", "options"})
    model: str = ""
    prompt: str = ""


class ShowBody(Checked):
    IGNORED = frozenset({"verbose"})  # the full token arrays are left out either way
    model: str = ""
    name: str = ""  # older clients send the model here


async def _parse(request: Request, cls):
    raw = await request.body() or b"{}"
    try:  # a large body is parsed in a worker thread: the other requests keep being served
        return cls.model_validate_json(raw) if len(raw) < 65536 else await asyncio.to_thread(cls.model_validate_json, raw)
    except ValidationError as e:
        raise _Refusal(400, first_error(e)) from None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


# ---- which model -----------------------------------------------------------------------------


def _service(request: Request, name: str, kinds: tuple[str, ...]):
    """The ready service that `name` names among `kinds`; raises _Refusal (400 / 404 / 503)."""
    services, config = request.app.state.services, request.app.state.config
    if not name:
        raise _Refusal(400, "model is required")
    svc = names.find(services, config, name, kinds)
    if svc is None:
        other = names.find(services, config, name, names.LISTED_KINDS)
        if other is not None:
            what = "an embedding model: it does not generate" if other.kind != "llm" else "not an embedding model"
            raise _Refusal(400, f"{name!r} is {what}")
        raise _Refusal(404, names.not_found_message(name, services, config))
    if not svc.ready:
        if svc.error:
            raise _Refusal(500, f"model failed to load: {svc.error}")
        raise _Refusal(503, "model is loading; retry shortly", {"Retry-After": "2"})
    return svc


def _refusals(handler):
    """Route decorator: a _Refusal raised inside becomes its Ollama-shaped response."""
    @functools.wraps(handler)
    async def wrapped(request: Request):
        try:
            return await handler(request)
        except _Refusal as r:
            return r.response

    return wrapped


# ---- generation --------------------------------------------------------------------------------


def _grammar(fmt) -> str | None:
    """GBNF for Ollama's `format`: "json" (any JSON object) or a JSON schema; 400 for a schema
    that constrained decoding cannot enforce (engines/grammar.py names the keywords)."""
    if fmt in (None, ""):
        return None
    if fmt != "json" and not isinstance(fmt, dict):
        raise _Refusal(400, f"format: expected \"json\" or a JSON schema object, got {fmt!r}")

    if fmt == "json":
        return json_object_grammar()
    try:
        check_schema(fmt)
        return json_schema_grammar(fmt)
    except LiteInferError as e:
        raise _Refusal(400, f"format: {e}") from None
    except Exception as e:  # the converter's own complaint about a malformed schema
        raise _Refusal(400, f"format: not a usable JSON schema ({type(e).__name__}: {e})") from None


def _sampling(opts: Options, max_tokens: int, grammar: str | None = None) -> SamplingParams:
    stop = [opts.stop] if isinstance(opts.stop, str) else list(opts.stop or [])
    seed = opts.seed if opts.seed is not None and opts.seed >= 0 else None  # Ollama: -1 = random
    return SamplingParams(max_tokens=max_tokens, temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k,
                          min_p=opts.min_p, seed=seed, repeat_penalty=opts.repeat_penalty,
                          presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty, stop=stop,
                          grammar=grammar)


def _context(svc, opts: Options) -> int:
    """The context this request may fill: the server's, or a smaller `options.num_ctx`."""
    limit = svc.max_seq_len
    if opts.num_ctx is not None:
        if opts.num_ctx > limit:
            raise _Refusal(400, f"options.num_ctx: {opts.num_ctx} is more than this server's context per "
                           f"request ({limit}); start the server with a larger --ctx")
        limit = opts.num_ctx
    return limit


def _max_tokens(n_prompt: int, limit: int, opts: Options) -> int:
    room = limit - n_prompt
    n = opts.num_predict
    if n is None or n < 0:  # -1: until the model stops, -2: until the context is full
        return room
    if n == 0:
        raise _Refusal(400, "options.num_predict: 0 generates nothing; give a count, or -1 for no limit")
    return min(n, room)


def _chat_tokens(svc, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """The conversation through the model's own chat template; message text is tokenized as
    text (a user typing `<|im_end|>` gets those characters, not the turn marker)."""
    try:
        return svc.engine.chat_tokens(messages, tools=tools)
    except Exception as e:  # the template's complaint is about the request (e.g. role order)
        raise _Refusal(400, f"chat template: {e}") from None


async def _prompt_tokens(request: Request, svc, make_tokens, n_chars: int, opts: Options) -> tuple[list[int], int]:
    """(prompt tokens, context limit): the size limits first, then the template and the
    tokenizer in a worker thread (CPU work). `make_tokens(limit)` gives the tokens."""
    limits = request.app.state.config.limits
    limit = _context(svc, opts)
    try:
        check_prompt_chars(n_chars, limits)
        check_stop(opts.stop, limits)
        tokens = await asyncio.to_thread(make_tokens, limit)
    except RequestRejected as e:
        raise _Refusal(e.status, str(e)) from None
    if not tokens:
        raise _Refusal(400, "prompt is empty")
    if len(tokens) >= limit:
        raise _Refusal(400, f"prompt is {len(tokens)} tokens; the context holds {limit}")
    return tokens, limit


async def _generate(request: Request, svc, model: str, tokens: list[int], limit: int, opts: Options, stream: bool,
                    chat: bool, grammar: str | None = None, body: _Generation | None = None,
                    plan: ChatPlan | None = None):
    params = _sampling(opts, _max_tokens(len(tokens), limit, opts), grammar)
    want_logprobs = bool(body and body.logprobs)
    params.logprobs, params.top_logprobs = want_logprobs, body.top_logprobs if want_logprobs else 0
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(ev: Event) -> None:  # called on the engine thread
        loop.call_soon_threadsafe(queue.put_nowait, ev)

    gen = GenRequest(tokens, params, emit, timeout_s=request.app.state.config.server.request_timeout_s)
    try:
        svc.submit(gen)
    except QueueFull as e:
        raise _Refusal(429, f"server busy: {e}; retry later", {"Retry-After": str(int(e.retry_after_s))}) from None
    except LiteInferError as e:
        raise _Refusal(503, str(e)) from None
    key = "message" if chat else "response"

    def piece(text: str, entries=None, calls: list[dict] | None = None) -> dict:
        out = {"model": model, "created_at": _now()}
        out[key] = {"role": "assistant", "content": text} if chat else text
        if calls:
            out[key]["tool_calls"] = calls
        out["done"] = False
        if want_logprobs and entries:
            out["logprobs"] = _logprobs(svc.engine, entries)
        return out

    def final(ev: Event, text: str, entries=None, calls: list[dict] | None = None) -> dict:
        out = piece(text, entries, calls)
        out.update(done=True, done_reason=ev.finish_reason or "stop", **_counters(gen, ev.usage or {}))
        return out

    if stream:
        return StreamingResponse(_ndjson(svc, gen, queue, piece, final, _Reply(plan)),
                                 media_type="application/x-ndjson")
    reply = _Reply(plan)
    parts: list[str] = []
    entries: list = []
    while True:
        try:
            ev = await asyncio.wait_for(queue.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                svc.cancel(gen)
                return Response(status_code=499)
            continue
        entries += ev.logprobs or []
        if ev.kind == "text":
            parts.append(reply.push(ev.text))
        elif ev.kind == "error":
            return ollama_error(504 if "timed out" in ev.text else 500, ev.text)
        else:
            tail, calls = reply.finish()
            return final(ev, "".join(parts) + tail, entries, calls)


class _Reply:
    """Generated text -> message content; with tools in play, a tool-call section is held back
    and parsed at the end (server/tools.py's ReplySplitter) into Ollama's tool_calls."""

    def __init__(self, plan: ChatPlan | None):
        self.plan = plan
        on = plan is not None and plan.format != "none"
        self.splitter = ReplySplitter(plan.format, reasoning=False) if on else None

    def push(self, text: str) -> str:
        return self.splitter.push(text)[1] if self.splitter else text

    def finish(self) -> tuple[str, list[dict] | None]:
        if self.splitter is None:
            return "", None
        _, tail, calls = self.splitter.finish(self.plan.functions)
        if not calls:
            return tail, None
        out = []
        for i, c in enumerate(calls):  # OpenAI's arguments are a JSON string, Ollama's an object
            fn = c["function"]
            out.append({"id": c["id"], "function": {"index": i, "name": fn["name"],
                                                    "arguments": json.loads(fn["arguments"] or "{}")}})
        return tail, out


def _logprobs(engine, entries) -> list[dict]:
    """Ollama's logprobs: per token its text, logprob and bytes, with the top alternatives."""
    def one(token: int, logprob: float) -> dict:
        raw = engine.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    out = []
    for e in entries:
        item = one(e.token, e.logprob)
        if e.top:
            item["top_logprobs"] = [one(t, lp) for t, lp in e.top]
        out.append(item)
    return out


def _counters(gen: GenRequest, usage: dict) -> dict:
    """Ollama's closing statistics from the request's own clock (monotonic seconds)."""
    end = time.monotonic()
    admitted = gen.admitted or gen.arrived
    first = gen.first_token or end
    return {"total_duration": _ns(end - gen.arrived), "load_duration": 0,
            "prompt_eval_count": usage.get("prompt_tokens", 0), "prompt_eval_duration": _ns(first - admitted),
            "eval_count": usage.get("completion_tokens", 0), "eval_duration": _ns(end - first)}


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


async def _ndjson(svc, gen: GenRequest, queue: asyncio.Queue, piece, final, reply: _Reply):
    done = False
    try:
        while not done:
            events = [await queue.get()]
            while not queue.empty():  # everything ready goes out in one write
                events.append(queue.get_nowait())
            out = []
            for ev in events:
                if ev.kind == "text":
                    text = reply.push(ev.text)
                    if text or ev.logprobs:
                        out.append(_line(piece(text, ev.logprobs)))
                elif ev.kind == "error":  # Ollama's clients raise on an `error` line
                    out.append(_line({"error": ev.text}))
                    done = True
                    break
                else:
                    tail, calls = reply.finish()
                    if tail or calls:  # Ollama sends the calls in a chunk of their own
                        out.append(_line(piece(tail, None, calls)))
                    out.append(_line(final(ev, "", ev.logprobs)))
                    done = True
                    break
            yield "".join(out)
    finally:
        if not done:  # the client went away: free its slot and KV at the next step
            svc.cancel(gen)


def _loaded(model: str, chat: bool, reason: str = "load") -> dict:
    """Ollama's answer to a request with nothing to generate: the model is (already) loaded."""
    body: dict[str, Any] = {"model": model, "created_at": _now()}
    body["message" if chat else "response"] = {"role": "assistant", "content": ""} if chat else ""
    body.update(done=True, done_reason=reason)
    return body


@router.post("/api/chat")
@_refusals
async def chat(request: Request):
    body = await _parse(request, ChatBody)
    svc = _service(request, body.model, ("llm",))
    grammar = _grammar(body.format)
    opts = body.options or Options()
    if not body.messages:
        return _loaded(body.model, chat=True)
    messages = [m.as_template_message() for m in body.messages]
    plan: list[ChatPlan] = []

    def make_tokens(limit: int) -> list[int]:
        """Tools -> prompt, template tools and grammar (server/tools.py), then the tokens."""
        try:
            plan.append(plan_chat(messages, svc.engine.chat_template.source, body.tools or None,
                                  response_format=_response_format(body.format) if body.tools else None))
            if plan[0].grammar:
                svc.engine.check_grammar(plan[0].grammar)
        except LiteInferError as e:
            raise _Refusal(400, str(e)) from None
        return _chat_tokens(svc, plan[0].messages, plan[0].tools)

    n_chars = sum(len(m.content) for m in body.messages)
    tokens, limit = await _prompt_tokens(request, svc, make_tokens, n_chars, opts)
    if body.tools:
        grammar = plan[0].grammar
    return await _generate(request, svc, body.model, tokens, limit, opts, body.stream, chat=True, grammar=grammar,
                           body=body, plan=plan[0])


def _response_format(fmt) -> dict | None:
    """Ollama's `format` as OpenAI's response_format (what server/tools.py joins to a tool grammar)."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}


@router.post("/api/generate")
@_refusals
async def generate(request: Request):
    body = await _parse(request, GenerateBody)
    svc = _service(request, body.model, ("llm",))
    grammar = _grammar(body.format)
    opts = body.options or Options()
    if not body.prompt:
        if body.raw or body.system:
            raise _Refusal(400, "prompt is empty")
        return _loaded(body.model, chat=False)
    if body.raw:
        if body.system:
            raise _Refusal(400, "system: not used with raw: true (the prompt is sent as it is)")

        def make_tokens(limit: int) -> list[int]:  # a ready prompt: its control tokens are meant
            return tokenize_bounded(svc.tokenize, body.prompt, limit)
    else:
        messages = ([{"role": "system", "content": body.system}] if body.system else [])
        messages.append({"role": "user", "content": body.prompt})

        def make_tokens(limit: int) -> list[int]:
            return _chat_tokens(svc, messages)
    n_chars = len(body.prompt) + len(body.system or "")
    tokens, limit = await _prompt_tokens(request, svc, make_tokens, n_chars, opts)
    return await _generate(request, svc, body.model, tokens, limit, opts, body.stream, chat=False,
                           grammar=grammar, body=body)


# ---- embeddings ----------------------------------------------------------------------------


async def _embed(request: Request, svc, texts: list[str], dimensions: int | None):
    """(vectors as lists, prompt tokens, seconds); vectors cut to `dimensions` and re-normalized
    (Ollama's `dimensions`), which only a model trained for it (Matryoshka) keeps meaningful."""
    timeout = request.app.state.config.server.request_timeout_s
    t0 = time.monotonic()
    try:
        vectors, n_tokens = await asyncio.wait_for(svc.embed_async(texts), timeout)
    except QueueFull as e:
        raise _Refusal(429, f"server busy: {e}; retry later", {"Retry-After": str(int(e.retry_after_s))}) from None
    except BatcherClosed as e:
        raise _Refusal(503, str(e)) from None
    except LiteInferError as e:
        raise _Refusal(400, str(e)) from None
    except asyncio.TimeoutError:
        raise _Refusal(504, f"no result within {timeout:g} s") from None
    if dimensions is not None and vectors and dimensions > len(vectors[0]):
        raise _Refusal(400, f"dimensions: {dimensions} is more than this model gives ({len(vectors[0])})")
    return vectors, n_tokens, time.monotonic() - t0


def _vector_lists(vectors, dimensions: int | None) -> list[list[float]]:
    """Vectors as lists, cut to `dimensions` and re-normalized; up to 2048 x 1024 floats: call it
    in a worker thread."""
    out = []
    for v in vectors:
        if dimensions is not None:
            v = v[:dimensions]
            norm = float((v * v).sum()) ** 0.5
            v = v / norm if norm > 0 else v
        out.append([float(x) for x in v])
    return out


@router.post("/api/embed")
@_refusals
async def embed(request: Request):
    body = await _parse(request, EmbedBody)
    svc = _service(request, body.model, ("embedding", "llm"))
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        return {"model": body.model, "embeddings": []}
    limits = request.app.state.config.limits
    if len(texts) > limits.max_embedding_inputs:
        raise _Refusal(400, f"input: {len(texts)} texts; at most {limits.max_embedding_inputs} "
                       "(limits.max_embedding_inputs)")
    try:
        check_prompt_chars(sum(len(t) for t in texts), limits)
    except RequestRejected as e:
        raise _Refusal(e.status, str(e)) from None
    vectors, n_tokens, secs = await _embed(request, svc, texts, body.dimensions)

    def answer():  # seconds of CPU for 2048 vectors: in a worker thread
        return json_answer({"model": body.model, "embeddings": _vector_lists(vectors, body.dimensions),
                            "total_duration": _ns(secs), "load_duration": 0, "prompt_eval_count": n_tokens})

    return await asyncio.to_thread(answer)


@router.post("/api/embeddings")
@_refusals
async def embeddings(request: Request):
    """The older single-text route: {"model", "prompt"} -> {"embedding": [...]}."""
    body = await _parse(request, EmbeddingsBody)
    svc = _service(request, body.model, ("embedding", "llm"))
    if not body.prompt:
        return {"embedding": []}
    vectors, _, _ = await _embed(request, svc, [body.prompt], None)
    return {"embedding": _vector_lists(vectors, None)[0]}


# ---- what is served --------------------------------------------------------------------------

_SCALAR_KEYS = {"general.architecture", "general.name", "general.basename", "general.finetune", "general.size_label",
                "general.license", "general.file_type", "general.quantization_version", "general.parameter_count",
                "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id"}
_cards: dict[tuple, dict] = {}


def _card(svc) -> dict:
    """File facts and GGUF metadata of a service's model (cached per file version)."""
    path = Path(svc.engine.path if svc.kind == "llm" else svc.model.path)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _cards:
        return _cards[key]
    card: dict[str, Any] = {
        "path": str(path), "size": st.st_size,
        "modified_at": datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        # the file's identity, not a hash of its bytes: hashing gigabytes per listing is too slow
        "digest": hashlib.sha256(repr(key).encode()).hexdigest(),
        "details": {"parent_model": "", "format": "onnx", "family": "", "families": [], "parameter_size": "",
                    "quantization_level": ""},
        "model_info": {},
    }
    if svc.kind == "llm":
        header = read_header(path)
        meta = header.metadata
        arch = str(meta.get("general.architecture", ""))
        n_params = meta.get("general.parameter_count") or sum(math.prod(t.shape) for t in header.tensors)
        card["details"] = {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else [],
                           "parameter_size": str(meta.get("general.size_label") or size_label(int(n_params))),
                           "quantization_level": FILE_TYPES.get(meta.get("general.file_type"), "")}
        # the header gives an array as its length: only keys that hold one value
        info = {k: v for k, v in meta.items() if (k in _SCALAR_KEYS or k.startswith(arch + "."))
                and isinstance(v, (str, int, float, bool))}
        info["general.parameter_count"] = int(n_params)
        card["model_info"] = info
        card["license"] = str(meta.get("general.license", ""))
    _cards[key] = card
    return card


def _entry(name: str, svc) -> dict:
    c = _card(svc)
    return {"name": name, "model": name, "modified_at": c["modified_at"], "size": c["size"], "digest": c["digest"],
            "details": c["details"]}


def _all_ready(request: Request) -> None:
    """The listings wait for the loads: while a model loads, 503 with Retry-After (not a
    list without it, which a client would take for "not installed")."""
    for svc in request.app.state.services.values():
        if not svc.ready:
            if svc.error:
                raise _Refusal(500, f"model failed to load: {svc.error}")
            raise _Refusal(503, "model is loading; retry shortly", {"Retry-After": "2"})


@router.get("/api/tags")
@_refusals
async def tags(request: Request):
    _all_ready(request)
    listed = names.listed(request.app.state.services, request.app.state.config)
    return {"models": [_entry(n, svc) for n, svc in listed]}


@router.get("/api/ps")
@_refusals
async def ps(request: Request):
    _all_ready(request)
    listed = names.listed(request.app.state.services, request.app.state.config)
    out = []
    rss = psutil.Process().memory_info().rss  # the whole server: what `liteinfer ps` shows as memory
    for n, svc in listed:
        if n != svc.name:  # an alias is the same loaded model
            continue
        entry = {**_entry(n, svc), "expires_at": NEVER, "size_vram": 0, "process_rss": rss}
        if svc.kind == "llm":
            entry["context_length"] = svc.max_seq_len
        out.append(entry)
    return {"models": out}


@router.post("/api/show")
@_refusals
async def show(request: Request):
    body = await _parse(request, ShowBody)
    name = body.model or body.name
    svc = _service(request, name, names.LISTED_KINDS)
    c = _card(svc)
    out: dict[str, Any] = {"modelfile": f"# served by liteinfer\nFROM {c['path']}\n", "details": c["details"],
                           "model_info": c["model_info"], "modified_at": c["modified_at"]}
    if svc.kind == "llm":
        out["template"] = svc.engine.metadata("tokenizer.chat_template") or ""
        out["parameters"] = "\n".join(f"{k:<30} {v}" for k, v in (
            ("temperature", 0.8), ("top_k", 40), ("top_p", 0.9), ("repeat_penalty", 1.1)))
        out["license"] = c.get("license", "")
        out["capabilities"] = ["completion"]
    else:
        out["capabilities"] = ["embedding"]
    return out


@router.get("/api/version")
async def version():
    return {"version": __version__}
