"""Properties of the engine's math: each test fails if a formula or an update is wrong."""

import math

import pytest
import torch

from zoo import methods
from zoo.engine import allocate, factorize, factorize_many, functional_error
from zoo.engine.compot import compot, hard_threshold, leading_basis, polar_factor
from zoo.engine.errors import EngineError
from zoo.engine.whitening import cholesky_whitener
from zoo.methods.layout import dense_bits


def _layer(out_f=96, in_f=64, tokens=2000, seed=0):
    """A weight with a decaying spectrum and correlated, anisotropic inputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) @ torch.diag(torch.linspace(1.0, 0.05, in_f))
    mix = torch.randn(in_f, in_f, generator=g) / math.sqrt(in_f)
    x = torch.randn(tokens, in_f, generator=g) @ (torch.eye(in_f) + 2 * mix) * torch.rand(in_f, generator=g)
    return w, x.T @ x / tokens, x


def test_dictionary_is_orthonormal_and_codes_are_s_sparse():
    w, gram, _ = _layer()
    f = compot(cholesky_whitener(gram).whiten(w.T).float(), k=40, s=13, iters=10)
    eye = torch.eye(40)
    assert torch.allclose(f.dictionary.T @ f.dictionary, eye, atol=1e-5)
    nnz = (f.codes_t != 0).sum(dim=1)
    assert nnz.max().item() <= 13
    assert torch.equal(f.support_t.sum(dim=1), torch.full((96,), 13))
    assert not f.codes_t[~f.support_t].any()


def test_objective_never_increases_and_matches_residual():
    w, gram, _ = _layer(seed=1)
    wt = cholesky_whitener(gram).whiten(w.T).float()
    f = compot(wt, k=48, s=16, iters=25)
    obj = torch.tensor(f.objective)
    assert len(obj) == 26
    assert (obj[1:] <= obj[:-1] * (1 + 1e-6)).all(), obj
    assert obj[-1] < 0.9 * obj[0]  # the alternation does real work beyond the SVD start
    residual = (wt - f.dictionary @ f.codes_t.T).double().square().sum().item()
    assert residual == pytest.approx(f.objective[-1], rel=1e-4)


def test_codes_are_recomputed_after_last_dictionary_update():
    w, gram, _ = _layer(seed=2)
    wt = cholesky_whitener(gram).whiten(w.T).float()
    f = compot(wt, k=32, s=10, iters=3)
    expected, _, _ = hard_threshold(wt.T @ f.dictionary, 10)
    assert torch.equal(f.codes_t, expected)


def test_tall_matrix_iterates_on_its_r_factor():
    """m > n >= k: iterating on R of W~ = Q R gives Algorithm 1's trajectory on W~ itself."""
    w, gram, _ = _layer(out_f=48, in_f=96, seed=16)  # whitened W~ is 96 x 48
    wt = cholesky_whitener(gram).whiten(w.T).float()
    k, s, iters = 30, 10, 12
    f = compot(wt, k=k, s=s, iters=iters)
    d, total, plain = leading_basis(wt, k), wt.double().square().sum().item(), []
    for step in range(iters + 1):
        codes, _, _ = hard_threshold(wt.T @ d, s)
        plain.append(total - codes.double().square().sum().item())
        if step < iters:
            d = polar_factor(wt @ codes)
    assert f.objective == pytest.approx(plain, rel=1e-5)
    assert torch.allclose(f.dictionary.T @ f.dictionary, torch.eye(k), atol=1e-5)
    residual = (wt - f.dictionary @ f.codes_t.T).double().square().sum().item()
    assert residual == pytest.approx(f.objective[-1], rel=1e-4)
    obj = torch.tensor(f.objective)
    assert (obj[1:] <= obj[:-1] * (1 + 1e-6)).all(), obj


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_threshold_keeps_exactly_s_largest_even_with_ties(dtype):
    g = torch.Generator().manual_seed(17)
    z = torch.randn(200, 40, generator=g, dtype=dtype)
    codes, support, kept = hard_threshold(z, 15)
    assert kept == pytest.approx(codes.double().square().sum().item(), rel=1e-6)
    idx = z.abs().topk(15, dim=1).indices
    assert torch.equal(support, torch.zeros_like(support).scatter_(1, idx, True))
    assert torch.equal(codes, z * support)
    tied = torch.randint(-3, 4, (200, 40), generator=g).to(dtype)  # many equal magnitudes
    codes, support, _ = hard_threshold(tied, 15)
    assert torch.equal(support.sum(dim=1), torch.full((200,), 15))
    kept = tied.abs().masked_fill(~support, float("inf")).min(dim=1).values
    dropped = tied.abs().masked_fill(support, -1.0).max(dim=1).values
    assert (kept >= dropped).all() and torch.equal(codes, tied * support)


