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
    assert spec.packaged == "smollm2-135m" and spec.defaults.chat  # a chat model calibrates on chats
    sets = (spec.defaults.calibration, spec.defaults.offline_calibration)
    assert sets == ("ultrachat+refinedweb", "self-chat+wiki-offline")
    assert resolve("qwen3-0.6b").defaults.calibration == "refinedweb"  # the paper's default
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


# How each modality's adapter names a scored set in its results (the scorecard's task).
TASK_NAMES = {
    "llm": lambda d: [f"perplexity/{t}" for t in d.eval_texts] + list(d.eval_tasks),
    "whisper": lambda d: [f"wer/{s}" for s in d.eval_sets],
    "vlm": lambda d: [f"vlmeval/{s}" for s in d.eval_sets],
}
OFFLINE_NAMES = {
    "whisper": lambda d: [f"wer/{s}" for s in d.offline_eval_sets],
    "vlm": lambda d: [f"vlmeval/{s}" for s in d.offline_eval_sets],
}


@pytest.mark.parametrize("alias", aliases())
def test_every_model_names_a_suite_of_real_benchmarks_and_offline_stand_ins(alias):
    """Where the Hub is reachable each model scores on real benchmarks only (the paper's: WikiText-2 and
    C4 perplexity and zero-shot tasks, LibriSpeech test WER, VLMEvalKit); its offline sets are stand-ins."""
    from zoo.evaluators.lm_eval_tasks import LOCAL_TASKS
    from zoo.evaluators.provenance import BENCHMARK, STAND_IN, provenance

    spec = resolve(alias)
    suite = TASK_NAMES[spec.modality](spec.defaults)
    assert suite and {t: provenance(t) for t in suite} == dict.fromkeys(suite, BENCHMARK)
    offline = OFFLINE_NAMES[spec.modality](spec.defaults) if spec.modality in OFFLINE_NAMES else list(LOCAL_TASKS)
    assert {t: provenance(t) for t in offline} == dict.fromkeys(offline, STAND_IN)
    if spec.modality == "llm":
        assert spec.defaults.eval_texts == ["wikitext2", "c4"]


def test_healing_is_the_modality_s_default_unless_asked():
    """Whisper's WER worsened with healing (docs/quality.md): its default is none; LLMs heal."""
    from zoo.compression.config import CompressionConfig
    from zoo.sources.catalogue import modality_defaults

    whisper, llm = modality_defaults("whisper"), modality_defaults("llm")
    assert whisper.heal == 0 < llm.heal
    assert CompressionConfig().resolved(None, whisper.dtype, whisper.heal).heal == 0
    assert CompressionConfig(heal=8).resolved(None, whisper.dtype, whisper.heal).heal == 8
