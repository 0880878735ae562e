"""`zoo export`: a GPTQ-only variant rewritten in compressed-tensors' "pack-quantized" layout, which
transformers (with the `compressed-tensors` package) and vLLM read without this project.

Why this format. It is the layout llm-compressor writes and vLLM serves (its `CompressedTensorsWNA16`
scheme), and the one GPTQ-style layout that transformers dequantizes on CPU with a pure-Python
package: transformers' "gptq" loader needs gptqmodel, a CUDA-extension build. It stores asymmetric
grids (a packed zero point per group), so our asymmetric GPTQ is written exactly, with no
requantization: every weight it dequantizes to is bit for bit the one `zoo.load` computes.

Per quantized linear `name` (our layout, zoo.methods.layout -> theirs):

    name.weight_q      uint8, bits packed back to back      name.weight_packed      int32 (out, ceil(in*bits/32))
    name.weight_scales (out, groups) 16-bit                  name.weight_scale       the same tensor
    name.weight_zeros  uint8, bits packed back to back      name.weight_zero_point  int32 (ceil(out*bits/32), groups)
                                                             name.weight_shape       int64 [out, in]

Their integers are signed, stored with an offset of 2**(bits-1): the stored unsigned value is our q
itself, and (q_signed - zero_signed) = (q - zero), so scales carry over unchanged. Their packing is
one little-endian bit stream per row of 32-bit words (element i at bit i*bits), the zero points
packed along the output dimension; ours is one little-endian bit stream of bytes. Their group
quantization needs `group_size` to divide the inputs; a layer whose last group is shorter (written
by older versions) is exported with the largest group size that divides both, each scale and zero
repeated, which is the same grid.

What is not carried: the factorized methods (COMPOT, SVD-LLM) have no standard runtime format, and
are refused. The folder is staged under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo import methods
from zoo.compression.quantized import unpack_bits
from zoo.errors import ZooError
from zoo.files import check_replaceable, check_writable, staged_dir
from zoo.format.checkpoint import (
    AUTO_MAP,
    BASE_TYPE,
    CONFIG,
    REMOTE_CODE,
    WEIGHTS,
    LayerSpec,
    _hub_snapshot,
    guard_keys,
)
from zoo.format.record import RECORD, read_record
from zoo.methods.layout import pack_bits, quantized_tensors

COMPRESSED_TENSORS = "compressed-tensors"
FORMATS = (COMPRESSED_TENSORS,)
PACK_QUANTIZED = "pack-quantized"
MARKER = "compot_export.json"  # what says a folder is an export (and may be replaced by one)
CARD = "README.md"
# Files of a variant that describe our own format: rewritten (config, weights, card) or left out.
OWN_FILES = frozenset({CONFIG, WEIGHTS, RECORD, REMOTE_CODE.name, CARD, MARKER, "scorecard.json"})
# Where vLLM's compressed-tensors WNA16 scheme reads a zero point (asymmetric grids): 4 and 8 bits.
VLLM_ZERO_POINT_BITS = (4, 8)


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export` wrote: the folder, its format, the layers and their (bits, group size) schemes."""

    out: Path
    format: str
    layers: int
    schemes: tuple[tuple[int, int], ...]
    notes: tuple[str, ...]


