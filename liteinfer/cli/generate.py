"""The `generate` and `chat` commands: single-stream generation from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from liteinfer.core.catalog import resolve_llm
from liteinfer.core.config import load_config
from liteinfer.core.errors import LiteInferError
from liteinfer.core.plugins import engine_for
from liteinfer.engines.generate import GenerationResult, stream
from liteinfer.engines.llama import LlamaEngine, SamplingParams

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
    if args.max_tokens < 1:
        raise LiteInferError("--max-tokens must be >= 1")
    if args.temperature < 0:
        raise LiteInferError("--temperature must be >= 0")
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, stop=args.stop)


def open_engine(model: str, config_path: str | None = None, threads: int | None = None, n_ctx: int | None = None):
    config = load_config(config_path)
    settings = config.engine.model_copy()
    if threads:
        settings.n_threads = threads
    if n_ctx:
        settings.n_ctx = n_ctx
    path = resolve_llm(model)
    plugin = engine_for(path)  # a plugin's file type (an encrypted model): its loader builds the engine
    if plugin is not None and plugin.load_llm is not None:
        return plugin.load_llm(path, settings, config)
    return LlamaEngine(path, settings)


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
