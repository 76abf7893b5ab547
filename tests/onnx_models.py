"""Shared fixtures-as-functions for the ONNX tests: FP32 models cached by source hash."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def minilm_fp32() -> Path:
    from liteinfer.convert.bert import cached_minilm

    return cached_minilm()


@functools.cache
def efficientnet_fp32() -> Path:
    from liteinfer.convert.torch_export import cached_efficientnet_lite0

    return cached_efficientnet_lite0()


SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog, then sleeps for the rest of the afternoon.",
]
