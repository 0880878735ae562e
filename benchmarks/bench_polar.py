"""Routes to COMPOT's polar factor (eq. 24), timed and scored against the exact one.

The engine's route is a float64 eigendecomposition of the k x k Gram M^T M per iteration.
The alternatives here use only GEMMs and Cholesky solves, which GPUs run far faster than an
eigendecomposition, and can start from what the previous iteration learnt:

- `newton-schulz`: the cubic iteration X <- X (3I - X^T X) / 2 from X0 = M / ||M||_F, run on
  the k x k Gram G = M^T M in float64 in its stable coupled form (Y -> G^(1/2), Z -> G^(-1/2),
  U = M Z), until a step changes less than the tolerance. It converges at a rate set by M's condition
  number alone: a start that does not commute with G (such as last iteration's factor) does
  not converge to polar(M), so nothing can be carried over.
- `dwh`: dynamically weighted Halley (Nakatsukasa, Bai and Gygi 2010), also on the Gram, in
  float64: each step is X <- X (aI + bG)(I + cG)^-1, one Cholesky solve, with weights from a
  lower bound on the smallest singular value (inverse power iteration on the Gram's Cholesky
  factor, halved). Six steps reach float64 accuracy for any condition number below 1e16.

The inputs are the M = W~ S^T each COMPOT iteration meets on real layers fed real text:

    .venv/bin/python -m benchmarks.bench_polar --model smollm2-135m --blocks 3 --cr 0.2

It prints, per route and matrix shape, the time per polar factor as a ratio to the exact
route in this process, and the error ||U - U_exact||_F / sqrt(k) and orthogonality
||U^T U - I||_F of each route's factor (the exact route's own, for scale), worst over the iterations.
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.bench_engine import _timed, real_layers
from zoo.engine import compot as compot_module
from zoo.engine import factorize
from zoo.engine.compot import polar_factor


def newton_schulz(m: torch.Tensor, tol: float = 1e-10, max_steps: int = 100) -> tuple[torch.Tensor, int]:
    md = m.double()
    g = md.mT @ md
    norm = torch.linalg.matrix_norm(g)  # X0 = M / sqrt(||G||_F): every singular value at most 1
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    y, z = g / norm, eye.clone()  # the coupled form: Y -> (G / norm)^(1/2), Z -> its inverse
    steps = 0
    while steps < max_steps:
        steps += 1
        t = 1.5 * eye - 0.5 * z @ y
        y, z = y @ t, t @ z
        if torch.linalg.matrix_norm(t - eye) < tol:
            break
    return (md @ z / norm.sqrt()).to(m.dtype), steps


def smallest_singular_value(g: torch.Tensor, steps: int = 8) -> float:
    """sqrt of G's smallest eigenvalue by inverse power iteration on G's Cholesky factor."""
    chol = torch.linalg.cholesky(g)
    v = torch.ones(g.shape[0], 1, dtype=g.dtype, device=g.device)
    for _ in range(steps):
        v = torch.cholesky_solve(v, chol)
        v = v / torch.linalg.vector_norm(v)
    return (v.mT @ g @ v).sqrt().item()


def dwh(m: torch.Tensor, tol: float = 1e-12, max_steps: int = 20) -> tuple[torch.Tensor, int]:
    md = m.double()
    g = md.mT @ md
    norm = torch.linalg.matrix_norm(g).sqrt()  # ||M||_F >= ||M||_2
    g = g / norm**2
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    p, ell = eye.clone(), smallest_singular_value(g) / 2  # power iteration overestimates: halve
    steps = 0
    while steps < max_steps:
        steps += 1
        d = (4 * (1 - ell**2) / ell**4) ** (1 / 3)
        a = math.sqrt(1 + d) + 0.5 * math.sqrt(8 - 4 * d + 8 * (2 - ell**2) / (ell**2 * math.sqrt(1 + d)))
        b = (a - 1) ** 2 / 4
        c = a + b - 1
        y = p @ g @ p
        p = p @ torch.cholesky_solve(a * eye + b * y, torch.linalg.cholesky(eye + c * y))
        ell = min(1.0, ell * (a + b * ell**2) / (1 + c * ell**2))
        if 1 - ell < tol:
            break
    return (md @ (p / norm)).to(m.dtype), steps


def polar_inputs(model: str, blocks: list[int], cr: float, iters: int, limit: int) -> list[list[torch.Tensor]]:
    """Per matrix, the sequence of Procrustes inputs M its COMPOT iterations met."""
    sequences: list[list[torch.Tensor]] = []
    exact = compot_module.polar_factor

    def recording(m: torch.Tensor) -> torch.Tensor:
        sequences[-1].append(m.clone())
        return exact(m)

    compot_module.polar_factor = recording
    try:
        for _, weight, gram in list(real_layers(model, blocks, 16, 512))[:limit]:
            sequences.append([])
            factorize(weight, gram, cr=cr, iters=iters)
    finally:
        compot_module.polar_factor = exact
    return sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", type=int, nargs="+", default=[3])
    parser.add_argument("--cr", type=float, default=0.2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--matrices", type=int, default=7, help="how many of the blocks' matrices")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'shape':>12s} {'cond(M)':>9s} {'route':>14s} {'steps':>6s} {'time/exact':>10s} {'err':>9s} {'orth':>9s}")
    for seq in polar_inputs(args.model, args.blocks, args.cr, args.iters, args.matrices):
        seq = [m.to(args.device) for m in seq]
        sv = torch.linalg.svdvals(seq[-1].double())
        cond = (sv[0] / sv[-1]).item()
        totals = {"exact": 0.0, "newton-schulz": 0.0, "dwh": 0.0}
        steps = {"newton-schulz": 0, "dwh": 0}
        worst = {name: (0.0, 0.0) for name in totals}
        for m in seq:
            u, t = _timed(polar_factor, m)
            totals["exact"] += t
            k = m.shape[1]
            eye = torch.eye(k, dtype=torch.float64, device=m.device)
            (v, n), t = _timed(newton_schulz, m)
            totals["newton-schulz"] += t
            steps["newton-schulz"] += n
            (w, n), t = _timed(dwh, m)
            totals["dwh"] += t
            steps["dwh"] += n
            routes = {"exact": u, "newton-schulz": v, "dwh": w}
            for name, x in routes.items():
                err = (torch.linalg.matrix_norm(x.double() - u.double()) / math.sqrt(k)).item()
                orth = torch.linalg.matrix_norm(x.double().mT @ x.double() - eye).item()
                worst[name] = tuple(
                    max(old, new) if math.isfinite(new) else math.inf
                    for old, new in zip(worst[name], (err, orth), strict=True)
                )
        shape = "x".join(map(str, seq[0].shape))
        for name in totals:
            per = steps.get(name, 0) / len(seq)
            print(
                f"{shape:>12s} {cond:9.1e} {name:>14s} {per:6.1f} {totals[name] / totals['exact']:10.2f} "
                f"{worst[name][0]:9.1e} {worst[name][1]:9.1e}"
            )


if __name__ == "__main__":
    main()
