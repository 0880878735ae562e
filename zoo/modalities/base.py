"""What the pipeline asks of a modality adapter, and how it finds one by modality name.

Adapters hold all architecture knowledge (which linears, which blocks, how to feed a model);
the compressor sees only the stacks and batches they hand over, and evaluators only a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from torch import nn

from zoo.compression.targets import CalibrationData, Stack
from zoo.errors import ZooError
from zoo.evaluators.scores import Results
from zoo.modality_table import MODALITIES
from zoo.sources.catalogue import ModelSpec
from zoo.sources.loading import DEFAULT_LOAD, LoadedModel, LoadOptions


class Adapter(Protocol):
    modality: str
    auto_class: str  # the transformers Auto class that rebuilds the architecture
    distills: bool  # whether end-to-end distillation (zoo.compression.distill) is built for it

    def load(self, spec: ModelSpec, options: LoadOptions = DEFAULT_LOAD) -> LoadedModel:
        """The model of `spec` with its processor, as `options` ask (zoo.sources.loading)."""

    def carried_floats(self, config, stack: str, tokens: int) -> tuple[int, int]:
        """Floats one calibration sample of `tokens` carries into a block of `stack`, as (replaced
        by each block, the same for all): what the activations between blocks cost, for planning."""

    def stacks(self, model: nn.Module, components: Sequence[str] | None = None) -> list[Stack]:
        """The stacks to compress, in calibration order; `components` picks them by name
        (None: the adapter's default). Unknown names or architectures are a ZooError."""

    def calibration(
        self, loaded: LoadedModel, source: str, n_samples: int, seq_len: int, seed: int, online: bool
    ) -> CalibrationData:
        """`n_samples` inputs of at most `seq_len` tokens from `source` (a set's name or a local
        path), picked with `seed`; Hub sets need `online`."""

    def check_calibration(self, source: str, online: bool) -> None:
        """Refuse a calibration source this adapter can tell is unusable without loading the model."""

    def save_processor(self, loaded: LoadedModel, out_dir: Path) -> None: ...

    def evaluate(self, loaded: LoadedModel, spec: ModelSpec, online: bool) -> Results:
        """The scores, {task: {metric: Score}}, of the model as it is now (and a chat model's answers);
        run before and after compression.

        What to run and how much of it come from `spec.defaults` (the catalogue's eval_* keys,
        overridden per run); offline, each modality's `offline_eval_*` stand-ins."""


def hidden_and_rotary_floats(config, tokens: int) -> tuple[int, int]:
    """A decoder block's inputs: the hidden states, and the rotary cos and sin the blocks of each
    kind share."""
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return tokens * text.hidden_size, tokens * 2 * head_dim * len(set(layer_kinds(config) or [""]))


def layer_kinds(config) -> list[str] | None:
    """Each decoder layer's kind where they differ (`config.layer_types`: Gemma 3's sliding and full
    attention, each with its own mask and rotary table); None where all are alike."""
    kinds = getattr(config.get_text_config(), "layer_types", None)
    return list(kinds) if kinds and len(set(kinds)) > 1 else None


def get_adapter(modality: str) -> Adapter:
    if modality not in MODALITIES:
        raise ZooError(f"no adapter for modality {modality!r}; known: {', '.join(MODALITIES)}")
    module, attr = MODALITIES[modality].adapter.split(":")
    return getattr(importlib.import_module(module), attr)
