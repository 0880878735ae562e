"""What a compressed layer stores, and what that costs: eq. 11's accounting, each method's tensors
with their shapes, and the bit packing of masks and GPTQ integers. Torch-free (numpy only), so
that file checks, cards and the site read it as cheaply as the layers write it.

The paper's convention: a projection is W of shape (m, n) with m = in_features and
n = out_features. Values are stored in 16 bits; a masked method also stores the k x n bitmask
that says where each column's s kept codes sit.

A factorized layer stores the dictionary A^T (k, in), each output's kept code values
(out, width) in increasing atom order and, for a masked method, the (out, k) support bitmask,
row-major, packed eight to a byte in little bit order (mask element i is bit i % 8 of byte
i // 8). A method that factorizes nothing stores the (out, in) weight. A GPTQ-quantized (rows,
width) matrix `name` is three tensors instead: `name_q`, the integers packed back to back at
`bits` bits each (bit i of integer t is bit (t*bits + i) % 8 of byte (t*bits + i) // 8);
`name_scales`, (rows, groups) in 16 bits; `name_zeros`, the (rows, groups) zero points packed
the same way. Groups are `group_size` consecutive entries of a row, the last one possibly shorter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from zoo.methods.registry import Method

VALUE_BITS = 16
PACKED = "packed"  # uint8 bytes: a bitmask or packed integers
VALUES = "values"  # 16-bit floats in the layer's storage dtype
BYTES = {PACKED: 1, VALUES: VALUE_BITS // 8}
QUANTIZED_PARTS = ("q", "scales", "zeros")


@dataclass(frozen=True)
class Stored:
    """One stored tensor of a layer: its shape and whether it holds 16-bit values or packed bytes."""

    shape: tuple[int, ...]
    kind: str

    @property
    def bits(self) -> int:
        return 8 * BYTES[self.kind] * math.prod(self.shape)


def dense_bits(m: int, n: int) -> int:
    return VALUE_BITS * m * n


def achieved_cr(stored_bits: int, m: int, n: int) -> float:
    return 1.0 - stored_bits / dense_bits(m, n)


def budget_bits(m: int, n: int, cr: float) -> int:
    """The bits a matrix may keep at compression ratio `cr`."""
    return math.floor((1.0 - cr) * dense_bits(m, n))


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of `count` integers of `bits` bits packed back to back (little bit order)."""
    return math.ceil(count * bits / 8)


def quantized_tensors(name: str, rows: int, width: int, bits: int, group_size: int) -> dict[str, Stored]:
    groups = math.ceil(width / group_size)
    return {
        f"{name}_q": Stored((packed_bytes(rows * width, bits),), PACKED),
        f"{name}_scales": Stored((rows, groups), VALUES),
        f"{name}_zeros": Stored((packed_bytes(rows * groups, bits),), PACKED),
    }


def _matrix(name: str, rows: int, width: int, bits: int, group_size: int) -> dict[str, Stored]:
    if bits == VALUE_BITS:
        return {name: Stored((rows, width), VALUES)}
    return quantized_tensors(name, rows, width, bits, group_size)


def stored_tensors(
    method: Method, in_features: int, out_features: int, *, k: int, s: int, bits: int = VALUE_BITS, group_size: int = 0
) -> dict[str, Stored]:
    """Tensor name within the layer -> what it stores, for `method` at these sizes (bias excluded)."""
    if not method.factorizes:
        return _matrix("weight", out_features, in_features, bits, group_size)
    tensors = _matrix("dictionary", k, in_features, bits, group_size)
    tensors |= _matrix("code_values", out_features, method.width(k, s), bits, group_size)
    if method.masked:
        tensors["code_mask"] = Stored((packed_bytes(out_features * k, 1),), PACKED)
    return tensors


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Integers below 2**bits (or booleans, for bits 1), any shape, row-major -> uint8 bytes."""
    flat = np.asarray(values, dtype=np.uint8).reshape(-1)
    if bits == 1:
        return np.packbits(flat, bitorder="little")
    stream = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(stream.reshape(-1), bitorder="little")
