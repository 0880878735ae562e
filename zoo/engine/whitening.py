"""Data-aware whitening: G = L L^T turns functional error into Frobenius error (eq. 5).

Everything here runs in float64: the Cholesky factor of an activation Gram is the most
ill-conditioned object in the pipeline, and it is computed once per matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.engine.errors import EngineError

# Damping tried in turn, relative to mean(diag G); 0 first so a healthy Gram is untouched.
DAMPING_SCHEDULE = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class Whitener:
    """Cholesky factor L (lower, float64) of the damped Gram, and the damping it took."""

    L: torch.Tensor
    damping: float  # relative: the added diagonal is damping * mean(diag G)

    def whiten(self, w: torch.Tensor) -> torch.Tensor:
        """W~ = L^T W for W in the paper's (in_features, out_features) layout."""
        return self.L.mT @ w.to(self.L.dtype)

    def dewhiten(self, d: torch.Tensor) -> torch.Tensor:
        """A = L^-T D, by a triangular solve rather than an explicit inverse."""
        return torch.linalg.solve_triangular(self.L.mT, d.to(self.L.dtype), upper=True)


def cholesky_whitener(gram: torch.Tensor, name: str = "matrix") -> Whitener:
    """Cholesky of the Gram's lower triangle (LAPACK's convention: an accumulated X^T X is
    symmetric up to rounding), damped by growing multiples of its scale if needed."""
    g = gram.to(torch.float64)
    scale = g.diagonal().mean().item()
    if not scale > 0:
        raise EngineError(
            f"{name}: Gram matrix has no positive diagonal (mean {scale:g}); its layer saw no calibration signal"
        )
    for eps in DAMPING_SCHEDULE:
        damped = g
        if eps:
            damped = g.clone()
            damped.diagonal().add_(eps * scale)
        L, info = torch.linalg.cholesky_ex(damped)
        if info.item() == 0:
            return Whitener(L=L, damping=eps)
    raise EngineError(
        f"{name}: Gram matrix stays indefinite after damping up to "
        f"{DAMPING_SCHEDULE[-1]:g} x mean(diag G); the calibration statistics are broken"
    )
