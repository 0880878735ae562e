"""`factorize`: one linear layer's weight and input Gram in, a compressed factorization out."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from zoo import methods
from zoo.engine.compot import compot
from zoo.engine.errors import EngineError
from zoo.engine.svd_llm import truncated_svd
from zoo.engine.whitening import cholesky_whitener
from zoo.methods.layout import achieved_cr, dense_bits


@dataclass
class Factorization:
    """W ~ A C with W in the paper's (in, out) layout; `reconstruct` gives PyTorch's (out, in).

    dictionary A: (in_features, k), dewhitened. codes C: (k, out_features); for a masked method
    (COMPOT) each column holds at most s nonzeros, at the positions of `support`; otherwise C is
    dense (s == k, no support). A matrix that could not be made smaller is left dense: method
    "dense", `weight` kept, `reason` says why.
    """

    method: str
    out_features: int
    in_features: int
    target_cr: float
    k: int = 0
    s: int = 0
    dictionary: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    support: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    damping: float = 0.0
    objective: list[float] = field(default_factory=list)
    whitened_norm_sq: float = 0.0
    reason: str = ""

    @property
    def is_dense(self) -> bool:
        return self.method == methods.DENSE

    @property
    def bits(self) -> int:
        if self.is_dense:
            return self.dense_bits
        return methods.get(self.method).bits(self.in_features, self.out_features, self.k, self.s)

    @property
    def dense_bits(self) -> int:
        return dense_bits(self.in_features, self.out_features)

    @property
    def cr(self) -> float:
        return achieved_cr(self.bits, self.in_features, self.out_features)

    @property
    def relative_error(self) -> float:
        """||L^T (W - W^)||^2 / ||L^T W||^2: the calibration-weighted error, in [0, 1]."""
        if self.is_dense or not self.whitened_norm_sq:
            return 0.0
        return self.objective[-1] / self.whitened_norm_sq

    def reconstruct(self) -> torch.Tensor:
        """The dense approximation in PyTorch's (out_features, in_features) layout."""
        if self.is_dense:
            return self.weight
        return self.codes.mT @ self.dictionary.mT


# A method's solver (zoo.methods' `solver`): whitened weight, k, s, iterations, tolerance in;
# dictionary, codes, support (None: dense codes) and the objective's history out.
Solved = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", list[float]]


def _orthogonal_dictionary(w: torch.Tensor, k: int, s: int, iters: int, tol: float) -> Solved:
    f = compot(w, k, s, iters, tol)
    return f.dictionary, f.codes_t.mT, f.support_t.mT, f.objective


def _truncated_svd(w: torch.Tensor, k: int, s: int, iters: int, tol: float) -> Solved:
    d, codes, error = truncated_svd(w, k)
    return d, codes, None, [error]


SOLVERS: dict[str, Callable[[torch.Tensor, int, int, int, float], Solved]] = {
    "orthogonal-dictionary": _orthogonal_dictionary,
    "truncated-svd": _truncated_svd,
}


def solvable() -> tuple[str, ...]:
    """The registered methods whose factors the engine can fit."""
    return tuple(name for name, m in methods.METHODS.items() if m.solver in SOLVERS)


def _validate(
    weight: torch.Tensor, gram: torch.Tensor, cr: float, ks_ratio: float, iters: int, method: str, name: str
) -> None:
    if method not in solvable():
        raise EngineError(f"{name}: unknown method {method!r}; choose one of {', '.join(solvable())}")
    if not 0.0 < cr < 1.0:
        raise EngineError(f"{name}: compression ratio must lie in (0, 1), got {cr!r}")
    if not ks_ratio >= 1.0:
        raise EngineError(f"{name}: k/s ratio must be >= 1, got {ks_ratio!r}")
    if iters < 0:
        raise EngineError(f"{name}: iterations must be >= 0, got {iters!r}")
    if weight.ndim != 2:
        raise EngineError(f"{name}: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise EngineError(
            f"{name}: Gram shape {tuple(gram.shape)} does not match in_features="
            f"{weight.shape[1]} of weight {tuple(weight.shape)}"
        )
    for label, t in (("weight", weight), ("Gram", gram)):
        bad = (~torch.isfinite(t)).sum().item()
        if bad:
            raise EngineError(f"{name}: {label} holds {bad} NaN/Inf value(s)")


