"""POST /v1/classify (images as multipart `file` fields or base64 JSON) and GET /v1/oneshot/stats.

Errors are OpenAI-shaped JSON: bad or empty input 400, unknown model 404, too large an upload
413, wrong content type 415, queue full 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from liteinfer.core.errors import LiteInferError
from liteinfer.server.limits import OFF_LOOP_JSON_BYTES
from liteinfer.server.openai import error_response, find_service, run_batched

MAX_IMAGES = 64
MAX_IMAGE_BYTES = 20 << 20
MAX_PIXELS = 40_000_000  # a small PNG can claim a huge canvas: refuse before decoding it

router = APIRouter()


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    image: str | list[str]
    model: str | None = None
    top_k: int = 5


class _TooLarge(LiteInferError):
    pass


class _Unsupported(LiteInferError):
    pass


def _b64_image(s: str, i: int) -> bytes:
    if s.startswith("data:"):  # data URL: data:image/png;base64,....
        s = s.partition(",")[2]
    if len(s) // 4 * 3 > MAX_IMAGE_BYTES:  # the multipart bound, checked before decoding
        raise _TooLarge(f"image[{i}] is over {MAX_IMAGE_BYTES >> 20} MB")
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
        body = await request.body()
        if len(body) < OFF_LOOP_JSON_BYTES:
            return _json_images(body)
        # up to limits.max_upload_bytes of JSON and base64: ~0.1 s of CPU per 32 MB, which on the
        # event loop would stall every other request and /health
        return await asyncio.to_thread(_json_images, body)
    raise _Unsupported(f"content type {ctype or '(none)'!r}: send multipart/form-data or application/json")


def _json_images(body: bytes) -> tuple[list[bytes], int, str | None]:
    try:
        req = ClassifyRequest.model_validate_json(body)
    except ValueError as e:
        msg = str(e).splitlines()
        raise LiteInferError(f"bad JSON body: {msg[1].strip() if len(msg) > 1 else msg[0]}") from None
    raw = [req.image] if isinstance(req.image, str) else req.image
    if len(raw) > MAX_IMAGES:
        raise LiteInferError(f"more than {MAX_IMAGES} images in one request")
    return [_b64_image(s, i) for i, s in enumerate(raw)], req.top_k, req.model


def _pixels(data: bytes) -> int:
    """Canvas size from the image header only (PIL opens lazily); 0 when unreadable (decoding reports it)."""
    from PIL import Image  # loaded by the first image, not by a server that never classifies (memory)

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size[0] * im.size[1]
    except Exception:
        return 0


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
    svc, err = find_service(request, "classifier", model)
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
    top_k = min(top_k, svc.n_labels or 1000)  # more than there are classes: all of them
    for i, data in enumerate(images):
        pixels = _pixels(data)
        if pixels > MAX_PIXELS:
            return error_response(413, f"image[{i}] has {pixels} pixels; at most {MAX_PIXELS}", code="too_large")
    preds, err = await run_batched(svc.classify_async(images, top_k),
                                   request.app.state.config.server.request_timeout_s)
    if err:
        return err
    data = [{"index": i, "labels": [{"label": p.label, "class_id": p.index, "score": p.score} for p in row]}
            for i, row in enumerate(preds)]
    return {"object": "list", "model": svc.name, "data": data}


@router.get("/v1/oneshot/stats")
async def stats(request: Request):
    """Batcher and controller state per one-shot model (queue, limits, cost model, p95)."""
    return {k: s.stats() for k, s in request.app.state.services.items() if k != "llm"}
