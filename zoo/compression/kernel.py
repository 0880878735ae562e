"""The CUDA products of compressed layers, computed from the stored form: y = x W^T where W is
the sparse codes C (out, k), held as each row's s kept values (in atom order) and the packed
row-major bitmask, or a dense matrix; either's values may be GPTQ-quantized, packed as
zoo.compression.quantized stores them (`Packed`).

One Triton program covers a tile of batch rows and output rows and walks the columns in
chunks. For the codes it reads the chunk's mask bits and turns them into positions among the
row's kept values with a running prefix count; a dense matrix's positions are its columns.
It then gathers those values into an (out, chunk) tile in registers, dequantizing packed
integers there ((q - zero) * scale, in float32), and multiplies. Nothing wider than the stored
tensors is ever kept in memory: a quantized layer runs from its packed bytes.

Triton ships with torch's CUDA builds; it is imported on first use (the Triton code lives in
zoo.compression.triton_kernels), so CPU-only installs never load it. With TRITON_INTERPRET=1
set before that, the kernel runs on CPU tensors (slowly), which is how the tests check it
without a GPU; layers use it on CUDA only (`applies`, the one switch).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import NamedTuple

import torch

BLOCK_B, BLOCK_O, BLOCK_K = 16, 64, 64  # tl.dot needs every side >= 16
UNQUANTIZED = 16  # the kernel's `BITS` for values stored as floats


class Packed(NamedTuple):
    """A GPTQ-quantized (rows, width) matrix as zoo.compression.quantized stores it: the packed
    integers, the (rows, groups) scales, the packed zero points; value = (q - zero) * scale."""

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    width: int


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_present() -> bool:
    return importlib.util.find_spec("triton") is not None


def applies(hidden: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether layers multiply through the kernel: CUDA tensors, and Triton installed."""
    return hidden.is_cuda and hidden.device == values.device and _triton_present()


def applies_on(device: torch.device) -> bool:
    """Whether layers whose tensors live on `device` multiply through the kernel (asked of `applies`)."""
    probe = torch.empty(0, device=device)
    return applies(probe, probe)


def _matmul(x: torch.Tensor, values: torch.Tensor | Packed, mask: torch.Tensor | None, cols: int) -> torch.Tensor:
    """(..., cols) x times the (rows, cols) matrix `values` (with `mask`: the sparse codes) stands for, transposed."""
    import triton

    from zoo.compression import triton_kernels

    if isinstance(values, Packed):
        q, scales, zeros = values.q, values.scales.contiguous(), values.zeros
        rows, width, bits, group_size = scales.shape[0], values.width, values.bits, values.group_size
    else:
        q = scales = zeros = values.contiguous()  # scales and zeros go unread
        (rows, width), bits, group_size = values.shape, UNQUANTIZED, 1
    z = x.reshape(-1, cols).contiguous()
    y = torch.empty(z.shape[0], rows, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(z.shape[0], BLOCK_B), triton.cdiv(rows, BLOCK_O))
    triton_kernels.matmul[grid](
        z, q, scales, zeros, q if mask is None else mask, y,
        z.shape[0], rows, cols, width, scales.shape[-1], q.numel(), zeros.numel(), 0 if mask is None else mask.numel(),
        mask is not None, bits, group_size, BLOCK_B, BLOCK_O, BLOCK_K,
    )  # fmt: skip
    return y.reshape(*x.shape[:-1], rows)


def sparse_codes_matmul(
    hidden: torch.Tensor, values: torch.Tensor | Packed, mask: torch.Tensor, atoms: int
) -> torch.Tensor:
    """(..., k) hidden states times the (out, k) sparse codes, transposed: (..., out) in hidden's
    dtype. `values`: the (out, s) kept codes, or the same packed (dequantized in the kernel)."""
    return _matmul(hidden, values, mask, atoms)


def quantized_matmul(x: torch.Tensor, weight: Packed) -> torch.Tensor:
    """(..., width) x times the packed (rows, width) matrix, transposed: (..., rows) in x's dtype,
    dequantized tile by tile in registers (the dictionary product, and QuantLinear's)."""
    return _matmul(x, weight, None, weight.width)
