"""Compress -> save -> load (zoo and transformers) gives the same model, and saves are atomic."""

import json

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

import zoo
from tests.tiny_models import tiny_calibration, tiny_llama, tiny_qwen2
from zoo.checkpoint import save_compressed, stored_cr
from zoo.compression import CompressionConfig, achieved_cr, compress_model
from zoo.errors import ZooError
from zoo.layer import CompotLinear
from zoo.modalities.decoder_llm import ADAPTER

PROMPT = torch.tensor([[3, 17, 42, 9, 100, 5, 77, 1]])


def _compressed(make, **config):
    model = make()
    reports = compress_model(model, ADAPTER, tiny_calibration(), CompressionConfig(cr=0.3, iters=5, **config))
    return model, reports


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2])
@pytest.mark.parametrize("method", ["compot", "svd-llm"])
def test_round_trip_gives_identical_logits(tmp_path, make, method):
    model, reports = _compressed(make, method=method)
    assert all(isinstance(model.get_submodule(r.name), CompotLinear) for r in reports)
    expected = model(PROMPT).logits
    save_compressed(model, tmp_path / "ckpt", {"auto_class": "AutoModelForCausalLM"})
    for loaded in (zoo.load(tmp_path / "ckpt"), AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")):
        assert sum(isinstance(m, CompotLinear) for m in loaded.modules()) == len(reports)
        assert torch.equal(loaded(PROMPT).logits, expected)
        out = loaded.generate(PROMPT, max_new_tokens=4, do_sample=False)
        assert out.shape == (1, PROMPT.shape[1] + 4)


def test_compressed_model_differs_from_base_by_the_factorization_only():
    base = tiny_llama()
    model, reports = _compressed(tiny_llama)
    name = reports[0].name
    layer, dense = model.get_submodule(name), base.get_submodule(name)
    x = torch.randn(3, dense.in_features)
    approx = x @ (layer.dense_codes().float() @ layer.dictionary.float()).T
    assert torch.allclose(layer(x), approx, atol=1e-5)
    assert not torch.allclose(layer(x), dense(x), atol=1e-3)  # it is compressed, not a copy


def test_stored_bytes_agree_with_eq_11(tmp_path):
    model, reports = _compressed(tiny_llama, static=True)
    assert abs(stored_cr(model) - achieved_cr(reports)) < 1e-3
    save_compressed(model, tmp_path / "ckpt", {})
    tensors = safetensors.torch.load_file(tmp_path / "ckpt" / "model.safetensors")
    stored = sum(8 * t.numel() * t.element_size() for k, t in tensors.items()
                 if k.endswith((".dictionary", ".code_values", ".code_mask")))
    eq11 = sum(r.bits for r in reports)
    assert 0 <= stored - eq11 < 8 * len(reports)  # mask padded to whole bytes
    manifest = json.loads((tmp_path / "ckpt" / "compot_manifest.json").read_text())
    assert manifest["achieved_cr_stored"] == pytest.approx(stored_cr(model))


def test_existing_directory_is_refused_unless_overwrite(tmp_path):
    model, _ = _compressed(tiny_llama)
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ZooError, match="exists"):
        save_compressed(model, out, {})
    assert (out / "keep.txt").exists()
    save_compressed(model, out, {}, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_interrupted_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    model, _ = _compressed(tiny_llama)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("zoo.checkpoint.stored_cr", boom)
    with pytest.raises(KeyboardInterrupt):
        save_compressed(model, tmp_path / "ckpt", {})
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_files_are_named(tmp_path):
    model, _ = _compressed(tiny_llama)
    save_compressed(model, tmp_path / "ckpt", {"auto_class": "AutoModelForCausalLM"})
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ZooError, match="model.safetensors is corrupt"):
        zoo.load(tmp_path / "ckpt")
    weights.unlink()
    with pytest.raises(ZooError, match="model.safetensors is missing"):
        zoo.load(tmp_path / "ckpt")
    with pytest.raises(ZooError, match="compot_manifest.json is missing"):
        zoo.load(tmp_path)


def test_no_pickle_is_written(tmp_path):
    model, _ = _compressed(tiny_qwen2)
    save_compressed(model, tmp_path / "ckpt", {})
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_model_without_compressible_linears_is_an_error():
    model = tiny_llama()
    model.model.layers = torch.nn.ModuleList()
    with pytest.raises(ZooError, match="no compressible linear"):
        compress_model(model, ADAPTER, tiny_calibration(), CompressionConfig())
