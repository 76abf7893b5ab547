"""Workloads for tuning and benchmarks: a built-in chat mix, or a JSONL file of requests.

A workload file has one request per line: {"messages": [...], "max_tokens": N} or
{"prompt": "...", "max_tokens": N}. Every request generates exactly max_tokens (end-of-text
is ignored, sampling is greedy) so two configs always do the same work.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from liteinfer.core.errors import LiteInferError

SYSTEM = "You are a helpful assistant. Answer clearly and briefly."

# Short questions, a mid-size instruction and two long-context requests: the mix a small
# local chat server sees. Lengths vary so prefill chunking and batching both matter.
CHAT_MIX: list[tuple[str, int]] = [
    ("What is the capital of France?", 16),
    ("Write a haiku about autumn leaves.", 32),
    ("Explain in two sentences why the sky is blue.", 48),
    ("List three tips for writing readable Python code.", 64),
    ("Summarize this: The committee met on Tuesday to review the budget. After a long "
     "discussion about rising maintenance costs, travel expenses and the delayed software "
     "upgrade, members agreed to cut travel by a fifth, postpone the upgrade to spring and "
     "ask each department for a revised estimate by the end of the month.", 48),
    ("Translate to French: The weather is nice today and we are going to the park.", 32),
    ("What is 17 times 23? Show the steps.", 48),
    ("Give me a short packing list for a weekend hiking trip in the mountains, with a "
     "sentence on why each item matters. Keep it practical: water, food, layers, map, "
     "first aid, headlamp and anything else you think a careful hiker would bring along.", 64),
]


@dataclass
class Request:
    prompt: str | None = None
    messages: list[dict] | None = None
    max_tokens: int = 32


def chat_mix(n: int = 8, max_tokens: int | None = None) -> list[Request]:
    """n requests cycling through the chat mix (max_tokens overrides each entry's length)."""
    out = []
    for i in range(n):
        q, mt = CHAT_MIX[i % len(CHAT_MIX)]
        out.append(Request(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                           max_tokens=max_tokens or mt))
    return out


def load_workload(path: str | os.PathLike) -> list[Request]:
    p = Path(path)
    if not p.is_file():
        raise LiteInferError(f"workload file {p} not found")
    reqs = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise LiteInferError(f"{p}:{i}: not JSON ({e.msg})") from None
        if not isinstance(d, dict) or not (isinstance(d.get("prompt"), str) or isinstance(d.get("messages"), list)):
            raise LiteInferError(f"{p}:{i}: expected an object with 'prompt' (string) or 'messages' (list)")
        mt = d.get("max_tokens", 32)
        if not isinstance(mt, int) or mt < 1:
            raise LiteInferError(f"{p}:{i}: max_tokens must be a positive integer")
        reqs.append(Request(prompt=d.get("prompt"), messages=d.get("messages"), max_tokens=mt))
    if not reqs:
        raise LiteInferError(f"workload file {p} has no requests")
    return reqs


def tokenize_requests(engine, requests: list[Request]) -> list[list[int]]:
    out = []
    for r in requests:
        text = engine.apply_chat_template(r.messages) if r.messages else r.prompt
        out.append(engine.tokenize(text, add_special=not r.messages))
    return out
