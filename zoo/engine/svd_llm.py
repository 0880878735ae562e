"""SVD-LLM baseline: truncated SVD of the whitened weight, dewhitened (Wang et al., 2025)."""

from __future__ import annotations

import torch


def truncated_svd(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-r factors (m, r), (r, n) of whitened W~ split as U sqrt(S), sqrt(S) V^T, and the squared error."""
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    root = sv[:r].sqrt()
    error = sv[r:].double().square().sum().item()
    return u[:, :r] * root, root[:, None] * vh[:r], error
