"""LLM accuracy on the real engine: perplexity, KL divergence to a reference, top-1 agreement,
next-token top-1 accuracy (the model's most likely token is the text's next token), alone or
as a ratio to a reference's (e.g. the FP32 model's) on the same scored tokens.

Text is tokenized once and cut into windows of `ctx` tokens; each window is one fresh
sequence (LlamaEngine.logits), and only its second half is scored, so every scored token
sees at least ctx/2 tokens of context (llama-perplexity's convention). KL divergence is
KL(reference || model) per scored token, averaged; the reference's log-probabilities are
computed once and kept (float16) so one reference serves many candidates.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from liteinfer.core.catalog import resolve_llm
from liteinfer.core.config import EngineSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.engines.llama import LlamaEngine
from liteinfer.hardware.cores import usable_cores


def eval_settings(ctx: int):
    # On a machine busier than its cores, llama.cpp's threads wait on each other at every
    # barrier; one thread finishes sooner there (the numbers do not depend on the count).
    threads = 1 if os.getloadavg()[0] > usable_cores() else None
    # F32 KV cache: the evaluation should measure the weights, not the cache's rounding
    return EngineSettings(n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_seq_max=1, type_k="f32", type_v="f32",
                          flash_attn=False, n_threads=threads)


def open_engine(model: str | Path, ctx: int):
    return LlamaEngine(resolve_llm(str(model)), eval_settings(ctx))


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise LiteInferError(f"text file not found: {p}")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise LiteInferError(f"{p}: empty text")
    return text


def make_windows(tokens: list[int], ctx: int, max_tokens: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping windows of ctx tokens (a shorter last one if it scores anything)."""
    if max_tokens:
        tokens = tokens[:max_tokens]
    wins = [tokens[i : i + ctx] for i in range(0, len(tokens), ctx)]
    wins = [w for w in wins if len(w) > ctx // 2 + 1]
    if not wins:
        raise LiteInferError(f"text too short: {len(tokens)} tokens, need more than {ctx // 2 + 1} (ctx {ctx})")
    return wins


def log_softmax(x):
    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))).astype(np.float32)


def kld_top1(ref_logits, logits) -> tuple[float, float]:
    """Mean KL(ref || model) and top-1 agreement of two [tokens, vocab] logit arrays."""
    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    kld = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
    return kld, float((ref_logits.argmax(-1) == logits.argmax(-1)).mean())


def window_logprobs(engine, window: list[int], score_from: int):
    """log p(next token) rows for positions score_from-1 .. len-2 (predicting score_from .. len-1)."""
    logits = engine.logits(window, chunk=len(window))
    return log_softmax(logits[score_from - 1 : len(window) - 1])


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    tokens: int
    windows: int

    def as_dict(self) -> dict:
        return {"ppl": self.ppl, "nll": self.nll, "tokens": self.tokens, "windows": self.windows}


def _progress(it, desc: str, show: bool):
    if not show:
        return it
    # on use: tqdm is heavy (start-up, memory)
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit="win", leave=False)


def perplexity(model: str | Path, text: str, ctx: int = 256, max_tokens: int | None = None,
               progress: bool = False) -> PerplexityResult:
    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    eng = open_engine(model, ctx)
    try:
        wins = make_windows(eng.tokenize(text, add_special=False), ctx, max_tokens)
        nll, n = 0.0, 0
        for w in _progress(wins, "ppl", progress):
            s = ctx // 2
            lp = window_logprobs(eng, w, s)
            nll -= float(lp[np.arange(len(lp)), w[s:]].sum())
            n += len(lp)
    finally:
        eng.close()
    return PerplexityResult(ppl=math.exp(nll / n), nll=nll / n, tokens=n, windows=len(wins))


class Reference:
    """A reference model's log-probabilities on a text, computed once, compared many times."""

    def __init__(self, ref: str | Path, text: str, ctx: int = 256, max_tokens: int | None = None,
                 progress: bool = False):
        # on use: numpy is heavy (start-up, memory)
        import numpy as np

        self.ctx, self.path = ctx, str(ref)
        eng = open_engine(ref, ctx)
        try:
            self.n_vocab = eng.n_vocab
            self.windows = make_windows(eng.tokenize(text, add_special=False), ctx, max_tokens)
            self.logprobs, self.correct = [], 0
            for w in _progress(self.windows, "reference", progress):
                lp = window_logprobs(eng, w, ctx // 2)
                self.correct += int((lp.argmax(-1) == np.asarray(w[ctx // 2 :])).sum())  # before float16 ties
                self.logprobs.append(lp.astype(np.float16))
        finally:
            eng.close()
        self.targets = [np.asarray(w[ctx // 2 :]) for w in self.windows]
        nll = -sum(float(lp[np.arange(len(t)), t].astype(np.float64).sum())
                   for lp, t in zip(self.logprobs, self.targets, strict=True))
        self.tokens = sum(len(t) for t in self.targets)
        self.ppl = math.exp(nll / self.tokens)

    def compare(self, model: str | Path, progress: bool = False) -> dict:
        """KLD(ref || model) mean / p99 / max, top-1 agreement, both perplexities and their ratio."""
        # on use: numpy is heavy (start-up, memory)
        import numpy as np

        eng = open_engine(model, self.ctx)
        try:
            if eng.n_vocab != self.n_vocab:
                raise LiteInferError(f"{model}: vocabulary {eng.n_vocab} differs from the reference's {self.n_vocab}")
            klds, agree, correct, nll = [], 0, 0, 0.0
            for w, ref_lp, t in _progress(list(zip(self.windows, self.logprobs, self.targets, strict=True)),
                                          "compare", progress):
                lp = window_logprobs(eng, w, self.ctx // 2)
                ref = ref_lp.astype(np.float32)
                klds.append((np.exp(ref) * (ref - lp)).sum(-1))
                agree += int((ref.argmax(-1) == lp.argmax(-1)).sum())
                correct += int((lp.argmax(-1) == t).sum())
                nll -= float(lp[np.arange(len(t)), t].astype(np.float64).sum())
        finally:
            eng.close()
        kld = np.concatenate(klds)
        ppl = math.exp(nll / self.tokens)
        return {"kld": float(kld.mean()), "kld_p99": float(np.percentile(kld, 99)), "kld_max": float(kld.max()),
                "top1": agree / self.tokens, "accuracy": correct / self.tokens,
                "ref_accuracy": self.correct / self.tokens,
                "accuracy_ratio": correct / max(self.correct, 1),
                "ppl": ppl, "ppl_ref": self.ppl, "ppl_ratio": ppl / self.ppl,
                "tokens": self.tokens, "windows": len(self.windows)}


def accuracy(model: str | Path, text: str, ctx: int = 256, max_tokens: int | None = None,
             progress: bool = False) -> dict:
    """Next-token top-1 accuracy: how often the model's most likely token is the text's next token."""
    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    eng = open_engine(model, ctx)
    try:
        wins = make_windows(eng.tokenize(text, add_special=False), ctx, max_tokens)
        correct, n = 0, 0
        for w in _progress(wins, "accuracy", progress):
            lp = window_logprobs(eng, w, ctx // 2)
            correct += int((lp.argmax(-1) == np.asarray(w[ctx // 2 :])).sum())
            n += len(lp)
    finally:
        eng.close()
    return {"accuracy": correct / n, "tokens": n, "windows": len(wins)}


def kl_divergence(model: str | Path, ref: str | Path, text: str, ctx: int = 256, max_tokens: int | None = None,
                  progress: bool = False) -> dict:
    return Reference(ref, text, ctx, max_tokens, progress).compare(model, progress)
