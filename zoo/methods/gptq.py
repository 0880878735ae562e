"""GPTQ alone: nothing factorized, every projection quantized dense (needs a quantize setting)."""

from __future__ import annotations

from zoo.methods.registry import Method, register

GPTQ = register(
    Method(name="gptq", display_name="GPTQ", summary="no factorization, every projection quantized", solver=None)
)
