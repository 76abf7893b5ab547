"""PyTorch -> ONNX: EfficientNet-Lite0 labels known images; a generic module exports and runs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from liteinfer.core.errors import LiteInferError

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def classifier():
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from onnx_models import efficientnet_fp32

    from liteinfer.engines.onnx import load_model

    return load_model(efficientnet_fp32())


@pytest.mark.parametrize("name,index", [("chelsea", 285), ("coffee", 967), ("rocket", 657)])
def test_known_images_get_their_labels(classifier, name, index):
    data = pytest.importorskip("skimage.data")
    top = classifier.classify([getattr(data, name)()], top_k=3)[0]
    assert top[0].index == index, top
    assert top[0].label == classifier.labels[index] and 0 < top[0].score <= 1


def test_onnx_matches_torch(classifier):
    torch = pytest.importorskip("torch")
    from efficientnet_lite_pytorch import EfficientNet

    from liteinfer.convert.torch_export import efficientnet_lite0_weights

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(efficientnet_lite0_weights())).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(classifier.logits(x), ref, rtol=1e-3, atol=1e-3)


def test_image_inputs_and_bad_images(classifier, tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((50, 80, 3)) * 255).astype(np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    from_path = classifier.classify([path])[0][0]
    from_bytes = classifier.classify([path.read_bytes()])[0][0]
    assert from_path.index == from_bytes.index
    assert classifier.classify([Image.fromarray(rgb[:, :, 0])], top_k=1)[0][0].score > 0  # gray -> RGB
    for bad in [b"", b"not an image at all", path.read_bytes()[:40]]:
        with pytest.raises(LiteInferError):
            classifier.classify([bad])
    with pytest.raises(LiteInferError):
        classifier.classify([])


def test_generic_module_export(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from liteinfer.cli import main
    from liteinfer.engines.onnx import load_model

    module_dir = tmp_path / "pkg"
    module_dir.mkdir()
    (module_dir / "tiny_net.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)\n"
        "        self.fc = torch.nn.Linear(8, 3)\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))\n"
    )
    sys.path.insert(0, str(module_dir))
    try:
        import tiny_net

        net = tiny_net.Net()
        torch.save(net.state_dict(), tmp_path / "w.pth")
        (tmp_path / "labels.txt").write_text("a\nb\nc\n")
        out = tmp_path / "tiny.onnx"
        rc = main(["convert", "torch", "tiny_net:Net", str(out), "--weights", str(tmp_path / "w.pth"),
                   "--labels", str(tmp_path / "labels.txt"), "--size", "16", "--gray", "--mean", "0.5", "--std", "0.25"])
        assert rc == 0, capsys.readouterr().err
        model = load_model(out)
        img = (np.random.default_rng(1).random((20, 20)) * 255).astype(np.uint8)
        x = model.prepare(img)[None]
        with torch.no_grad():
            ref = net.eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model.logits(x), ref, rtol=1e-4, atol=1e-5)
        assert model.classify([img], top_k=3)[0][0].label in {"a", "b", "c"}
        # wrong label count: one-line error, no file
        (tmp_path / "two.txt").write_text("a\nb\n")
        bad = tmp_path / "bad.onnx"
        assert main(["convert", "torch", "tiny_net:Net", str(bad), "--labels", str(tmp_path / "two.txt"),
                     "--size", "16", "--gray"]) == 1
        assert not bad.exists()
    finally:
        sys.path.remove(str(module_dir))


def test_missing_torch_is_a_clear_error(monkeypatch):
    from liteinfer.convert import torch_export

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(LiteInferError, match="torch extra"):
        torch_export.require_torch()
