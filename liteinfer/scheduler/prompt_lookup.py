"""Speculative decoding from the text itself (prompt lookup): drafts, their verification, and when to try.

A sequence's last n tokens (n = max_ngram down to min_ngram) are looked up among its earlier
tokens (prompt and output); the tokens that followed the latest earlier occurrence are the
draft. The engine runs the sequence's pending token plus the draft in the same batched decode,
with logits at every position, and keeps the longest prefix of the draft the model itself
samples (engines/llama.verify_draft). The draft is deterministic (a point mass q), so the
standard speculative sampling rule (accept draft t with probability min(1, p(t)/q(t)) = p(t),
on rejection sample from p with t removed, renormalised) is exactly: sample from p at each
position in turn, keep going while the sample equals the draft. Every emitted token is one
draw from the request's own sampler chain, in order, so greedy output is the same tokens and
a seed draws the same random numbers as without speculation.

Pure logic, no engine: the scheduler owns one `Speculator` per request.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramIndex:
    """Where each n-gram of a token list last occurred, kept up to date as tokens are appended.
    An n-gram is indexed by the position right after it, and only once a token follows it:
    the list's own tail never matches itself."""

    def __init__(self, min_ngram: int = 2, max_ngram: int = 3):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.sizes = range(max_ngram, min_ngram - 1, -1)
        self._index: dict[tuple[int, ...], int] = {}
        self._n_indexed = 0  # tokens[:_n_indexed] are in the index

    def update(self, tokens: Sequence[int]) -> None:
        # the n-gram ending at i-1 is followed by tokens[i]: index it under position i
        for i in range(max(self._n_indexed, 1), len(tokens)):
            for n in self.sizes:
                if i >= n:
                    self._index[tuple(tokens[i - n : i])] = i
        self._n_indexed = len(tokens)

    def draft(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching
        tail n-gram; [] when there is none."""
        if k <= 0:
            return []
        self.update(tokens)
        for n in self.sizes:
            if len(tokens) <= n:
                continue
            at = self._index.get(tuple(tokens[len(tokens) - n :]))
            if at is not None:
                return list(tokens[at : at + k])
        return []


def break_even_rate(coef: Sequence[float] | None, n_decode: int) -> float:
    """The draft acceptance rate at which speculation neither gains nor loses throughput, from
    the controller's step cost model (base + per_seq * n_decode + per_token * extra_tokens): a
    draft token costs about per_token and yields `rate` tokens; a plain step yields n_decode
    tokens for its whole time. Near 0 for one sequence (a step costs its weights' read, not its
    tokens), near 1 when a big batch is compute-bound. 0.0 while the model is unknown."""
    if not coef:
        return 0.0
    base, per_seq, per_tok = coef
    step = base + per_seq * n_decode
    return min(1.0, per_tok * n_decode / step) if step > 0 else 0.0


class Speculator:
    """One request's prompt-lookup state: its n-gram index, acceptance history and draft length.

    Acceptance is a decaying average of accepted/drafted tokens. Below the rate the batch needs
    (`min_rate`, from `break_even_rate` with a margin), the request stops drafting and tries again
    after a back-off that doubles each time a retry fails (16, 32, ... 512 steps)."""

    DECAY = 0.8
    MIN_DRAFT = 2
    BACKOFF_MIN, BACKOFF_MAX = 16, 512

    def __init__(self, max_draft: int = 8, min_ngram: int = 2, max_ngram: int = 3):
        self.index = NgramIndex(min_ngram, max_ngram)
        self.max_draft = max_draft
        self.k = min(4, max_draft)
        self.drafted = self.accepted = 0  # totals, for metrics and tests
        self.last_draft = 0  # length of the draft proposed for the step in flight
        self._acc_w, self._drf_w = 1.0, 2.0  # prior: half the drafts accepted
        self._pause = 0  # steps left without drafting
        self._backoff = self.BACKOFF_MIN

    @property
    def rate(self) -> float:
        return self._acc_w / self._drf_w

    def propose(self, tokens: Sequence[int], limit: int, min_rate: float = 0.0) -> list[int]:
        """A draft for this step (possibly []). `limit`: most draft tokens allowed here (room in
        the batch, max_tokens, context)."""
        self.last_draft = 0
        if self._pause > 0:
            self._pause -= 1
            return []
        if self.rate < min_rate:
            self._pause = self._backoff
            self._backoff = min(self.BACKOFF_MAX, 2 * self._backoff)
            self._acc_w, self._drf_w = min_rate + 0.05, 1.0  # after the pause: one more try
            return []
        draft = self.index.draft(tokens, min(self.k, limit))
        self.last_draft = len(draft)
        return draft

    def record(self, drafted: int, accepted: int) -> None:
        self.last_draft = 0
        if drafted <= 0:
            return
        self.drafted += drafted
        self.accepted += accepted
        self._acc_w = self.DECAY * self._acc_w + accepted
        self._drf_w = self.DECAY * self._drf_w + drafted
        if accepted == drafted:
            self.k = min(self.max_draft, 2 * self.k)
            self._backoff = self.BACKOFF_MIN
        elif 2 * accepted < drafted:
            self.k = max(self.MIN_DRAFT, self.k // 2)
