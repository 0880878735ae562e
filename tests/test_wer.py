"""WER: hand-counted corpus WER with Whisper's normaliser, and greedy transcription with a tiny
random Whisper (one string per utterance, independent of batch size and batch mates)."""

import copy
import logging

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from zoo.calibration.speech import SAMPLE_RATE, Utterance
from zoo.errors import ZooError
from zoo.evaluators.wer import corpus_wer, evaluate_wer, transcribe


def test_hand_counted_errors_with_normalisation():
    refs = ["Mister Smith paid twenty dollars.", "He was not an ill-disposed young man"]
    hyps = ["Mr. Smith paid $20", "he was an ill disposed old young man"]
    # 1: "mister smith paid $20" on both sides -> 0 errors over 4 words.
    # 2: "he was not an ill disposed young man" (8 words) vs "he was an ill disposed old young man":
    #    "not" deleted, "old" inserted -> 2 errors.
    got = corpus_wer(refs, hyps)
    assert got == {
        "wer": 2 / 12,
        "substitutions": 0,
        "deletions": 1,
        "insertions": 1,
        "words": 12,
        "utterances": 2,
        "empty_references": 0,
    }


def test_normalisation_forgives_case_punctuation_numbers_and_fillers_only():
    assert corpus_wer(["ONE HUNDRED AND FIVE, DOCTOR!"], ["105 dr"])["wer"] == 0
    assert corpus_wer(["they won't go"], ["um they will not go"])["wer"] == 0
    got = corpus_wer(["the cat sat"], ["the bat sat"])
    assert (got["wer"], got["substitutions"], got["words"]) == (1 / 3, 1, 3)


def test_corpus_wer_is_total_errors_over_total_words_not_a_mean():
    refs = ["a b", "c d e f g h i j"]
    hyps = ["x y", "c d e f g h i j"]  # 2/2 errors, then 0/8
    got = corpus_wer(refs, hyps)
    assert got["wer"] == pytest.approx(2 / 10)  # the mean of per-utterance WERs would be 0.5
    assert (got["substitutions"], got["words"]) == (2, 10)


def test_spelling_table_maps_british_to_american():
    assert corpus_wer(["the color gray"], ["the colour grey"])["wer"] == pytest.approx(2 / 3)
    assert corpus_wer(["the color gray"], ["the colour grey"], {"colour": "color", "grey": "gray"})["wer"] == 0


def test_empty_references_are_dropped_and_counted():
    got = corpus_wer(["", "uh", "hello world"], ["noise", "", "hello word"])
    assert (got["wer"], got["words"], got["utterances"], got["empty_references"]) == (0.5, 2, 1, 2)
    with pytest.raises(ZooError, match="none of the 2 references"):
        corpus_wer(["", "hmm"], ["a", "b"])
    with pytest.raises(ZooError, match="2 references but 1 hypotheses"):
        corpus_wer(["a", "b"], ["a"])


# --- transcription with a tiny random Whisper -------------------------------------------------

WORDS = 40  # ordinary tokens; then <|notimestamps|> and 1501 timestamp tokens


class TinyProcessor:
    """What `transcribe` uses of a WhisperProcessor: the feature extractor and batch_decode."""

    feature_extractor = WhisperFeatureExtractor(feature_size=80)

    @staticmethod
    def batch_decode(ids, skip_special_tokens):
        assert skip_special_tokens
        return [" ".join(word(i) for i in row.tolist() if i > 2 and i != WORDS) for row in ids]


def word(token: int) -> str:
    """A letters-only word per token (337 -> "zddh"): the normaliser would split "w337" in two."""
    return "z" + "".join("abcdefghij"[int(d)] for d in str(token))


@pytest.fixture(scope="module")
def tiny_whisper():
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=WORDS + 1 + 1501,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=1,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=2,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        init_std=1.0,
    )  # large weights: transcripts that depend on the audio
    return WhisperForConditionalGeneration(config).eval()


def tones(seconds: list[float]) -> list[Utterance]:
    t = np.arange(int(SAMPLE_RATE * max(seconds))) / SAMPLE_RATE
    return [
        Utterance(
            f"u{k}", (0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t[: int(SAMPLE_RATE * s)])).astype(np.float32), "a b"
        )
        for k, s in enumerate(seconds)
    ]


def test_transcribe_gives_one_string_per_utterance_whatever_the_batch(tiny_whisper):
    utts = tones([1.0, 2.0, 0.5, 3.0, 1.5])
    one = transcribe(tiny_whisper, TinyProcessor, utts, batch_size=1, max_new_tokens=6)
    assert len(one) == 5 and all(isinstance(t, str) and t for t in one)
    assert len(set(one)) > 1  # the audio matters
    assert transcribe(tiny_whisper, TinyProcessor, utts, batch_size=2, max_new_tokens=6) == one
    assert transcribe(tiny_whisper, TinyProcessor, utts[::-1], batch_size=4, max_new_tokens=6) == one[::-1]
    assert all(len(t.split()) <= 6 for t in one)


def test_transcribe_casts_features_to_the_model_dtype(tiny_whisper):
    utts = tones([1.0, 2.0])
    doubled = WhisperForConditionalGeneration(tiny_whisper.config).eval()
    doubled.load_state_dict(tiny_whisper.state_dict())
    doubled.generation_config = tiny_whisper.generation_config
    doubled = doubled.double()
    assert transcribe(doubled, TinyProcessor, utts, max_new_tokens=6) == transcribe(
        tiny_whisper, TinyProcessor, utts, max_new_tokens=6
    )


def test_long_utterances_are_decoded_long_form_apart_from_short_ones(tiny_whisper):
    model = copy.deepcopy(tiny_whisper)
    model.generation_config.no_timestamps_token_id = WORDS  # long-form decoding needs timestamps
    utts = tones([1.0, 31.0, 2.0])
    got = transcribe(model, TinyProcessor, utts, batch_size=3, max_new_tokens=6)
    assert got[0] == transcribe(model, TinyProcessor, utts[:1], max_new_tokens=6)[0]
    assert got[2] == transcribe(model, TinyProcessor, utts[2:], max_new_tokens=6)[0]
    assert got[1] and got[1] == transcribe(model, TinyProcessor, utts[1:2], max_new_tokens=6)[0]
    first_30_s = Utterance("cut", utts[1].audio[: 30 * SAMPLE_RATE], "")
    assert got[1] != transcribe(model, TinyProcessor, [first_30_s], max_new_tokens=6)[0]  # not truncated
    with pytest.raises(ZooError, match="batch_size"):
        transcribe(model, TinyProcessor, utts, batch_size=0)


def test_evaluate_wer_scores_each_set_apart(tiny_whisper, caplog):
    clean, other = tones([1.0, 2.0]), tones([0.5])
    hyps = transcribe(tiny_whisper, TinyProcessor, clean + other, max_new_tokens=6)
    clean = [Utterance(u.id, u.audio, h) for u, h in zip(clean, hyps[:2], strict=True)]  # references = transcripts
    with caplog.at_level(logging.WARNING):
        got = evaluate_wer(tiny_whisper, TinyProcessor, {"test-clean": clean, "test-other": other}, max_new_tokens=6)
    assert set(got) == {"test-clean", "test-other"}
    assert got["test-clean"]["wer"] == 0 and got["test-clean"]["words"] == sum(len(h.split()) for h in hyps[:2])
    assert got["test-other"]["words"] == 2 and got["test-other"]["wer"] > 0
    assert "no English spelling table" in caplog.text
    with pytest.raises(ZooError, match="'empty' has no utterances"):
        evaluate_wer(tiny_whisper, TinyProcessor, {"empty": []})