def factorize(
    weight: torch.Tensor,
    gram: torch.Tensor,
    cr: float = 0.2,
    method: str = "compot",
    ks_ratio: float = 2.0,
    iters: int = 20,
    tol: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    name: str = "matrix",
) -> Factorization:
    """Compress one linear layer at compression ratio `cr` (eq. 11 storage).

    weight: (out_features, in_features) as nn.Linear stores it. gram: X^T X of the layer's
    inputs, (in_features, in_features), any positive scale. `dtype` is the working precision
    of the iterations (whitening is always float64); `device` defaults to the weight's.
    `tol` > 0 enables early stopping on the relative objective change (appendix A.7).
    """
    _validate(weight, gram, cr, ks_ratio, iters, method, name)
    device = torch.device(device) if device is not None else weight.device
    n, m = weight.shape
    result = Factorization(method=method, out_features=n, in_features=m, target_cr=cr)
    spec = methods.get(method)
    shape = spec.shape(m, n, cr, ks_ratio)
    if shape is None:
        result.method, result.weight = methods.DENSE, weight
        result.reason = f"{method} cannot store a {n}x{m} matrix in {1 - cr:.0%} of its dense bits"
        return result

    whitener = cholesky_whitener(gram.to(device), name=name)
    w = whitener.whiten(weight.to(device).mT).to(dtype)
    result.damping = whitener.damping
    result.whitened_norm_sq = torch.linalg.vector_norm(w, dtype=torch.float64).item() ** 2
    result.k, result.s = shape
    d, codes, result.support, result.objective = SOLVERS[spec.solver](w, result.k, result.s, iters, tol)
    result.dictionary = whitener.dewhiten(d).to(dtype)
    result.codes = codes.contiguous()
    if result.support is not None:
        result.support = result.support.contiguous()
    return result


def factorize_many(
    jobs: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]],
    workers: int | None = None,
    on_done: Callable[[str, Factorization], object] | None = None,
    **options,
) -> dict[str, Factorization]:
    """Factorize independent matrices, `name -> (weight, gram, cr)`; `on_done` hears of each.

    On CPU the per-iteration eigendecomposition (LAPACK) and the partition (numpy) keep one
    core busy but not two, while independent matrices share nothing: `workers` matrices (the
    intra-op thread count by default) run side by side on one thread each, largest first so
    that no big one runs alone at the end (torch's intra-op thread count, which is process-wide,
    is 1 meanwhile). Results equal single-threaded `factorize` calls.
    On CUDA they run one after another. `options` are `factorize`'s keyword arguments.
    """

    def run(name: str) -> Factorization:
        weight, gram, cr = jobs[name]
        return factorize(weight, gram, cr=cr, name=name, **options)

    if not jobs:
        return {}
    device = torch.device(options.get("device") or next(iter(jobs.values()))[0].device)
    workers = min(workers or torch.get_num_threads(), len(jobs)) if device.type == "cpu" else 1
    order = sorted(jobs, key=lambda name: -jobs[name][0].numel())
    results = {}
    with (
        intra_op_threads(1) if workers > 1 else nullcontext(),
        ThreadPoolExecutor(workers, thread_name_prefix="factorize") as pool,
    ):
        futures = {pool.submit(run, name): name for name in order}
        try:
            for future in as_completed(futures):
                name = futures[future]
                results[name] = future.result()
                if on_done is not None:
                    on_done(name, results[name])
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return {name: results[name] for name in jobs}


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def functional_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """tr((W - W^) G (W - W^)^T) = ||X (W - W^)^T||^2 for weights in (out, in) layout."""
    diff = weight.double() - approx.double()
    return math.fsum(((diff @ gram.double()) * diff).sum(dim=1).tolist())
