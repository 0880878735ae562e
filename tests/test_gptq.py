"""GPTQ on top of COMPOT (issue 13): the engine's math, the packed storage and its accounting,
save -> load through both loaders, and bad settings refused before any work."""

import copy
import dataclasses
import functools
import math

import pytest
import safetensors
import torch
from transformers import AutoModelForCausalLM

import zoo
from tests.records import make_record
from tests.tiny_models import tiny_calibration, tiny_llama
from zoo import methods
from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.compression.layer import COMPRESSED, CompotLinear, to_inference
from zoo.compression.quantized import QuantLinear, packed_tensor, unpack_bits
from zoo.engine import factorize, functional_error
from zoo.engine.errors import EngineError
from zoo.engine.factorization import intra_op_threads
from zoo.engine.gptq import balanced_atoms, gptq, quantize_factors, refit_codes, round_to_nearest
from zoo.errors import ZooError
from zoo.format.checkpoint import WEIGHTS, compot_layers, mark_compressed, save_compressed
from zoo.format.checks import BYTES, check_files
from zoo.format.progress import BlockProgress
from zoo.methods.layout import stored_tensors
from zoo.modalities.base import get_adapter

PROMPT = torch.tensor([[3, 17, 42, 9, 100, 5, 77, 1]])


def correlated_gram(n: int, seed: int) -> torch.Tensor:
    """An input Gram with strongly correlated features, where compensation has something to gain."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8 * n, n, generator=g) @ torch.randn(n, n, generator=g) + 0.3 * torch.randn(8 * n, n, generator=g)
    return x.T @ x / x.shape[0]


def random_support(rows: int, cols: int, kept: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(rows, cols, generator=g).argsort(dim=1)[:, :kept]
    return torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, order, True)


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_has_less_calibration_weighted_error_than_round_to_nearest(bits):
    gram = correlated_gram(96, 0)
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(1))
    _, approx = gptq(w, gram, bits, 32)
    rtn = round_to_nearest(w, bits, 32)
    assert functional_error(w, approx, gram) < 0.8 * functional_error(w, rtn, gram)


def test_masked_gptq_keeps_the_support_and_beats_round_to_nearest():
    gram = correlated_gram(64, 2)
    support = random_support(40, 64, 20, 3)
    codes = torch.randn(40, 64, generator=torch.Generator().manual_seed(4)) * support
    stored, approx = gptq(codes, gram, 4, 8, support)
    assert stored.q.shape == (40, 20)  # only the kept values are stored
    assert torch.equal(approx[~support], torch.zeros(int((~support).sum())))  # every pruned code exactly 0
    kept = torch.zeros_like(approx).masked_scatter_(support, stored.values())
    assert torch.equal(kept, approx)  # what is stored is what was rounded against
    rtn = round_to_nearest(codes, 4, 8, support)
    assert functional_error(codes, approx, gram) < 0.95 * functional_error(codes, rtn, gram)


def test_codes_hold_their_grid_and_each_group_its_own_scale():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(5))
    w[:, 32:] *= 100  # the second group's scale must not shrink the first's grid
    stored, approx = gptq(w, torch.eye(64), 3, 32)
    assert stored.q.max() <= 7 and stored.scales.shape == (8, 2) and stored.scales.dtype == torch.float16
    assert (stored.scales[:, 1] > 50 * stored.scales[:, 0]).all()
    assert torch.equal(stored.values(), approx)


def test_quantizing_factors_keeps_codes_on_their_support_and_beats_rounding_them():
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(6))
    gram = correlated_gram(64, 7)
    f = factorize(w, gram, cr=0.3, iters=5)
    q = quantize_factors(f, w, gram, 3, 16)
    assert q.codes.q.shape == (48, f.s)
    a_rtn = round_to_nearest(f.dictionary.mT, 3, 16)
    c_rtn = round_to_nearest(f.codes.mT, 3, 16, f.support.mT)
    assert functional_error(w, q.approx, gram) < functional_error(w, c_rtn @ a_rtn, gram)


def test_quantized_factors_do_not_depend_on_how_a_factorization_splits_each_atoms_scale():
    """Atom i times r_i with its codes over r_i is the same matrix; GPTQ of the factors must see
    the same thing, or COMPOT's orthonormal atoms (all scale in the codes) quantize badly."""
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(11))
    gram = correlated_gram(64, 12)
    f = factorize(w, gram, cr=0.3, iters=5)
    r = torch.logspace(-1, 1, f.k)[torch.randperm(f.k, generator=torch.Generator().manual_seed(13))]
    rescaled = dataclasses.replace(f, dictionary=f.dictionary * r, codes=f.codes / r[:, None])
    assert torch.allclose(rescaled.dictionary @ rescaled.codes, f.dictionary @ f.codes, rtol=1e-4, atol=1e-5)
    errors = [quantize_factors(x, w, gram, 4, 16).relative_error for x in (f, rescaled)]
    assert errors[1] == pytest.approx(errors[0], rel=0.02)


