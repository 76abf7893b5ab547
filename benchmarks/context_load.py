"""The long-context workloads of benchmarks/serve.py: a ~2,000-token prompt, and an 8-turn
conversation (each turn appends the previous answer and a new user message).

Raw HTTP like loadgen.py (a heavy client would steal the servers' CPU), but each request also
keeps the reply text (the next turn's history) and the usage/timings the server reports: a
turn's cached prompt tokens are what shows whether the prefix cache kept the earlier turns.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Prose and code of this repository: real text, the same in every run.
LONG_SOURCES = ("docs/api.md", "docs/architecture.md", "README.md", "liteinfer/scheduler/continuous.py",
                "liteinfer/engines/llama.py")
LONG_TASKS = ("Summarize the following text in three sentences.", "List the five most important points below.",
              "What is the main idea of the following text?", "Explain the text below to a new engineer.")

TOPICS = ("a week in Lisbon", "learning to bake bread", "a small vegetable garden", "running a first marathon",
          "keeping bees", "building a bookshelf", "learning the guitar", "a cycling trip along a river")
FOLLOW_UPS = ("What should I do first?", "How long will that take?", "What could go wrong?",
              "How much will it cost, roughly?", "Which tools or things do I need?",
              "Can you give me a simple plan for the first day?", "What do beginners usually forget?",
              "Summarize your advice in two sentences.")


def long_prompt(k: int, n_tokens: int = 2000, chars_per_token: float = 3.6) -> list[dict]:
    """The k-th long prompt: distinct leading text (no prefix shared across k beyond the chat
    template), then about n_tokens of repository text."""
    text = (ROOT / LONG_SOURCES[k % len(LONG_SOURCES)]).read_text()
    size = int(n_tokens * chars_per_token)
    start = (k // len(LONG_SOURCES) * 1777) % max(1, len(text) - size)
    body = (text * (1 + size // max(1, len(text))))[start : start + size]
    lead = f"Request {k}. {LONG_TASKS[k % len(LONG_TASKS)]}"
    return [{"role": "user", "content": f"{lead}\n\n{body}"}]


def first_turn(conv: int) -> str:
    return (f"Hello, this is conversation {conv}. I would like some practical advice about "
            f"{TOPICS[conv % len(TOPICS)]}. Please keep your answers short and concrete.")


async def chat_once(port: int, body: dict, host: str = "127.0.0.1") -> dict:
    """One streamed chat completion: ttft and latency (s), the reply text, usage and (llama-server)
    timings; {'error': ...} on failure."""
    payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), len(payload), payload))
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            return {"error": status.decode(errors="replace").strip() + " " + (await reader.read()).decode()[-300:]}
        first, parts, usage, timings = None, [], None, None
        async for raw in reader:  # chunked framing lines and SSE lines both come through here
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
                    first = first or time.perf_counter()
        end = time.perf_counter()
        return {"ttft": (first or end) - t0, "latency": end - t0, "text": "".join(parts), "usage": usage or {},
                "timings": timings or {}}
    except (ConnectionError, OSError, ValueError) as e:
        return {"error": repr(e)}
    finally:
        writer.close()


def cached_tokens(r: dict) -> int | None:
    """Prompt tokens the server took from its cache: OpenAI's usage field (liteinfer), else
    llama-server's timings.cache_n."""
    details = (r.get("usage") or {}).get("prompt_tokens_details") or {}
    if "cached_tokens" in details:
        return details["cached_tokens"]
    return (r.get("timings") or {}).get("cache_n")


