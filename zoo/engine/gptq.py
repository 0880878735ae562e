"""GPTQ (Frantar et al., 2023) on a weight and its input Gram, with a fixed support for sparse codes.

Weights are in PyTorch's (rows, cols) layout, cols being the inputs the Gram G = X^T X is over.
The error ||X (W - Q)^T||^2 is driven down column by column: each column is rounded to its
group's asymmetric `bits`-bit grid and the rounding error is spread over the columns not yet
rounded through the Cholesky factor of G^-1 (lazy batches of `block` columns).

With a `support` (the codes of a COMPOT factorization), only the kept entries are quantized
and stored; the pruned ones are rounded to exactly 0, SparseGPT's masked update: whatever
compensation reached a pruned entry is handed on to the later columns when its column is
reached, so the final codes keep their support and every pruned code is exactly zero.
Groups run along what is stored: `group_size` consecutive inputs of a dense row, or
`group_size` consecutive kept codes of a row (the last group of a row may be shorter).

Why written here rather than reused: GPTQModel ships as a CUDA-extension source build and
llm-compressor pins an older transformers than the project runs; neither has a fixed-support
(masked) variant, which the codes need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zoo.engine.errors import EngineError
from zoo.engine.factorization import Factorization, functional_error

SUPPORTED_BITS = (2, 3, 4, 8)
DAMP = 0.01  # relative to mean(diag G), as in the reference implementation
BLOCK = 128


@dataclass
class Quantized:
    """Integer codes with per-(row, group) scales and zero points; `values()` gives q's reals.

    q: uint8 (rows, width), width = cols (dense) or the kept count per row (with a support).
    scales: (rows, groups) in the storage dtype the grid was built in; zeros: uint8 (rows, groups).
    """

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    def values(self) -> torch.Tensor:
        """(rows, width) float32: (q - zero) * scale, group by group."""
        return dequantize(self.q, self.scales, self.zeros, self.group_size)


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """(q - zero) * scale in float32, each group's parameters repeated over its columns."""
    width = q.shape[1]
    scale = scales.float().repeat_interleave(group_size, dim=1)[:, :width]
    zero = zeros.float().repeat_interleave(group_size, dim=1)[:, :width]
    return (q.float() - zero) * scale


def check_grid(bits: int, group_size: int, name: str = "matrix") -> None:
    if bits not in SUPPORTED_BITS:
        raise EngineError(f"{name}: unsupported bit width {bits!r}; supported: {', '.join(map(str, SUPPORTED_BITS))}")
    if not isinstance(group_size, int) or group_size < 1:
        raise EngineError(f"{name}: group size must be a positive integer, got {group_size!r}")


