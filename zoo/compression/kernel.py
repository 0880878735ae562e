"""The sparse-codes product on CUDA, computed from the stored form: y = z C^T, where C (out, k)
is held as each row's s kept values (in atom order) and the packed row-major bitmask.

One Triton program covers a tile of batch rows and output rows and walks the atoms in
chunks: it reads the chunk's mask bits, turns them into positions among the row's kept
values with a running prefix count, gathers those values into a dense (out, chunk) tile in
registers and multiplies. Nothing wider than the stored tensors is ever kept in memory.

Triton ships with torch's CUDA builds; it is imported on first use, so CPU-only installs never
load it. With TRITON_INTERPRET=1, `sparse_codes_matmul` runs the same kernel on CPU tensors
(slowly), which is how the tests check it without a GPU; layers use it on CUDA only.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BLOCK_B, BLOCK_O, BLOCK_K = 16, 64, 64  # tl.dot needs every side >= 16


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_present() -> bool:
    return importlib.util.find_spec("triton") is not None


def applies(hidden: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether layers multiply through the kernel: CUDA tensors, and Triton installed."""
    return hidden.is_cuda and hidden.device == values.device and _triton_present()


@functools.cache
def _kernel(interpret: bool):
    """Built once per interpreter setting, which `triton.jit` reads from the environment."""
    import triton
    import triton.language as tl

    @triton.jit
    def sparse_codes(
        z_ptr, values_ptr, mask_ptr, y_ptr, batch, outs, atoms, kept_per_row,
        BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        rows_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rows_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        ok_b, ok_o = rows_b < batch, rows_o < outs
        seen = tl.zeros((BLOCK_O,), dtype=tl.int32)  # kept codes of each output row before this chunk
        acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        for start in range(0, atoms, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            ok_k = cols < atoms
            bit = rows_o[:, None].to(tl.int64) * atoms + cols[None, :]
            byte = tl.load(mask_ptr + bit // 8, mask=ok_o[:, None] & ok_k[None, :], other=0)
            kept = ((byte.to(tl.int32) >> (bit % 8).to(tl.int32)) & 1).to(tl.int32)
            rank = seen[:, None] + tl.cumsum(kept, axis=1) - 1
            codes = tl.load(values_ptr + rows_o[:, None].to(tl.int64) * kept_per_row + rank, mask=kept != 0, other=0.0)
            z = tl.load(
                z_ptr + rows_b[:, None].to(tl.int64) * atoms + cols[None, :],
                mask=ok_b[:, None] & ok_k[None, :],
                other=0.0,
            )
            acc += tl.dot(z, tl.trans(codes.to(z.dtype)), input_precision="ieee")  # no TF32 for float32 inputs
            seen += tl.sum(kept, axis=1)
        out = y_ptr + rows_b[:, None].to(tl.int64) * outs + rows_o[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=ok_b[:, None] & ok_o[None, :])

    return sparse_codes


def sparse_codes_matmul(hidden: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, atoms: int) -> torch.Tensor:
    """(..., k) hidden states times the (out, k) sparse codes, transposed: (..., out) in hidden's dtype."""
    import triton

    outs, kept_per_row = values.shape
    z = hidden.reshape(-1, atoms).contiguous()
    y = torch.empty(z.shape[0], outs, dtype=hidden.dtype, device=hidden.device)
    grid = (triton.cdiv(z.shape[0], BLOCK_B), triton.cdiv(outs, BLOCK_O))
    _kernel(interpreted())[grid](
        z, values.contiguous(), mask, y, z.shape[0], outs, atoms, kept_per_row, BLOCK_B, BLOCK_O, BLOCK_K
    )
    return y.reshape(*hidden.shape[:-1], outs)
