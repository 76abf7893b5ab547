"""Debian `fortunes` text: split into train / calibration / held-out, and a trained BPE.

Fortunes are separated by a line holding only "%". The split is by fortune (not by
character) with a fixed seed, so the held-out text never overlaps the training text.
Calibration text for quantization is drawn from the training split: held-out text is
only ever used for evaluation.
"""

from __future__ import annotations

import random
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
EOT = "<|endoftext|>"
SPECIAL = [EOT, "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_fortunes(root: Path = FORTUNES) -> list[str]:
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.suffix and not p.is_symlink())
    if not files:
        raise SystemExit(f"no fortune files under {root} (apt-get install fortunes)")
    out = []
    for f in files:
        text = f.read_text(encoding="latin-1").replace("\x08", "")  # drop overstrike backspaces
        out += [t.strip("\n") for t in text.split("\n%\n") if t.strip()]
    return out


def split(docs: list[str], seed: int = 0, heldout: float = 0.05) -> tuple[list[str], list[str]]:
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    n = max(1, int(len(docs) * heldout))
    return docs[n:], docs[:n]


def train_tokenizer(docs: list[str], vocab_size: int):
    """Byte-level BPE with GPT-2's pre-tokenizer regex (what llama.cpp calls pre="gpt2")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok
