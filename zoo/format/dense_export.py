"""`zoo export --format dense`: any variant as the plain 16-bit checkpoint of its base architecture,
every compressed projection replaced by the matrix it stands for (W = C A, or a GPTQ grid
dequantized), which every runtime and converter reads (vLLM, TGI, llama.cpp's converter, ONNX
export). The savings do not survive it: the file is the base's size, and the card says so.

Each weight is the one `zoo.load` computes on CPU for the layer's dense inference layout (the
product in float32, rounded once), then cast to the checkpoint's dtype."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.files import check_replaceable, check_writable, staged_dir
from zoo.format.checkpoint import WEIGHTS, compot_layers, load_compressed
from zoo.format.export import CARD, MARKER, OWN_FILES, Exported, variant_config, variant_source
from zoo.format.record import RECORD, read_record

DENSE = "dense"


def export_dense(variant: str | Path, out: str | Path, overwrite: bool = False) -> Exported:
    """Write the variant at `variant` (a folder or a Hub repo id) to `out` as a plain 16-bit checkpoint."""
    source = variant_source(variant)
    variant_config(source)  # a compressed variant, or a one-line refusal
    out = Path(out)
    if out.exists() and not overwrite:
        raise ZooError(f"output directory {out} exists; pass --overwrite to replace it")
    check_replaceable(out, MARKER, "an exported variant")
    check_writable(out)
    model = load_compressed(source, "cpu", inference=False)
    layers = compot_layers(model)
    dtype = model.dtype
    for name, layer in layers.items():
        model.set_submodule(name, dense_linear(layer, dtype))
    del model.config.quantization_config
    model.hf_quantizer = None  # a plain model now: no guard, nothing of ours to save
    for key in ("auto_map", "base_model_type"):  # the variant's own loading, gone with its layers
        if hasattr(model.config, key):
            delattr(model.config, key)
    record = read_record(source) if (source / RECORD).is_file() else None
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp)
        for extra in sorted(source.iterdir()):  # tokenizer / processor files
            if extra.is_file() and extra.name not in OWN_FILES and not (tmp / extra.name).exists():
                if not extra.name.startswith("."):
                    shutil.copyfile(extra, tmp / extra.name)
        (tmp / CARD).write_text(card(record, source, tmp / WEIGHTS))
        marker = {"format": DENSE, "source": str(variant), "variant": record.variant if record else None}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return Exported(out, DENSE, len(layers), (), ("the file is the base's size: the compression's savings are gone",))


def dense_linear(layer: nn.Module, dtype: torch.dtype) -> nn.Linear:
    """The nn.Linear a compressed layer stands for, its weight in `dtype`."""
    weight = torch.empty(layer.out_features, layer.in_features, dtype=layer.storage_dtype)
    layer.to_inference(("dense", weight))
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(layer.weight)
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


def card(record, source: Path, weights: Path) -> str:
    base = (record.hub_id or record.base_model) if record else None
    front = ["---", "library_name: transformers", "tags:", "- compot-zoo"]
    if record and record.hub_id:
        front.append(f"base_model: {record.hub_id}")
    name = record.variant if record else source.name
    lines = [
        *front,
        "---",
        "",
        f"# {name} (dense 16-bit)",
        "",
        f"The compot-zoo variant `{name}`{f' of `{base}`' if base else ''} written out as a plain checkpoint of its "
        "base architecture with `zoo export --format dense`: every compressed projection replaced by the matrix "
        "it stands for. Any runtime or converter reads it, without compot-zoo; its outputs are the variant's "
        "(up to one 16-bit rounding of each product).",
        "",
        f"**The savings do not survive this format**: `{WEIGHTS}` is {weights.stat().st_size:,} bytes, the size "
        "of the base's own 16-bit checkpoint. Use the variant itself (`zoo.load`) to keep them.",
    ]
    if record:
        lines += ["", "## Creation", "", f"`{record.command}`"]
    return "\n".join(lines) + "\n"
