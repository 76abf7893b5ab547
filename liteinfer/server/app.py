"""The HTTP service: FastAPI app factory, model loading, health, metrics, auth, and `liteinfer serve`.

The model loads in a background thread, so /health answers "loading" at once and "ready"
when the engine and its scheduler thread are up. Everything under /v1 needs an API key when
keys are configured; /, /health and /metrics stay open (a local page and a scraper).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from liteinfer.core.config import DeviceConfig, load_config
from liteinfer.core.errors import LiteInferError

STATIC = Path(__file__).parent / "static"


class LLMService:
    """The loaded LLM: engine + continuous-batching scheduler, created off the event loop."""

    def __init__(self, config: DeviceConfig, model: str, metrics):
        self.config, self.model, self.metrics = config, model, metrics
        self.model_id = Path(model).stem if model.endswith(".gguf") else model
        self.model_names = {self.model_id, model}
        self.created = int(time.time())
        self.engine = self.scheduler = None
        self.ready = False
        self.error: str | None = None
        import asyncio

        self.embed_lock = asyncio.Lock()

    def load(self) -> None:
        try:
            from liteinfer.core.catalog import resolve_llm
            from liteinfer.engines.llama import LlamaEngine
            from liteinfer.scheduler.continuous import ContinuousScheduler

            path = resolve_llm(self.model)
            self.model_names.add(path.stem)
            settings = self.config.engine
            if settings.split_q4_1 is None:  # batched serving is where the split pays (see q4_1_split)
                settings = settings.model_copy(update={"split_q4_1": True})
            self.engine = LlamaEngine(path, settings)
            self.scheduler = ContinuousScheduler(self.engine, self.config.scheduler, self.config.server.max_queue,
                                                 self.metrics)
            self.scheduler.start()
            _release_free_heap()
            self.ready = True
            logging.getLogger("liteinfer.server").info(
                "loaded %s: %d threads, %d KV cells (%s), up to %d sequences%s", path.name, self.engine.n_threads,
                self.engine.n_ctx, self.config.engine.type_k, self.config.scheduler.max_batch,
                ", Q4_1 run as Q4_0 + offsets" if self.engine.q4_1_split else "")
        except LiteInferError as e:
            self.error = str(e)
        except Exception as e:  # surfaced through /health, not a traceback
            self.error = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.stop()
        if self.engine:
            self.engine.close()


def create_app(config: DeviceConfig | None = None, model: str | None = None, api_keys: list[str] | None = None,
               load_in_background: bool = True):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from liteinfer.server.auth import check_bearer
    from liteinfer.server.metrics import Metrics
    from liteinfer.server.openai import embeddings_router, error_response, router

    config = config or DeviceConfig()
    keys = list(api_keys if api_keys is not None else config.server.api_keys)
    metrics = Metrics()
    service = LLMService(config, model or config.model, metrics)

    @asynccontextmanager
    async def lifespan(app):
        if load_in_background:
            threading.Thread(target=service.load, name="liteinfer-load", daemon=True).start()
        else:
            service.load()
        yield
        service.close()
        if getattr(app.state, "oneshot", None):
            from liteinfer.server.oneshot_routes import close_services

            close_services(app)

    app = FastAPI(title="liteinfer", version="0.1.0", lifespan=lifespan)
    app.state.llm = service
    app.state.metrics = metrics
    app.state.config = config
    app.state.extra_models = []
    if config.server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.server.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if keys and request.url.path.startswith("/v1") and request.method != "OPTIONS":
            if not check_bearer(request.headers.get("authorization"), keys):
                metrics.rejected.labels(reason="unauthorized").inc()
                return error_response(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                      "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            where, msg = "", "request body is not valid JSON"
        return error_response(400, f"{where}: {msg}" if where else msg, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health")
    async def health():
        if service.ready:
            return {"status": "ready", "model": service.model_id}
        if service.error:
            return JSONResponse({"status": "error", "error": service.error}, status_code=500)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        body = metrics.render(service.scheduler)
        return Response(body, media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.include_router(router)
    _include_oneshot(app, config)
    if not config.embedding_model:  # the GGUF embeds when no dedicated embedding model is set
        app.include_router(embeddings_router)
    return app


def _include_oneshot(app, config: DeviceConfig) -> None:
    """Embedding / classifier routes, when such models are configured (issue 5's router)."""
    if not (config.embedding_model or config.classifier_model):
        return
    try:
        from liteinfer.server.oneshot_routes import attach
    except ImportError:
        return
    attach(app, config)


# ---- CLI ---------------------------------------------------------------------------------


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None, help="catalog name or .gguf path (default: config's model)")
    p.add_argument("--config", default=None, help="device_config.json (missing file = defaults)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--api-key", action="append", default=[], help="require this key (repeatable)")
    p.add_argument("--api-key-file", default=None, help="file with one API key a line")
    p.add_argument("--cors-origin", action="append", default=[], help="allowed CORS origin (repeatable)")
    p.add_argument("--max-batch", type=int, default=None, help="max sequences decoded together")
    p.add_argument("--max-queue", type=int, default=None, help="waiting requests before 429")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ctx", type=int, default=None, help="KV cache cells shared by all sequences")
    p.add_argument("--fixed-batch", action="store_true", help="turn the adaptive controller off")
    p.add_argument("--embedding-model", default=None)
    p.add_argument("--classifier-model", default=None)


