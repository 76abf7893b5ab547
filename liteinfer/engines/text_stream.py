"""Tokens -> text for a stream: whole UTF-8 characters only, and stop strings cut cleanly even
when they span tokens. The scheduler and single-stream generation share it."""

from __future__ import annotations


class TextStream:
    """Token -> text with incremental UTF-8 decoding and stop strings held back until sure."""

    def __init__(self, engine, stop: list[str] | None = None):
        self.engine = engine
        self.stop = [s for s in (stop or []) if s]
        self.decoder = engine.text_decoder()
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.decoder.decode(self.engine.token_bytes(token))
        for s in self.stop:
            i = self.pending.find(s)
            if i >= 0:
                out, self.pending, self.stopped = self.pending[:i], "", True
                return out
        hold = 0  # longest tail of pending that could still grow into a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return out
