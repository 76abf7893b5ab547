"""Which replica a request belongs on: a key for the conversation or prompt it continues.

A replica's engine keeps the KV cells of the prompts it served and reuses the longest common
prefix (engines/llama.py); turn 2 of a conversation repeats turn 1 whole, so it is cheap only
on the replica that served turn 1. The ingress sends every request with the same key to the
same replica while that replica is up (Ray Serve's multiplexed-model routing: the replica
registers the key, deployments.py). What the key is:

- chat (/v1/chat/completions, /api/chat): the system/developer messages before the first
  user message, and that first user message; every later turn of the conversation has them
- completions (/v1/completions, /api/generate): the first PROMPT_CHARS characters of the
  prompt (and /api/generate's `system`); a conversation kept as one growing prompt sticks
  once its first turn is that long, and prompts sharing a long preamble go together
- anything else (models, embeddings, tokenize, health): no key, any replica
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PROMPT_CHARS = 256
CHAT_PATHS = ("/v1/chat/completions", "/api/chat")
PROMPT_PATHS = ("/v1/completions", "/api/generate")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text parts (an image's URL as it is)
        return "\n".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content, sort_keys=True, default=str)


def conversation_prefix(messages: list) -> str | None:
    """The system messages up to and with the first user message, as one string."""
    parts = []
    for m in messages:
        if not isinstance(m, dict):
            return None
        role = m.get("role")
        parts.append(f"{role}\x00{_text(m.get('content'))}")
        if role == "user":
            return "\x01".join(parts)
    return "\x01".join(parts) if parts else None


def affinity_key(path: str, body: dict | None) -> str:
    """The request's key ("" for none): 16 hex digits of a SHA-256, so a prompt never travels
    in Ray's routing tables."""
    if not isinstance(body, dict):
        return ""
    prefix = None
    if path in CHAT_PATHS and isinstance(body.get("messages"), list):
        prefix = conversation_prefix(body["messages"])
    elif path in PROMPT_PATHS:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:  # OpenAI's prompt may be a list of one
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            system = body.get("system") if isinstance(body.get("system"), str) else ""
            prefix = f"{system}\x00{prompt[:PROMPT_CHARS]}"
    if not prefix:
        return ""
    return hashlib.sha256(prefix.encode("utf-8", "surrogatepass")).hexdigest()[:16]
