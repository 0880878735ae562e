"""The CUDA sparse-codes kernel against the dense reference. Without a GPU it runs under Triton's
interpreter on CPU tensors, whose dot product is wrong for bfloat16 (a limitation of the
interpreter), so bfloat16 is checked on CUDA only."""

import importlib.util

import pytest
import torch

from zoo.compression import kernel
from zoo.compression.layer import CompotLinear
from zoo.engine import factorize

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
CUDA = torch.cuda.is_available()


@pytest.fixture
def device():
    assert CUDA or kernel.interpreted(), "conftest sets TRITON_INTERPRET=1 without a GPU"
    return "cuda" if CUDA else "cpu"


def _layer(out: int, inp: int, cr: float, seed: int, dtype: torch.dtype, bias: bool = False) -> CompotLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    f = factorize(w, torch.eye(inp), cr=cr, iters=3)
    return CompotLinear.from_factorization(f, torch.randn(out, generator=g) if bias else None, dtype)


# odd sizes: k not a multiple of the chunk, out not a multiple of the row tile, a batch over one tile
@pytest.mark.parametrize(
    ("out", "inp", "cr", "batch"), [(150, 100, 0.3, (3, 7)), (70, 130, 0.6, (1,)), (33, 200, 0.1, (40,))]
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_matches_the_dense_codes(device, out, inp, cr, batch, dtype):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("the interpreter's bfloat16 dot is wrong")
    layer = _layer(out, inp, cr, seed=out, dtype=dtype).to(device)
    hidden = torch.randn(*batch, layer.k, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = kernel.sparse_codes_matmul(hidden, layer.code_values, layer.code_mask, layer.k)
    expected = hidden.float() @ layer.dense_codes().float().T
    assert got.shape == (*batch, out) and got.dtype == dtype
    assert (got.float() - expected).abs().max() <= 1e-2 * expected.abs().max()
    exact = kernel.sparse_codes_matmul(hidden.float(), layer.code_values, layer.code_mask, layer.k)
    assert torch.allclose(exact, expected, rtol=1e-4, atol=1e-4)  # float32 inputs: the same sum


def test_layer_multiplies_through_the_kernel_from_the_stored_form(device, monkeypatch):
    layer = _layer(96, 80, 0.3, seed=3, dtype=torch.float16, bias=True).to(device)
    x = torch.randn(4, 80, generator=torch.Generator().manual_seed(4)).to(device, torch.float16)
    assert kernel.applies(x, layer.code_values) == CUDA
    calls = []
    monkeypatch.setattr(kernel, "applies", lambda hidden, values: True)
    real = kernel.sparse_codes_matmul
    monkeypatch.setattr(kernel, "sparse_codes_matmul", lambda *a: calls.append(1) or real(*a))
    held = {n: t.data_ptr() for n, t in [*layer.named_parameters(), *layer.named_buffers()]}
    assert layer.to_inference() == "stored"  # the kernel reads the stored form: nothing to derive
    got = layer(x)
    assert calls and {n: t.data_ptr() for n, t in [*layer.named_parameters(), *layer.named_buffers()]} == held
    reference = (x.float() @ layer.dictionary.float().T) @ layer.dense_codes().float().T + layer.bias.float()
    assert (got.float() - reference).abs().max() <= 1e-2 * reference.abs().max()