def export(variant: str | Path, out: str | Path, fmt: str = COMPRESSED_TENSORS, overwrite: bool = False) -> Exported:
    """Write the GPTQ-only variant at `variant` (a folder or a Hub repo id) to `out` in `fmt`."""
    if fmt not in FORMATS:
        raise ZooError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = variant_source(variant)
    config = variant_config(source)
    layers = _quantized_layers(source, config)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ZooError(f"output directory {out} exists; pass --overwrite to replace it")
    check_replaceable(out, MARKER, "an exported variant")
    check_writable(out)
    tensors = _read_weights(source)
    for key in guard_keys(layers):  # for loaders without this project, which the export no longer needs
        tensors.pop(key, None)
    schemes = {name: _scheme(spec) for name, spec in layers.items()}
    for name, spec in layers.items():
        tensors |= to_pack_quantized(name, spec, schemes[name][1], _pop_ours(tensors, name, spec, source))
    record = read_record(source) if (source / RECORD).is_file() else None
    notes = _notes(layers, config)
    with staged_dir(out) as tmp:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(standard_config(config, schemes), indent=2, sort_keys=True) + "\n")
        for extra in sorted(source.iterdir()):  # tokenizer / processor and generation files
            if extra.is_file() and extra.name not in OWN_FILES and not extra.name.startswith("."):
                shutil.copyfile(extra, tmp / extra.name)
        (tmp / CARD).write_text(card(record, source, schemes, notes))
        marker = {"format": fmt, "source": str(variant), "variant": record.variant if record else None}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return Exported(out, fmt, len(layers), tuple(sorted(set(schemes.values()))), notes)


def variant_source(variant: str | Path) -> Path:
    path = Path(variant)
    if not path.exists() and "/" in str(variant) and not str(variant).startswith((".", "/")):
        return _hub_snapshot(str(variant))
    if not path.is_dir():
        raise ZooError(f"{variant} is not a folder: pass a compressed variant's folder (or Hub repo id)")
    return path


def variant_config(source: Path) -> dict:
    file = source / CONFIG
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise ZooError(f"{file} is missing: {source} is not a compressed variant") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"{file} is not valid JSON: {exc}") from exc
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "compot":
        raise ZooError(f"{file} has no compot quantization_config: {source} is not a compressed variant")
    if not isinstance(config.get(BASE_TYPE), str):
        raise ZooError(f"{file} lacks {BASE_TYPE}: not a variant this version of compot-zoo wrote")
    return config


def _quantized_layers(source: Path, config: dict) -> dict[str, LayerSpec]:
    """The layer table, every entry a dense GPTQ-quantized linear; factorized variants are refused."""
    table = config["quantization_config"].get("layers")
    if not isinstance(table, dict) or not table:
        raise ZooError(f"{source / CONFIG}: quantization_config.layers names no compressed layer")
    layers = {name: LayerSpec.read(name, entry) for name, entry in table.items()}
    factorized = sorted({spec.method for spec in layers.values() if methods.get(spec.method).factorizes})
    if factorized:
        shown = ", ".join(methods.display_name(m) for m in factorized)
        raise ZooError(
            f"{source} is factorized ({shown}): no standard runtime format exists for its factors, so it cannot "
            "be exported; load it with zoo.load(path), or with transformers after `import zoo` (pip install "
            "compot-zoo). Only GPTQ-only variants (--method gptq) export."
        )
    unquantized = [name for name, spec in layers.items() if not 1 <= spec.bits <= 8]
    if unquantized:
        raise ZooError(f"{source}: {unquantized[0]} is not quantized (bits {layers[unquantized[0]].bits})")
    return layers


def _read_weights(source: Path) -> dict[str, torch.Tensor]:
    file = source / WEIGHTS
    if not file.is_file():
        raise ZooError(f"{file} is missing: {source} is not a compressed variant")
    try:
        return load_file(file)
    except (SafetensorError, OSError) as exc:
        raise ZooError(f"{file} is corrupt or truncated: {exc}") from exc


def _scheme(spec: LayerSpec) -> tuple[int, int]:
    """(bits, group size) of the layer's grid in the standard layout: the recorded group size when it
    divides the inputs, else the largest that divides both (the same grid, each group split)."""
    return spec.bits, math.gcd(spec.group_size, spec.in_features)


