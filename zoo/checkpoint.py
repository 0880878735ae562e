"""The compressed checkpoint: a self-contained transformers folder, safetensors only.

config.json carries a `quantization_config` {"quant_method": "compot", "layers": {...}}
that tells transformers (through zoo.hf_quantizer) and `load_compressed` which linears to
rebuild as CompotLinear; compot_manifest.json records how the variant was made. The
folder is written under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from zoo.engine.storage import dense_bits
from zoo.errors import ZooError
from zoo.layer import CompotLinear

MANIFEST = "compot_manifest.json"
WEIGHTS = "model.safetensors"


def compot_layers(model: nn.Module) -> dict[str, CompotLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, CompotLinear)}


def layer_table(model: nn.Module) -> dict[str, dict]:
    """What a loader needs to rebuild each compressed layer's empty shell."""
    return {name: {"in_features": m.in_features, "out_features": m.out_features, "k": m.k, "s": m.s,
                   "method": m.method, "bias": m.bias is not None,
                   "storage_dtype": str(m.dictionary.dtype).removeprefix("torch.")}
            for name, m in compot_layers(model).items()}


def stored_cr(model: nn.Module) -> float:
    """1 - stored bits / dense bits over the compressed projections, from the saved tensors."""
    layers = compot_layers(model).values()
    stored = math.fsum(m.stored_bits() for m in layers)
    return 1.0 - stored / math.fsum(dense_bits(m.in_features, m.out_features) for m in layers)


def save_compressed(model: nn.Module, out_dir: str | Path, manifest: dict, overwrite: bool = False,
                    extra_files: Callable[[Path], None] | None = None) -> Path:
    """Write the model, its config and manifest (and `extra_files`, e.g. the tokenizer) atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ZooError(f"output directory {out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    config = model.config
    previous = getattr(config, "quantization_config", None)
    try:
        tmp.chmod(0o755)
        config.quantization_config = {"quant_method": "compot", "layers": layer_table(model)}
        model.save_pretrained(tmp, safe_serialization=True)
        if extra_files is not None:
            extra_files(tmp)
        full = {**manifest, "layers": layer_table(model), "achieved_cr_stored": stored_cr(model)}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if previous is None:
            del config.quantization_config
        else:
            config.quantization_config = previous
    return out_dir


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ZooError(f"{path} is not a compressed checkpoint: {MANIFEST} is missing")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ZooError(f"{file} is corrupt: {exc}") from exc


def swap_in_shells(model: nn.Module, layers: dict[str, dict]) -> None:
    """Replace each named nn.Linear by an empty CompotLinear of the recorded shape."""
    for name, spec in layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise ZooError(f"layer {name} of the checkpoint does not exist in {type(model).__name__}") from exc
        device = old.weight.device if isinstance(old, nn.Linear) else None
        model.set_submodule(name, CompotLinear(spec["in_features"], spec["out_features"], spec["k"], spec["s"],
                                               spec["method"], spec["bias"], getattr(torch, spec["storage_dtype"]),
                                               device=device))


def load_compressed(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The compressed model from a folder or Hub repo, rebuilt with CompotLinear layers swapped in."""
    import transformers

    path = Path(path)
    if not path.exists() and "/" in str(path) and not str(path).startswith((".", "/")):
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(path)))  # a published variant on the Hub
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ZooError(f"{weights} is missing")
    config = transformers.AutoConfig.from_pretrained(path)
    del config.quantization_config
    auto = getattr(transformers, manifest.get("auto_class", "AutoModelForCausalLM"))
    model = auto.from_config(config)
    swap_in_shells(model, manifest["layers"])
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as exc:
        raise ZooError(f"{weights} is corrupt or truncated: {exc}") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ZooError(f"{weights} does not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.to(device).eval()
