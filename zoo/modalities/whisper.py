"""Whisper (speech recognition, encoder-decoder): what to compress and how to feed it.

The paper compresses the decoder's projections (self-attention, cross-attention, MLP); the
encoder joins with `components=["encoder", "decoder"]`. Calibration is teacher-forced: the
decoder reads each utterance's reference transcript while the encoder runs once on its audio.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from zoo.compression.targets import CalibrationData, Stack
from zoo.errors import ZooError
from zoo.evaluators.scores import Results, Score
from zoo.sources.catalogue import ModelSpec
from zoo.sources.loading import DEFAULT_LOAD, Family, LoadedModel, LoadOptions, load_model

log = logging.getLogger(__name__)

_ATTENTION = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.out_proj"]]
# component -> (where its blocks sit, each block's projections grouped by the input they share),
# in calibration order. Cross-attention k/v read the encoder output: one Gram for both.
STACKS = {
    "encoder": ("model.encoder.layers", [*_ATTENTION, ["fc1"], ["fc2"]]),
    "decoder": (
        "model.decoder.layers",
        [
            *_ATTENTION,
            ["encoder_attn.q_proj"],
            ["encoder_attn.k_proj", "encoder_attn.v_proj"],
            ["encoder_attn.out_proj"],
            ["fc1"],
            ["fc2"],
        ],
    ),
}
DEFAULT_COMPONENTS = ("decoder",)
SAMPLING_RATE = 16_000


class Whisper:
    modality = "whisper"
    auto_class = "AutoModelForSpeechSeq2Seq"
    distills = False

    def load(self, spec: ModelSpec, options: LoadOptions = DEFAULT_LOAD) -> LoadedModel:
        from zoo.sources.converters.whisper_ct2 import packaged_whisper_dir

        family = Family(
            WhisperForConditionalGeneration, WhisperProcessor, packaged_whisper_dir, "CTranslate2 float16, converted"
        )
        return load_model(spec, family, self.stacks, options)

    def carried_floats(self, config, stack: str, tokens: int) -> tuple[int, int]:
        """The encoder's frames into an encoder block; into a decoder block, its tokens, and the
        encoder's output that every decoder block reads for cross-attention."""
        frames = config.max_source_positions * config.d_model
        return (frames, 0) if stack == "encoder" else (tokens * config.d_model, frames)

    def stacks(self, model: nn.Module, components: Sequence[str] | None = None) -> list[Stack]:
        if getattr(model.config, "model_type", None) != "whisper":
            raise ZooError(
                f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', None)!r}) "
                "is not a Whisper model"
            )
        wanted = set(components or DEFAULT_COMPONENTS)
        unknown = wanted - set(STACKS)
        if unknown:
            raise ZooError(f"unknown Whisper component(s) {', '.join(sorted(unknown))}; known: {', '.join(STACKS)}")
        stacks = []
        for name, (path, groups) in STACKS.items():
            if name in wanted:
                blocks = [(f"{path}.{i}", block) for i, block in enumerate(model.get_submodule(path))]
                stacks.append(Stack(name, blocks, groups))
        return stacks

    def calibration(
        self, loaded: LoadedModel, source: str, n_samples: int, seq_len: int, seed: int, online: bool
    ) -> CalibrationData:
        """One teacher-forced batch per utterance, so no padding token enters a Gram.

        `seq_len` caps the decoder tokens of an utterance (Whisper's limit is 448).
        """
        from zoo.calibration.speech import load_speech, speech_fingerprint

        utterances = load_speech(source, n_samples, seed, online=online)
        limit = min(seq_len, loaded.model.config.max_target_positions)
        batches = [teacher_forced_inputs(loaded.processor, loaded.model, u.audio, u.text, limit) for u in utterances]
        tokens = sum(b["decoder_input_ids"].shape[1] for b in batches)
        return CalibrationData(batches, source, speech_fingerprint(utterances), tokens)

    def check_calibration(self, source: str, online: bool) -> None:
        """Its sets are read with the model's processor: checked when they are read."""

    def save_processor(self, loaded: LoadedModel, out_dir) -> None:
        from zoo.sources.converters.whisper_ct2 import save_processor

        save_processor(loaded.processor, out_dir)

    def evaluate(self, loaded: LoadedModel, spec: ModelSpec, online: bool) -> Results:
        """Corpus WER per evaluation set (at most `eval_limit` utterances each): LibriSpeech
        test-clean/test-other online, the packaged read speech and synthesised held-out text offline."""
        from zoo.calibration.speech import load_speech
        from zoo.evaluators.wer import evaluate_wer

        key = "eval_sets" if online else "offline_eval_sets"
        names = getattr(spec.defaults, key)
        if not names:
            raise ZooError(f"{spec.name}: the zoo catalogue names no {key} for Whisper")
        limit = spec.defaults.eval_limit
        sets = {name: load_speech(name, limit, seed=0, at_most=True, online=online) for name in names}
        results = evaluate_wer(loaded.model, loaded.processor, sets)
        for name, m in results.items():
            log.info(
                "%s: WER %.4f over %d words of %d utterances (S %d, D %d, I %d)",
                name,
                m["wer"],
                m["words"],
                m["utterances"],
                m["substitutions"],
                m["deletions"],
                m["insertions"],
            )
        return Results(scores={f"wer/{name}": {"wer": Score(value=m["wer"])} for name, m in results.items()})


def sentence_case(text: str) -> str:
    """LibriSpeech transcripts are upper case without punctuation; Whisper writes sentence case,
    so forcing upper case would calibrate the decoder on text it never produces."""
    text = " ".join(text.split())
    if text.isupper():
        text = text.lower()
        text = text[:1].upper() + text[1:]
    return text


def task_prefix(generation_config) -> list[int]:
    """The tokens generate() starts an English transcription with, read from the model's own
    generation config: start of transcript, then language and task on multilingual models,
    then no-timestamps."""
    gc = generation_config
    prefix = [gc.decoder_start_token_id]
    if getattr(gc, "is_multilingual", False):
        prefix += [gc.lang_to_id["<|en|>"], gc.task_to_id["transcribe"]]
    return prefix + [gc.no_timestamps_token_id]


def teacher_forced_inputs(processor, model: nn.Module, audio, text: str, max_tokens: int) -> dict:
    """Model inputs that make the decoder read the transcript after Whisper's task prefix."""
    features = processor.feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
    words = processor.tokenizer(" " + sentence_case(text), add_special_tokens=False).input_ids
    if not words:
        raise ZooError(f"empty transcript for calibration utterance: {text!r}")
    ids = (task_prefix(model.generation_config) + words)[:max_tokens]
    return {"input_features": features.to(model.dtype), "decoder_input_ids": torch.tensor([ids]), "use_cache": False}


ADAPTER = Whisper()
