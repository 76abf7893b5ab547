"""What one request may ask of the server, checked before the work (DeviceConfig.limits).

- `LimitsMiddleware` (pure ASGI, outermost): the body size (413 at once when Content-Length
  says too much, else counted as the bytes arrive, chunked bodies too), the body read time
  (408), the API key on /metrics and the docs, and the drain: while the server shuts down,
  new work gets 503 and open requests are counted until they end.
- `protocol_class(limits)`: uvicorn's h11 protocol with a header read deadline (a connection
  that sends nothing or half a request is closed), a lingering limit for a body the app did
  not want, and JSON errors for bad or oversized headers (431) instead of plain text.
- `check_prompt` / `tokenize_bounded` / `check_stop`: the prompt's characters before any
  tokenizing, its tokens without tokenizing the whole of a huge input, the stop strings.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
from fastapi.responses import Response
from fastapi.routing import APIRoute
from uvicorn.protocols.http.h11_impl import H11Protocol

from liteinfer.core.config import LimitsSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.server.auth import check_bearer

# open without a key only when server.protect_docs is false
PROTECTED_PATHS = ("/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
UPLOAD_PATHS = ("/v1/classify", "/v1/audio/transcriptions", "/v1/audio/translations")
WORK_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class RequestRejected(LiteInferError):
    """A limit said no: the HTTP status and OpenAI-style code travel with the message."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.code = status, code


