"""One-shot models as users meet them: a real one-shot server on 127.0.0.1 (MiniLM + a small
real ONNX classifier), the official `openai` client, batching under concurrency, 4xx/429, the CLI."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ServerProcess
from onnx_models import SENTENCES, minilm_fp32

LONG = "word " * 400  # > 256 tokens


def tiny_classifier(path: Path) -> Path:
    """A real 2-class ONNX classifier over 8x8 grey images: logits = (-mean, +mean) -> dark / bright."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from liteinfer.engines.onnx_meta import ImagePrep, ModelMeta, write_meta

    w = np.stack([-np.ones(64), np.ones(64)], axis=1).astype(np.float32) / 64 * 20
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    write_meta(model, ModelMeta(kind="classifier", name="tiny-brightness", labels=["dark", "bright"],
                                image=ImagePrep(size=8, resize=8, mode="L", mean=[0.5], std=[0.5])))
    onnx.save(model, str(path))
    return path


def png(value: int, size: int = 20) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


class OneShotServer(ServerProcess):
    """`liteinfer serve --no-llm ...`: one-shot models only; with llm=True, next to the chat model."""

    def __init__(self, *args: str, llm: bool = False):
        super().__init__(*args) if llm else super().__init__("--no-llm", *args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def server(tiny):
    srv = OneShotServer("--embedding-model", str(minilm_fp32()), "--classifier-model", str(tiny))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference():
    """The same model computed directly: numpy forward over the safetensors, one sentence at a time."""
    from liteinfer.convert.bert import load_bert, numpy_forward
    from liteinfer.core.catalog import pull
    from liteinfer.engines.onnx import load_model

    cfg, weights = load_bert(pull("minilm-l6-v2"))
    tok = load_model(minilm_fp32())

    def embed(text: str) -> np.ndarray:
        ids = tok.prepare(text)
        return numpy_forward(cfg, weights, np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))[1][0]

    return embed


# ---------------------------------------------------------------- embeddings over HTTP


def test_openai_client_embeddings_match_reference(server, reference):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = SENTENCES[:5]
    r = client.embeddings.create(model=_model_id(server), input=texts)
    assert [d.index for d in r.data] == list(range(5))
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens
    for text, d in zip(texts, r.data):
        v = np.array(d.embedding)
        assert v.shape == (384,)
        assert float(v @ reference(text)) >= 0.999


def _model_id(server) -> str:
    return httpx.get(server.url + "/health").json()["models"]["embedding"]


def test_large_embedding_answers_are_built_off_the_loop(server):
    """2048 embeddings are ~786 k floats: turning them into JSON took seconds of the event loop's
    CPU (every other request and /health waited); now a worker thread does it, on the OpenAI and
    the Ollama route alike."""
    model, texts = _model_id(server), [f"word {i}" for i in range(2048)]
    for path, body, key in (("/v1/embeddings", {"model": model, "input": texts}, "data"),
                            ("/api/embed", {"model": model, "input": texts}, "embeddings")):
        cpu0 = server.loop_cpu_s()
        r = httpx.post(server.url + path, json=body, timeout=300)
        loop_cpu = server.loop_cpu_s() - cpu0
        assert r.status_code == 200 and len(r.json()[key]) == 2048, r.text[:300]
        # what building this answer's JSON costs, measured here on this machine and load (~0.9 s
        # quiet); on the loop it comes on top of sending the 16 MB answer (0.1-0.35 s)
        answer = r.json()
        cpu0 = time.process_time()
        json.dumps(answer)
        build_cost = time.process_time() - cpu0
        assert loop_cpu < build_cost / 2, f"{path}: the event loop spent {loop_cpu:.2f} s of CPU on one request " \
                                          f"(building its JSON here: {build_cost:.2f} s)"


def test_float_and_base64_encodings_agree(server):
    body = {"input": "A monkey is playing drums.", "model": _model_id(server)}
    f = httpx.post(server.url + "/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    b = httpx.post(server.url + "/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    vb = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vb, np.array(f["data"][0]["embedding"]), atol=1e-6)


