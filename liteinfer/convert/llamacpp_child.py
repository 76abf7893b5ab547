"""Child process of convert/llamacpp.py: run llama.cpp's convert_hf_to_gguf.py with its own gguf-py.

argv: LLAMA_CPP_SRC PRE MODEL_DIR [converter options...]. Before the converter runs:
  * its vendored gguf-py is put first on sys.path (PyPI's `gguf` lags it);
  * the BPE pre-tokenizer lookup falls back to ours (PRE if given, else read from
    tokenizer.json's structure) when llama.cpp's hash table does not know the vocabulary;
  * Gemma 2 folders without a SentencePiece tokenizer.model take the byte-level BPE path, as
    llama.cpp already does for Gemma 3;
  * GPT-2 configs without `n_ctx` (transformers 5 no longer writes it) read `n_positions`.
Errors end the process with one `error: ...` line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path


def _patch(pre: str) -> None:
    # on use: the converter's package exists only after sys.path points at llama.cpp (optional package)
    from conversion.base import TextModel

    # on use: same as above (optional package)
    from conversion.gemma import Gemma2Model

    # on use: same as above (optional package)
    from conversion.gpt2 import GPT2Model

    # on use: our detection is only needed here (start-up)
    from liteinfer.convert.hf import detect_pre_tokenizer

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        if pre:
            return pre
        try:
            return original(self, tokenizer)
        except NotImplementedError:  # a vocabulary llama.cpp has not seen: name the regex instead
            tok = json.loads((Path(self.dir_model) / "tokenizer.json").read_text(encoding="utf-8"))
            return detect_pre_tokenizer(tok)

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    gemma2_vocab = Gemma2Model.set_vocab

    def gemma2_set_vocab(self) -> None:
        if (Path(self.dir_model) / "tokenizer.model").is_file():
            return gemma2_vocab(self)
        return self._set_vocab_gpt2()

    Gemma2Model.set_vocab = gemma2_set_vocab
    gpt2_params = GPT2Model.set_gguf_parameters

    def gpt2_set_gguf_parameters(self) -> None:
        # transformers 5 saves GPT-2 configs without the n_ctx alias of n_positions
        self.hparams.setdefault("n_ctx", self.hparams.get("n_positions", 1024))
        gpt2_params(self)

    GPT2Model.set_gguf_parameters = gpt2_set_gguf_parameters


def main(argv: list[str]) -> int:
    src, pre, rest = Path(argv[0]), argv[1], argv[2:]
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    # the converter calls basicConfig(INFO); configuring first keeps it to warnings
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s:%(name)s:%(message)s")
    try:
        _patch(pre)
        sys.argv = ["convert_hf_to_gguf.py", *rest]
        runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except Exception as e:  # noqa: BLE001 - any converter failure becomes one line for the parent
        print(f"error: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
