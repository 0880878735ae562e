"""GGUF -> plain transformers folder: reused when complete, and numerically the same model."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zoo.errors import ZooError
from zoo.sources.assets import fetch_asset
from zoo.sources.converters import gguf
from zoo.sources.converters.gguf import PACKAGED_LLMS, materialize_gguf, packaged_llm_dir


def _refuse_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a complete folder must be reused without loading the GGUF")

    monkeypatch.setattr(gguf.AutoModelForCausalLM, "from_pretrained", refuse)


def test_complete_folder_is_reused_without_loading(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (out / name).write_text("{}")
    _refuse_loading(monkeypatch)
    assert materialize_gguf(tmp_path / "absent.gguf", out) == out


def test_errors_name_the_file_folder_or_alias(tmp_path, monkeypatch):
    _refuse_loading(monkeypatch)
    with pytest.raises(ZooError, match=f"GGUF file not found: {tmp_path / 'absent.gguf'}"):
        materialize_gguf(tmp_path / "absent.gguf", tmp_path / "out")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(ZooError, match=f"{partial} exists but is not a complete model folder"):
        materialize_gguf(tmp_path / "model.gguf", partial)
    with pytest.raises(ZooError, match="no packaged copy of 'llama3-8b'; packaged LLMs: smollm2-135m"):
        packaged_llm_dir("llama3-8b")


def test_packaged_llm_dir_lives_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOT_ZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(gguf, "fetch_asset", lambda name: tmp_path / f"{name}.gguf")
    monkeypatch.setattr(gguf, "materialize_gguf", lambda src, out: (src, out))
    expected = (tmp_path / "smollm2-135m-gguf.gguf", tmp_path / "models" / "smollm2-135m")
    assert packaged_llm_dir("smollm2-135m") == expected
    assert set(PACKAGED_LLMS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"}


@pytest.mark.slow
def test_converted_smollm2_matches_the_gguf_model(tmp_path):
    """About two minutes on 2 cores: the GGUF is dequantized twice (conversion, reference)."""
    source = fetch_asset("smollm2-135m-gguf")
    out = materialize_gguf(source, tmp_path / "smollm2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]  # no temp folder left beside it
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    assert not list(out.glob("*.bin")) and (out / "generation_config.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight

    reference = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    ).eval()
    reference_tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    prompt = "The capital of France is Paris. The capital of Italy is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert torch.equal(ids, reference_tokenizer(prompt, return_tensors="pt").input_ids)
    with torch.no_grad():
        logits, expected = model(ids).logits, reference(ids).logits
    assert torch.equal(logits, expected)
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Rome"
    assert model.generation_config.eos_token_id == reference.generation_config.eos_token_id
