"""Word error rate of Whisper-like models: greedy transcripts, Whisper's English text
normaliser on both sides, corpus-level WER (all errors over all reference words) with jiwer.

It knows nothing of compression: the base and the compressed model are decoded with the same
settings and scored with the same normaliser, so their WERs compare directly. Not
`evaluate.load("wer")`: that fetches its script from the Hub at run time.

The normaliser maps British to American spellings with the table that Whisper checkpoints ship
as normalizer.json (the tokenizer's `english_spelling_normalizer`). transformers itself ships no
copy, so without it (an offline tokenizer built from other files) the table is empty: spelling
variants then count as errors, for the base and the compressed model alike.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from zoo.calibration.speech import SAMPLE_RATE, Utterance
from zoo.errors import ZooError

log = logging.getLogger(__name__)


def _batches(indices: list[int], batch_size: int, long_form: bool) -> list[tuple[list[int], bool]]:
    return [(indices[i : i + batch_size], long_form) for i in range(0, len(indices), batch_size)]


def _generate(model, processor, audio: list, long_form: bool, max_new_tokens: int) -> list[str]:
    """One batch, greedy. Up to 30 s the features are padded to Whisper's 30 s window; longer
    audio goes through transformers' sequential long-form decoding, which needs the attention
    mask (to know where each clip ends) and timestamps (to move from window to window)."""
    extra = {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
    features = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", **extra)
    kwargs = {"num_beams": 1, "do_sample": False, "max_new_tokens": max_new_tokens}
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs |= {"language": "en", "task": "transcribe"}  # never let it detect or translate
    if long_form:
        kwargs |= {"attention_mask": features["attention_mask"].to(model.device), "return_timestamps": True}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # per-batch notes on max_length and suppress_tokens, same for every model
    try:
        ids = model.generate(input_features=features["input_features"].to(model.device, model.dtype), **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


def transcribe(
    model, processor, utterances: list[Utterance], batch_size: int = 8, max_new_tokens: int = 128
) -> list[str]:
    """Greedy transcripts, one per utterance, in order.

    Utterances up to 30 s and longer ones are batched apart, so how an utterance is decoded
    depends on its own length, never on the batch it happens to share.
    """
    if batch_size < 1:
        raise ZooError(f"transcription batch_size must be at least 1, got {batch_size}")
    window = processor.feature_extractor.n_samples
    short = [i for i, u in enumerate(utterances) if len(u.audio) <= window]
    long = [i for i, u in enumerate(utterances) if len(u.audio) > window]
    texts = [""] * len(utterances)
    with torch.inference_mode():
        for batch, long_form in tqdm(
            _batches(short, batch_size, False) + _batches(long, batch_size, True),
            desc="transcribing",
            unit="batch",
            leave=False,
        ):
            audio = [utterances[i].audio for i in batch]
            for i, text in zip(batch, _generate(model, processor, audio, long_form, max_new_tokens), strict=True):
                texts[i] = text
    return texts


def _normalizer(spelling: dict[str, str] | None):
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(spelling or {})


def corpus_wer(references: list[str], hypotheses: list[str], spelling: dict[str, str] | None = None) -> dict:
    """Corpus WER: (substitutions + deletions + insertions) / reference words, summed over all
    utterances, not a mean of per-utterance WERs, which would weigh a 3-word utterance like a
    30-word one.

    Both sides go through Whisper's English normaliser ("Mr." -> "mister", "twenty" -> "20").
    References with no words left after it are dropped and counted in "empty_references".
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ZooError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalize = _normalizer(spelling)
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)]
    kept = [(r, h) for r, h in pairs if r.split()]
    if not kept:
        raise ZooError(f"none of the {len(pairs)} references has any word after normalisation")
    out = jiwer.process_words([r for r, _ in kept], [h for _, h in kept])
    words = out.hits + out.substitutions + out.deletions
    errors = out.substitutions + out.deletions + out.insertions
    return {
        "wer": errors / words,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "words": words,
        "utterances": len(kept),
        "empty_references": len(pairs) - len(kept),
    }


def evaluate_wer(
    model, processor, sets: dict[str, list[Utterance]], batch_size: int = 8, max_new_tokens: int = 128
) -> dict[str, dict[str, float]]:
    """{set name: corpus_wer metrics}: each set (e.g. test-clean, test-other) scored on its own."""
    spelling = getattr(getattr(processor, "tokenizer", None), "english_spelling_normalizer", None)
    if spelling is None:
        log.warning(
            "the tokenizer has no English spelling table (normalizer.json); British and American "
            "spellings count as different words"
        )
    results = {}
    for name, utterances in sets.items():
        if not utterances:
            raise ZooError(f"speech set {name!r} has no utterances")
        hypotheses = transcribe(model, processor, utterances, batch_size, max_new_tokens)
        results[name] = corpus_wer([u.text for u in utterances], hypotheses, spelling)
        log.info("WER on %s: %.2f%% over %d words", name, 100 * results[name]["wer"], results[name]["words"])
    return results