async def conversation(port: int, conv: int, turns: int, max_tokens: int, extra: dict | None) -> list[dict]:
    """One conversation of `turns` turns, one after another; a list of chat_once results."""
    messages = [{"role": "user", "content": first_turn(conv)}]
    out = []
    for t in range(turns):
        r = await chat_once(port, {"messages": messages, "max_tokens": max_tokens, "temperature": 0, **(extra or {})})
        out.append(r)
        if "error" in r:
            break
        messages = messages + [{"role": "assistant", "content": r["text"]},
                               {"role": "user", "content": FOLLOW_UPS[t % len(FOLLOW_UPS)]}]
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure_long(targets: list[tuple[str, int, dict | None]], prompts: int, rounds: int, n_tokens: int,
                 max_tokens: int) -> list[dict]:
    """`prompts` distinct long prompts per target and round, one client, targets interleaved
    (rotating order per round); every prompt is new to every server (k runs on across rounds)."""
    res: dict[str, list[dict]] = {label: [] for label, _, _ in targets}
    k = 1000  # prompt ids distinct from the warm-up's
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[: r % len(targets)]
        for _ in range(prompts):
            k += 1
            for label, port, extra in order:
                body = {"messages": long_prompt(k, n_tokens), "max_tokens": max_tokens, "temperature": 0,
                        **(extra or {})}
                x = asyncio.run(chat_once(port, body))
                res[label].append(x)
                print(f"  {label}: prompt {k}, TTFT {x.get('ttft', float('nan')):.2f} s", flush=True)
    rows = []
    for label, _, _ in targets:
        ok = [x for x in res[label] if "error" not in x]
        ttft = [x["ttft"] for x in ok]
        row = {"server": label, "workload": "long-prompt", "requests": len(ok), "errors": len(res[label]) - len(ok),
               "prompt_tokens": round(statistics.mean(x["usage"].get("prompt_tokens", 0) for x in ok)) if ok else 0,
               "cached_tokens_mean": round(statistics.mean(cached_tokens(x) or 0 for x in ok)) if ok else 0,
               "ttft_p50_ms": round(1000 * pct(ttft, 0.5)), "ttft_p95_ms": round(1000 * pct(ttft, 0.95)),
               "ttft_ms": [round(1000 * t) for t in ttft]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        for x in res[label]:
            if "error" in x:
                print(f"  {label} error: {x['error']}")
    return rows


def measure_conversations(targets: list[tuple[str, int, dict | None]], convs: int, rounds: int, turns: int,
                          max_tokens: int) -> list[dict]:
    """`convs` conversations per target and round, one client, each a new topic and id (no
    prefix shared across conversations beyond the chat template), targets interleaved."""
    res: dict[str, list[list[dict]]] = {label: [] for label, _, _ in targets}
    conv = 100
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[: r % len(targets)]
        for _ in range(convs):
            conv += 1
            for label, port, extra in order:
                res[label].append(asyncio.run(conversation(port, conv, turns, max_tokens, extra)))
    rows = []
    for label, _, _ in targets:
        per_turn, cached, prompt, errors = [], [], [], 0
        for t in range(turns):
            ok = [c[t] for c in res[label] if len(c) > t and "error" not in c[t]]
            errors += sum(1 for c in res[label] if len(c) > t and "error" in c[t])
            per_turn.append([x["ttft"] for x in ok])
            cached.append(round(statistics.mean(cached_tokens(x) or 0 for x in ok)) if ok else None)
            prompt.append(round(statistics.mean(x["usage"].get("prompt_tokens", 0) for x in ok)) if ok else None)
        p50 = [round(1000 * pct(v, 0.5)) for v in per_turn]
        row = {"server": label, "workload": "conversation", "conversations": len(res[label]), "errors": errors,
               "ttft_p50_ms": p50, "ttft_p95_ms": [round(1000 * pct(v, 0.95)) for v in per_turn],
               "prompt_tokens": prompt, "cached_tokens": cached,
               "turn_last/turn1": round(p50[-1] / max(p50[0], 1), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        for c in res[label]:
            for x in c:
                if "error" in x:
                    print(f"  {label} error: {x['error']}")
    return rows


def report(rows: list[dict]) -> None:
    """The issue's targets: long-prompt TTFT no worse than llama-server's; turn 8 within 1.3x turn 1."""
    print()
    long = {r["server"]: r for r in rows if r["workload"] == "long-prompt"}
    if long:
        print(f"{'long prompt':<16}{'prompt':>8}{'cached':>8}{'ttft50':>8}{'ttft95':>8}{'err':>5}")
        for name, r in long.items():
            print(f"{name:<16}{r['prompt_tokens']:>8}{r['cached_tokens_mean']:>8}{r['ttft_p50_ms']:>8}"
                  f"{r['ttft_p95_ms']:>8}{r['errors']:>5}")
        if "liteinfer" in long and "llama-server" in long:
            a, b = long["liteinfer"], long["llama-server"]
            print(f"long-prompt TTFT liteinfer / llama-server: p50 {a['ttft_p50_ms'] / max(b['ttft_p50_ms'], 1):.2f}, "
                  f"p95 {a['ttft_p95_ms'] / max(b['ttft_p95_ms'], 1):.2f} (target <= 1.0)")
    for r in rows:
        if r["workload"] != "conversation":
            continue
        print(f"\nconversation, {r['server']} ({r['conversations']} conversations, {r['errors']} errors)")
        print("turn     " + "".join(f"{t + 1:>7}" for t in range(len(r["ttft_p50_ms"]))))
        print("ttft50   " + "".join(f"{v:>7}" for v in r["ttft_p50_ms"]))
        print("ttft95   " + "".join(f"{v:>7}" for v in r["ttft_p95_ms"]))
        print("prompt   " + "".join(f"{v if v is not None else '-':>7}" for v in r["prompt_tokens"]))
        print("cached   " + "".join(f"{v if v is not None else '-':>7}" for v in r["cached_tokens"]))
        print(f"turn {len(r['ttft_p50_ms'])} / turn 1 TTFT p50 = {r['turn_last/turn1']} (target <= 1.3)")
