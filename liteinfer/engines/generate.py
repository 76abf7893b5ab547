"""Single-stream generation on the engine as a generator (mlx-lm's generate_step shape).

`stream()` yields text pieces as tokens arrive; the `generate` / `chat` commands, the quantizer's
checks and the tests sit on it. The server does not: it batches through the scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from liteinfer.engines.text_stream import TextStream


@dataclass
class GenerationResult:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_tokens: int = 0
    finish_reason: str | None = None
    timings: dict = field(default_factory=dict)


def stream(engine, prompt_tokens: list[int], params, result: GenerationResult | None = None) -> Iterator[str]:
    """Generate from one prompt, yielding text pieces; fills `result` as it goes."""
    result = result if result is not None else GenerationResult()
    result.prompt_tokens = len(prompt_tokens)
    text = TextStream(engine, params.stop)
    t0 = time.perf_counter()
    seq = engine.start(prompt_tokens, params)
    result.reused_tokens = seq.n_reused
    t_first = None
    pieces: list[str] = []
    try:
        while True:
            budget = engine.n_batch
            (_, token), *_ = engine.step([(seq, min(seq.n_pending, budget))]) or [(None, None)]
            if token is None:  # prompt chunk ran, no token yet
                continue
            if t_first is None:
                t_first = time.perf_counter()
            if engine.is_eog(token):
                result.finish_reason = "stop"
                break
            result.completion_tokens += 1
            piece = text.push(token)
            if piece:
                pieces.append(piece)
                yield piece
            if text.stopped:
                result.finish_reason = "stop"
                break
            if result.completion_tokens >= params.max_tokens or len(seq.tokens) >= engine.max_seq_len:
                result.finish_reason = "length"
                break
        tail = text.flush()
        if tail:
            pieces.append(tail)
            yield tail
    finally:
        engine.release(seq)
        t_end = time.perf_counter()
        t_first = t_first or t_end
        n_decode = max(result.completion_tokens - 1, 0)
        prompt_run = result.prompt_tokens - result.reused_tokens
        result.text = "".join(pieces)
        result.timings = {
            "ttft_ms": round((t_first - t0) * 1000, 2),
            "prompt_tps": round(prompt_run / max(t_first - t0, 1e-9), 2),
            "decode_tps": round(n_decode / (t_end - t_first), 2) if n_decode and t_end > t_first else 0.0,
            "total_ms": round((t_end - t0) * 1000, 2),
        }


def generate(engine, prompt: str, params, chat: bool = False) -> GenerationResult:
    """Whole completion for a prompt (chat=True wraps it in the model's chat template)."""
    if chat:
        prompt = engine.apply_chat_template([{"role": "user", "content": prompt}])
    result = GenerationResult()
    for _ in stream(engine, engine.tokenize(prompt), params, result):
        pass
    return result
