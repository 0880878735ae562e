"""The CUDA kernels (sparse codes, and GPTQ-packed matrices dense or as codes) against dense
references, and the layers running from their packed factors through them. Without a GPU they run
under Triton's interpreter on CPU tensors, whose dot product is wrong for bfloat16 (a limitation
of the interpreter), so bfloat16 is checked on CUDA only."""

import importlib.util

import pytest
import torch
from torch import nn

from zoo.compression import kernel, quantized
from zoo.compression import layer as layer_module
from zoo.compression.layer import CompotLinear, to_inference
from zoo.compression.quantized import QuantLinear, packed_tensor
from zoo.engine import factorize
from zoo.engine.gptq import dequantize, gptq, quantize_factors

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


def _packed(rows: int, width: int, bits: int, group_size: int, seed: int) -> tuple[kernel.Packed, torch.Tensor]:
    """A random packed (rows, width) matrix, values about +-1, and its float32 values."""
    g = torch.Generator().manual_seed(seed)
    groups = -(-width // group_size)
    q = torch.randint(0, 2**bits, (rows, width), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 2**bits, (rows, groups), generator=g, dtype=torch.uint8)
    scales = ((torch.rand(rows, groups, generator=g) + 0.5) / 2**bits).half()
    return (
        kernel.Packed(packed_tensor(q, bits), scales, packed_tensor(zeros, bits), bits, group_size, width),
        dequantize(q, scales, zeros, group_size),
    )


def _on(packed: kernel.Packed, device: str) -> kernel.Packed:
    return packed._replace(q=packed.q.to(device), scales=packed.scales.to(device), zeros=packed.zeros.to(device))


def _check(got: torch.Tensor, exact: torch.Tensor, x: torch.Tensor, dense: torch.Tensor) -> None:
    """`got` from x in a 16-bit dtype: the 16-bit values' product, rounded once; `exact` from
    float32 x: the same sum as float32 x times the dequantized float32 matrix."""
    dtype = got.dtype
    expected = x.to(dtype).float() @ dense.to(dtype).float().T
    assert (got.float() - expected).abs().max() <= 2e-3 * expected.abs().max()
    reference = x @ dense.T
    assert exact.dtype == torch.float32
    assert torch.allclose(exact, reference, rtol=1e-5, atol=1e-5 * reference.abs().max())


# rows and columns past one tile or short of it, a group crossing a column chunk, the last group short
@pytest.mark.parametrize(
    ("bits", "rows", "width", "group_size", "batch"),
    [(2, 70, 83, 32, (3, 5)), (3, 37, 130, 48, (17,)), (4, 19, 77, 16, (2,)), (8, 66, 70, 64, (1, 3))],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantized_kernel_matches_the_dequantized_matrix(device, bits, rows, width, group_size, batch, dtype):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("the interpreter's bfloat16 dot is wrong")
    weight, dense = _packed(rows, width, bits, group_size, seed=rows)
    weight, dense = _on(weight, device), dense.to(device)
    x = torch.randn(*batch, width, generator=torch.Generator().manual_seed(1)).to(device)
    got = kernel.quantized_matmul(x.to(dtype), weight)
    assert got.shape == (*batch, rows) and got.dtype == dtype
    _check(got, kernel.quantized_matmul(x, weight), x, dense)


@pytest.mark.parametrize(
    ("bits", "out", "atoms", "kept", "group_size", "batch"),
    [(2, 70, 130, 45, 16, (3, 5)), (3, 33, 100, 70, 32, (17,)), (4, 65, 80, 20, 8, (2,)), (8, 40, 150, 75, 64, (1,))],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantized_sparse_codes_kernel_matches_the_dense_codes(
    device, bits, out, atoms, kept, group_size, batch, dtype
):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("the interpreter's bfloat16 dot is wrong")
    g = torch.Generator().manual_seed(out)
    support = torch.zeros(out, atoms, dtype=torch.bool)
    support.scatter_(1, torch.rand(out, atoms, generator=g).argsort(dim=1)[:, :kept], True)
    codes, values = _packed(out, kept, bits, group_size, seed=out)
    dense = torch.zeros(out, atoms).masked_scatter_(support, values).to(device)
    codes, mask = _on(codes, device), packed_tensor(support, 1).to(device)
    hidden = torch.randn(*batch, atoms, generator=g).to(device)
    got = kernel.sparse_codes_matmul(hidden.to(dtype), codes, mask, atoms)
    assert got.shape == (*batch, out) and got.dtype == dtype
    _check(got, kernel.sparse_codes_matmul(hidden, codes, mask, atoms), hidden, dense)


def _quantized_layer(method: str) -> tuple[nn.Module, torch.Tensor]:
    """A GPTQ-quantized layer (4 bits, groups of 24: short last groups) with a bias, and the
    (out, in) matrix its packed values stand for."""
    g = torch.Generator().manual_seed(5)
    w, bias = torch.randn(80, 72, generator=g), torch.randn(80, generator=g)
    x = torch.randn(288, 72, generator=g)
    gram = x.T @ x / x.shape[0]
    if method == "gptq":
        q, approx = gptq(w, gram, 4, 24)
        return QuantLinear.from_quantized(q, bias), approx
    f = factorize(w, gram, cr=0.3, method=method, iters=3)
    q = quantize_factors(f, w, gram, 4, 24)
    return CompotLinear.from_factorization(f, bias, torch.float16, q), q.approx


KERNEL_CALLS = {
    "compot": ["quantized_matmul", "sparse_codes_matmul"],
    "svd-llm": ["quantized_matmul", "quantized_matmul"],
    "gptq": ["quantized_matmul"],
}


@pytest.mark.parametrize("method", KERNEL_CALLS)
def test_quantized_layers_run_from_their_packed_bytes_through_the_kernels(device, monkeypatch, method):
    """Where the kernels apply, `to_inference` keeps the packed form as it is, and the layer
    multiplies from it: nothing 16-bit of a factor's size exists, even for a call."""
    layer, approx = _quantized_layer(method)
    layer = layer.to(device)
    x = torch.randn(3, 5, 72, generator=torch.Generator().manual_seed(6)).to(device, torch.float16)
    monkeypatch.setattr(kernel, "applies", lambda hidden, values: True)
    calls = []
    for name in ("quantized_matmul", "sparse_codes_matmul"):
        real = getattr(kernel, name)
        monkeypatch.setattr(kernel, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))

    def refuse(*args, **kwargs):
        raise AssertionError("the factors were dequantized outside the kernels")

    for module in (layer_module, quantized):
        monkeypatch.setattr(module, "dequantized", refuse)
    held = {n: t.data_ptr() for n, t in [*layer.named_parameters(), *layer.named_buffers()]}
    assert to_inference(nn.Sequential(layer)) == {"stored": 1, "factors": 0, "dense": 0}
    with torch.no_grad():
        got = layer(x)
    assert calls == KERNEL_CALLS[method] and layer.layout == "stored"
    tensors = dict([*layer.named_parameters(), *layer.named_buffers()])
    assert {n: t.data_ptr() for n, t in tensors.items()} == held  # the very same packed tensors
    assert {n for n, t in tensors.items() if t.is_floating_point()} <= {"bias"} | {n for n in held if "scales" in n}
    reference = x.float() @ approx.to(device).T + layer.bias.float()
    assert got.dtype == torch.float16 and (got.float() - reference).abs().max() <= 1e-2 * reference.abs().max()


@pytest.mark.parametrize("method", KERNEL_CALLS)
def test_off_cuda_quantized_layers_are_dequantized_once_at_load(method):
    layer, approx = _quantized_layer(method)
    assert layer.to_inference() != "stored"
    assert not any(n.endswith(("_q", "_scales", "_zeros")) for n, _ in layer.named_buffers())
    x = torch.randn(4, 72, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ approx.T + layer.bias, rtol=0, atol=2e-2)
