"""HTTP routes for one-shot models: POST /v1/embeddings (OpenAI format) and POST /v1/classify.

`attach(app, config)` loads the configured embedding / classifier models (each behind its own
dynamic batcher, liteinfer/oneshot.py) and includes the router; app.py calls it when
DeviceConfig.embedding_model or .classifier_model is set. `oneshot_app(config)` is a server
with only these routes (no LLM): the small embeddings service.

Errors are OpenAI-shaped JSON: bad or empty input 400, unknown model 404, too large an upload
413, wrong content type 415, queue full 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from liteinfer.core.config import DeviceConfig
from liteinfer.core.errors import LiteInferError
from liteinfer.core.errors import QueueFull
from liteinfer.scheduler.dynamic import BatcherClosed
from liteinfer.server.openai import error_response

MAX_INPUTS = 2048  # OpenAI's limit for one embeddings request
MAX_IMAGES = 64
MAX_IMAGE_BYTES = 20 << 20
MAX_PIXELS = 40_000_000  # a small PNG can claim a huge canvas: refuse before decoding it

router = APIRouter()


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # `user` and friends are accepted and ignored
    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    image: str | list[str]
    model: str | None = None
    top_k: int = 5


# ---------------------------------------------------------------- shared


def _service(request: Request, kind: str, name: str | None):
    """(service, None) or (None, error response) for the model a request names."""
    services = getattr(request.app.state, "oneshot", {})
    svc = services.get(kind)
    if svc is None:
        what = "embedding" if kind == "embedding" else "image classifier"
        return None, error_response(404, f"this server has no {what} model (serve with --{kind}-model)",
                                    code="model_not_found")
    if name and name not in svc.aliases:
        return None, error_response(404, f"model {name!r} not found; available: {svc.name}", code="model_not_found")
    return svc, None


async def _run(coro, timeout_s: float):
    """Await a batcher call; map its failures to HTTP errors. Returns (result, None) or (None, response)."""
    try:
        return await asyncio.wait_for(coro, timeout_s), None
    except QueueFull as e:
        retry = str(int(e.retry_after_s))
        return None, error_response(429, f"server busy: {e}; retry after {retry} s", "rate_limit_error",
                                    "queue_full", {"Retry-After": retry})
    except BatcherClosed as e:
        return None, error_response(503, str(e), "server_error", "shutting_down")
    except LiteInferError as e:
        return None, error_response(400, str(e), code="invalid_input")
    except asyncio.TimeoutError:
        return None, error_response(504, f"no result within {timeout_s:g} s", "server_error", "timeout")


# ---------------------------------------------------------------- embeddings


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    svc, err = _service(request, "embedding", body.model)
    if err:
        return err
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return error_response(400, "input must be a string or a list of strings (token arrays are not supported)",
                              code="invalid_input")
    if not texts:
        return error_response(400, "input is empty", code="invalid_input")
    limit = min(MAX_INPUTS, svc.batcher.max_queue)
    if len(texts) > limit:  # could never be queued: a client error, not "retry later"
        return error_response(400, f"{len(texts)} inputs; at most {limit} per request (server queue size)",
                              code="invalid_input")
    if body.dimensions is not None and body.dimensions != svc.model.dim:
        return error_response(400, f"dimensions={body.dimensions}: this model gives {svc.model.dim}",
                              code="invalid_input")
    try:  # tokenizing is cheap per text; a long list goes off the event loop
        items = svc.prepare_texts(texts) if len(texts) <= 32 else await asyncio.to_thread(svc.prepare_texts, texts)
    except LiteInferError as e:
        return error_response(400, str(e), code="invalid_input")
    vectors, err = await _run(svc.batcher.submit_many(items), request.app.state.config.server.request_timeout_s)
    if err:
        return err
    data = []
    for i, v in enumerate(vectors):
        if body.encoding_format == "base64":  # OpenAI's: little-endian float32 bytes
            emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode()
        else:
            emb = v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n_tokens = sum(len(x) for x in items)
    return {"object": "list", "data": data, "model": svc.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


# ---------------------------------------------------------------- classification


def _b64_image(s: str, i: int) -> bytes:
    if s.startswith("data:"):  # data URL: data:image/png;base64,....
        s = s.partition(",")[2]
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise LiteInferError(f"image[{i}]: not valid base64") from None
    if not data:
        raise LiteInferError(f"image[{i}]: empty")
    return data


async def _read_images(request: Request) -> tuple[list[bytes], int, str | None]:
    """(image bytes, top_k, model) from multipart (`file` fields) or JSON (`image`, base64)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_IMAGES + 1)
        files = [f for key in ("file", "image", "images") for f in form.getlist(key) if hasattr(f, "read")]
        if len(files) > MAX_IMAGES:
            raise LiteInferError(f"more than {MAX_IMAGES} images in one request")
        images = []
        for f in files:
            data = await f.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise _TooLarge(f"image larger than {MAX_IMAGE_BYTES >> 20} MB")
            images.append(data)
        try:
            top_k = int(form.get("top_k", 5))
        except (TypeError, ValueError):
            raise LiteInferError("top_k must be an integer") from None
        model = form.get("model")
        return images, top_k, model if isinstance(model, str) else None
    if ctype.startswith("application/json"):
        try:
            body = ClassifyRequest.model_validate_json(await request.body())
        except ValueError as e:
            msg = str(e).splitlines()
            raise LiteInferError(f"bad JSON body: {msg[1].strip() if len(msg) > 1 else msg[0]}") from None
        raw = [body.image] if isinstance(body.image, str) else body.image
        if len(raw) > MAX_IMAGES:
            raise LiteInferError(f"more than {MAX_IMAGES} images in one request")
        return [_b64_image(s, i) for i, s in enumerate(raw)], body.top_k, body.model
    raise _Unsupported(f"content type {ctype or '(none)'!r}: send multipart/form-data or application/json")


