"""The modalities the zoo knows, in one table: every list of them (CLI choices, the adapter
registry, model-type inference, the card's Hub task, the scorecard schema) reads it here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    name: str
    adapter: str  # "module:attribute" of its adapter, imported only when a model of it is loaded
    pipeline_tag: str  # the Hub's task, also the model-index task type
    model_types: tuple[str, ...] = ()  # transformers `model_type`s that are this modality


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("llm", "zoo.modalities.decoder_llm:ADAPTER", "text-generation"),
        Modality("whisper", "zoo.modalities.whisper:ADAPTER", "automatic-speech-recognition", ("whisper",)),
        Modality("vlm", "zoo.modalities.qwen_vl:ADAPTER", "image-text-to-text", ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")),
    )
}
DEFAULT = "llm"  # a model whose type no other modality claims is read as a decoder LLM


def modality_of(model_type: str) -> str:
    """The modality of a transformers `model_type`."""
    return next((m.name for m in MODALITIES.values() if model_type in m.model_types), DEFAULT)
