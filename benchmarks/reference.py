"""A plain float64 reading of Algorithm 1: the yardstick the engine is timed against."""

from __future__ import annotations

import torch


def plain_compot(weight: torch.Tensor, gram: torch.Tensor, k: int, s: int, iters: int = 20) -> tuple[torch.Tensor, float]:
    """Algorithm 1 line by line in float64: full SVD per Procrustes step, explicit residuals.

    Returns W^ in (out, in) layout and the final whitened squared error.
    """
    w = weight.double().T
    L = torch.linalg.cholesky(gram.double())
    wt = L.T @ w
    d = torch.linalg.svd(wt, full_matrices=True)[0][:, :k]
    for _ in range(iters):
        z = d.T @ wt
        idx = z.abs().topk(s, dim=0).indices
        codes = torch.zeros_like(z).scatter_(0, idx, z.gather(0, idx))
        p, _, qh = torch.linalg.svd(wt @ codes.T, full_matrices=False)
        d = p @ qh
    z = d.T @ wt
    idx = z.abs().topk(s, dim=0).indices
    codes = torch.zeros_like(z).scatter_(0, idx, z.gather(0, idx))
    error = (wt - d @ codes).square().sum().item()
    a = torch.linalg.solve_triangular(L.T, d, upper=True)
    return (a @ codes).T, error
