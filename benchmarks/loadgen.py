"""A small raw-HTTP load client for OpenAI-style streaming endpoints.

Hand-written HTTP/1.1 over asyncio streams: a heavy client (the `openai` package) on the
same two cores would steal the CPU the servers under test need, and skew the comparison.
Each of C clients sends its requests one after another; we record time to first token,
request latency and completion tokens from the streamed chunks.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    concurrency: int
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    def row(self) -> dict:
        return {"c": self.concurrency, "req/s": round(self.req_per_s, 2), "tok/s": round(self.tok_per_s, 1),
                "ttft_p50_ms": round(1000 * self.pct(self.ttft, 0.5)),
                "ttft_p95_ms": round(1000 * self.pct(self.ttft, 0.95)),
                "lat_p50_ms": round(1000 * statistics.median(self.latency)) if self.latency else None,
                "errors": self.errors}


async def _one(host: str, port: int, body: dict, res: LoadResult) -> None:
    payload = json.dumps({**body, "stream": True}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), len(payload), payload)
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            res.errors += 1
            return
        first, n_tokens, usage_tokens = None, 0, None
        async for raw in reader:  # chunked framing lines and SSE lines both come through here
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    n_tokens += 1
                    first = first or time.perf_counter()
        res.requests += 1
        res.tokens += usage_tokens if usage_tokens is not None else n_tokens
        end = time.perf_counter()
        res.ttft.append((first or end) - t0)
        res.latency.append(end - t0)
    except (ConnectionError, OSError, ValueError):
        res.errors += 1
    finally:
        writer.close()


async def run_load(host: str, port: int, concurrency: int, per_client: int, max_tokens: int = 32,
                   model: str | None = None, system: str | None = None, extra: dict | None = None) -> LoadResult:
    """C clients, each sending `per_client` streamed chat requests one after another; `extra`
    adds request fields (response_format, tools...)."""
    res = LoadResult(concurrency)

    async def client(i: int) -> None:
        for j in range(per_client):
            messages = [{"role": "user", "content": f"Question {i}-{j}: tell me something about the number {i * 7 + j}."}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                    "stream_options": {"include_usage": True}}
            if model:
                body["model"] = model
            body.update(extra or {})
            await _one(host, port, body, res)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    res.seconds = time.perf_counter() - t0
    return res
