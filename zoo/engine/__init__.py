"""The COMPOT engine: tensors in, factors out. It knows nothing of transformers models."""

from zoo.engine.allocation import Allocation, allocate, default_guards
from zoo.engine.errors import EngineError
from zoo.engine.factorization import Factorization, factorize, factorize_many, functional_error

# In every variant fingerprint: a change that alters factors from the same inputs bumps it.
# 0.2.0: the Grams summed chunk by chunk (zoo.compression.ranks), other last bits beyond 16 batches.
# 0.2.1: healed factors kept only where they lower the block's output error (zoo.compression.healing).
# 0.2.2: a block whose healing raised its error heals again at a tenth of the step before it is left as factorized.
# 0.2.3: healing trains each factor in its output's units (rows scaled by their inputs' RMS, from the Gram).
# 0.2.4: distillation trains each factor in its output's units too (measured on a few of its samples).
# 0.2.5: healing and distillation train no channel in less than 1% of the mean channel's scale.
ENGINE_VERSION = "0.2.5"

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