def _json_body(status: int, message: str, code: str | None, type_: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


async def _send_error(send, status: int, message: str, code: str | None, type_: str = "invalid_request_error",
                      close: bool = False, headers: dict[str, str] | None = None) -> None:
    body = _json_body(status, message, code, type_)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---- lifecycle: draining on shutdown ------------------------------------------------------


@dataclass
class Lifecycle:
    """Shared by the middleware (counts open work requests, refuses new ones while draining),
    /health (says "draining") and the server (waits for `in_flight` to reach 0, then aborts)."""

    draining: bool = False
    in_flight: int = 0
    on_abort: list[Callable[[str], int]] = field(default_factory=list)

    def abort(self, message: str) -> int:
        """End what is still running (each hook returns how many it ended)."""
        return sum(hook(message) for hook in self.on_abort)


# ---- the middleware ----------------------------------------------------------------------


class LimitsMiddleware:
    def __init__(self, app, limits: LimitsSettings, lifecycle: Lifecycle, keys: list[str] | None = None,
                 protect_docs: bool = False):
        self.app, self.limits, self.lifecycle = app, limits, lifecycle
        self.keys = list(keys or [])
        self.protect_docs = protect_docs and bool(self.keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])
        if head > self.limits.max_header_bytes:  # arrived whole in one read: h11's own check did not fire
            return await _send_error(send, 431, f"request headers are over {self.limits.max_header_bytes} bytes, "
                                     "the most this server takes (limits.max_header_bytes)", "headers_too_large",
                                     close=True)
        if self.protect_docs and path in PROTECTED_PATHS:
            auth = _header(scope, b"authorization")
            if not check_bearer(auth.decode("latin-1") if auth is not None else None, self.keys):
                return await _send_error(send, 401, "invalid or missing API key (Authorization: Bearer KEY)",
                                         "invalid_api_key", "authentication_error",
                                         headers={"WWW-Authenticate": "Bearer"})
        work = method in WORK_METHODS
        if work and self.lifecycle.draining:
            return await _send_error(send, 503, "server is shutting down; retry on another instance or later",
                                     "shutting_down", "server_error", headers={"Retry-After": "5"})
        try:
            if work or _header(scope, b"content-length") not in (None, b"0") or _header(
                    scope, b"transfer-encoding") is not None:
                receive = await self._buffered_body(scope, receive)
        except RequestRejected as e:
            return await _send_error(send, e.status, str(e), e.code, close=e.status == 408)
        if not work:
            return await self.app(scope, receive, send)
        self.lifecycle.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.in_flight -= 1

    def _body_limit(self, path: str) -> tuple[int, str]:
        if path.startswith(UPLOAD_PATHS):
            return self.limits.max_upload_bytes, "limits.max_upload_bytes"
        return self.limits.max_body_bytes, "limits.max_body_bytes"

    async def _buffered_body(self, scope, receive):
        """Read the whole body (within the size and time limits) before the app sees it; the app
        then gets it in one message, and the connection's later messages (a disconnect) as is."""
        limit, knob = self._body_limit(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise RequestRejected(400, "Content-Length is not a number", "invalid_request") from None
            if n > limit:
                raise RequestRejected(413, f"request body is {n} bytes; this server takes at most {limit} ({knob})",
                                      "request_too_large")
        deadline = time.monotonic() + self.limits.body_timeout_s
        chunks, size = [], 0
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                raise RequestRejected(408, f"request body not received within {self.limits.body_timeout_s:g} s "
                                      "(limits.body_timeout_s)", "request_timeout") from None
            if message["type"] == "http.disconnect":
                chunks, pending = None, message
                break
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise RequestRejected(413, f"request body is over {limit} bytes, the most this server takes "
                                      f"({knob})", "request_too_large")
            chunks.append(body)
            if not message.get("more_body", False):
                pending = None
                break
        if chunks is None:  # the client left while sending: the app sees the disconnect
            first = pending
        else:
            first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        return replay


def _header(scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


# ---- JSON bodies parsed off the event loop --------------------------------------------------

OFF_LOOP_JSON_BYTES = 64 << 10  # smaller bodies parse in well under a millisecond


def off_loop_json_route():
    """A FastAPI route class (APIRouter(route_class=...)) that parses a large JSON body in a
    worker thread before FastAPI validates it (an 8 MB body takes ~50 ms of CPU: on the event
    loop, every other request and /health would wait for it)."""
    class OffLoopJSONRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def run(request):
                body = await request.body()
                if len(body) >= OFF_LOOP_JSON_BYTES and b"json" in (request.headers.get("content-type") or
                                                                     "json").encode():
                    try:  # Request.json() returns what it finds here; a bad body is left to FastAPI's 400
                        request._json = await asyncio.to_thread(json.loads, body)
                    except ValueError:
                        pass
                return await handler(request)

            return run

    return OffLoopJSONRoute


def json_answer(content, status_code: int = 200) -> Response:
    """A JSON response rendered here, as FastAPI's JSONResponse would: call it in a worker thread
    for a large answer (2048 embeddings are ~1 M floats: FastAPI's encoder and json.dumps took
    seconds on the event loop). Lists of objects or lists are rendered one element at a time, so
    the event loop gets Python's GIL between elements."""
    return Response(_dumps(content).encode(), status_code=status_code, media_type="application/json")


def _dumps(obj) -> str:
    if isinstance(obj, list) and len(obj) > 1 and isinstance(obj[0], (list, dict)):
        return "[" + ",".join(_dumps(x) for x in obj) + "]"
    if isinstance(obj, dict) and any(isinstance(v, list) and len(v) > 1 and isinstance(v[0], (list, dict))
                                     for v in obj.values()):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + _dumps(v) for k, v in obj.items()) + "}"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# ---- the HTTP protocol: header deadline, lingering limit, JSON errors ---------------------


def protocol_class(limits: LimitsSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with this server's header limits (pass as uvicorn's `http=`)."""

    class LimitedH11Protocol(H11Protocol):
        max_header_bytes = limits.max_header_bytes
        header_timeout_s = limits.header_timeout_s
        linger_s = limits.body_timeout_s  # an answered request's unwanted body may take this long to drain
        linger_close_s = 1.0  # after a half-close, for the client to read the answer

        def __init__(self, config, *args, **kwargs):
            config.h11_max_incomplete_event_size = self.max_header_bytes
            super().__init__(config, *args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._discarding = False
            self._lost = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.transport = _LingeringTransport(transport, self)
            self._arm(self.header_timeout_s, self._header_timeout)

        def connection_lost(self, exc) -> None:
            self._disarm()
            self._lost = True
            super().connection_lost(exc)

        def _linger(self) -> None:
            """Half-close and drop what the client still sends, for a moment: closing a socket
            with unread data resets the connection, and the client loses the answer (a 413 sent
            while it uploads)."""
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._arm(self.linger_close_s, self._close)

        def data_received(self, data: bytes) -> None:
            if self._discarding:  # answered with an error: drop the rest until the client closes
                return
            super().data_received(data)
            if self._deadline is not None and self.conn.their_state is not h11.IDLE and self.cycle is not None \
                    and not self.cycle.response_complete:
                self._disarm()  # the headers are in: the body has its own deadline (the middleware's)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.SEND_BODY:  # answered early (413): the rest is read and dropped
                self._arm(self.linger_s, self._close)
            elif self.conn.their_state is h11.IDLE:  # keep-alive: the next request's headers have a deadline
                self._arm(self.header_timeout_s, self._header_timeout)

        def _arm(self, seconds: float, callback) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _header_timeout(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0]:  # half a request: say why it is closed
                self._send_json(408, f"request headers not received within {self.header_timeout_s:g} s "
                                "(limits.header_timeout_s)", "request_timeout")
            else:
                self._close()

        def _close(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:  # uvicorn's is text/plain
            if len(self.conn.trailing_data[0]) >= self.max_header_bytes:
                self._send_json(431, f"request headers are over {self.max_header_bytes} bytes, the most this "
                                "server takes (limits.max_header_bytes)", "headers_too_large")
            else:
                self._send_json(400, "invalid HTTP request", "invalid_request")

        def _send_json(self, status: int, message: str, code: str) -> None:
            """Answer, half-close, and read and drop what the client still sends for a moment:
            closing with unread data would reset the connection and lose the answer."""
            body = _json_body(status, message, code)
            head = (f"HTTP/1.1 {status} {_PHRASES.get(status, '')}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
            self.transport.write(head + body)
            self._linger()

    return LimitedH11Protocol


_PHRASES = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: closing it while the client is still
    sending a body (an early answer, `Connection: close`) lingers instead (_linger)."""

    def __init__(self, transport, protocol):
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        p = self._protocol
        if (not p._discarding and not p._lost and not self._transport.is_closing()
                and p.conn.their_state is h11.SEND_BODY):
            p._linger()
        else:
            self._transport.close()


# ---- prompts and stop strings -------------------------------------------------------------


def check_prompt_chars(n_chars: int, limits: LimitsSettings) -> None:
    if n_chars > limits.max_prompt_chars:
        raise RequestRejected(400, f"prompt is {n_chars} characters; this server takes at most "
                              f"{limits.max_prompt_chars} (limits.max_prompt_chars)", "prompt_too_long")


# a token is rarely longer than this many characters: a prefix this long that already fills
# the context rejects the prompt without tokenizing the rest of it
_CHARS_PER_TOKEN_BOUND = 8


def tokenize_bounded(tokenize: Callable[[str], list[int]], text: str, max_tokens: int) -> list[int]:
    """`tokenize(text)`, or RequestRejected (400, context_length_exceeded) once it is sure the
    prompt has `max_tokens` tokens or more, from a prefix when the text is long. CPU work:
    call it off the event loop."""
    bound = max_tokens * _CHARS_PER_TOKEN_BOUND
    if len(text) > bound:
        head = tokenize(text[:bound])
        if len(head) >= max_tokens + 1:  # +1: the cut may split one token in two
            raise RequestRejected(400, f"prompt is over {max_tokens} tokens ({len(text)} characters); this "
                                  f"model's context holds {max_tokens}", "context_length_exceeded")
    tokens = tokenize(text)
    if len(tokens) >= max_tokens:
        raise RequestRejected(400, f"prompt is {len(tokens)} tokens; this model's context holds {max_tokens}",
                              "context_length_exceeded")
    return tokens


def check_stop(stop: str | list[str] | None, limits: LimitsSettings) -> None:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limits.max_stop_strings:
        raise RequestRejected(400, f"stop: {len(stops)} strings; at most {limits.max_stop_strings} "
                              "(limits.max_stop_strings)", "invalid_request")
    for s in stops:
        if len(s) > limits.max_stop_chars:
            raise RequestRejected(400, f"stop: a string of {len(s)} characters; at most {limits.max_stop_chars} "
                                  "(limits.max_stop_chars)", "invalid_request")
