"""COMPOT's alternating minimisation in the whitened space (Algorithm 1, eqs. 22 and 24).

Layout: codes are kept transposed, St = S^T of shape (n, k), so that hard-thresholding
and scatter run along contiguous rows and every product is a plain GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class OrthogonalSparseFactors:
    dictionary: torch.Tensor  # D, (m, k), D^T D = I
    codes_t: torch.Tensor  # S^T, (n, k), at most s nonzeros per row
    support_t: torch.Tensor  # bool (n, k): where the kept codes sit
    objective: list[float]  # ||W~ - D S||_F^2 after each sparse-coding step


def hard_threshold(z_t: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """H_s along rows of Z^T (eq. 22): codes keeping the s largest magnitudes, exactly s per row,
    the bool support, and the kept energy ||S||^2.

    On CPU numpy's SIMD partition finds each row's (s+1)-th largest |z| several times
    faster than torch.topk, and leaves the kept magnitudes in its last s columns, so the
    energy is summed over n x s floats instead of casting the whole code matrix to float64.
    A tie at the threshold (fewer than s entries above it) falls back to topk, which breaks
    ties arbitrarily.
    """
    a = z_t.abs()
    n, k = z_t.shape
    if z_t.device.type == "cpu" and s < k and z_t.dtype in (torch.float32, torch.float64):
        part = np.partition(a.detach().numpy(), k - s - 1, axis=1)
        support = a > torch.from_numpy(part[:, k - s - 1 : k - s])
        if torch.count_nonzero(support).item() == n * s:
            kept = part[:, k - s :]
            return z_t * support, support, float(np.einsum("ij,ij->", kept, kept, dtype=np.float64))
    idx = a.topk(s, dim=1, sorted=False).indices
    support = torch.zeros_like(a, dtype=torch.bool).scatter_(1, idx, True)
    codes = z_t * support
    return codes, support, torch.linalg.vector_norm(codes, dtype=torch.float64).item() ** 2


# Below this ratio of extreme eigenvalues of M^T M (M's condition number above ~3e5) the
# float64 Gram no longer resolves M's smallest directions; real layers sit at 1e2-1e4.
GRAM_RATIO_FLOOR = 1e-11


def polar_factor(m: torch.Tensor) -> torch.Tensor:
    """Orthonormal factor U of M = U H: the orthogonal Procrustes optimum (eq. 24).

    U = M (M^T M)^(-1/2), with the k x k Gram and its eigendecomposition in float64: squaring
    M's condition number costs nothing there, and the result is closer to the exact polar
    factor than a float32 SVD of M while taking less time. Only M V Lambda^(-1/2) needs
    float64; it is orthonormal, so the last rotation by V^T runs in M's dtype. Rank-deficient
    M (an atom no code uses) has no unique polar factor; a float64 SVD then picks one.
    """
    md = m.double()
    evals, evecs = torch.linalg.eigh(md.mT @ md)
    if not evals[0] > evals[-1] * GRAM_RATIO_FLOOR:
        u, _, vh = torch.linalg.svd(md, full_matrices=False)
        return (u @ vh).to(m.dtype)
    return (md @ evecs).mul_(evals.rsqrt()).to(m.dtype) @ evecs.to(m.dtype).mT


def leading_basis(w: torch.Tensor, k: int) -> torch.Tensor:
    """k orthonormal columns spanning W's leading left singular directions (SVD init).

    Eigenvectors of the smaller of W W^T and W^T W; only the ordering matters for an
    initialisation, not digits in the tail. When k exceeds n, W W^T (m x m) supplies
    directions beyond W's rank.
    """
    m, n = w.shape
    if n < m and k <= n:
        evals, evecs = torch.linalg.eigh(w.mT @ w)
        top = evecs[:, evals.argsort(descending=True)[:k]]
        return torch.linalg.qr(w @ top).Q
    evals, evecs = torch.linalg.eigh(w @ w.mT)
    return evecs[:, evals.argsort(descending=True)[:k]].contiguous()


def compot(w: torch.Tensor, k: int, s: int, iters: int, tol: float = 0.0) -> OrthogonalSparseFactors:
    """Alternate exact sparse coding and Procrustes on whitened W~ (m, n).

    The objective is free: with orthonormal D and S = H_s(D^T W~),
    ||W~ - D S||^2 = ||W~||^2 - ||S||^2, so no residual is ever formed. The last step
    is always a sparse coding, so the codes match the final dictionary. With tol > 0 the
    loop stops once the relative decrease of the objective falls to tol or below.

    A tall W~ = Q R (m > n >= k, e.g. down_proj) is factorised through its n x n R: the SVD
    start and every polar factor lie in span(W~) = span(Q), and D = Q D_R gives
    D^T W~ = D_R^T R, so iterating on R and returning Q D_R yields the same factors with
    every product n/m as large.
    """
    m, n = w.shape
    total = torch.linalg.vector_norm(w, dtype=torch.float64).item() ** 2
    basis = None
    if m > n >= k:
        basis, w = torch.linalg.qr(w)
    w_t = w.mT.contiguous()
    d = leading_basis(w, k)
    objective: list[float] = []
    for step in range(iters + 1):
        codes_t, support_t, kept = hard_threshold(w_t @ d, s)
        objective.append(total - kept)
        converged = step > 0 and objective[-2] - objective[-1] <= tol * abs(objective[-2])
        if step == iters or (tol > 0 and converged):
            break
        d = polar_factor(w @ codes_t)
    if basis is not None:
        d = basis @ d
    return OrthogonalSparseFactors(d, codes_t, support_t, objective)