def config_from_args(args) -> DeviceConfig:
    config = load_config(args.config)
    if args.model:
        config.model = args.model
    s = config.server
    s.host = args.host or s.host
    s.port = args.port if args.port is not None else s.port
    s.cors_origins = args.cors_origin or s.cors_origins
    if args.max_queue:
        s.max_queue = args.max_queue
    if args.max_batch:
        config.scheduler.max_batch = args.max_batch
    if args.fixed_batch:
        config.scheduler.adaptive = False
    if args.threads:
        config.engine.n_threads = args.threads
    if args.ctx:
        config.engine.n_ctx = args.ctx
    if args.embedding_model:
        config.embedding_model = args.embedding_model
    if args.classifier_model:
        config.classifier_model = args.classifier_model
    return config


def _warn_if_stale(config: DeviceConfig, path: str | None) -> None:
    """A device_config.json planned on another machine (or before a CPU/memory change) still
    serves, but its thread counts and sizes are someone else's: say so, and how to fix it."""
    if not path or not config.device.get("fingerprint"):
        return
    from liteinfer.hardware.fingerprint import stale_fields
    from liteinfer.hardware.probe import probe

    changed = stale_fields(config, probe())
    if changed:
        logging.getLogger("liteinfer.server").warning(
            "%s was planned for another machine (%s): run `python hw_profiler.py` to re-plan",
            path, "; ".join(changed))


def _release_free_heap() -> None:
    """Give the heap that model loading freed (GGUF parsing, repack and adapter buffers) back
    to the OS: glibc keeps it otherwise, and it counts in the service's RSS."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _lean_process() -> None:
    """Before any thread starts: numpy's OpenBLAS threads (numpy loads with the first embeddings
    request) spin after each call and steal the cores llama.cpp's threads wait for at their
    barrier; glibc gives each thread its own malloc arena, RSS that a server with a few threads
    does not need."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX = 2
    except (OSError, AttributeError):
        pass  # not glibc: defaults


def serve_main(args) -> int:
    _lean_process()
    import uvicorn

    from liteinfer.core.catalog import resolve_llm
    from liteinfer.server.auth import load_api_keys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    resolve_llm(config.model)  # fail fast, one line, before binding the port
    _warn_if_stale(config, args.config)
    keys = load_api_keys(args.api_key, args.api_key_file, config.server.api_keys)
    app = create_app(config, api_keys=keys)
    print(f"liteinfer serving {config.model} on http://{config.server.host}:{config.server.port}"
          f"{' (API key required)' if keys else ''}", flush=True)
    # access logs cost CPU that the engine's threads need on small machines
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching and a chat page")
    add_serve_arguments(p)
    p.set_defaults(func=serve_main)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