def test_svd_llm_factors_are_already_balanced():
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(14))
    gram = correlated_gram(64, 15).double()
    f = factorize(w, gram, cr=0.3, method="svd-llm")
    assert f.damping == 0.0
    torch.testing.assert_close(balanced_atoms(f.dictionary, f.codes, gram), f.dictionary, rtol=1e-3, atol=1e-6)


def test_refit_codes_solve_each_outputs_normal_equations_on_its_support_with_two_threads():
    """Batches of ~200x200 systems: where torch 2.13's batched LU fails on CPU with two threads."""
    in_features, k, s, out = 480, 420, 210, 64
    g = torch.Generator().manual_seed(8)
    dictionary = torch.randn(in_features, k, generator=g) / in_features**0.5
    gram = correlated_gram(in_features, 9).double()
    w = torch.randn(out, in_features, generator=g)
    support = random_support(out, k, s, 10)
    with intra_op_threads(2):
        codes = refit_codes(w, gram, dictionary, support)
    assert bool((codes.mT[~support] == 0).all())
    a = dictionary.double()
    residual = (a.mT @ gram @ a @ codes.double() - a.mT @ gram @ w.double().mT).mT  # (out, k)
    scale = (a.mT @ gram @ w.double().mT).abs().max()
    assert residual[support].abs().max() < 1e-6 * scale


