"""CompotLinear stores what eq. 11 counts and computes x A C + b."""

import pytest
import torch

from zoo.compression.layer import ATOMS_MULTIPLE, CompotLinear
from zoo.compression.quantized import packed_tensor, unpack_bits
from zoo.engine import factorize
from zoo.errors import ZooError


def test_mask_packing_round_trips_exactly():
    g = torch.Generator().manual_seed(0)
    for shape in [(7, 13), (96, 40), (1, 1)]:
        mask = torch.rand(shape, generator=g) > 0.5
        packed = packed_tensor(mask, 1)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
        assert torch.equal(unpack_bits(packed, 1, shape).bool(), mask)
        tail = mask.reshape(-1)[2:]
        assert torch.equal(unpack_bits(packed, 1, tail.shape, skip=2).bool(), tail)


def test_forward_is_the_factorized_product_with_16_bit_factors():
    g = torch.Generator().manual_seed(1)
    w, bias = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    f = factorize(w, torch.eye(64), cr=0.3)
    layer = CompotLinear.from_factorization(f, bias)
    x = torch.randn(5, 64, generator=g)
    a16, c16 = f.dictionary.half().float(), f.codes.half().float()
    assert torch.allclose(layer(x), x @ a16 @ c16 + bias, atol=1e-5)
    assert torch.allclose(layer(x), x @ f.reconstruct().T + bias, rtol=1e-2, atol=2e-2)
    assert torch.equal(layer.dense_codes().float(), c16.T)


def test_stored_bits_are_eq_11_plus_mask_padding():
    w = torch.randn(50, 30)
    for method in ("compot", "svd-llm"):
        f = factorize(w, torch.eye(30), cr=0.25, method=method)
        layer = CompotLinear.from_factorization(f, None)
        assert 0 <= layer.stored_bits() - f.bits < 8


def test_values_that_overflow_float16_are_stored_in_bfloat16():
    w = torch.randn(40, 20) * 1e6
    layer = CompotLinear.from_factorization(factorize(w, torch.eye(20), cr=0.3), None)
    assert layer.dictionary.dtype == torch.bfloat16
    assert torch.isfinite(layer(torch.randn(2, 20))).all()


def test_stored_layout_keeps_only_the_stored_tensors_and_follows_in_place_updates():
    f = factorize(torch.randn(40, 20), torch.eye(20), cr=0.3)
    layer = CompotLinear.from_factorization(f, None, torch.bfloat16)
    stored = {name: t.data_ptr() for name, t in [*layer.named_parameters(), *layer.named_buffers()]}
    x = torch.randn(2, 20)  # float32 input on bfloat16 factors: converted per call, not kept
    before = layer(x)
    assert before.dtype == torch.float32
    assert {name: t.data_ptr() for name, t in [*layer.named_parameters(), *layer.named_buffers()]} == stored
    assert all(not isinstance(v, torch.Tensor) for v in vars(layer).values())  # no tensor kept beside them
    with torch.no_grad():
        layer.code_values.mul_(2)
    assert torch.allclose(layer(x), 2 * before, rtol=1e-2)


def _held_bytes(layer: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])


@pytest.mark.parametrize("method", ["compot", "svd-llm"])
@pytest.mark.parametrize(("shape", "cr", "layout"), [((1024, 640), 0.75, "factors"), ((96, 64), 0.3, "dense")])
def test_inference_layout_computes_the_same_and_holds_no_more_than_the_weight(method, shape, cr, layout):
    g = torch.Generator().manual_seed(2)
    w, bias = torch.randn(*shape, generator=g), torch.randn(shape[0], generator=g)
    layer = CompotLinear.from_factorization(factorize(w, torch.eye(shape[1]), cr=cr, method=method), bias)
    layer = layer.to(torch.bfloat16)
    x = torch.randn(3, shape[1], generator=g, dtype=torch.bfloat16)
    expected = layer(x).float()
    with torch.no_grad():
        assert layer.to_inference() == layout
    got = layer(x).float()
    assert (got - expected).abs().max() <= 2e-2 * expected.abs().max()
    assert _held_bytes(layer) - 2 * shape[0] <= 2 * shape[0] * shape[1]  # bias aside: at most the 16-bit weight
    if layout == "factors":
        assert layer.dictionary.shape[0] % ATOMS_MULTIPLE == 0 and layer.dictionary.shape[0] >= layer.k
    with pytest.raises(ZooError, match="inference layout"):
        layer.stored_bits()


def test_layer_used_under_inference_mode_still_works_with_autograd_after():
    """Evaluating under inference_mode must not poison the cache for a later grad-enabled forward."""
    f = factorize(torch.randn(40, 20), torch.eye(20), cr=0.3)
    layer = CompotLinear.from_factorization(f, None)
    x = torch.randn(2, 20, requires_grad=True)
    with torch.inference_mode():
        expected = layer(x.detach())
    out = layer(x)
    out.sum().backward()
    assert torch.equal(out.detach(), expected) and x.grad is not None


def test_a_bias_of_another_dtype_than_the_input_is_converted_per_call():
    """A block restored from an earlier run may carry a 16-bit bias into a model held in float32."""
    g = torch.Generator().manual_seed(5)
    f = factorize(torch.randn(40, 20, generator=g), torch.eye(20), cr=0.3)
    layer = CompotLinear.from_factorization(f, torch.randn(40, generator=g).half())
    x = torch.randn(3, 20, generator=g)
    stored = layer(x)
    assert stored.dtype == torch.float32 and layer.bias.dtype == torch.float16
    with torch.no_grad():
        layer.to_inference()
    torch.testing.assert_close(layer(x), stored, rtol=1e-2, atol=1e-2)