def _pixels(data: bytes) -> int:
    """Canvas size from the image header only (PIL opens lazily); 0 when unreadable (decoding reports it)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size[0] * im.size[1]
    except Exception:
        return 0


class _TooLarge(LiteInferError):
    pass


class _Unsupported(LiteInferError):
    pass


@router.post("/v1/classify")
async def classify(request: Request):
    try:
        images, top_k, model = await _read_images(request)
    except _TooLarge as e:
        return error_response(413, str(e), code="too_large")
    except _Unsupported as e:
        return error_response(415, str(e), code="unsupported_media_type")
    except LiteInferError as e:
        return error_response(400, str(e), code="invalid_input")
    svc, err = _service(request, "classifier", model)
    if err:
        return err
    if not images:
        return error_response(400, "no image in the request (multipart field `file`, or JSON `image`)",
                              code="invalid_input")
    if len(images) > svc.batcher.max_queue:
        return error_response(400, f"{len(images)} images; at most {svc.batcher.max_queue} per request (server "
                              "queue size)", code="invalid_input")
    if top_k < 1:
        return error_response(400, "top_k must be at least 1", code="invalid_input")
    top_k = min(top_k, len(svc.model.labels) or 1000)  # more than there are classes: all of them
    for i, data in enumerate(images):
        pixels = _pixels(data)
        if pixels > MAX_PIXELS:
            return error_response(413, f"image[{i}] has {pixels} pixels; at most {MAX_PIXELS}", code="too_large")
    preds, err = await _run(svc.classify_async(images, top_k), request.app.state.config.server.request_timeout_s)
    if err:
        return err
    data = [{"index": i, "labels": [{"label": p.label, "class_id": p.index, "score": p.score} for p in row]}
            for i, row in enumerate(preds)]
    return {"object": "list", "model": svc.name, "data": data}


@router.get("/v1/oneshot/stats")
async def stats(request: Request):
    """Batcher and controller state per one-shot model (queue, limits, cost model, p95)."""
    return {k: s.stats() for k, s in getattr(request.app.state, "oneshot", {}).items()}


# ---------------------------------------------------------------- wiring


def _metrics(app, svc) -> None:
    """Batch size / time histograms and live gauges in the app's Prometheus registry, if any."""
    metrics = getattr(app.state, "metrics", None)
    if metrics is None:
        return
    from prometheus_client import Gauge, Histogram

    r = metrics.registry
    names = {"registry": r, "labelnames": ["model"]}
    if not hasattr(metrics, "oneshot_batch"):
        metrics.oneshot_batch = Histogram("liteinfer_oneshot_batch_size", "inputs per one-shot batch",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), **names)
        metrics.oneshot_seconds = Histogram("liteinfer_oneshot_batch_seconds", "model time per one-shot batch",
                                            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), **names)
        metrics.oneshot_queue = Gauge("liteinfer_oneshot_queue_depth", "inputs waiting", **names)
        metrics.oneshot_max_batch = Gauge("liteinfer_oneshot_max_batch", "current batch limit", **names)
        metrics.oneshot_delay = Gauge("liteinfer_oneshot_max_delay_seconds", "current batch hold limit", **names)
    b = svc.batcher
    metrics.oneshot_queue.labels(svc.name).set_function(lambda: b.queue_depth)
    metrics.oneshot_max_batch.labels(svc.name).set_function(lambda: b.max_batch)
    metrics.oneshot_delay.labels(svc.name).set_function(lambda: b.max_delay_s)
    hist_n, hist_s = metrics.oneshot_batch.labels(svc.name), metrics.oneshot_seconds.labels(svc.name)

    def on_batch(rec) -> None:
        hist_n.observe(rec.size)
        hist_s.observe(rec.run_s)

    b.on_batch = on_batch


