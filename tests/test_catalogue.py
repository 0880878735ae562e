"""The zoo catalogue resolves aliases, folders and Hub ids, and names what it cannot."""

import json

import pytest

from zoo.errors import ZooError
from zoo.sources.catalogue import aliases, resolve


def test_paper_models_resolve_to_hub_ids():
    assert resolve("llama3-8b").hub == "meta-llama/Meta-Llama-3-8B"
    assert resolve("whisper-large-v3").modality == "whisper"
    assert resolve("qwen3-vl-8b").modality == "vlm"
    spec = resolve("smollm2-135m")
    assert spec.packaged == "smollm2-135m" and spec.defaults["calibration"] == "wiki-offline"
    assert resolve("qwen3-0.6b").defaults["calibration"] == "refinedweb"  # the paper's default
    assert {"llama3.2-1b", "qwen3-8b", "llama2-7b", "qwen3-0.6b"} <= set(aliases())


def test_unknown_alias_lists_close_matches():
    with pytest.raises(ZooError, match="Did you mean: smollm2-135m"):
        resolve("smollm-135m")


def test_folders_and_hub_ids(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    assert resolve(str(tmp_path)).modality == "whisper"
    assert resolve("someorg/some-model").hub == "someorg/some-model"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZooError, match="without config.json"):
        resolve(str(empty))
