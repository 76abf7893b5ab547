"""One error type for everything a user can get wrong: the CLI prints it as one line."""


class LiteInferError(Exception):
    """A user-facing error: bad input, missing model, unmet budget. Message is one line."""


class QueueFull(LiteInferError):
    """A batcher's waiting queue is at its bound: reject now (HTTP 429 with Retry-After) rather
    than hang. Both the continuous (LLM) and the dynamic (one-shot) batchers raise it."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s
