"""The HTTP server: the app factory (services, /health, /metrics, the chat page, API keys,
OpenAI-shaped errors) and the `liteinfer serve` command.

The LLM loads in a background thread, so /health answers "loading" at once and "ready" when
the engine and its scheduler thread are up; one-shot models (embeddings, classifier) load
before the port is bound. The model routes (/v1, Ollama's /api, /tokenize, /detokenize) need
an API key when keys are configured, and so do /metrics and the docs unless
server.protect_docs is false; / and /health stay open. `liteinfer serve --no-llm
--embedding-model M` is the small embeddings service: one-shot models only. Request limits,
header and body read times and the drain on SIGTERM are server/limits.py and
server/lifecycle.py (docs/serving.md); the CPU power policy and the energy meter are
server/power.py (docs/tuning.md §10).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from liteinfer.core.catalog import allow_fetch, resolve_llm
from liteinfer.core.config import DeviceConfig, load_config
from liteinfer.core.errors import LiteInferError
from liteinfer.core.plugins import check_model, registry
from liteinfer.engines.llama_cpp_lazy import repack_buffers_safe
from liteinfer.hardware.fingerprint import not_applicable, stale_fields
from liteinfer.hardware.probe import probe
from liteinfer.server.auth import load_api_keys
from liteinfer.server.power import Load, ServerPower

STATIC = Path(__file__).parent / "static"
# the model routes of every protocol (OpenAI's, Ollama's, llama-server's) need the API key
KEYED_PATHS = ("/v1", "/api/", "/tokenize", "/detokenize")


def create_app(config: DeviceConfig | None = None, model: str | None = None, api_keys: list[str] | None = None,
               load_in_background: bool = True, llm: bool = True, sys_root: str = "/sys"):
    """The app for `config`: its LLM (`model` or config.model; none when `llm` is False) and
    its one-shot models. Raises LiteInferError when a one-shot model cannot be loaded.
    `sys_root`: where cpufreq and the energy meters are read (a fake tree in tests)."""
    # FastAPI, the routes and the engines load when a server is built, not for `liteinfer --help`
    # (the CLI imports this module to register `serve`): start-up time
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match

    from liteinfer.server import audio, classify, embeddings, ollama, openai, tokenize
    from liteinfer.server.auth import check_bearer
    from liteinfer.server.fields import describe
    from liteinfer.server.limits import Lifecycle, LimitsMiddleware
    from liteinfer.server.load_signals import LoadSignals
    from liteinfer.server.metrics import Metrics
    from liteinfer.server.openai import error_response
    from liteinfer.services import load_services

    config = config or DeviceConfig()
    keys = list(api_keys if api_keys is not None else config.server.api_keys)
    metrics = Metrics()
    services = load_services(config, model, observer=metrics, llm=llm)
    for svc in services.values():
        if svc.kind != "llm":
            metrics.watch_oneshot(svc)
    llm_service = services.get("llm")
    metrics.registry.register(LoadSignals(metrics, lambda: llm_service.scheduler if llm_service is not None else None))

    def load() -> Load:  # what the dynamic power policy and the busy-energy count look at
        sched = llm_service.scheduler if llm_service is not None else None
        work = len(sched.running) + sched.queue_depth if sched else 0
        work += sum(svc.batcher.queue_depth for svc in services.values() if svc.kind != "llm" and svc.ready)
        return Load(work, sched.batch_capacity if sched else 1, sched.steps if sched else 0)

    power = ServerPower(config.power, sys_root, load)
    metrics.watch_power(power)

    @asynccontextmanager
    async def lifespan(app):
        power.start()  # power.profile applied; put back below, and by serve_main on any exit
        for svc in services.values():
            if not svc.ready:
                if load_in_background:
                    threading.Thread(target=svc.load, name=f"liteinfer-load-{svc.kind}", daemon=True).start()
                else:
                    svc.load()
        yield
        for svc in services.values():
            svc.close()
        power.close()

    app = FastAPI(title="liteinfer", version="0.1.0", lifespan=lifespan)
    app.state.services = services
    app.state.metrics = metrics
    app.state.config = config
    app.state.power = power
    lifecycle = app.state.lifecycle = Lifecycle()
    if llm_service is not None:  # the drain's end: open generations stop with finish_reason "abort"
        lifecycle.on_abort.append(lambda msg: llm_service.scheduler.abort_all(msg) if llm_service.scheduler else 0)
    if config.server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.server.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])

    plugin_routes: list = []  # every route a plugin adds needs the key too (filled below)

    def keyed(request: Request) -> bool:
        return request.url.path.startswith(KEYED_PATHS) or any(
            r.matches(request.scope)[0] != Match.NONE for r in plugin_routes)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if keys and request.method != "OPTIONS" and keyed(request):
            if not check_bearer(request.headers.get("authorization"), keys):
                metrics.rejected.labels(reason="unauthorized").inc()
                return error_response(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                      "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return error_response(400, describe(exc.errors()), code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health")
    async def health():
        if lifecycle.draining:
            return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "5"})
        if llm_service is not None and not llm_service.ready:
            if llm_service.error:
                return JSONResponse({"status": "error", "error": llm_service.error}, status_code=500)
            return JSONResponse({"status": "loading"}, status_code=503)
        body: dict = {"status": "ready"}
        if llm_service is not None:
            body["model"] = llm_service.name
        oneshot = {kind: svc.name for kind, svc in services.items() if kind != "llm"}
        if oneshot:
            body["models"] = oneshot
        return body

    @app.get("/metrics")
    async def prometheus():
        body = metrics.render(llm_service.scheduler if llm_service is not None else None)
        return Response(body, media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.include_router(openai.router)
    app.include_router(embeddings.router)
    app.include_router(classify.router)
    app.include_router(ollama.router)
    app.include_router(tokenize.router)
    app.include_router(audio.router)
    for _plugin, router in registry().routers():  # after the core's: a core route keeps its path
        app.include_router(router)
        plugin_routes.extend(router.routes)
    protect = config.server.protect_docs if config.server.protect_docs is not None else bool(keys)
    # outermost: sizes and read times before any other work, the drain's count around everything
    app.add_middleware(LimitsMiddleware, limits=config.limits, lifecycle=lifecycle, keys=keys, protect_docs=protect)
    return app


# ---- CLI ---------------------------------------------------------------------------------


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None, help="catalog name or .gguf path (default: config's model)")
    p.add_argument("--config", default=None, help="device_config.json (must exist; leave out for the defaults)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--api-key", action="append", default=[], help="require this key (repeatable)")
    p.add_argument("--api-key-file", default=None, help="file with one API key a line")
    p.add_argument("--cors-origin", action="append", default=[], help="allowed CORS origin (repeatable)")
    p.add_argument("--alias", action="append", default=[], metavar="NAME",
                   help="another name the chat model answers to, e.g. gpt-4o-mini or llama3.2 (repeatable)")
    p.add_argument("--chat-template-file", default=None, metavar="PATH",
                   help="Jinja chat template (or a tokenizer_config.json holding one) instead of the GGUF's")
    p.add_argument("--max-batch", type=int, default=None, help="max sequences decoded together")
    p.add_argument("--max-queue", type=int, default=None, help="waiting requests before 429")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ctx", type=int, default=None, help="KV cache cells shared by all sequences")
    p.add_argument("--fixed-batch", action="store_true", help="turn the adaptive controller off")
    p.add_argument("--no-speculative", action="store_true",
                   help="no prompt-lookup drafts (scheduler.speculative false): greedy answers then never "
                        "depend on whether a step ran drafts")
    p.add_argument("--embedding-model", default=None)
    p.add_argument("--classifier-model", default=None)
    p.add_argument("--no-llm", action="store_true",
                   help="serve only the one-shot models (--embedding-model / --classifier-model), no chat model")
    p.add_argument("--voice", action="store_true",
                   help="serve speech too: whisper-tiny.en (transcription) and espeak-ng (speech), the voice extra")
    p.add_argument("--stt-model", default=None, help="speech-to-text model (catalog name or folder)")
    p.add_argument("--tts-model", default=None, help="text-to-speech: espeak-ng, piper-joe or a piper .onnx")
    p.add_argument("--sysfs", default="/sys", help=argparse.SUPPRESS)  # a fake tree in tests (power)


def config_from_args(args) -> DeviceConfig:
    config = load_config(args.config, must_exist=True)
    if args.model:
        config.model = args.model
    s = config.server
    s.host = args.host or s.host
    s.port = args.port if args.port is not None else s.port
    s.cors_origins = args.cors_origin or s.cors_origins
    for name in args.alias:
        if not name.strip() or name != name.strip():
            raise LiteInferError(f"--alias {name!r}: empty or has surrounding spaces")
    s.aliases = list(dict.fromkeys([*s.aliases, *args.alias]))  # the config's, then the command line's
    if args.max_queue:
        s.max_queue = args.max_queue
    if args.max_batch:
        config.scheduler.max_batch = args.max_batch
    if args.fixed_batch:
        config.scheduler.adaptive = False
    if getattr(args, "no_speculative", False):
        config.scheduler.speculative = False
    if args.threads:
        config.engine.n_threads = args.threads
    if args.ctx:
        config.engine.n_ctx = args.ctx
    template = getattr(args, "chat_template_file", None)
    if template:
        if not os.path.isfile(template):
            raise LiteInferError(f"--chat-template-file {template}: no such file")
        config.engine.chat_template_file = template
    if args.embedding_model:
        config.embedding_model = args.embedding_model
    if args.classifier_model:
        config.classifier_model = args.classifier_model
    sp = config.speech
    if args.voice:  # the defaults, unless the config or the flags below name others
        sp.stt_model, sp.tts_model = sp.stt_model or "whisper-tiny.en", sp.tts_model or "espeak-ng"
    sp.stt_model = args.stt_model or sp.stt_model
    sp.tts_model = args.tts_model or sp.tts_model
    return config


def _warn_if_stale(config: DeviceConfig, path: str | None) -> None:
    """A device_config.json planned on another machine (or before a CPU/memory change) still
    serves, but its thread counts and sizes are someone else's: say so, and how to fix it."""
    if not path or not config.device.get("fingerprint"):
        return

    changed = stale_fields(config, probe())
    if changed:
        logging.getLogger("liteinfer.server").warning(
            "%s was planned for another machine (%s): run `python hw_profiler.py` to re-plan",
            path, "; ".join(changed))


