"""Single-stream generation on the engine, streaming text, and the `generate` / `chat` commands.

`stream()` is a generator that yields text pieces as tokens arrive (mlx-lm's generate_step
shape); the CLI and tests sit on it. `TextStream` turns tokens into text: whole UTF-8
characters only, and stop strings cut cleanly even when they span tokens. The server's
scheduler uses the same `TextStream`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from liteinfer.errors import LiteInferError


class TextStream:
    """Token -> text with incremental UTF-8 decoding and stop strings held back until sure."""

    def __init__(self, engine, stop: list[str] | None = None):
        self.engine = engine
        self.stop = [s for s in (stop or []) if s]
        self.decoder = engine.text_decoder()
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.decoder.decode(self.engine.token_bytes(token))
        for s in self.stop:
            i = self.pending.find(s)
            if i >= 0:
                out, self.pending, self.stopped = self.pending[:i], "", True
                return out
        hold = 0  # longest tail of pending that could still grow into a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return out


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


# ---- CLI ---------------------------------------------------------------------------------


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default="smollm2-135m", help="catalog name or .gguf path")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ctx", type=int, default=4096, help="KV cache size in tokens")
    p.add_argument("--config", default=None, help="device_config.json (engine settings)")


def _params(args):
    from liteinfer.engines.llama import SamplingParams

    if args.max_tokens < 1:
        raise LiteInferError("--max-tokens must be >= 1")
    if args.temperature < 0:
        raise LiteInferError("--temperature must be >= 0")
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, stop=args.stop)


def open_engine(model: str, config_path: str | None = None, threads: int | None = None, n_ctx: int | None = None):
    from liteinfer.catalog import resolve_llm
    from liteinfer.config import load_config
    from liteinfer.engines.llama import LlamaEngine

    settings = load_config(config_path).engine.model_copy()
    if threads:
        settings.n_threads = threads
    if n_ctx:
        settings.n_ctx = n_ctx
    return LlamaEngine(resolve_llm(model), settings)


def _generate_main(args) -> int:
    params = _params(args)
    engine = open_engine(args.model, args.config, args.threads, args.ctx)
    prompt = engine.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    result = GenerationResult()
    pieces = stream(engine, engine.tokenize(prompt), params, result)
    if args.json:
        for _ in pieces:
            pass
        print(json.dumps(asdict(result)))
    else:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def _chat_main(args) -> int:
    params = _params(args)
    engine = open_engine(args.model, args.config, args.threads, args.ctx)
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("liteinfer chat - /reset clears the conversation, /exit or Ctrl-D quits")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        prompt = engine.apply_chat_template(messages)
        result = GenerationResult()
        for piece in stream(engine, engine.tokenize(prompt), params, result):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": result.text})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete a prompt, streaming tokens")
    _add_sampling_args(p)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, counts, timings)")
    p.set_defaults(func=_generate_main)
    p = sub.add_parser("chat", help="interactive chat using the model's chat template")
    _add_sampling_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.set_defaults(func=_chat_main)
