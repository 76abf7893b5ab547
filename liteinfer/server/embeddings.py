"""POST /v1/embeddings (OpenAI format), one handler for both backends: the ONNX embedding
model when one is configured, else the chat model's pooled embeddings from the GGUF."""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from liteinfer.server.openai import error_response, find_service, run_batched

MAX_INPUTS = 2048  # OpenAI's limit for one embeddings request

router = APIRouter()


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # `user` and friends are accepted and ignored
    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    services = request.app.state.services
    kind = "llm" if "embedding" not in services and "llm" in services else "embedding"
    svc, err = find_service(request, kind, body.model)
    if err:
        return err
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return error_response(400, "input must be a string or a list of strings (token arrays are not supported)",
                              code="invalid_input")
    if not texts:
        return error_response(400, "input is empty", code="invalid_input")
    if len(texts) > MAX_INPUTS:
        return error_response(400, f"{len(texts)} inputs; at most {MAX_INPUTS} per request", code="invalid_input")
    result, err = await run_batched(svc.embed_async(texts, body.dimensions),
                                    request.app.state.config.server.request_timeout_s)
    if err:
        return err
    vectors, n_tokens = result
    data = []
    for i, v in enumerate(vectors):
        if body.encoding_format == "base64":  # OpenAI's: little-endian float32 bytes
            emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode()
        else:
            emb = v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": svc.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
