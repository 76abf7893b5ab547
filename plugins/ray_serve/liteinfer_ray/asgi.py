"""Running the liteinfer app inside a Ray Serve replica, without a socket: its lifespan (the
model loads, the scheduler thread starts) and one request at a time as ASGI messages.

A request travels from the ingress as a dict (method, path, query, headers, body) and its
response comes back as a stream of dicts: the first holds the status, the headers and the
first part of the answer together (for an SSE stream, the first event after the role-only
one that opens a chat stream), so nothing reaches the client before the replica has
produced part of the answer: a replica that dies before that point loses nothing the
client saw, and the ingress sends the request elsewhere. Then one dict per batch of body
bytes, every message that is ready coalesced into one, as the one-box server coalesces
its writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


class Lifespan:
    """The ASGI lifespan of an app, driven by hand: startup() and shutdown()."""

    def __init__(self, app) -> None:
        self.app = app
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self._inbox.get, self._outbox.put)
        except BaseException as e:  # an app that fails its startup raises out of the lifespan
            await self._outbox.put({"type": "lifespan.startup.failed", "message": f"{type(e).__name__}: {e}"})
            raise

    async def _step(self, what: str) -> None:
        await self._inbox.put({"type": f"lifespan.{what}"})
        msg = await self._outbox.get()
        if msg["type"].endswith(".failed"):
            raise RuntimeError(f"the app's {what} failed: {msg.get('message', '')}")

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self._step("startup")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._step("shutdown")
        with contextlib.suppress(BaseException):
            await self._task


def request_dict(scope: dict, body: bytes, path: str) -> dict:
    """What the ingress sends a replica: the parts of an HTTP request scope that travel."""
    return {"method": scope["method"], "path": path, "query_string": scope.get("query_string", b""),
            "headers": [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])],
            "client": list(scope["client"]) if scope.get("client") else None, "body": body}


ROLE_ONLY = b'"delta": {"role": "assistant", "content": ""}'  # server/openai.py's opening chat chunk


def _first_token_in(start: dict, body: list[bytes]) -> bool:
    """Whether the body so far holds part of the answer. An SSE chat stream opens with a
    role-only event before its first token: that one alone does not count, so a replica that
    dies before the first token loses nothing the client saw."""
    data = b"".join(body)
    if not data:
        return False
    content_type = dict(start.get("headers", [])).get(b"content-type", b"")
    if not content_type.startswith(b"text/event-stream"):
        return True
    return any(ROLE_ONLY not in event for event in data.split(b"\n\n")[:-1])  # whole events only


async def call(app, req: dict, extra_headers: list[tuple[bytes, bytes]] = ()) -> AsyncIterator[dict[str, Any]]:
    """Run one request through `app`; yields {"status", "headers", "body", "more"} first, then
    {"body", "more"} until "more" is False. Closing the iterator early (the client went away)
    tells the app the client disconnected, as a socket server would."""
    out: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": req["body"], "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if gone.is_set() and message["type"] == "http.response.body":
            raise OSError("client disconnected")  # what a socket server raises on a closed connection
        await out.put(message)

    path = req["path"]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": req["method"], "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": req.get("query_string", b""), "headers": list(req["headers"]),
             "client": tuple(req["client"]) if req.get("client") else None, "server": ("127.0.0.1", 0),
             "state": {}}

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await out.put(None)  # the app returned (or raised): no more messages

    task = asyncio.create_task(run())
    start: dict | bool | None = None  # the response start message; True once sent
    pending: list[bytes] = []
    try:
        done = False
        while not done:
            batch = [await out.get()]
            while not out.empty():
                batch.append(out.get_nowait())
            more = True
            for m in batch:
                if m is None:
                    done, more = True, False
                elif m["type"] == "http.response.start":
                    start = m
                elif m["type"] == "http.response.body":
                    pending.append(m.get("body", b""))
                    if not m.get("more_body", False):
                        done, more = True, False
            if start is None:
                if done:  # the app ended without a response (it raised before sending one)
                    exc = task.exception() if task.done() and not task.cancelled() else None
                    raise RuntimeError(f"the app sent no response ({type(exc).__name__ if exc else 'no error'})")
                continue
            if start is not True:
                if more and not _first_token_in(start, pending):
                    continue  # nothing of the answer yet: hold the start back
                item = {"status": start["status"], "headers": [*start.get("headers", []), *extra_headers],
                        "body": b"".join(pending), "more": more}
                start = True
            elif pending or not more:
                item = {"body": b"".join(pending), "more": more}
            else:
                continue
            pending = []
            yield item
    finally:
        gone.set()
        if not task.done():  # the app sees the disconnect and ends its stream on its own
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
