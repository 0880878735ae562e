"""Factorize -> CompotLinear -> save -> load (zoo and transformers) gives the same model; saves are atomic."""

import dataclasses
import functools
import json

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

import zoo
from tests.records import make_record
from tests.tiny_models import tiny_llama, tiny_qwen2
from zoo.compression.layer import CompotLinear
from zoo.compression.quantized import unpack_bits
from zoo.engine import factorize
from zoo.errors import ZooError
from zoo.format.checkpoint import WEIGHTS, compot_layers, save_compressed
from zoo.format.record import RECORD, read_record
from zoo.methods.layout import dense_bits

PROMPT = torch.tensor([[3, 17, 42, 9, 100, 5, 77, 1]])
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_gram(n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(4 * n, n, generator=g)
    return x.T @ x / x.shape[0]  # SPD, like a real X^T X


@functools.cache
def compress(make):
    """Every projection through the engine, alternating COMPOT and SVD-LLM; returns the factorizations.

    Cached: the tests only read the model, and factorizing is the slow part.
    """
    model = make()
    g = torch.Generator().manual_seed(0)
    factors = {}
    targets = [(n, m) for n, m in model.named_modules() if n.endswith(PROJECTIONS)]
    for i, (name, linear) in enumerate(targets):
        f = factorize(
            linear.weight.detach(),
            random_gram(linear.in_features, g),
            cr=0.3,
            method=("compot", "svd-llm")[i % 2],
            iters=5,
            name=name,
        )
        model.set_submodule(name, CompotLinear.from_factorization(f, linear.bias))
        factors[name] = f
    return model, factors


@pytest.fixture(scope="module", params=[tiny_llama, tiny_qwen2], ids=["llama-tied", "qwen2-bias"])
def compressed(request, tmp_path_factory):
    model, factors = compress(request.param)
    out = tmp_path_factory.mktemp("ckpt") / "variant"
    save_compressed(model, out, make_record(model))
    return model, factors, out


def test_loaders_rebuild_the_same_model(compressed):
    model, factors, out = compressed
    expected = model(PROMPT).logits
    kept = zoo.load(out, inference=False)
    for name, layer in compot_layers(kept).items():
        saved = model.get_submodule(name)
        assert layer.layout == "stored" and layer.dictionary.dtype == saved.dictionary.dtype
        assert torch.equal(layer.dense_codes(), saved.dense_codes())  # mask + values survive exactly
    assert compot_layers(kept).keys() == factors.keys()
    assert torch.equal(kept(PROMPT).logits, expected)
    for loaded in (zoo.load(out), AutoModelForCausalLM.from_pretrained(out)):
        layers = compot_layers(loaded)
        assert layers.keys() == factors.keys()
        assert {layer.layout for layer in layers.values()} <= {"factors", "dense"}
        logits = loaded(PROMPT).logits
        assert (logits - expected).abs().max() <= 1e-2 * expected.abs().max()  # one 16-bit rounding apart
        out_ids = loaded.generate(PROMPT, max_new_tokens=4, do_sample=False)
        assert out_ids.shape == (1, PROMPT.shape[1] + 4)
        if loaded.config.tie_word_embeddings:
            assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_layers_compute_the_factorization(compressed):
    model, factors, _ = compressed
    g = torch.Generator().manual_seed(2)
    for name, f in factors.items():
        layer = model.get_submodule(name)
        x_in = torch.randn(3, f.in_features, generator=g)
        bias = 0 if layer.bias is None else layer.bias
        a16, c16 = f.dictionary.half().float(), f.codes.half().float()
        assert torch.allclose(layer(x_in), x_in @ a16 @ c16 + bias, atol=1e-5), name
        assert torch.allclose(layer(x_in), x_in @ f.reconstruct().T + bias, rtol=1e-2, atol=2e-2), name
        if f.method == "compot":
            assert torch.equal(unpack_bits(layer.code_mask, 1, (f.out_features, f.k)).bool(), f.support.T)


def test_stored_bytes_match_eq_11_and_the_record(compressed):
    model, factors, out = compressed
    tensors = safetensors.torch.load_file(out / WEIGHTS)
    for name, f in factors.items():
        in_file = sum(
            8 * t.numel() * t.element_size()
            for k, t in tensors.items()
            if k.startswith(name + ".") and k.endswith((".dictionary", ".code_values", ".code_mask"))
        )
        assert in_file == model.get_submodule(name).stored_bits(), name
        assert 0 <= in_file - f.bits < 8, name  # eq. 11 up to the mask's padding to whole bytes
    stored = sum(
        8 * t.numel() * t.element_size()
        for k, t in tensors.items()
        if k.endswith((".dictionary", ".code_values", ".code_mask"))
    )
    eq11 = sum(f.bits for f in factors.values())
    dense = sum(dense_bits(f.in_features, f.out_features) for f in factors.values())
    record = read_record(out)
    assert record.file_bytes == (out / WEIGHTS).stat().st_size
    assert dataclasses.replace(record, file_bytes=None) == make_record(model)  # the record round-trips through JSON
    assert record.achieved_cr == pytest.approx(1 - stored / dense)
    assert record.eq11_cr == pytest.approx(1 - eq11 / dense)
    for layer in record.layers:
        f = factors[layer.name]
        assert (layer.k, layer.s, layer.method, layer.storage_dtype) == (f.k, f.s, f.method, "float16")
        assert layer.cr == pytest.approx(f.cr)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compot"
    assert config["quantization_config"]["layers"].keys() == factors.keys()


def test_only_safetensors_json_and_the_loader_stub_are_written(compressed):
    _, _, out = compressed
    written = {p.name for p in out.iterdir()}
    assert written == {"model.safetensors", "config.json", "generation_config.json", "configuration_compot.py", RECORD}


def test_a_model_loaded_for_inference_refuses_saving_and_one_loaded_with_factors_round_trips(compressed, tmp_path):
    model, _, out = compressed
    loaded = AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(ValueError, match="not serializable"):
        loaded.save_pretrained(tmp_path / "refused")
    with pytest.raises(ZooError, match=r"saving model\.layers\.0\.\S+: .* inference=False"):
        save_compressed(zoo.load(out), tmp_path / "refused", make_record(model))
    assert not (tmp_path / "refused").exists()
    zoo.load(out, inference=False).save_pretrained(tmp_path / "resaved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved")
    assert torch.equal(again(PROMPT).logits, AutoModelForCausalLM.from_pretrained(out)(PROMPT).logits)


def test_existing_directory_is_refused_unless_overwrite(tmp_path):
    model, _ = compress(tiny_llama)
    out = tmp_path / "ckpt"
    save_compressed(model, out, make_record(model))
    (out / "stale.txt").write_text("x")
    with pytest.raises(ZooError, match="exists"):
        save_compressed(model, out, make_record(model))
    assert (out / "stale.txt").exists()
    save_compressed(model, out, make_record(model), overwrite=True)
    assert not (out / "stale.txt").exists() and (out / WEIGHTS).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing left beside it

    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    with pytest.raises(ZooError, match="not a compressed checkpoint"):
        save_compressed(model, other, make_record(model), overwrite=True)
    assert (other / "mine.txt").exists()


def test_extra_files_land_in_the_checkpoint(tmp_path):
    model, _ = compress(tiny_llama)
    out = tmp_path / "ckpt"
    save_compressed(model, out, make_record(model), extra_files=lambda d: (d / "tokenizer.json").write_text("{}"))
    assert (out / "tokenizer.json").read_text() == "{}"


def _interrupting_writer(tensors, filename, metadata=None):
    with open(filename, "wb") as fh:
        fh.write(b"\0" * 64)  # half a file, then the process is interrupted
    raise KeyboardInterrupt


def test_interrupted_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    model, _ = compress(tiny_llama)
    monkeypatch.setattr("zoo.format.checkpoint.save_file", _interrupting_writer)
    with pytest.raises(KeyboardInterrupt):
        save_compressed(model, tmp_path / "ckpt", make_record(model))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, _ = compress(tiny_llama)
    out = tmp_path / "ckpt"
    save_compressed(model, out, make_record(model, variant="run-1"))
    monkeypatch.setattr("zoo.format.checkpoint.save_file", _interrupting_writer)
    with pytest.raises(KeyboardInterrupt):
        save_compressed(model, out, make_record(model, variant="run-2"), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert read_record(out).variant == "run-1"
    assert torch.equal(zoo.load(out, inference=False)(PROMPT).logits, model(PROMPT).logits)


def test_missing_and_corrupt_files_are_named(tmp_path):
    model, _ = compress(tiny_llama)
    out = tmp_path / "ckpt"
    save_compressed(model, out, make_record(model))
    weights = out / WEIGHTS
    data = weights.read_bytes()
    for cut in (data[:1000], data[:-100]):  # inside the header, inside the tensors
        weights.write_bytes(cut)
        with pytest.raises(ZooError, match="model.safetensors is corrupt"):
            zoo.load(out)
    weights.unlink()
    with pytest.raises(ZooError, match="model.safetensors is missing"):
        zoo.load(out)
    with pytest.raises(ZooError, match="config.json is missing"):
        zoo.load(tmp_path)


def test_weights_that_do_not_fit_the_architecture_are_named(tmp_path):
    model, _ = compress(tiny_llama)
    out = tmp_path / "ckpt"
    save_compressed(model, out, make_record(model))
    tensors = safetensors.torch.load_file(out / WEIGHTS)
    tensors["model.extra.weight"] = tensors.pop("model.norm.weight")
    safetensors.torch.save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ZooError, match=r"missing \['model.norm.weight'\], unexpected \['model.extra.weight'\]"):
        zoo.load(out)


def test_nothing_compressed_is_refused(tmp_path):
    with pytest.raises(ZooError, match="no compressed layers"):
        save_compressed(tiny_llama(), tmp_path / "ckpt", make_record(tiny_llama()))
    assert not (tmp_path / "ckpt").exists()