def _pop_ours(tensors: dict[str, torch.Tensor], name: str, spec: LayerSpec, source: Path) -> dict[str, torch.Tensor]:
    """The layer's three tensors in our layout, removed from `tensors`, each checked against its shape."""
    expected = quantized_tensors("weight", spec.out_features, spec.in_features, spec.bits, spec.group_size)
    ours = {}
    for key, stored in expected.items():
        tensor = tensors.pop(f"{name}.{key}", None)
        if tensor is None:
            raise ZooError(f"{source / WEIGHTS} holds no {name}.{key} for quantized layer {name}")
        if tuple(tensor.shape) != stored.shape:
            raise ZooError(
                f"{source / WEIGHTS}: {name}.{key} has shape {tuple(tensor.shape)}, the layer expects {stored.shape}"
            )
        ours[key.removeprefix("weight_")] = tensor
    if not bool(torch.isfinite(ours["scales"]).all()):
        raise ZooError(f"{source / WEIGHTS}: {name}.weight_scales holds NaN/Inf values; the variant is corrupt")
    return ours


def pack_int32(values: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) integers below 2**bits -> (rows, ceil(cols*bits/32)) int32: each row one
    little-endian bit stream of 32-bit words, element i at bit i*bits (compressed-tensors' packing)."""
    rows, cols = values.shape
    padded = -(-cols // 32) * 32  # 32 elements fill exactly `bits` words, so each row starts a word
    full = np.zeros((rows, padded), dtype=np.uint8)
    full[:, :cols] = values
    words = pack_bits(full, bits).view("<i4").reshape(rows, padded * bits // 32)
    return np.ascontiguousarray(words[:, : math.ceil(cols * bits / 32)]).astype(np.int32)


def to_pack_quantized(name: str, spec: LayerSpec, group_size: int, ours: dict[str, torch.Tensor]) -> dict:
    """One quantized linear's tensors in compressed-tensors' pack-quantized layout, with `group_size`
    (a divisor of the recorded one when that does not divide the inputs)."""
    rows, cols, bits = spec.out_features, spec.in_features, spec.bits
    groups = ours["scales"].shape[1]
    q = unpack_bits(ours["q"], bits, (rows, cols)).numpy()
    zeros = unpack_bits(ours["zeros"], bits, (rows, groups))
    scales = ours["scales"]
    if group_size != spec.group_size:  # each recorded group split into group_size-wide ones
        repeat = spec.group_size // group_size
        scales = scales.repeat_interleave(repeat, dim=1)[:, : cols // group_size].contiguous()
        zeros = zeros.repeat_interleave(repeat, dim=1)[:, : cols // group_size]
    return {
        f"{name}.weight_packed": torch.from_numpy(pack_int32(q, bits)),
        f"{name}.weight_scale": scales,
        f"{name}.weight_zero_point": torch.from_numpy(pack_int32(zeros.numpy().T, bits).T.copy()),
        f"{name}.weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }


def quantization_config(schemes: dict[str, tuple[int, int]]) -> dict:
    """config.json's `quantization_config`: one config group per (bits, group size), targeting its
    layers by their exact names (what both compressed-tensors and vLLM match), asymmetric int weights,
    16-bit activations, already compressed; transformers dequantizes it while loading."""
    groups = {}
    for index, scheme in enumerate(sorted(set(schemes.values()))):
        bits, group_size = scheme
        weights = {
            "num_bits": bits,
            "type": "int",
            "symmetric": False,
            "strategy": "group",
            "group_size": group_size,
            "dynamic": False,
            "actorder": None,
        }
        targets = sorted(name for name, s in schemes.items() if s == scheme)
        groups[f"group_{index}"] = {
            "targets": targets,
            "weights": weights,
            "input_activations": None,
            "output_activations": None,
            "format": PACK_QUANTIZED,
        }
    return {
        "quant_method": COMPRESSED_TENSORS,
        "format": PACK_QUANTIZED,
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": [],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        # transformers' own loading attribute (CompressedTensorsConfig(dequantize=...)): dequantize while
        # loading. Its default path builds each layer's zero point unpacked, (out, groups), and refuses the
        # packed one that compressed-tensors and vLLM write for asymmetric grids (llm-compressor#1618);
        # the dequantizing path unpacks it. On CPU transformers runs 16-bit weights either way. vLLM
        # reads the keys it knows and ignores this one.
        "dequantize": True,
    }


def standard_config(config: dict, schemes: dict[str, tuple[int, int]]) -> dict:
    """The variant's config.json as the base architecture's own (its model_type back, no `auto_map`),
    with the standard `quantization_config`."""
    plain = {k: v for k, v in config.items() if k not in (BASE_TYPE, "auto_map", "quantization_config")}
    if config.get("auto_map") not in (None, AUTO_MAP):
        plain["auto_map"] = config["auto_map"]
    return plain | {"model_type": config[BASE_TYPE], "quantization_config": quantization_config(schemes)}


def _notes(layers: dict[str, LayerSpec], config: dict) -> tuple[str, ...]:
    notes = []
    bits = sorted({spec.bits for spec in layers.values()} - set(VLLM_ZERO_POINT_BITS))
    if bits:
        notes.append(
            f"{'/'.join(map(str, bits))}-bit asymmetric grids: vLLM's compressed-tensors scheme reads zero "
            f"points at {' and '.join(map(str, VLLM_ZERO_POINT_BITS))} bits only, so vLLM refuses this folder; "
            "transformers with compressed-tensors loads it"
        )
    model_dtype = config.get("dtype") or config.get("torch_dtype")
    storage = sorted({spec.storage_dtype for spec in layers.values()} - {model_dtype})
    if storage:
        notes.append(
            f"scales are stored in {', '.join(storage)} and the model in {model_dtype}: loaders cast the scales "
            "to the model's dtype, so weights may differ from zoo.load's by that rounding"
        )
    return tuple(notes)


def card(record, source: Path, schemes: dict[str, tuple[int, int]], notes: tuple[str, ...]) -> str:
    """A short model card: what the folder is, what reads it, and how it was made."""
    base = (record.hub_id or record.base_model) if record else None
    auto_class = record.auto_class if record else "AutoModelForCausalLM"
    front = ["---", "library_name: transformers", "tags:", "- compressed-tensors", "- gptq", "- compot-zoo"]
    if record and record.hub_id:
        front.append(f"base_model: {record.hub_id}")
    grids = ", ".join(f"{b}-bit, group size {g}" for b, g in sorted(set(schemes.values())))
    lines = [
        *front,
        "---",
        "",
        f"# {record.variant if record else source.name} (compressed-tensors)",
        "",
        f"GPTQ weight-only quantization{f' of `{base}`' if base else ''} ({grids}; asymmetric: a zero point per "
        "group), made with compot-zoo and exported with `zoo export --format compressed-tensors`: the variant's "
        "own integers, scales and zero points, repacked, not requantized.",
        *[f"\nBase weights: {note}." for note in (record.base_notes if record else ())],
        "",
        "## Use",
        "",
        "The weights are in compressed-tensors' `pack-quantized` layout (the one llm-compressor writes), which vLLM "
        "serves (`vllm serve <this folder>`) and transformers loads with the `compressed-tensors` package, "
        "without compot-zoo. transformers dequantizes the weights to 16 bits at load time (config.json's "
        "`dequantize`), on CPU too: memory is then the base's; the savings are on disk and in vLLM.",
        "",
        "```python",
        "# pip install transformers compressed-tensors",
        f"from transformers import {auto_class}, AutoTokenizer",
        "",
        f'model = {auto_class}.from_pretrained("<this folder>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
        "```",
        *[f"\nNote: {note}." for note in notes],
    ]
    if record:
        lines += ["", "## Creation", "", f"`{record.command}`", "", f"Calibration: {record.calibration.name}."]
    return "\n".join(lines).rstrip() + "\n"
