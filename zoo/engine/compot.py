"""COMPOT's alternating minimisation in the whitened space (Algorithm 1, eqs. 22 and 24).

Layout: codes are kept transposed, St = S^T of shape (n, k), so that hard-thresholding
and scatter run along contiguous rows and every product is a plain GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OrthogonalSparseFactors:
    dictionary: torch.Tensor  # D, (m, k), D^T D = I
    codes_t: torch.Tensor  # S^T, (n, k), at most s nonzeros per row
    support_t: torch.Tensor  # bool (n, k): where the kept codes sit
    objective: list[float]  # ||W~ - D S||_F^2 after each sparse-coding step


def hard_threshold(z_t: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """H_s along rows of Z^T: keep the s largest magnitudes, exactly s per row (eq. 22)."""
    idx = z_t.abs().topk(s, dim=1, sorted=False).indices
    support = torch.zeros_like(z_t, dtype=torch.bool).scatter_(1, idx, True)
    return z_t * support, support


# Below this ratio of extreme eigenvalues of M^T M (M's condition number above ~3e5) the
# float64 Gram no longer resolves M's smallest directions; real layers sit at 1e2-1e4.
GRAM_RATIO_FLOOR = 1e-11


def polar_factor(m: torch.Tensor) -> torch.Tensor:
    """Orthonormal factor U of M = U H: the orthogonal Procrustes optimum (eq. 24).

    U = M (M^T M)^(-1/2), with the k x k Gram and its eigendecomposition in float64: squaring
    M's condition number costs nothing there, and the result is closer to the exact polar
    factor than a float32 SVD of M while taking less time. Rank-deficient M (an atom no code
    uses) has no unique polar factor; a float64 SVD then picks one.
    """
    md = m.double()
    evals, evecs = torch.linalg.eigh(md.mT @ md)
    if not evals[0] > evals[-1] * GRAM_RATIO_FLOOR:
        u, _, vh = torch.linalg.svd(md, full_matrices=False)
        return (u @ vh).to(m.dtype)
    return ((md @ evecs) * evals.rsqrt() @ evecs.mT).to(m.dtype)


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
    """
    w_t = w.mT.contiguous()
    total = w.double().square().sum().item()
    d = leading_basis(w, k)
    objective: list[float] = []
    for step in range(iters + 1):
        codes_t, support_t = hard_threshold(w_t @ d, s)
        objective.append(total - codes_t.double().square().sum().item())
        converged = step > 0 and objective[-2] - objective[-1] <= tol * abs(objective[-2])
        if step == iters or (tol > 0 and converged):
            break
        d = polar_factor(w @ codes_t)
    return OrthogonalSparseFactors(d, codes_t, support_t, objective)
