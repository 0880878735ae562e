"""The packaged whisper-tiny.en, compressed for real: COMPOT against SVD-LLM, and a round trip."""

import shutil

import pytest
from transformers import AutoModelForSpeechSeq2Seq

import zoo
from tests.records import make_record
from zoo.calibration.speech import load_speech
from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.evaluators.wer import evaluate_wer, transcribe
from zoo.format.checkpoint import save_compressed
from zoo.modalities.whisper import ADAPTER
from zoo.sources.catalogue import resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_speech():
    pytest.importorskip("jiwer")
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed: no synthesised test speech")
    return {"tts-wiki-test": load_speech("tts-wiki-test", 40), "librivox-offline": load_speech("librivox-offline")}


def _compressed(method: str, cr: float = 0.2):
    spec = resolve("whisper-tiny.en")
    loaded = ADAPTER.load(spec)
    calibration = ADAPTER.calibration(loaded, "tts-wiki-train", n_samples=48, seq_len=448, seed=0, online=False)
    compress_model(
        loaded.model,
        ADAPTER.stacks(loaded.model),
        calibration,
        CompressionConfig(cr=cr, method=method, static=True, iters=10, heal=0, forms="single"),
    )
    return loaded


def test_compot_degrades_wer_less_than_svd_llm_and_round_trips(test_speech, tmp_path):
    compot, svd = _compressed("compot"), _compressed("svd-llm")
    wer = {
        name: evaluate_wer(loaded.model, loaded.processor, test_speech)
        for name, loaded in (("compot", compot), ("svd-llm", svd))
    }
    print({name: {s: round(m["wer"], 4) for s, m in sets.items()} for name, sets in wer.items()})
    assert wer["compot"]["tts-wiki-test"]["wer"] < wer["svd-llm"]["tts-wiki-test"]["wer"]

    speech = test_speech["librivox-offline"]
    expected = transcribe(compot.model, compot.processor, speech)
    out = tmp_path / "ckpt"
    save_compressed(
        compot.model,
        out,
        make_record(compot.model, modality="whisper", auto_class=ADAPTER.auto_class),
        extra_files=lambda tmp: ADAPTER.save_processor(compot, tmp),
    )
    for model in (zoo.load(out), AutoModelForSpeechSeq2Seq.from_pretrained(out).eval()):
        assert transcribe(model, compot.processor, speech) == expected
    assert sum(len(t.split()) for t in expected) > 50  # real words, not an empty or looping output
