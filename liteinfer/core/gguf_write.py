"""Writing a GGUF that keeps another file's metadata, through the `gguf` package.

The AWQ fold (quant/gguf/awq.py) and the Q4_1 split (engines/q4_1_split.py) rewrite a model's
tensors and keep everything else: architecture, hyperparameters, tokenizer, chat template.
"""

from __future__ import annotations

from pathlib import Path


def writer_like(reader, path: str | Path):
    """A gguf.GGUFWriter for `path` that carries all of `reader`'s (a gguf.GGUFReader) metadata;
    the caller adds the tensors."""
    import gguf  # it loads numpy: importing this module stays free for the serving path

    w = gguf.GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # the writer sets these itself
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    return w
