"""The peer for benchmarks/oneshot.py: embeddings served the way a plain ONNX Runtime +
FastAPI deployment does it, one `session.run` per request in FastAPI's worker threads.

    python benchmarks/naive_embed_server.py MODEL.onnx --port 8001 [--threads N]

No batching, no queue: concurrent requests run concurrently, each with the session's own
intra-op threads. Same model file, same tokenizer, same pooling and the same OpenAI response
format (base64 floats) as liteinfer's /v1/embeddings, so only the serving strategy differs.
`--stack same` (the default) also serves HTTP the way liteinfer does (uvicorn's h11 protocol on
an asyncio loop); `--stack auto` is uvicorn's own choice (httptools and uvloop when installed:
ray[serve] pulls uvloop in, a plain FastAPI install has neither).
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_app(model: Path, threads: int | None):
    import onnxruntime as ort
    from fastapi import Body, FastAPI
    from tokenizers import Tokenizer

    from liteinfer.engines.onnx_meta import TOKENIZER_KEY
    from liteinfer.hardware.cores import usable_cores

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cores()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_str(sess.get_modelmeta().custom_metadata_map[TOKENIZER_KEY])
    tok.no_padding()
    out_name = sess.get_outputs()[-1].name
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ready"}

    @app.post("/v1/embeddings")
    def embeddings(body: dict = Body(...)):  # a plain `def`: FastAPI runs it in its thread pool
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(texts):
            ids = np.array([tok.encode(text).ids], dtype=np.int64)
            vec = sess.run([out_name], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
            vec = (vec / max(np.linalg.norm(vec), 1e-12)).astype(np.float32)
            data.append({"object": "embedding", "index": i, "embedding": base64.b64encode(vec.tobytes()).decode()})
        return {"object": "list", "data": data, "model": model.name}

    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stack", choices=("same", "auto"), default="same",
                    help="same: h11 on asyncio, as liteinfer serves; auto: uvicorn's choice (httptools, uvloop)")
    args = ap.parse_args()
    import uvicorn

    stack = {"http": "h11", "loop": "asyncio"} if args.stack == "same" else {}
    uvicorn.run(build_app(args.model, args.threads), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, **stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
