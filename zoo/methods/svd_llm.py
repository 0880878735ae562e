"""SVD-LLM, the baseline: the whitened truncated SVD as a dense low-rank pair (k = s = rank),
published with one CR for every matrix."""

from __future__ import annotations

from zoo.methods.layout import VALUE_BITS, budget_bits
from zoo.methods.registry import Method, register


def shape(m: int, n: int, cr: float, ks_ratio: float) -> tuple[int, int] | None:
    """The largest rank whose two 16-bit factors fit (1 - cr) of dense; None below 1."""
    r = min(m, n, budget_bits(m, n, cr) // (VALUE_BITS * (m + n)))
    return (r, r) if r >= 1 else None


SVD_LLM = register(
    Method(
        name="svd-llm",
        display_name="SVD-LLM",
        summary="the low-rank baseline at the same storage",
        solver="truncated-svd",
        shape=shape,
        max_atoms=min,
        static=True,
    )
)
