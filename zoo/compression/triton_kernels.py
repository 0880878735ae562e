"""The Triton code of zoo.compression.kernel (read its docstring), apart because a jit function
reaches the ones it calls through its module's globals, and this module imports Triton: only
the kernel's first use imports it. `triton.jit` reads TRITON_INTERPRET at import time.
"""

import triton
import triton.language as tl


@triton.jit
def unpack(packed_ptr, index, size, ok, BITS: tl.constexpr):
    """Integers `index` of a `size`-byte buffer packed BITS to an entry, little bit order
    (the mask is BITS=1). Widths that do not divide 8 straddle bytes: read two."""
    bit = index.to(tl.int64) * BITS
    byte = bit // 8
    word = tl.load(packed_ptr + byte, mask=ok, other=0).to(tl.int32)
    if 8 % BITS != 0:
        word = word | (tl.load(packed_ptr + byte + 1, mask=ok & (byte + 1 < size), other=0).to(tl.int32) << 8)
    return (word >> (bit % 8).to(tl.int32)) & ((1 << BITS) - 1)


@triton.jit
def values_at(
    values_ptr, scales_ptr, zeros_ptr, rows, pos, width, groups, q_size, zeros_size, ok,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr,
):  # fmt: skip
    """Entries (rows, pos) of a (., width) matrix: stored floats, or packed integers dequantized."""
    index = rows[:, None].to(tl.int64) * width + pos
    if BITS == 16:  # kernel.UNQUANTIZED: floats as stored
        values = tl.load(values_ptr + index, mask=ok, other=0.0)
    else:
        group = rows[:, None].to(tl.int64) * groups + pos // GROUP_SIZE
        q = unpack(values_ptr, index, q_size, ok, BITS)
        zero = unpack(zeros_ptr, group, zeros_size, ok, BITS)
        scale = tl.load(scales_ptr + group, mask=ok, other=0.0).to(tl.float32)
        values = (q - zero).to(tl.float32) * scale
    return values


@triton.jit
def matmul(
    x_ptr, values_ptr, scales_ptr, zeros_ptr, mask_ptr, y_ptr,
    batch, outs, cols, width, groups, q_size, zeros_size, mask_size,
    SPARSE: tl.constexpr, BITS: tl.constexpr, GROUP_SIZE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y = x W^T for a tile of batch rows and output rows; W: sparse codes (SPARSE, positions from the
    mask) or dense (positions are the columns), its values floats or packed (BITS < 16)."""
    rows_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rows_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    ok_b, ok_o = rows_b < batch, rows_o < outs
    seen = tl.zeros((BLOCK_O,), dtype=tl.int32)  # kept codes of each output row before this chunk
    acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
    for start in range(0, cols, BLOCK_K):
        cols_k = start + tl.arange(0, BLOCK_K)
        ok_k = cols_k < cols
        ok = ok_o[:, None] & ok_k[None, :]
        if SPARSE:
            kept = unpack(mask_ptr, rows_o[:, None].to(tl.int64) * cols + cols_k[None, :], mask_size, ok, 1)
            pos = seen[:, None] + tl.cumsum(kept, axis=1) - 1
            seen += tl.sum(kept, axis=1)
            ok = kept != 0
        else:
            pos = cols_k[None, :]
        w = values_at(
            values_ptr, scales_ptr, zeros_ptr, rows_o, pos, width, groups, q_size, zeros_size, ok, BITS, GROUP_SIZE
        )
        x = tl.load(
            x_ptr + rows_b[:, None].to(tl.int64) * cols + cols_k[None, :],
            mask=ok_b[:, None] & ok_k[None, :],
            other=0.0,
        )
        acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision="ieee")  # no TF32 for float32 inputs
    out = y_ptr + rows_b[:, None].to(tl.int64) * outs + rows_o[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=ok_b[:, None] & ok_o[None, :])