def test_functional_error_equals_whitened_error():
    """||X (W - W^)^T||^2 = ||L^T (W - W^)^T||^2 for any W^, on random data."""
    w, _, x = _layer(seed=3)
    x = x.double()
    gram = x.T @ x
    approx = w + 0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    diff = w.double() - approx.double()  # as functional_error forms it: no float32 rounding
    direct = (x @ diff.T).square().sum().item()
    whitener = cholesky_whitener(gram)
    whitened = whitener.whiten(diff.T).square().sum().item()
    assert whitened == pytest.approx(direct, rel=1e-9)
    assert functional_error(w, approx, gram) == pytest.approx(direct, rel=1e-9)


def test_factorize_objective_is_the_functional_error():
    w, gram, _ = _layer(seed=4)
    for method in ("compot", "svd-llm"):
        f = factorize(w, gram, cr=0.3, method=method, dtype=torch.float64)
        assert functional_error(w, f.reconstruct(), gram) == pytest.approx(f.objective[-1], rel=1e-6)


def test_exact_recovery_of_union_of_subspaces():
    """W = D S with orthonormal D and s-sparse columns on random supports is recovered."""
    g = torch.Generator().manual_seed(5)
    m, n, k, s = 64, 400, 32, 4
    d = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))[0]
    codes = torch.zeros(k, n, dtype=torch.float64)
    for j in range(n):
        idx = torch.randperm(k, generator=g)[:s]
        codes[idx, j] = torch.randn(s, generator=g, dtype=torch.float64).sign() * (1 + torch.rand(s, generator=g))
    w = d @ codes
    f = compot(w, k=k, s=s, iters=60)
    assert f.objective[-1] / w.square().sum().item() < 1e-12
    # A rank-s truncated SVD at the same k cannot do this: the columns span all k atoms.
    sv = torch.linalg.svdvals(w)
    assert sv[s:].square().sum() / sv.square().sum() > 0.5


def test_stored_bits_follow_eq_11_and_respect_the_budget():
    w, gram, _ = _layer(out_f=200, in_f=120, seed=6)
    for cr in (0.1, 0.2, 0.4, 0.6):
        f = factorize(w, gram, cr=cr, ks_ratio=2.0, iters=2)
        m, n = 120, 200
        assert f.bits == 16 * m * f.k + 16 * f.s * n + f.k * n
        assert f.bits == 16 * f.dictionary.numel() + 16 * int(f.support.sum()) + f.support.numel()
        assert f.cr == pytest.approx(1 - f.bits / (16 * m * n))
        budget = (1 - cr) * 16 * m * n
        assert budget * 0.98 < f.bits <= budget  # within budget, and not wasting it
        # k/s follows the ratio; s takes what the budget leaves after k, at most a few more.
        assert f.k <= m and f.k // 2 <= f.s <= f.k // 2 + math.ceil(m / n) + 1
        g = factorize(w, gram, cr=cr, method="svd-llm")
        assert g.bits == 16 * g.k * (m + n) and budget * 0.97 < g.bits <= budget


def test_compot_beats_svd_llm_at_equal_storage():
    w, gram, _ = _layer(out_f=256, in_f=128, seed=7)
    for cr in (0.2, 0.4):
        a = factorize(w, gram, cr=cr, method="compot")
        b = factorize(w, gram, cr=cr, method="svd-llm")
        assert a.bits <= dense_bits(128, 256) * (1 - cr)
        assert b.bits <= dense_bits(128, 256) * (1 - cr)
        assert functional_error(w, a.reconstruct(), gram) < functional_error(w, b.reconstruct(), gram)


def test_svd_llm_error_is_the_spectral_tail():
    w, gram, _ = _layer(seed=8)
    f = factorize(w, gram, cr=0.3, method="svd-llm", dtype=torch.float64)
    sv = torch.linalg.svdvals(cholesky_whitener(gram).whiten(w.T))
    assert f.objective[-1] == pytest.approx(sv[f.k :].square().sum().item(), rel=1e-9)