def load_services(config: DeviceConfig) -> dict:
    from liteinfer.oneshot import OneShotService

    services = {}
    for kind, name in (("embedding", config.embedding_model), ("classifier", config.classifier_model)):
        if name:
            svc = OneShotService.load(name, config.oneshot, kind=kind)
            svc.aliases = {name, svc.name, svc.model.meta.name, svc.model.path.stem, svc.model.path.name}
            services[kind] = svc
    return services


def attach(app, config: DeviceConfig, services: dict | None = None) -> None:
    """Load the configured one-shot models and serve them on this app."""
    services = services if services is not None else load_services(config)
    app.state.oneshot = services
    app.state.config = getattr(app.state, "config", None) or config
    extra = getattr(app.state, "extra_models", None)
    for svc in services.values():
        _metrics(app, svc)
        if extra is not None and svc.name not in extra:
            extra.append(svc.name)
    app.include_router(router)


def close_services(app) -> None:
    for svc in getattr(app.state, "oneshot", {}).values():
        svc.close()


def oneshot_app(config: DeviceConfig):
    """A server with only the one-shot routes (+ /health): the small embeddings service."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    services = load_services(config)

    @asynccontextmanager
    async def lifespan(app):
        yield
        close_services(app)

    app = FastAPI(title="liteinfer one-shot", lifespan=lifespan)
    app.state.config = config

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = "request body is not valid JSON" if err.get("type") == "json_invalid" else err.get("msg", "invalid")
        return error_response(400, f"{where}: {msg}" if where and err.get("type") != "json_invalid" else msg,
                              code="invalid_request")

    @app.get("/health")
    async def health():
        return {"status": "ready", "models": {k: s.name for k, s in services.items()}}

    attach(app, config, services)
    return app


def main(argv: list[str] | None = None) -> int:
    """`python -m liteinfer.server.oneshot_routes --embedding-model M [--classifier-model M] [--port P]`."""
    import argparse

    import uvicorn

    from liteinfer.core.config import load_config

    ap = argparse.ArgumentParser(description="one-shot models only (no LLM): embeddings / classify server")
    ap.add_argument("--config", default=None)
    ap.add_argument("--embedding-model", default=None)
    ap.add_argument("--classifier-model", default=None)
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--max-delay-ms", type=float, default=None)
    ap.add_argument("--fixed-batch", action="store_true", help="turn the adaptive controller off")
    args = ap.parse_args(argv)
    config = load_config(args.config)
    config.embedding_model = args.embedding_model or config.embedding_model
    config.classifier_model = args.classifier_model or config.classifier_model
    if not (config.embedding_model or config.classifier_model):
        ap.error("give --embedding-model and/or --classifier-model")
    o = config.oneshot
    o.max_batch = args.max_batch or o.max_batch
    o.max_delay_ms = o.max_delay_ms if args.max_delay_ms is None else args.max_delay_ms
    o.adaptive = o.adaptive and not args.fixed_batch
    host, port = args.host or config.server.host, args.port if args.port is not None else config.server.port
    try:
        app = oneshot_app(config)
    except LiteInferError as e:
        print(f"error: {e}")
        return 1
    print(f"liteinfer one-shot serving on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
