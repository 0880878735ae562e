"""The real packaged SmolLM2-135M through the whole LLM path (slow: minutes on 2 cores)."""

import pytest
import torch

import zoo
from tests.records import make_record
from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.evaluators.perplexity import perplexity
from zoo.format.checkpoint import save_compressed
from zoo.modalities.decoder_llm import ADAPTER, _evaluation_text
from zoo.sources.catalogue import resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calibrated():
    spec = resolve("smollm2-135m")
    loaded = ADAPTER.load(spec)
    return spec, ADAPTER.calibration(loaded, "wiki-offline", n_samples=8, seq_len=512, seed=0, online=False)


def _compressed_ppl(spec, calibration, **config):
    loaded = ADAPTER.load(spec)
    compress_model(
        loaded.model,
        ADAPTER.stacks(loaded.model),
        calibration,
        CompressionConfig(cr=0.2, iters=8, heal=0, forms="single", **config),
    )
    text = _evaluation_text("wiki-offline", False)
    return loaded, perplexity(loaded.model, loaded.processor, text, seq_len=1024, max_windows=3)["perplexity"]


def test_compot_beats_svd_llm_and_round_trips(calibrated, tmp_path):
    spec, calibration = calibrated
    compot, ppl_compot = _compressed_ppl(spec, calibration)
    _, ppl_svd = _compressed_ppl(spec, calibration, method="svd-llm")
    print(f"SmolLM2-135M CR 0.2 perplexity (3 x 1024 tokens): COMPOT {ppl_compot:.2f}, SVD-LLM {ppl_svd:.2f}")
    assert ppl_compot < ppl_svd

    ids = compot.processor("The history of the city begins", return_tensors="pt").input_ids
    expected = compot.model(ids).logits
    save_compressed(
        compot.model,
        tmp_path / "ckpt",
        make_record(compot.model),
        extra_files=compot.processor.save_pretrained,
    )
    assert torch.equal(zoo.load(tmp_path / "ckpt", inference=False)(ids).logits, expected)
    reloaded = zoo.load(tmp_path / "ckpt")  # products rounded to 16 bits once: close, not equal
    torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0.02, atol=0.1)
    text = compot.processor.decode(reloaded.generate(ids, max_new_tokens=8, do_sample=False)[0])
    assert text.startswith("The history of the city begins") and len(text) > 35
