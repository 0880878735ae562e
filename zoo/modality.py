"""What the pipeline asks of a modality adapter, and the registry that finds one by name.

Adapters live in `zoo.modalities` and hold all architecture knowledge; the pipeline
reaches them only through this registry, so the engine side never imports transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from zoo.errors import ZooError
from zoo.models import ModelSpec

ADAPTERS = {
    "llm": "zoo.modalities.decoder_llm:ADAPTER",
    "whisper": "zoo.modalities.whisper:ADAPTER",
    "vlm": "zoo.modalities.qwen_vl:ADAPTER",
}


@dataclass
class LoadedModel:
    model: nn.Module
    processor: Any  # tokenizer or processor, saved beside the checkpoint
    base_model: str  # what was actually loaded: Hub id, packaged asset or folder
    revision: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Stack:
    """Blocks that feed each other in order, and the linears of each block to compress,
    grouped by the input they share (q/k/v; gate/up). A model may have several stacks
    (Whisper's encoder and decoder); each is calibrated from its own first block."""

    name: str
    blocks: list[tuple[str, nn.Module]]  # (qualified name, module), in calibration order
    groups: list[list[str]]  # relative to a block


@dataclass
class CalibrationData:
    batches: list[dict]  # model(**batch) inputs
    name: str
    fingerprint: str
    tokens: int


class Adapter(Protocol):
    modality: str
    auto_class: str  # the transformers Auto class that rebuilds the architecture

    def load(self, spec: ModelSpec) -> LoadedModel: ...

    def stacks(self, model: nn.Module, components: Sequence[str] | None = None) -> list[Stack]:
        """The stacks to compress, in calibration order; `components` picks them by name
        (None: the adapter's default). Unknown names or architectures are a ZooError."""

    def calibration(self, loaded: LoadedModel, source: str, n_samples: int, seq_len: int,
                    seed: int) -> CalibrationData: ...

    def save_processor(self, loaded: LoadedModel, out_dir) -> None: ...

    def evaluate(self, loaded: LoadedModel, spec: ModelSpec, windows: int | None = None,
                 limit: int | None = None) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} for the model as it is now; run before and after compression.

        `windows` caps perplexity windows and `limit` the items per task (None: the manifest's)."""


def get_adapter(modality: str) -> Adapter:
    if modality not in ADAPTERS:
        raise ZooError(f"no adapter for modality {modality!r}; known: {', '.join(ADAPTERS)}")
    module, attr = ADAPTERS[modality].split(":")
    return getattr(importlib.import_module(module), attr)
