"""A plain float64 reading of Algorithm 1: the yardstick the engine is timed against."""

from __future__ import annotations

import torch


def _code(d: torch.Tensor, wt: torch.Tensor, s: int) -> torch.Tensor:
    z = d.T @ wt
    idx = z.abs().topk(s, dim=0).indices
    return torch.zeros_like(z).scatter_(0, idx, z.gather(0, idx))


def plain_compot(
    weight: torch.Tensor, gram: torch.Tensor, k: int, s: int, iters: int = 20
) -> tuple[torch.Tensor, list[float]]:
    """Algorithm 1 line by line in float64, with the per-iteration objective the engine reports.

    Full SVD for the initial basis and for every Procrustes step; the objective is the
    explicit residual. Returns W^ in (out, in) layout and the objective after each coding step.
    """
    w = weight.double().T
    L = torch.linalg.cholesky(gram.double())
    wt = L.T @ w
    d = torch.linalg.svd(wt, full_matrices=True)[0][:, :k]
    objective = []
    for _ in range(iters):
        codes = _code(d, wt, s)
        objective.append((wt - d @ codes).square().sum().item())
        p, _, qh = torch.linalg.svd(wt @ codes.T, full_matrices=False)
        d = p @ qh
    codes = _code(d, wt, s)
    objective.append((wt - d @ codes).square().sum().item())
    a = torch.linalg.solve_triangular(L.T, d, upper=True)
    return (a @ codes).T, objective