@pytest.mark.parametrize("shape", [(48, 64), (64, 48)])
def test_a_quantized_layer_computes_the_matrix_gptq_measured(shape):
    """Stored and in its inference layout, the layer multiplies by `approx` (the matrix whose error
    GPTQ reported), to the 16-bit rounding of its dequantized values: a transposed factor, a
    shifted group or a wrong zero point would show here, not in a reload comparison."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(8))
    gram = correlated_gram(shape[1], 9)
    f = factorize(w, gram, cr=0.3, iters=5)
    q = quantize_factors(f, w, gram, 4, 16)
    layer = CompotLinear.from_factorization(f, None, torch.float16, q)
    eye = torch.eye(shape[1])
    tolerance = 2e-3 * q.approx.abs().max()
    with torch.no_grad():
        torch.testing.assert_close(layer(eye).T, q.approx, rtol=0, atol=tolerance)
        layer.to_inference()
        torch.testing.assert_close(layer(eye).T, q.approx, rtol=0, atol=tolerance)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bit_packing_round_trips_and_takes_the_counted_bytes(bits):
    values = torch.randint(0, 2**bits, (7, 13), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    packed = packed_tensor(values, bits)
    assert packed.numel() == -(-values.numel() * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, (7, 13)), values)


@functools.cache
def quantized_model(method: str):
    """A tiny Llama through the pipeline with 4-bit GPTQ (group 32 divides its 64 and 160 inputs)."""
    model = tiny_llama()
    config = CompressionConfig(
        cr=0.3, method=method, static=method == "svd-llm", quantize="gptq-w4", quantize_group_size=32, device="cpu"
    )
    records = compress_model(model, get_adapter("llm").stacks(model, None), tiny_calibration(), config)
    mark_compressed(model)
    return model, records, config


@pytest.fixture(scope="module", params=["compot", "svd-llm", "gptq"])
def saved(request, tmp_path_factory):
    model, records, config = quantized_model(request.param)
    out = tmp_path_factory.mktemp("ckpt") / "variant"
    record = save_compressed(model, out, make_record(model, layers=tuple(records), config=config))
    return model, record, out


def test_every_projection_is_stored_quantized_in_the_counted_bits(saved):
    model, record, out = saved
    layers = compot_layers(model)
    assert len(layers) == len(record.layers) == 14 and all(layer.bits == 4 for layer in layers.values())
    with safetensors.safe_open(out / WEIGHTS, framework="pt") as f:
        on_disk = {key: f.get_slice(key) for key in f.keys()}
    for r in record.layers:
        n, m = r.shape
        expected = stored_tensors(methods.get(r.method), m, n, k=r.k, s=r.s, bits=4, group_size=32)
        assert r.stored_bits == r.eq11_bits == sum(t.bits for t in expected.values())
        prefix = f"{r.name}."
        stored = [s for key, s in on_disk.items() if key.startswith(prefix) and not key.endswith("bias")]
        file_bits = sum(8 * math.prod(s.get_shape()) * BYTES[s.get_dtype()] for s in stored)
        assert file_bits == r.stored_bits  # the file holds exactly what the accounting counts
    assert record.achieved_cr == pytest.approx(record.eq11_cr) and record.achieved_cr > 0.7


def test_publishing_checks_the_quantized_tensors_against_the_record(saved):
    _, record, out = saved
    check_files(out, record)
    first = record.layers[0]
    wrong = dataclasses.replace(record, layers=(dataclasses.replace(first, bits=3), *record.layers[1:]))
    with pytest.raises(ZooError, match=first.name):
        check_files(out, wrong)


def test_pruned_codes_stay_exactly_zero_in_the_stored_model(saved):
    model, record, _ = saved
    for layer in compot_layers(model).values():
        if isinstance(layer, CompotLinear) and layer.method == "compot":
            twin = layer._unpacked()
            assert torch.equal(twin.kept_per_row(), torch.full((layer.out_features,), layer.s))
            assert int((twin.dense_codes() != 0).sum(dim=1).max()) <= layer.s


def test_save_load_through_both_loaders_gives_identical_logits(saved):
    model, _, out = saved
    stored = model(PROMPT).logits
    kept = zoo.load(out, inference=False)
    assert all(layer.bits == 4 and layer.layout == "stored" for layer in compot_layers(kept).values())
    assert torch.equal(kept(PROMPT).logits, stored)
    reference = tiny_copy_in_inference_layout(model)
    for loaded in (zoo.load(out), AutoModelForCausalLM.from_pretrained(out)):
        layers = compot_layers(loaded)
        assert layers.keys() == compot_layers(model).keys()
        for layer in layers.values():  # dequantized once, into 16 bits: nothing wider kept
            assert layer.layout != "stored"
            assert all(t.dtype == torch.float16 for n, t in layer.named_parameters() if n != "bias")
            assert not any(n.endswith(("_q", "_scales", "_zeros")) for n, _ in layer.named_buffers())
        assert torch.equal(loaded(PROMPT).logits, reference)


def tiny_copy_in_inference_layout(model):
    twin = copy.deepcopy(model)
    to_inference(twin)
    return twin(PROMPT).logits


def test_quantized_layers_refuse_saving_once_dequantized(saved):
    model, _, out = saved
    loaded = zoo.load(out)
    with pytest.raises(ZooError, match="no longer holds"):
        next(iter(compot_layers(loaded).values())).stored_bits()
    assert all(isinstance(m, COMPRESSED) for m in compot_layers(loaded).values())
    assert any(isinstance(m, QuantLinear) for m in compot_layers(loaded).values()) == (saved[1].method == "gptq")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"quantize": "gptq-w5"}, "unsupported bit width 5; supported: 2, 3, 4, 8"),
        ({"quantize": "int4"}, "spell it gptq-w<bits>"),
        ({"method": "gptq"}, "pass quantize"),
        ({"quantize": "gptq-w4", "quantize_group_size": 0}, "quantize_group_size 0 must be at least 1"),
        ({"quantize_group_size": 7}, "quantize_group_size 7 applies only with quantize"),
        ({"method": "gptq", "quantize": "gptq-w4", "static": True}, "static does not apply to method gptq"),
        ({"method": "gptq", "quantize": "gptq-w4", "heal": 64}, "heal does not apply to method gptq"),
    ],
)
def test_bad_quantize_settings_are_refused_with_the_value(settings, message):
    with pytest.raises(ZooError, match=message.replace("(", r"\(")):
        CompressionConfig(**settings)


def test_gptq_alone_records_no_healing():
    """Healing's default refines factors; GPTQ alone has none, so its record says none ran."""
    assert CompressionConfig(method="gptq", quantize="gptq-w4").resolved(None, "bfloat16", 32).heal == 0
    assert CompressionConfig(quantize="gptq-w4").resolved(None, "bfloat16", 32).heal == 32
    assert CompressionConfig(quantize="gptq-w4", heal=0).resolved(None, "bfloat16", 32).heal == 0


