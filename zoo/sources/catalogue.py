"""The zoo catalogue (catalogue.toml): aliases to sources, modalities and per-modality defaults
(calibration, evaluation), and where variants are published."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import tomllib

from zoo.errors import ZooError
from zoo.modality_table import MODALITIES, modality_of
from zoo.sources.hub import hub_model_type


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how the zoo treats it."""

    name: str  # as the user gave it: an alias, a folder or a Hub id
    modality: str
    hub: str | None = None
    packaged: str | None = None
    local: Path | None = None
    revision: str | None = None
    defaults: dict = field(default_factory=dict)  # the modality's catalogue defaults, then the alias's


@cache
def catalogue() -> dict:
    return tomllib.loads(resources.files("zoo.sources").joinpath("catalogue.toml").read_text())


def aliases() -> list[str]:
    return sorted(catalogue()["models"])


def modality_defaults(modality: str) -> dict:
    return dict(catalogue()["defaults"].get(modality, {}))


def publish_settings() -> dict:
    """The catalogue's [publish] table: organisation and visibility of published variants."""
    return dict(catalogue().get("publish", {}))


def _local_modality(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise ZooError(f"{path} is a directory without config.json: not a transformers model folder")
    try:
        model_type = json.loads(config.read_text()).get("model_type", "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ZooError(f"{config} is not a valid JSON config: {exc}") from exc
    return modality_of(model_type)


def resolve(name: str, modality: str | None = None, online: bool = False) -> ModelSpec:
    """An alias from the catalogue, a local model folder, or a Hub id ("org/name");
    `modality` overrides what the catalogue or the model's config says (a Hub repository's
    config is read only when `online`; offline a Hub id is taken for a decoder LLM)."""
    if modality is not None and modality not in MODALITIES:
        raise ZooError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    table = catalogue()
    if name in table["models"]:
        entry = dict(table["models"][name])
        listed = entry.pop("modality")
        kind = modality or listed
        sources = {k: entry.pop(k, None) for k in ("hub", "packaged", "revision")}
        return ModelSpec(
            name,
            kind,
            sources["hub"],
            sources["packaged"],
            None,
            sources["revision"],
            {**modality_defaults(kind), **entry},
        )
    path = Path(name).expanduser()
    if path.is_dir():
        kind = modality or _local_modality(path)
        return ModelSpec(name, kind, local=path, defaults=modality_defaults(kind))
    if "/" in name and not name.startswith((".", "/")):
        kind = modality or modality_of((hub_model_type(name) if online else None) or "")
        return ModelSpec(name, kind, hub=name, defaults=modality_defaults(kind))
    close = difflib.get_close_matches(name, aliases(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ZooError(
        f"unknown model {name!r}: not an alias in the zoo catalogue, a local folder, "
        f"or a Hub id (org/name).{hint} Known aliases: {', '.join(aliases())}"
    )