def test_concurrent_requests_are_batched_without_changing_results(server):
    from liteinfer.engines.onnx import load_model

    direct = load_model(minilm_fp32())
    texts = [SENTENCES[i % len(SENTENCES)] + f" ({i})" * (i % 5) for i in range(24)]  # mixed lengths
    before = httpx.get(server.url + "/v1/oneshot/stats").json()["embedding"]

    def one(t):
        r = httpx.post(server.url + "/v1/embeddings", json={"input": t}, timeout=60)
        assert r.status_code == 200, r.text
        return np.array(r.json()["data"][0]["embedding"], dtype=np.float32)

    with cf.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(one, texts))
    after = httpx.get(server.url + "/v1/oneshot/stats").json()["embedding"]
    batches, items = after["batches"] - before["batches"], after["items"] - before["items"]
    assert items == len(texts) and batches < items  # really batched
    for t, v in zip(texts, got):
        assert float(v @ direct.embed([t])[0]) >= 0.9999


@pytest.mark.parametrize("body, status, needle", [
    ({"input": ""}, 400, "empty"),
    ({"input": []}, 400, "empty"),
    ({"input": ["ok", "   "]}, 400, "input[1]"),
    ({"input": ["ok"] * 37 + [""]}, 400, "input[37]"),  # a long list is tokenized off the event loop
    ({"input": LONG}, 400, "at most 256"),
    ({"input": [1, 2, 3]}, 400, "list of strings"),
    ({"input": "hi", "model": "nope"}, 404, "not found"),
    ({"input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "hi", "dimensions": 12}, 400, "384"),
    ({}, 400, "input"),
])
def test_bad_embedding_requests_are_4xx_json(server, body, status, needle):
    r = httpx.post(server.url + "/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] and "\n" not in err["message"]


def test_malformed_json_is_400(server):
    r = httpx.post(server.url + "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


# ---------------------------------------------------------------- classification over HTTP


def test_classify_multipart_and_base64(server):
    files = [("file", ("white.png", png(250), "image/png")), ("file", ("black.png", png(5), "image/png"))]
    r = httpx.post(server.url + "/v1/classify", files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["labels"][0]["label"] for d in data] == ["bright", "dark"]
    assert len(data[0]["labels"]) == 2 and data[0]["labels"][0]["score"] > 0.99
    b64 = base64.b64encode(png(5)).decode()
    r = httpx.post(server.url + "/v1/classify", json={"image": ["data:image/png;base64," + b64], "top_k": 1})
    assert r.status_code == 200 and r.json()["data"][0]["labels"][0]["label"] == "dark"


@pytest.mark.parametrize("kwargs, status", [
    ({"files": [("file", ("x.png", b"not an image at all", "image/png"))]}, 400),
    ({"files": [("file", ("x.png", b"", "image/png"))]}, 400),
    ({"files": [("file", ("x.png", png(9)[:40], "image/png"))]}, 400),  # truncated
    ({"data": {"top_k": "3"}, "files": [("other", ("x.txt", b"x", "text/plain"))]}, 400),  # no image field
    ({"json": {"image": "%%%not-base64"}}, 400),
    ({"json": {"image": []}}, 400),
    ({"json": {"image": base64.b64encode(png(9)).decode(), "top_k": 0}}, 400),
    ({"json": {"image": base64.b64encode(png(9)).decode(), "model": "nope"}}, 404),
    ({"json": {"top_k": 1}}, 400),
    ({"content": b"raw", "headers": {"content-type": "image/png"}}, 415),
    ({"files": [("file", ("big.png", png(0, size=7000), "image/png"))]}, 413),  # 49 Mpx in ~50 KB
])
def test_bad_classify_requests_are_4xx_json(server, kwargs, status):
    r = httpx.post(server.url + "/v1/classify", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_full_queue_answers_429_with_retry_after(tiny):
    srv = OneShotServer("--embedding-model", str(minilm_fp32()), "--config", str(_config(tiny, max_queue=4)))
    try:
        body = {"input": ["a fairly long sentence " * 40] * 3}

        def one(_):
            r = httpx.post(srv.url + "/v1/embeddings", json=body, timeout=120)
            return r.status_code, r.headers.get("retry-after"), r.json()

        with cf.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        codes = [c for c, _, _ in results]
        assert 200 in codes and 429 in codes, codes
        for code, retry, body_ in results:
            if code == 429:
                assert int(retry) >= 1 and body_["error"]["code"] == "queue_full"
        # more inputs than the queue can ever hold is a client error, not "retry later"
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": ["x"] * 5})
        assert r.status_code == 400 and "queue" in r.json()["error"]["message"]
    finally:
        srv.stop()


def _config(tiny: Path, **oneshot) -> Path:
    from liteinfer.core.config import DeviceConfig, save_config

    cfg = DeviceConfig()
    cfg.oneshot = cfg.oneshot.model_copy(update=oneshot)
    path = tiny.parent / f"cfg-{'-'.join(f'{k}{v}' for k, v in oneshot.items())}.json"
    save_config(cfg, path)
    return path


def test_routes_join_the_llm_server(tiny, default_model_path):
    """`liteinfer serve --embedding-model --classifier-model`: one server, chat and one-shot models."""
    srv = OneShotServer("-m", str(default_model_path), "--ctx", "1024", "--embedding-model", str(minilm_fp32()),
                        "--classifier-model", str(tiny), llm=True)
    try:
        ids = [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]]
        assert len(ids) == 3 and "tiny" in ids
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": ["hello", "world"]})
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        r = httpx.post(srv.url + "/v1/classify", files={"file": ("w.png", png(250), "image/png")})
        assert r.status_code == 200 and r.json()["data"][0]["labels"][0]["label"] == "bright"
        assert httpx.post(srv.url + "/v1/embeddings", json={"input": ""}).status_code == 400
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'liteinfer_oneshot_batch_size_count{model="tiny"} 1.0' in metrics
    finally:
        srv.stop()


# ---------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LITEINFER_DEBUG": ""})


def test_cli_embed_json_matches_engine():
    from liteinfer.engines.onnx import load_model

    r = _cli("embed", "-m", str(minilm_fp32()), SENTENCES[0], SENTENCES[3], "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    got = np.array([d["embedding"] for d in out["data"]], dtype=np.float32)
    want = load_model(minilm_fp32()).embed([SENTENCES[0], SENTENCES[3]])
    assert out["dim"] == 384 and np.min(np.sum(got * want, axis=1)) >= 0.9999


def test_cli_classify_and_errors(tiny, tmp_path):
    (tmp_path / "w.png").write_bytes(png(240))
    (tmp_path / "bad.png").write_bytes(b"nope")
    r = _cli("classify", "-m", str(tiny), str(tmp_path / "w.png"), "--top-k", "1")
    assert r.returncode == 0 and r.stdout.strip() == f"{tmp_path / 'w.png'}: bright 1.000", r.stdout + r.stderr
    for args, needle in [
        (["classify", "-m", str(tiny), str(tmp_path / "bad.png")], "not a readable image"),
        (["classify", "-m", str(tiny), str(tmp_path / "missing.png")], "image not found"),
        (["classify", "-m", str(minilm_fp32()), str(tmp_path / "w.png")], "not an image classifier"),
        (["embed", "-m", str(minilm_fp32()), LONG], "at most 256"),
        (["embed", "-m", str(tmp_path / "none.onnx"), "hi"], "not found"),
    ]:
        r = _cli(*args)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1


# ---------------------------------------------------------------- a real image model


@pytest.mark.torch
def test_known_images_get_their_labels():
    pytest.importorskip("torch")
    skdata = pytest.importorskip("skimage.data")
    from onnx_models import efficientnet_fp32

    from liteinfer.core.config import OneShotSettings
    from liteinfer.services import OneShotService

    svc = OneShotService.open(str(efficientnet_fp32()), OneShotSettings(max_delay_ms=20))
    try:
        images = [skdata.chelsea(), skdata.coffee(), skdata.rocket()]
        batched = svc.classify(images, top_k=5)
        assert [row[0].index for row in batched] == [285, 967, 657]
        for im, row in zip(images, batched):  # batching does not change the scores
            alone = svc.classify([im], top_k=5)[0]
            assert [p.index for p in alone] == [p.index for p in row]
            np.testing.assert_allclose([p.score for p in alone], [p.score for p in row], atol=1e-4)
    finally:
        svc.close()