def _warn_inapplicable(config: DeviceConfig, llm: bool) -> None:
    """Config fields that do not fit this machine (more threads than cores, mlock over the
    limit, AMX repack buffers): one warning line naming them; the server still starts."""
    size = None
    if llm:
        with contextlib.suppress(LiteInferError, OSError):
            size = resolve_llm(config.model).stat().st_size  # pulled already: no download
    # the build's AMX code only matters where the config forces the repack buffers on
    safe = not (llm and config.engine.use_extra_bufts) or repack_buffers_safe()
    odd = not_applicable(config, probe(), size, repack_safe=safe)
    if odd:
        logging.getLogger("liteinfer.server").warning("config fields that do not apply to this machine: %s",
                                                      "; ".join(odd))


def _lean_process() -> None:
    """Before any thread starts: numpy's OpenBLAS threads (numpy loads with the first embeddings
    request) spin after each call and steal the cores llama.cpp's threads wait for at their
    barrier; glibc gives each thread its own malloc arena, RSS that a server with a few threads
    does not need."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX = 2
    except (OSError, AttributeError):
        pass  # not glibc: defaults


def serve_main(args) -> int:
    mode = registry().serve_mode(args)  # a plugin's way to serve (--ray), chosen by its flag
    if mode is not None:
        return mode.run(args)
    _lean_process()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    llm = not args.no_llm
    allow_fetch(False)  # serve never downloads: a model not pulled is a one-line error saying so
    if llm:  # fail fast, one line, before binding the port (a plugin's file: its key, its header)
        check_model(resolve_llm(config.model), "llm", config)
    elif not (config.embedding_model or config.classifier_model or config.speech.stt_model or config.speech.tts_model):
        raise LiteInferError("--no-llm: give --embedding-model, --classifier-model and/or --voice (or set them in "
                             "the config)")
    _warn_if_stale(config, args.config)
    _warn_inapplicable(config, llm)
    keys = load_api_keys(args.api_key, args.api_key_file, config.server.api_keys)
    app = create_app(config, api_keys=keys, llm=llm, sys_root=args.sysfs)
    what = [config.model] if llm else []
    what += [m for m in (config.embedding_model, config.classifier_model, config.speech.stt_model,
                         config.speech.tts_model) if m]
    print(f"liteinfer serving {', '.join(what)} on http://{config.server.host}:{config.server.port}"
          f"{' (API key required)' if keys else ''}", flush=True)
    # on use: uvicorn at serve time, not when the CLI registers `serve` (start-up time)
    from liteinfer.server.lifecycle import run

    try:
        run(app, config, app.state.lifecycle)  # returns after the drain (SIGTERM / SIGINT)
    finally:  # the lifespan's end already did it, unless a third signal skipped that
        app.state.power.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching and a chat page")
    add_serve_arguments(p)
    registry().add_serve_options(p)  # plugins' serve modes (--ray): their options, after the core's
    p.set_defaults(func=serve_main)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
