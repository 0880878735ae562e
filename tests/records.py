"""Variant records for tests that build compressed models by hand (the pipeline builds real ones)."""

from __future__ import annotations

import dataclasses

from torch import nn

from zoo import methods
from zoo.compression.config import CompressionConfig
from zoo.compression.layer import CompotLinear
from zoo.compression.report import LayerRecord
from zoo.format.record import CalibrationInfo, VariantRecord


def layer_records(model: nn.Module) -> tuple[LayerRecord, ...]:
    """A record per CompotLinear, its bits read from the layer and eq. 11."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, CompotLinear):
            eq11 = methods.get(m.method).bits(m.in_features, m.out_features, m.k, m.s)
            rows.append(
                LayerRecord(
                    name,
                    (m.out_features, m.in_features),
                    m.method,
                    0.3,
                    m.k,
                    m.s,
                    str(m.storage_dtype).removeprefix("torch."),
                    m.stored_bits(),
                    eq11,
                    0.0,
                    0.0,
                    0,
                    0,
                )
            )
    return tuple(rows)


def make_record(model: nn.Module, **changes) -> VariantRecord:
    record = VariantRecord(
        variant="tiny-variant",
        modality="llm",
        auto_class="AutoModelForCausalLM",
        alias="tiny-random",
        base_model="tiny-random",
        base_revision=None,
        hub_id=None,
        license="other",
        base_notes=(),
        config=CompressionConfig(cr=0.3),
        calibration=CalibrationInfo("none", "sha256:0", 0, 0, 0),
        layers=layer_records(model),
        fingerprint="sha256:test",
        command="zoo compress tiny-random --cr 0.3",
        compression_seconds=1.0,
        peak_memory_mb=1.0,
        hardware="test",
        zoo_version="0",
        engine_version="0",
    )
    return dataclasses.replace(record, **changes)
