"""Storage accounting (paper eq. 11) and the factor sizes it implies.

The paper's convention: a projection is W of shape (m, n) with m = in_features and
n = out_features. Values are stored in 16 bits; COMPOT also stores a k x n bitmask that
says where each column's s nonzero codes sit.
"""

from __future__ import annotations

import math

VALUE_BITS = 16


def dense_bits(m: int, n: int) -> int:
    return VALUE_BITS * m * n


def compot_bits(m: int, n: int, k: int, s: int) -> int:
    """Dictionary (m x k) + s values per column + the k x n mask, eq. 11."""
    return VALUE_BITS * m * k + VALUE_BITS * s * n + k * n


def lowrank_bits(m: int, n: int, r: int) -> int:
    return VALUE_BITS * r * (m + n)


def achieved_cr(stored_bits: int, m: int, n: int) -> float:
    return 1.0 - stored_bits / dense_bits(m, n)


def _budget_bits(m: int, n: int, cr: float) -> int:
    return math.floor((1.0 - cr) * dense_bits(m, n))


def compot_shape(m: int, n: int, cr: float, ks_ratio: float) -> tuple[int, int] | None:
    """Largest (k, s) with k/s close to ks_ratio whose eq. 11 storage fits (1 - cr) of dense.

    k is capped at m (complete or undercomplete dictionary); s takes whatever budget k
    leaves, so it is never below k / ks_ratio. None when no k, s >= 1 fits.
    """
    budget = _budget_bits(m, n, cr)
    k = min(m, math.floor(budget / (VALUE_BITS * m + VALUE_BITS * n / ks_ratio + n)))
    if k < 1:
        return None
    s = min(k, (budget - VALUE_BITS * m * k - k * n) // (VALUE_BITS * n))
    if s < 1:
        return None
    return k, s


def lowrank_rank(m: int, n: int, cr: float) -> int | None:
    """Largest rank whose two 16-bit factors fit (1 - cr) of dense; None if below 1."""
    r = min(m, n, _budget_bits(m, n, cr) // (VALUE_BITS * (m + n)))
    return r if r >= 1 else None


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of `count` integers of `bits` bits packed back to back (little bit order)."""
    return math.ceil(count * bits / 8)


def quantized_bits(rows: int, width: int, bits: int, group_size: int, scale_bits: int = VALUE_BITS) -> int:
    """A (rows, width) matrix quantized to `bits` with a 16-bit scale and a `bits`-bit zero point
    per `group_size` consecutive entries of a row: the packed integers, scales and zeros, each
    stored as whole bytes."""
    groups = rows * math.ceil(width / group_size)
    return 8 * (packed_bytes(rows * width, bits) + groups * scale_bits // 8 + packed_bytes(groups, bits))


def quantized_factor_bits(method: str, m: int, n: int, k: int, s: int, bits: int, group_size: int) -> int:
    """Eq. 11 with quantized values: the dictionary A^T (k, m) and the codes (n, s kept; n, k dense for
    SVD-LLM) quantized, COMPOT's k x n mask as packed bytes; `method` "gptq" is the dense (n, m) matrix."""
    if method == "compot":
        return (
            quantized_bits(k, m, bits, group_size) + quantized_bits(n, s, bits, group_size) + 8 * packed_bytes(k * n, 1)
        )
    if method == "svd-llm":
        return quantized_bits(k, m, bits, group_size) + quantized_bits(n, k, bits, group_size)
    return quantized_bits(n, m, bits, group_size)
