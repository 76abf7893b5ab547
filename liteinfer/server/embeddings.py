"""POST /v1/embeddings (OpenAI format), one handler for both backends: the ONNX embedding
model when one is configured, else the chat model's pooled embeddings from the GGUF."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

from fastapi import APIRouter, Request

from liteinfer.server.fields import Checked
from liteinfer.server.limits import RequestRejected, check_prompt_chars, json_answer, off_loop_json_route
from liteinfer.server.openai import error_response, find_service, run_batched

router = APIRouter(route_class=off_loop_json_route())
INLINE_ANSWER_FLOATS = 16384  # answers up to this many floats (~60 us of encoding) render on the event loop


class EmbeddingRequest(Checked):
    IGNORED = frozenset({"user"})  # a label: other fields are refused by name (server/fields.py)
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
    limits = request.app.state.config.limits  # limits.max_embedding_inputs: OpenAI's 2048 by default
    if len(texts) > limits.max_embedding_inputs:
        return error_response(400, f"{len(texts)} inputs; at most {limits.max_embedding_inputs} per request "
                              "(limits.max_embedding_inputs)", code="invalid_input")
    try:
        check_prompt_chars(sum(len(t) for t in texts), limits)
    except RequestRejected as e:
        return error_response(e.status, str(e), code=e.code)
    result, err = await run_batched(svc.embed_async(texts, body.dimensions),
                                    request.app.state.config.server.request_timeout_s)
    if err:
        return err
    vectors, n_tokens = result

    def answer():  # up to 2048 x 1024 floats: seconds of CPU, in a worker thread when large
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":  # OpenAI's: little-endian float32 bytes
                emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode()
            else:
                emb = v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return json_answer({"object": "list", "data": data, "model": svc.name,
                            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    if sum(v.size for v in vectors) <= INLINE_ANSWER_FLOATS:
        return answer()  # a few vectors render in microseconds: a thread hop would cost more
    return await asyncio.to_thread(answer)
