"""COMPOT (the paper): an orthogonal dictionary and column-sparse codes, with the k x n support
mask stored as bits (eq. 11); k/s near `ks_ratio`, k at most in_features."""

from __future__ import annotations

import math

from zoo.methods.layout import VALUE_BITS, budget_bits
from zoo.methods.registry import Method, register


def shape(m: int, n: int, cr: float, ks_ratio: float) -> tuple[int, int] | None:
    """Largest (k, s) with k/s close to ks_ratio whose eq. 11 storage fits (1 - cr) of dense.

    k is capped at m (complete or undercomplete dictionary); s takes whatever budget k
    leaves, so it is never below k / ks_ratio. None when no k, s >= 1 fits.
    """
    budget = budget_bits(m, n, cr)
    k = min(m, math.floor(budget / (VALUE_BITS * m + VALUE_BITS * n / ks_ratio + n)))
    if k < 1:
        return None
    s = min(k, (budget - VALUE_BITS * m * k - k * n) // (VALUE_BITS * n))
    if s < 1:
        return None
    return k, s


COMPOT = register(
    Method(
        name="compot",
        display_name="COMPOT",
        summary="sparse codes over an orthogonal dictionary, as the paper",
        solver="orthogonal-dictionary",
        shape=shape,
        max_atoms=lambda m, n: m,
        masked=True,
        alternatives=("svd-llm",),  # a low-rank pair where it fits a matrix better (zoo.methods.svd_llm)
    )
)
