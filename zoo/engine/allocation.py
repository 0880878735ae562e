"""Dynamic CR allocation, Algorithm 2: truncate the smallest Frobenius-normalised singular
values pooled over all matrices, within per-matrix guards, until the global budget holds.

Budgets are counted with the low-rank storage model r (m + n) of the paper; the per-matrix
ratios it yields are then met by each method's own storage (eq. 11 for COMPOT).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from zoo.engine.errors import EngineError


@dataclass
class Allocation:
    """Per-matrix CR (0.0 for a matrix kept DENSE) and the guards that bounded them."""

    cr: dict[str, float]
    min_cr: float
    max_cr: float


def default_guards(cr: float) -> tuple[float, float]:
    """No matrix below half the target, none above twice it (capped at 0.9)."""
    return cr / 2, max(cr, min(0.9, 2 * cr))


def _normalised_singular_values(w: torch.Tensor) -> torch.Tensor:
    """Singular values of W / ||W||_F, descending, as square roots of the eigenvalues of the
    smaller float64 Gram: half the time of an SVD, and squaring costs digits only far below
    the middle of the spectrum, where the candidates for truncation lie."""
    g = w @ w.mT if w.shape[0] <= w.shape[1] else w.mT @ w
    return torch.linalg.eigvalsh(g / g.trace()).flip(0).clamp_min(0).sqrt().cpu()


def allocate(
    weights: Mapping[str, torch.Tensor],
    cr: float,
    min_cr: float | None = None,
    max_cr: float | None = None,
    device: torch.device | str | None = None,
) -> Allocation:
    """Per-matrix compression ratios whose low-rank storage meets `cr` model-wide (Algorithm 2).

    weights: name -> (out_features, in_features) matrix. `min_cr` / `max_cr` bound each
    matrix's ratio (default: `default_guards(cr)`); a matrix that cannot save storage within
    them gets 0.0 (kept DENSE). `device` is where the spectra are computed (default: each weight's).
    """
    if not 0.0 < cr < 1.0:
        raise EngineError(f"compression ratio must lie in (0, 1), got {cr!r}")
    lo, hi = default_guards(cr)
    min_cr = lo if min_cr is None else min_cr
    max_cr = hi if max_cr is None else max_cr
    if not 0.0 <= min_cr <= cr <= max_cr < 1.0:
        raise EngineError(
            f"guards must satisfy 0 <= min_cr <= cr <= max_cr < 1, got min_cr={min_cr}, cr={cr}, max_cr={max_cr}"
        )
    if not weights:
        raise EngineError("nothing to allocate: no matrices given")

    names = list(weights)
    sizes, sigmas, r_lo, r_hi, dense = [], [], [], [], set()
    for name in names:
        w = weights[name].to(device=device, dtype=torch.float64)
        n, m = w.shape
        p, c = m * n, m + n
        sizes.append((p, c))
        sigmas.append(_normalised_singular_values(w))
        hi_rank = min(m, n, math.floor((1 - min_cr) * p / c))
        lo_rank = min(hi_rank, max(1, math.ceil((1 - max_cr) * p / c)))
        r_lo.append(lo_rank)
        r_hi.append(hi_rank)
        if lo_rank * c >= p:
            dense.add(name)

    total = sum(p for p, _ in sizes)
    target = (1 - cr) * total
    active = [i for i, name in enumerate(names) if name not in dense]
    if not active:
        raise EngineError(f"no matrix can be made smaller within max_cr={max_cr}: all {len(names)} stay dense")
    stored = sum(sizes[i][0] for i in range(len(names)) if names[i] in dense)
    stored += sum(r_hi[i] * sizes[i][1] for i in active)

    # Candidates beyond the mandatory truncations: positions r_lo..r_hi-1 of each spectrum.
    values, owners, positions = [], [], []
    for i in active:
        span = torch.arange(r_lo[i], r_hi[i])
        values.append(sigmas[i][span])
        owners.append(torch.full_like(span, i))
        positions.append(span)
    values, owners, positions = torch.cat(values), torch.cat(owners), torch.cat(positions)
    # Smallest first; among ties the deeper position, so each spectrum is cut from its tail.
    order = torch.from_numpy(np.lexsort((-positions.numpy(), values.numpy())))
    savings = torch.tensor([sizes[i][1] for i in range(len(names))], dtype=torch.float64)[owners[order]]
    needed = stored - target
    cut = 0
    if needed > 0:
        reach = savings.cumsum(0)
        if reach[-1] < needed:
            raise EngineError(
                f"CR {cr} is not reachable within max_cr={max_cr}: at the guard the "
                f"model still stores {1 - (stored - reach[-1].item()) / total:.3f} less"
            )
        cut = int(torch.searchsorted(reach, torch.tensor(needed, dtype=torch.float64)).item()) + 1
    truncated = torch.bincount(owners[order[:cut]], minlength=len(names))

    crs = {}
    for i, name in enumerate(names):
        p, c = sizes[i]
        r = r_hi[i] - int(truncated[i])
        crs[name] = 0.0 if name in dense or r * c >= p else 1 - r * c / p
    return Allocation(cr=crs, min_cr=min_cr, max_cr=max_cr)
