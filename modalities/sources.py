"""Where a model's weights come from: a local folder, else the Hub, else a packaged offline copy.

Shared by every adapter, so the order and the error a user sees are the same for all modalities.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.fingerprint import folder_revision
from zoo.hub import hub_reachable
from zoo.modality import LoadedModel
from zoo.models import ModelSpec

def load_model(spec: ModelSpec, model_class, processor_class, check: Callable[[nn.Module], object],
               packaged_dir: Callable[[str], Path], packaged_note: str) -> LoadedModel:
    """The folder, else the Hub, else the packaged copy named in the manifest (with a note saying so).

    Weights load in float32 with `model_class`, the tokenizer or processor with
    `processor_class`; `check` rejects an architecture the adapter cannot compress before
    any calibration work is spent.
    """
    def from_folder(source: str, label: str, revision: str | None = None) -> LoadedModel:
        model = model_class.from_pretrained(source, revision=revision, dtype=torch.float32).eval()
        processor = processor_class.from_pretrained(source, revision=revision)
        check(model)
        if Path(source).is_dir():  # local or packaged: what the files hold is the revision
            revision = folder_revision(Path(source))
        else:  # the Hub commit transformers resolved, even when no revision was asked for
            revision = getattr(model.config, "_commit_hash", None) or revision
        return LoadedModel(model, processor, label, revision)

    if spec.local is not None:
        return from_folder(str(spec.local), spec.name)
    errors = []
    if spec.hub and hub_reachable():
        try:
            return from_folder(spec.hub, spec.hub, spec.revision)
        except OSError as exc:  # no network, gated or missing repo
            errors.append(f"Hub {spec.hub}: {exc}")
    if spec.packaged:
        loaded = from_folder(str(packaged_dir(spec.packaged)), f"packaged:{spec.packaged}")
        loaded.notes.append(f"offline copy of {spec.hub} from a PyPI package ({packaged_note})")
        return loaded
    reason = "; ".join(errors) or "the Hub is offline (HF_HUB_OFFLINE) and no packaged copy exists"
    raise ZooError(f"cannot load {spec.name}: {reason}")


def write_model_folder(out_dir: Path, write: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> Path:
    """`write` fills a temporary sibling that is renamed to `out_dir` when done, so a converted
    model in the cache is either whole or absent. Files are made world-readable (the cache is
    shared); losing a race to another process that finished the same folder is not an error."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        write(tmp)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors make them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(out_dir):
            raise
    return out_dir