def test_gram_scale_does_not_change_the_result():
    w, gram, _ = _layer(seed=9)
    gram = gram.double()
    a = factorize(w, gram, cr=0.3, dtype=torch.float64).reconstruct()
    b = factorize(w, 1000.0 * gram, cr=0.3, dtype=torch.float64).reconstruct()
    assert torch.allclose(a, b, atol=1e-10)


def test_polar_factor_is_the_procrustes_optimum():
    g = torch.Generator().manual_seed(10)
    m = torch.randn(50, 20, generator=g, dtype=torch.float64)
    u = polar_factor(m)
    assert torch.allclose(u.T @ u, torch.eye(20, dtype=torch.float64), atol=1e-12)
    best = torch.trace(u.T @ m)
    for _ in range(20):
        q = torch.linalg.qr(torch.randn(50, 20, generator=g, dtype=torch.float64))[0]
        assert torch.trace(q.T @ m) <= best
    assert best == pytest.approx(torch.linalg.svdvals(m).sum().item(), rel=1e-12)


def test_polar_factor_of_ill_conditioned_float32_matches_float64_svd():
    """The float64 Gram route keeps float32 accuracy at real layers' condition numbers (1e4)."""
    g = torch.Generator().manual_seed(12)
    u, _ = torch.linalg.qr(torch.randn(120, 60, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    m = ((u * torch.logspace(0, -4, 60, dtype=torch.float64)) @ v.T).float()
    p, _, qh = torch.linalg.svd(m.double(), full_matrices=False)
    assert (polar_factor(m).double() - p @ qh).abs().max() < 1e-5


def test_polar_factor_of_rank_deficient_m_is_still_orthonormal():
    """An atom that no code uses leaves a zero column in M: any orthonormal completion is optimal."""
    g = torch.Generator().manual_seed(13)
    m = torch.randn(40, 12, generator=g, dtype=torch.float64)
    m[:, 3] = 0
    u = polar_factor(m)
    assert torch.allclose(u.T @ u, torch.eye(12, dtype=torch.float64), atol=1e-12)
    assert torch.trace(u.T @ m).item() == pytest.approx(torch.linalg.svdvals(m).sum().item(), rel=1e-12)


@pytest.mark.parametrize("shape", [(30, 80), (80, 30)])
def test_leading_basis_spans_the_top_singular_directions(shape):
    g = torch.Generator().manual_seed(14)
    w = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.logspace(0, -2, shape[1], dtype=torch.float64)
    d = leading_basis(w, 10)
    top = torch.linalg.svd(w, full_matrices=False)[0][:, :10]
    assert torch.allclose(d.T @ d, torch.eye(10, dtype=torch.float64), atol=1e-10)
    assert torch.linalg.svdvals(top.T @ d).min() > 1 - 1e-8  # same subspace


def test_rank_deficient_gram_is_damped_and_reported():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(30, 64, generator=g)  # fewer tokens than features: G is singular
    w = torch.randn(80, 64, generator=g)
    f = factorize(w, x.T @ x, cr=0.3)
    assert f.damping > 0
    assert torch.isfinite(f.reconstruct()).all()
    healthy = factorize(w, torch.eye(64), cr=0.3)
    assert healthy.damping == 0.0


def test_matrix_that_cannot_shrink_stays_dense():
    w = torch.randn(1, 2)  # one output: a 16-bit code plus a dictionary column cost more
    f = factorize(w, torch.eye(2), cr=0.1)
    assert f.is_dense and f.reason and f.cr == 0.0
    assert torch.equal(f.reconstruct(), w)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cr=0.0), "compression ratio"),
        (dict(cr=1.0), "compression ratio"),
        (dict(cr=-0.2), "compression ratio"),
        (dict(ks_ratio=0.5), "k/s ratio"),
        (dict(method="svd"), "unknown method"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    w, gram, _ = _layer()
    with pytest.raises(EngineError, match=match):
        factorize(w, gram, name="layers.0.q_proj", **kwargs)


def test_bad_tensors_are_named():
    w, gram, _ = _layer()
    with pytest.raises(EngineError, match=r"layers.3.up_proj: Gram shape \(63, 63\)"):
        factorize(w, gram[:63, :63], name="layers.3.up_proj")
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(EngineError, match="weight holds 1 NaN/Inf"):
        factorize(bad, gram)
    bad_gram = gram.clone()
    bad_gram[1, 2] = float("inf")
    with pytest.raises(EngineError, match="Gram holds 1 NaN/Inf"):
        factorize(w, bad_gram)
    with pytest.raises(EngineError, match="indefinite after damping"):
        factorize(w, torch.diag(torch.cat([torch.ones(63), torch.tensor([-50.0])])))
    with pytest.raises(EngineError, match="no positive diagonal"):
        factorize(w, torch.zeros(64, 64))


def test_float64_and_float32_agree():
    w, gram, _ = _layer(seed=12)
    a = factorize(w, gram, cr=0.3, dtype=torch.float64, iters=5)
    b = factorize(w, gram, cr=0.3, dtype=torch.float32, iters=5)
    assert b.objective[-1] == pytest.approx(a.objective[-1], rel=1e-3)


def test_factorize_many_equals_single_threaded_factorize_calls():
    jobs = {f"layers.{i}.proj": (*_layer(out_f=96 + 32 * i, seed=20 + i)[:2], 0.2 + 0.1 * i) for i in range(3)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = {name: factorize(w, gram, cr=cr, iters=6, name=name) for name, (w, gram, cr) in jobs.items()}
    finally:
        torch.set_num_threads(threads)
    heard = []
    got = factorize_many(jobs, workers=2, iters=6, on_done=lambda name, f: heard.append(name))
    assert list(got) == list(jobs) and sorted(heard) == sorted(jobs)
    for name, f in got.items():
        assert f.k == expected[name].k and torch.equal(f.reconstruct(), expected[name].reconstruct())
    assert torch.get_num_threads() == threads  # the caller's thread count is restored


def test_factorize_many_stops_at_a_bad_matrix_and_names_it():
    w, gram, _ = _layer()
    jobs = {"layers.0.q_proj": (w, gram, 0.3), "layers.0.k_proj": (w, gram[:63, :63], 0.3)}
    threads = torch.get_num_threads()
    with pytest.raises(EngineError, match="layers.0.k_proj: Gram shape"):
        factorize_many(jobs, workers=2)
    assert torch.get_num_threads() == threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    w, gram, _ = _layer(seed=13)
    a = factorize(w, gram, cr=0.3, dtype=torch.float64, iters=5)
    b = factorize(w, gram, cr=0.3, dtype=torch.float64, iters=5, device="cuda")
    assert b.dictionary.is_cuda
    assert torch.allclose(a.reconstruct(), b.reconstruct().cpu(), atol=1e-6)


def _model_weights(seed=14):
    g = torch.Generator().manual_seed(seed)
    shapes = {"q": (128, 128), "k": (32, 128), "up": (384, 128), "down": (128, 384)}
    return {
        f"layers.{i}.{t}": torch.randn(o, n, generator=g) @ torch.diag(torch.rand(n, generator=g) ** (i + 1))
        for i in range(4)
        for t, (o, n) in shapes.items()
    }


@pytest.mark.parametrize("cr", [0.2, 0.4, 0.6])
def test_allocation_meets_budget_and_guards(cr):
    weights = _model_weights()
    alloc = allocate(weights, cr)
    total = sum(16 * w.numel() for w in weights.values())
    stored = 0
    for name, w in weights.items():
        if alloc.cr[name] == 0.0:  # kept dense
            stored += 16 * w.numel()
            continue
        assert alloc.min_cr - 1e-9 <= alloc.cr[name] <= alloc.max_cr + 0.01
        k, s = methods.get("compot").shape(w.shape[1], w.shape[0], alloc.cr[name], 2.0)
        stored += methods.get("compot").bits(w.shape[1], w.shape[0], k, s)
    assert stored <= (1 - cr) * total  # never over budget
    assert (1 - stored / total) - cr <= 0.005  # and within half a percent of it
    # Allocation differs across matrices: it is not the static ratio in disguise.
    assert max(alloc.cr.values()) - min(alloc.cr.values()) > 0.1


def test_allocation_prefers_matrices_with_flat_tails():
    """A matrix with a fast-decaying spectrum gives up more rank than a flat one."""
    g = torch.Generator().manual_seed(15)
    flat = torch.linalg.qr(torch.randn(64, 64, generator=g))[0]
    steep = flat @ torch.diag(0.8 ** torch.arange(64.0))
    alloc = allocate({"flat": flat, "steep": steep}, 0.3, min_cr=0.0, max_cr=0.9)
    assert alloc.cr["steep"] > alloc.cr["flat"]


def test_allocation_rejects_bad_guards_and_unreachable_targets():
    weights = _model_weights()
    with pytest.raises(EngineError, match="guards"):
        allocate(weights, 0.3, min_cr=0.4)
    with pytest.raises(EngineError, match="compression ratio"):
        allocate(weights, 1.5)
