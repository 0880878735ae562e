"""The engine's one error type: inputs it cannot factorize (shapes, CRs, Grams)."""

from zoo.errors import UserError


class EngineError(UserError):
    """Raised with a message that names the matrix or value at fault."""
