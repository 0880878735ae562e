"""A checkpoint's files checked against its record before it is published: weights present,
the safetensors header readable, every compressed layer's tensors there with the shapes and
bytes the record states. Reads headers only (no torch), so publishing stays cheap."""

from __future__ import annotations

import math
from pathlib import Path

from safetensors import SafetensorError, safe_open

from zoo import methods
from zoo.compression.report import LayerRecord
from zoo.errors import ZooError
from zoo.format.record import VariantRecord
from zoo.methods.layout import stored_tensors

WEIGHTS = "model.safetensors"
BYTES = {"F16": 2, "BF16": 2, "F32": 4, "U8": 1, "F64": 8, "I64": 8}


def expected_shapes(layer: LayerRecord) -> dict[str, list[int]]:
    """Tensor name (within the layer) -> shape, for what the record says the layer stores."""
    out_features, in_features = layer.shape
    try:
        method = methods.get(layer.method)
    except ZooError as exc:
        raise ZooError(f"layer {layer.name}: {exc}") from exc
    tensors = stored_tensors(
        method, in_features, out_features, k=layer.k, s=layer.s, bits=layer.bits, group_size=layer.group_size
    )
    return {part: list(t.shape) for part, t in tensors.items()}


def _header(weights: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) from a safetensors header, without reading the tensors."""
    try:
        with safe_open(weights, framework="numpy") as f:
            return {key: (f.get_slice(key).get_shape(), f.get_slice(key).get_dtype()) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ZooError(f"{weights} is corrupt or truncated: {exc}") from exc


def check_files(folder: Path, record: VariantRecord) -> None:
    """Refuse a folder whose files do not hold what its record says, naming the file and layer."""
    links = [p for p in folder.rglob("*") if p.is_symlink()]
    if links:
        raise ZooError(f"{links[0]} is a symbolic link: a published variant holds its own files only")
    weights = folder / WEIGHTS
    for required in (weights, folder / "config.json"):
        if not required.is_file():
            raise ZooError(f"{required} is missing: {folder} is not a complete checkpoint")
    header = _header(weights)
    for layer in record.layers:
        if layer.method == methods.DENSE:
            continue
        expected = expected_shapes(layer)
        bits = 0
        for part, shape in expected.items():
            key = f"{layer.name}.{part}"
            if key not in header:
                raise ZooError(f"{weights} has no {key}, which the record lists for layer {layer.name}")
            if list(header[key][0]) != shape:
                raise ZooError(f"{weights}: {key} has shape {header[key][0]}, the record says {shape}")
            bits += 8 * BYTES.get(header[key][1], 0) * math.prod(shape)
        if bits != layer.stored_bits:
            raise ZooError(f"{weights}: layer {layer.name} stores {bits} bits, the record says {layer.stored_bits}")
