"""One error type for everything a user can get wrong: the CLI prints it as one line."""


class LiteInferError(Exception):
    """A user-facing error: bad input, missing model, unmet budget. Message is one line."""
