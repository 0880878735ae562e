"""The engine's one error type: inputs it cannot factorize (shapes, CRs, Grams)."""


class EngineError(ValueError):
    """Raised with a message that names the matrix or value at fault."""
