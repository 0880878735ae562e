"""The variant record: one typed description of a compressed variant, built once by the
pipeline and saved in its checkpoint (compot_record.json). The scorecard, the model card and
the nightly job's comparisons all derive from it. Torch-free, so publishing reads it cheaply."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from zoo.compression.config import CompressionConfig
from zoo.compression.report import LayerRecord, achieved_cr
from zoo.errors import ZooError
from zoo.files import write_text

RECORD = "compot_record.json"  # its file name in a checkpoint; also marks a folder as a checkpoint
FORMAT = "compot-zoo/2"  # 2: one layer table, a typed config, achieved CR from stored bits


@dataclass(frozen=True)
class CalibrationInfo:
    name: str  # a catalogue set or a local path
    fingerprint: str  # digest of the exact inputs
    tokens: int
    samples: int
    seed: int


@dataclass(frozen=True)
class VariantRecord:
    variant: str  # the checkpoint's name, e.g. smollm2-135m-compot-dynamic-cr0.2
    modality: str
    auto_class: str  # the transformers Auto class that loads it
    alias: str  # what the user asked for: an alias, a folder or a Hub id
    base_model: str  # what was loaded: a Hub id, packaged:<asset> or a folder
    base_revision: str | None
    hub_id: str | None  # the base's Hub id, when it has one (the card's base_model)
    license: str
    base_notes: tuple[str, ...]
    config: CompressionConfig
    calibration: CalibrationInfo
    layers: tuple[LayerRecord, ...]  # every target projection, dense-kept ones included
    fingerprint: str  # everything that determines the variant and its scores
    command: str  # the `zoo compress` command that rebuilds it
    compression_seconds: float
    peak_memory_mb: float
    hardware: str
    zoo_version: str
    engine_version: str
    base_bytes: int | None = None  # the base's tensors as a 16-bit checkpoint holds them
    file_bytes: int | None = None  # model.safetensors as written
    distilled: bool = False  # whether the factors were distilled end to end (config.distill asked, and kept)
    format: str = FORMAT

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def quantize(self) -> str | None:
        """The GPTQ grid of the stored values, e.g. "gptq-w4 g128"; None when they are 16-bit."""
        q = self.config.quantize
        return None if q is None else f"{q} g{self.config.quantize_group_size}"

    @property
    def allocation(self) -> str:
        return self.config.allocation

    @property
    def target_cr(self) -> float:
        return self.config.cr

    @property
    def achieved_cr(self) -> float:
        """From the stored tensors' bits, over every target projection."""
        return achieved_cr(list(self.layers))

    @property
    def file_saving(self) -> float | None:
        """The share of the base's 16-bit checkpoint the compressed file saves."""
        return 1.0 - self.file_bytes / self.base_bytes if self.file_bytes and self.base_bytes else None

    @property
    def eq11_cr(self) -> float:
        """What eq. 11 predicts for the same projections: equal to achieved_cr up to mask padding."""
        return achieved_cr(list(self.layers), "eq11_bits")

    def to_dict(self) -> dict:
        """Plain JSON data, the derived CRs spelled out for readers without this class."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            **data,
            "base_notes": list(self.base_notes),
            "config": self.config.to_dict(),
            "calibration": asdict(self.calibration),
            "layers": [r.to_dict() for r in self.layers],
            "method": self.method,
            "allocation": self.allocation,
            "target_cr": self.target_cr,
            "achieved_cr": self.achieved_cr,
            "eq11_cr": self.eq11_cr,
            "file_saving": self.file_saving,
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "record") -> VariantRecord:
        if data.get("format") != FORMAT:
            raise ZooError(f"{where}: format {data.get('format')!r} is not the supported {FORMAT!r}")
        names = {f.name for f in fields(cls)}
        missing = names - data.keys() - {"format", "base_bytes", "file_bytes", "distilled"}
        if missing:
            raise ZooError(f"{where} is missing {', '.join(sorted(missing))}")
        try:
            return cls(
                **{k: data[k] for k in names if k in data}
                | {
                    "base_notes": tuple(data["base_notes"]),
                    "config": CompressionConfig(**data["config"]),
                    "calibration": CalibrationInfo(**data["calibration"]),
                    "layers": tuple(LayerRecord.from_dict(r) for r in data["layers"]),
                }
            )
        except (TypeError, KeyError) as exc:
            raise ZooError(f"{where} is malformed: {exc}") from exc

    def save(self, folder: Path) -> Path:
        return write_text(folder / RECORD, json.dumps(self.to_dict(), indent=2))


def size_line(file_bytes: int | None, base_bytes: int | None) -> str:
    """The checkpoint's file size against the base's 16-bit checkpoint, for people to read."""
    if not file_bytes or not base_bytes:
        return "checkpoint size not recorded"
    return (
        f"model.safetensors {file_bytes / 1e6:.1f} MB, {1 - file_bytes / base_bytes:.1%} smaller than the base "
        f"as a 16-bit checkpoint ({base_bytes / 1e6:.1f} MB)"
    )


def read_record(folder: str | Path) -> VariantRecord:
    """The record of a compressed checkpoint; a folder without one is not ours."""
    file = Path(folder) / RECORD
    if not file.is_file():
        raise ZooError(f"{folder} is not a compressed checkpoint: {RECORD} is missing")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"{file} is corrupt: {exc}") from exc
    return VariantRecord.from_dict(data, str(file))
