"""What a liteinfer ONNX model is, stored inside the .onnx file (metadata_props).

One file opens anywhere: the kind (embedding | classifier), the preprocessing, class labels
and, for text models, the whole tokenizer.json travel in the model's metadata, so converters,
quantizers, the engine and the evaluator all read the same description. Quantizers copy it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from liteinfer.core.errors import LiteInferError

META_KEY = "liteinfer"
TOKENIZER_KEY = "liteinfer.tokenizer"


class TextPrep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_length: int = Field(256, ge=2, description="longest input in tokens (special tokens included)")
    inputs: list[str] = Field(default_factory=lambda: ["input_ids", "attention_mask"])
    output: str = Field("sentence_embedding", description="pooled, L2-normalized [batch, dim] output")


class ImagePrep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(224, ge=1, description="square network input side in pixels")
    resize: int = Field(256, ge=1, description="shorter side before the center crop")
    mode: Literal["RGB", "L"] = "RGB"
    # network input = (pixel/255 - mean) / std, per channel
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    input: str = "input"
    output: str = "logits"
    invert: bool = Field(False, description="255 - pixel first (dark-background datasets like MNIST)")


class ModelMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["embedding", "classifier"]
    name: str = ""
    source: str = Field("", description="where the weights came from (package, path)")
    text: TextPrep | None = None
    image: ImagePrep | None = None
    labels: list[str] = Field(default_factory=list)
    quantization: dict = Field(default_factory=dict, description="the plan a quantizer applied")


def write_meta(model, meta: ModelMeta, tokenizer_json: str | None = None) -> None:
    """Store `meta` (and the tokenizer) in an onnx.ModelProto's metadata_props, replacing old ones."""
    props = {p.key: p.value for p in model.metadata_props}
    props[META_KEY] = meta.model_dump_json()
    if tokenizer_json is not None:
        props[TOKENIZER_KEY] = tokenizer_json
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_meta(model) -> ModelMeta:
    """The ModelMeta of an onnx.ModelProto; one-line error when it is not one of ours."""
    return meta_from_props({p.key: p.value for p in model.metadata_props})


def meta_from_props(props: dict[str, str]) -> ModelMeta:
    """From a metadata map (ORT's session.get_modelmeta().custom_metadata_map, or ModelProto's)."""
    if META_KEY not in props:
        raise LiteInferError(
            "ONNX model has no liteinfer metadata (convert it with `liteinfer convert` first)"
        )
    try:
        return ModelMeta.model_validate(json.loads(props[META_KEY]))
    except (json.JSONDecodeError, ValidationError) as e:
        raise LiteInferError(f"ONNX model has damaged liteinfer metadata: {str(e).splitlines()[0]}") from None


def read_tokenizer_json(model) -> str:
    for p in model.metadata_props:
        if p.key == TOKENIZER_KEY:
            return p.value
    raise LiteInferError("text model carries no tokenizer in its metadata")
