"""The plain-Python GGUF header reader against the `gguf` package, and on damaged files."""

from __future__ import annotations

import pytest
from gguf import GGUFReader

from liteinfer.core.gguf_header import read_header


def _table(path):
    h = read_header(path)
    return h, [(t.name, t.ggml_type, t.shape, h.data_offset + t.offset, t.n_bytes) for t in h.tensors]


def test_tensor_table_matches_the_gguf_package(default_model_path):
    h, mine = _table(default_model_path)
    ref = [(t.name, int(t.tensor_type), tuple(int(x) for x in t.shape), int(t.data_offset), int(t.n_bytes))
           for t in GGUFReader(str(default_model_path)).tensors]
    assert mine == ref
    assert h.data_end == default_model_path.stat().st_size
    assert h.metadata["general.architecture"] == "llama"
    assert h.metadata["tokenizer.ggml.tokens"] == 49152  # arrays: their length, no 49k Python strings
    assert "{%" in h.metadata["tokenizer.chat_template"]


@pytest.mark.parametrize("cut", [3, 23, 200, 500_000])
def test_a_header_cut_short_raises_value_error(tmp_path, default_model_path, cut):
    assert cut < read_header(default_model_path).data_offset
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(default_model_path.read_bytes()[:cut])
    with pytest.raises(ValueError):
        read_header(bad)


def test_cut_data_shows_in_data_end(tmp_path, default_model_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(default_model_path.read_bytes()[:5_000_000])
    assert read_header(bad).data_end == default_model_path.stat().st_size > 5_000_000


def test_garbled_header_and_wrong_magic(tmp_path, default_model_path):
    raw = bytearray(default_model_path.read_bytes()[:4096])
    raw[4:8] = (99).to_bytes(4, "little")  # version 99
    bad = tmp_path / "v99.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="version 99"):
        read_header(bad)
    bad.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_header(bad)


def test_block_sizes_match_the_gguf_package():
    """Every type the gguf package knows has the same block and byte size here (a type missing
    here would turn a model llama.cpp loads into an 'unknown type' error). Q8_1 differs on
    purpose: ggml's block is 36 bytes, the gguf package says 40; no GGUF file stores it."""
    import gguf

    from liteinfer.core.gguf_header import TYPE_SIZES

    for t, size in gguf.GGML_QUANT_SIZES.items():
        if t.name != "Q8_1":
            assert TYPE_SIZES.get(int(t)) == size, t.name


def test_type_names_match_the_gguf_package():
    """The names TensorInfo.type_name gives are the gguf package's, lower case, for every type
    it knows; and every type with a size here has a name."""
    import gguf

    from liteinfer.core.gguf_header import TYPE_NAMES, TYPE_SIZES

    for t in gguf.GGMLQuantizationType:
        assert TYPE_NAMES.get(int(t)) == t.name.lower(), t.name
    assert set(TYPE_NAMES) == set(TYPE_SIZES)


def test_tensor_info_derived_fields(default_model_path):
    import math

    for t in read_header(default_model_path).tensors:
        assert t.n_elements == math.prod(t.shape)
        assert t.quantizable == (len(t.shape) >= 2 and t.name.endswith("weight") and "_norm" not in t.name)
    types = {t.name: t.type_name for t in read_header(default_model_path).tensors}
    ref = {t.name: t.tensor_type.name.lower() for t in GGUFReader(str(default_model_path)).tensors}
    assert types == ref