def _grid(values: torch.Tensor, valid: torch.Tensor, maxq: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Min-max asymmetric grid per row of `values` (over `valid` entries; 0 always representable),
    the scale rounded to `dtype` first so that what is stored is what was rounded against."""
    lo = torch.where(valid, values, 0.0).amin(dim=1).clamp(max=0)
    hi = torch.where(valid, values, 0.0).amax(dim=1).clamp(min=0)
    flat = lo == hi
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    scale = ((hi - lo) / maxq).to(dtype).clamp(min=torch.finfo(dtype).tiny).float()
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def _members(
    support: torch.Tensor | None, rows: int, cols: int, group_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per entry its group (-1: pruned); per (row, group) the columns it covers (-1: padding); the
    stored width of a row."""
    if support is None:
        kept = torch.arange(cols, device=device).expand(rows, cols)
        group = kept.div(group_size, rounding_mode="floor")
        width = cols
    else:
        counts = support.sum(dim=1)
        width = int(counts[0]) if rows else 0
        if rows and not bool((counts == width).all()):
            raise EngineError(f"support keeps {int(counts.min())}..{int(counts.max())} entries per row, not one count")
        order = torch.where(support, torch.arange(cols, device=device), cols)
        kept = order.sort(dim=1).values[:, :width]
        rank = support.long().cumsum(dim=1) - 1
        group = torch.where(support, rank.div(group_size, rounding_mode="floor"), -1)
    groups = math.ceil(width / group_size)
    padded = torch.full((rows, groups * group_size), -1, dtype=torch.long, device=device)
    padded[:, :width] = kept
    return group, padded.reshape(rows, groups, group_size), width


def gptq(
    weight: torch.Tensor,
    gram: torch.Tensor,
    bits: int = 4,
    group_size: int = 128,
    support: torch.Tensor | None = None,
    scale_dtype: torch.dtype = torch.float16,
    block: int = BLOCK,
    damp: float = DAMP,
    name: str = "matrix",
) -> tuple[Quantized, torch.Tensor]:
    """Quantize `weight` (rows, cols) against `gram` (cols, cols); returns the stored form and the
    dequantized (rows, cols) float32 matrix it stands for (exact zeros off `support`)."""
    check_grid(bits, group_size, name)
    rows, cols = weight.shape
    if gram.shape != (cols, cols):
        raise EngineError(f"{name}: Gram shape {tuple(gram.shape)} does not match {cols} input columns")
    if support is not None and support.shape != weight.shape:
        raise EngineError(f"{name}: support shape {tuple(support.shape)} differs from weight {tuple(weight.shape)}")
    maxq = 2**bits - 1
    device = weight.device
    w = weight.detach().float().clone()
    h = gram.detach().to(device, torch.float64, copy=True)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except torch.linalg.LinAlgError as exc:
        raise EngineError(f"{name}: the Gram is not positive definite even with {damp:g} damping") from exc
    support = None if support is None else support.to(device)
    group, members, width = _members(support, rows, cols, group_size, device)
    starts = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    first = members[:, :, 0]
    starts.scatter_(1, first.clamp(min=0), first >= 0)
    scales = torch.ones(rows, members.shape[1], device=device)
    zeros = torch.zeros(rows, members.shape[1], device=device)
    q = torch.zeros(rows, cols, dtype=torch.uint8, device=device)
    out = torch.zeros(rows, cols, device=device)
    every = torch.arange(rows, device=device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, h1 = w[:, i1:i2], hinv[i1:i2, i1:i2]  # a view: updates land in w, fresh for group grids
        err1 = torch.zeros(rows, i2 - i1, device=device)
        for i in range(i2 - i1):
            j = i1 + i
            new = starts[:, j].nonzero().squeeze(1)
            if new.numel():
                g = group[new, j]
                cols_g = members[new, g]
                vals = w[new.unsqueeze(1), cols_g.clamp(min=0)]
                scales[new, g], zeros[new, g] = _grid(vals, cols_g >= 0, maxq, scale_dtype)
            g = group[:, j].clamp(min=0)
            scale, zero = scales[every, g], zeros[every, g]
            col = w1[:, i]
            qj = torch.clamp(torch.round(col / scale) + zero, 0, maxq)
            deq = torch.where(group[:, j] >= 0, (qj - zero) * scale, 0.0)
            q[:, j], out[:, j] = qj.to(torch.uint8), deq
            err = (col - deq) / h1[i, i]
            w1[:, i:] -= err.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    stored = q if support is None else q.gather(1, members.reshape(rows, -1)[:, :width])
    return Quantized(stored, scales.to(scale_dtype), zeros.to(torch.uint8), bits, group_size), out


def round_to_nearest(
    weight: torch.Tensor,
    bits: int = 4,
    group_size: int = 128,
    support: torch.Tensor | None = None,
    scale_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """The same grid without error compensation (identity Gram, no damping): the baseline GPTQ beats."""
    eye = torch.eye(weight.shape[1], device=weight.device)
    return gptq(weight, eye, bits, group_size, support, scale_dtype, damp=0.0)[1]


def refit_codes(
    weight: torch.Tensor, gram: torch.Tensor, dictionary: torch.Tensor, support: torch.Tensor | None, chunk: int = 256
) -> torch.Tensor:
    """Codes (k, out) that best reproduce `weight` (out, in) through a changed (quantized)
    `dictionary` (in, k): least squares in the calibration metric, each output over its own
    support (all k atoms without one). The codes' GPTQ then starts from this optimum, so its
    error adds to the dictionary's instead of ignoring it. The systems are symmetric positive
    definite: Cholesky solves them (torch 2.13's batched LU on CPU fails with more than one
    thread on batches of ~200x200 systems)."""
    a = dictionary.double()
    g = gram.to(a.device, torch.float64)
    ga = g @ a
    m = a.mT @ ga  # the codes' input Gram, A^T G A
    m.diagonal().add_(1e-8 * m.diagonal().mean())
    b = ga.mT @ weight.double().mT  # (k, out): A^T G W^T
    if support is None:
        return torch.cholesky_solve(b, torch.linalg.cholesky(m)).float()
    out, k = support.shape
    support = support.to(a.device)
    codes = torch.zeros(k, out, dtype=torch.float64, device=a.device)
    order = torch.where(support, torch.arange(k, device=a.device), k)
    kept = order.sort(dim=1).values[:, : int(support[0].sum())]
    for start in range(0, out, chunk):
        idx = kept[start : start + chunk]  # (c, s)
        sub = m[idx.unsqueeze(2), idx.unsqueeze(1)]  # (c, s, s)
        rhs = b[idx, torch.arange(start, start + idx.shape[0], device=a.device).unsqueeze(1)]  # (c, s)
        sol = torch.cholesky_solve(rhs.unsqueeze(2), torch.linalg.cholesky(sub)).squeeze(2)
        codes[:, start : start + idx.shape[0]].scatter_(0, idx.mT, sol.mT)
    return codes.float()


@dataclass
class QuantizedFactors:
    """A factorization's factors after GPTQ: A^T (k, in) and the codes (out, s kept; out, k for SVD-LLM)."""

    dictionary: Quantized
    codes: Quantized
    approx: torch.Tensor  # (out, in): the matrix the quantized factors compute
    relative_error: float  # calibration-weighted, against the original weight


def relative_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """||X (W - W^)^T||^2 / ||X W^T||^2, the measure `Factorization.relative_error` uses."""
    total = functional_error(weight, torch.zeros_like(weight), gram)
    return functional_error(weight, approx, gram) / total if total else 0.0


def balanced_atoms(dictionary: torch.Tensor, codes: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """The dictionary (in, k) with atom i scaled by r_i = sqrt(||c_i|| / ||a_i||_G), c_i its codes:
    the product is unchanged once the codes are divided by r_i, and each atom's weight is then
    shared evenly by both factors, as SVD-LLM's U sqrt(S), sqrt(S) V^T already is. COMPOT's atoms
    are orthonormal in the whitened space, so its codes carry all of it: a group of codes mixes
    atoms of very different scales and the largest sets every grid (on SmolLM2 the codes' 4-bit
    error was 2-4x SVD-LLM's before this). Unused atoms keep their scale."""
    a = dictionary.double()
    atom = (a.mT @ gram @ a).diagonal().clamp(min=0).sqrt()
    code = torch.linalg.vector_norm(codes.double(), dim=1)
    used = (atom > 0) & (code > 0)
    r = torch.where(used, (code / torch.where(used, atom, 1.0)).sqrt(), 1.0)
    return (a * r).to(dictionary.dtype)


def quantize_factors(
    f: Factorization,
    weight: torch.Tensor,
    gram: torch.Tensor,
    bits: int,
    group_size: int,
    scale_dtype: torch.dtype = torch.float16,
    name: str = "matrix",
    balance: bool = True,
) -> QuantizedFactors:
    """GPTQ of both factors in the order they compute: the dictionary, its atoms balanced against
    their codes, against the layer's input Gram G, then the codes, refit through the quantized
    dictionary, against A^T G A (their inputs are A^T x); the codes' support stays as factorized.
    `balance=False` keeps the factorization's own split of each atom's scale (for ablation)."""
    if f.is_dense:
        raise EngineError(f"{name}: a dense matrix has no factors to quantize; quantize the weight itself")
    gram = gram.to(f.dictionary.device, torch.float64)
    atoms = balanced_atoms(f.dictionary, f.codes, gram) if balance else f.dictionary
    dictionary, a_t = gptq(atoms.mT, gram, bits, group_size, scale_dtype=scale_dtype, name=f"{name} dictionary")
    support = None if f.support is None else f.support.mT
    codes_t = refit_codes(weight.to(a_t.device), gram, a_t.mT, support).mT
    codes_gram = a_t.double() @ gram @ a_t.double().mT
    codes, c_t = gptq(codes_t, codes_gram, bits, group_size, support, scale_dtype, name=f"{name} codes")
    approx = c_t @ a_t
    return QuantizedFactors(dictionary, codes, approx, relative_error(weight, approx, gram))
