"""Embeddings: the converted MiniLM graph against a numpy reference, and the Embedder engine."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_models import SENTENCES, minilm_fp32

from liteinfer.core.errors import LiteInferError


@pytest.fixture(scope="module")
def embedder():
    from liteinfer.engines.onnx import load_model

    return load_model(minilm_fp32())


def test_matches_numpy_reference(embedder):
    from liteinfer.convert.bert import load_bert, numpy_forward
    from liteinfer.core.catalog import pull

    cfg, weights = load_bert(pull("minilm-l6-v2"))
    texts = SENTENCES[:4]
    got = embedder.embed(texts)
    items = [embedder.prepare(t) for t in texts]
    for text, ids in zip(texts, items, strict=True):  # reference one sentence at a time: no padding involved
        _, ref = numpy_forward(cfg, weights, np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        cos = float(got[texts.index(text)] @ ref[0])
        assert cos >= 0.9999, (text, cos)


def test_normalized_and_semantic(embedder):
    e = embedder.embed(SENTENCES)
    assert e.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # eating food ~ eating bread, not carrying a baby
    assert sim[5, 6] > sim[5, 3] + 0.3  # monkey drums ~ gorilla drums


def test_batching_does_not_change_results(embedder):
    batched = embedder.embed(SENTENCES, max_batch=3)
    single = np.concatenate([embedder.embed([t]) for t in SENTENCES])
    assert np.min(np.sum(batched * single, axis=1)) > 0.99999


@pytest.mark.parametrize("bad", ["", "   ", "word " * 400, 42])
def test_bad_text_is_one_line_error(embedder, bad):
    with pytest.raises(LiteInferError) as exc:
        embedder.embed([bad])
    assert "\n" not in str(exc.value)


def test_empty_list(embedder):
    with pytest.raises(LiteInferError):
        embedder.embed([])


def test_bad_model_files(tmp_path):
    from liteinfer.engines.onnx import load_model

    src = minilm_fp32().read_bytes()
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(src[: len(src) // 3])
    with pytest.raises(LiteInferError, match="not a loadable ONNX model"):
        load_model(truncated)
    garbage = tmp_path / "g.onnx"
    garbage.write_text("hello")
    with pytest.raises(LiteInferError):
        load_model(garbage)
    with pytest.raises(LiteInferError, match="not found"):
        load_model(tmp_path / "missing.onnx")


def test_foreign_onnx_without_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from liteinfer.engines.onnx import load_model

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(LiteInferError, match="no liteinfer metadata"):
        load_model(path)


def test_convert_and_eval_cli(tmp_path, capsys):
    from liteinfer.cli import main

    out = tmp_path / "minilm.onnx"
    assert main(["convert", "minilm", str(out)]) == 0
    printed = capsys.readouterr().out
    cos = float(printed.rsplit("reference", 1)[1])
    assert cos >= 0.9999, printed
    assert main(["eval", "embed", "-m", str(out), "--ref", str(minilm_fp32()),
                 "--text", "/usr/share/games/fortunes/cookie", "--limit", "8", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 8 and r["mean_cosine"] > 0.99999 and r["retrieval_agreement"] == 1.0
    bad = tmp_path / "nothing"
    bad.mkdir()
    assert main(["convert", "minilm", str(tmp_path / "x.onnx"), "--source", str(bad)]) == 1
    assert not (tmp_path / "x.onnx").exists()
