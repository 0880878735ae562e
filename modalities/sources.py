"""Where a model's weights come from: a local folder, else the Hub, else a packaged offline copy.

Shared by every adapter, so the order and the error a user sees are the same for all modalities.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zoo.errors import ZooError
from zoo.hub import hub_reachable
from zoo.modality import LoadedModel
from zoo.models import ModelSpec

FromFolder = Callable[[str, str, "str | None"], LoadedModel]  # (source, label, revision)


def load_model(spec: ModelSpec, from_folder: FromFolder, packaged_dir: Callable[[str], Path],
               packaged_note: str) -> LoadedModel:
    """The folder, else the Hub, else the packaged copy named in the manifest (with a note saying so)."""
    if spec.local is not None:
        return from_folder(str(spec.local), spec.name, None)
    errors = []
    if spec.hub and hub_reachable():
        try:
            return from_folder(spec.hub, spec.hub, spec.revision)
        except OSError as exc:  # no network, gated or missing repo
            errors.append(f"Hub {spec.hub}: {exc}")
    if spec.packaged:
        loaded = from_folder(str(packaged_dir(spec.packaged)), f"packaged:{spec.packaged}", None)
        loaded.notes.append(f"offline copy of {spec.hub} from a PyPI package ({packaged_note})")
        return loaded
    reason = "; ".join(errors) or "the Hub is offline (HF_HUB_OFFLINE) and no packaged copy exists"
    raise ZooError(f"cannot load {spec.name}: {reason}")