def test_a_group_size_that_does_not_divide_a_projection_is_refused_before_any_work():
    model = tiny_llama()
    config = CompressionConfig(quantize="gptq-w4", quantize_group_size=48, device="cpu")

    class Untouchable(list):
        def __iter__(self):
            raise AssertionError("calibration data was read before the settings were checked")

    calibration = tiny_calibration()
    calibration.batches = Untouchable()
    with pytest.raises(ZooError, match=r"group size 48 does not divide model\.layers\.0\.self_attn\.q_proj's 64"):
        compress_model(model, get_adapter("llm").stacks(model, None), calibration, config)
    assert not compot_layers(model)


def test_engine_refuses_an_unsupported_grid():
    with pytest.raises(EngineError, match="layer.x: unsupported bit width 5"):
        gptq(torch.randn(4, 8), torch.eye(8), 5, 8, name="layer.x")


def test_the_cli_refuses_bad_quantize_settings_before_loading_anything(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from zoo import cli, pipeline

    monkeypatch.setattr(pipeline, "resolve", lambda *a, **k: pytest.fail("the model was resolved"))
    result = CliRunner().invoke(cli.main, ["compress", "smollm2-135m", "--quantize", "gptq-w6"])
    assert (
        result.exit_code == 2 and "'gptq-w6' is not one of 'gptq-w2', 'gptq-w3', 'gptq-w4', 'gptq-w8'" in result.output
    )


def test_a_resumed_run_restores_quantized_blocks_exactly(tmp_path):
    model, records, _ = quantized_model("compot")
    layers = {name: m for name, m in compot_layers(model).items() if name.startswith("model.layers.0.")}
    progress = BlockProgress(tmp_path / "variant", "sha256:test")
    progress.save("model.layers.0", [r for r in records if r.name in layers], layers)
    restored_records, restored = progress.load("model.layers.0")
    assert [r.name for r in restored_records] == list(layers) and restored.keys() == layers.keys()
    for name, layer in restored.items():
        assert layer.bits == 4 and layer.group_size == 32
        saved = layers[name].state_dict()
        assert all(torch.equal(t, saved[key]) for key, t in layer.state_dict().items())
        x = torch.ones(2, layer.in_features)
        assert torch.equal(layer(x), layers[name](x))
