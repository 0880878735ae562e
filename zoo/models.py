"""The zoo manifest (zoo.toml): aliases to sources, modalities and calibration defaults."""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from zoo.errors import ZooError

# transformers model_type -> modality, for Hub ids and local folders outside the manifest.
MODALITY_BY_MODEL_TYPE = {"whisper": "whisper", "qwen2_vl": "vlm", "qwen2_5_vl": "vlm", "qwen3_vl": "vlm"}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how the zoo treats it."""

    name: str
    modality: str
    hub: str | None = None
    packaged: str | None = None
    local: Path | None = None
    revision: str | None = None
    defaults: dict = field(default_factory=dict)


@cache
def manifest() -> dict:
    return tomllib.loads(resources.files("zoo").joinpath("zoo.toml").read_text())


def aliases() -> list[str]:
    return sorted(manifest()["models"])


def _local_modality(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise ZooError(f"{path} is a directory without config.json: not a transformers model folder")
    model_type = json.loads(config.read_text()).get("model_type", "")
    return MODALITY_BY_MODEL_TYPE.get(model_type, "llm")


def resolve(name: str, modality: str | None = None) -> ModelSpec:
    """An alias from the manifest, a local model folder, or a Hub id ("org/name")."""
    table = manifest()
    if name in table["models"]:
        entry = dict(table["models"][name])
        kind = entry.pop("modality")
        defaults = {**table["defaults"].get(kind, {}), **{k: v for k, v in entry.items()
                                                          if k not in ("hub", "packaged", "revision")}}
        return ModelSpec(name, kind, entry.get("hub"), entry.get("packaged"), None, entry.get("revision"), defaults)
    path = Path(name).expanduser()
    if path.is_dir():
        kind = modality or _local_modality(path)
        return ModelSpec(name, kind, local=path, defaults=dict(table["defaults"].get(kind, {})))
    if "/" in name and not name.startswith((".", "/")):
        kind = modality or "llm"
        return ModelSpec(name, kind, hub=name, defaults=dict(table["defaults"].get(kind, {})))
    close = difflib.get_close_matches(name, aliases(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ZooError(f"unknown model {name!r}: not an alias in the zoo manifest, a local folder, "
                   f"or a Hub id (org/name).{hint} Known aliases: {', '.join(aliases())}")
