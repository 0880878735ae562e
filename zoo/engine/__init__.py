"""The COMPOT engine: tensors in, factors out. It knows nothing of transformers models."""

from zoo.engine.allocation import Allocation, allocate, default_guards
from zoo.engine.errors import EngineError
from zoo.engine.factorization import Factorization, factorize, factorize_many, functional_error

ENGINE_VERSION = "0.1.0"

__all__ = [
    "Allocation",
    "allocate",
    "default_guards",
    "ENGINE_VERSION",
    "EngineError",
    "Factorization",
    "factorize",
    "factorize_many",
    "functional_error",
]
