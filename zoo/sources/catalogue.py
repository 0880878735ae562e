"""The zoo catalogue (catalogue.toml): aliases to sources, modalities and per-modality defaults
(calibration, evaluation), and where variants are published."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import tomllib

from zoo.errors import ZooError
from zoo.modality_table import MODALITIES, modality_of
from zoo.sources.hub import hub_model_type


def _evaluation(default=None):
    """A setting of how a model is scored: a run may override it (`Defaults.updated`)."""
    return field(default=default, metadata={"evaluation": True})


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """How the zoo treats a model: its modality's table in catalogue.toml, then its alias's entry.
    These are the only defaults: code reads them and supplies none of its own (catalogue.toml
    documents each)."""

    dtype: str
    calibration: str
    offline_calibration: str
    n_samples: int
    seq_len: int
    heal: int  # healing's steps per block unless a run asks (CompressionConfig.heal)
    license: str | None = None
    chat: bool = _evaluation(False)
    eval_texts: list[str] = _evaluation(())
    eval_seq_len: int | None = _evaluation()
    eval_windows: int | None = _evaluation()
    eval_tasks: list[str] = _evaluation(())
    eval_limit: int | None = _evaluation()
    eval_chat_tokens: int | None = _evaluation()
    eval_sets: list[str] = _evaluation(())
    offline_eval_sets: list[str] = _evaluation(())
    eval_image_tokens: int | None = _evaluation()
    eval_max_new_tokens: int | None = _evaluation()
    # Set by a run, not the catalogue: a chat base's answers, which the compressed model's are held against.
    chat_reference: list[dict] | None = _evaluation()

    @classmethod
    def read(cls, where: str, table: dict) -> Defaults:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - names)
        if unknown:
            raise ZooError(f"{where}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            return cls(**table)
        except TypeError as exc:
            raise ZooError(f"{where}: {exc}") from exc

    @classmethod
    def value_types(cls) -> dict[str, type | tuple[type]]:
        """Each setting's type as a manifest checks it: a 1-tuple is a list of that type."""
        return {name: _value_type(hint) for name, hint in typing.get_type_hints(cls).items()}

    @classmethod
    def evaluation_settings(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("evaluation"))

    def evaluation(self) -> dict:
        """The evaluation settings given (a fingerprint and a scorecard record these)."""
        fields = (f for f in dataclasses.fields(self) if f.metadata.get("evaluation"))
        return {f.name: getattr(self, f.name) for f in fields if getattr(self, f.name) != f.default}

    def updated(self, settings: dict) -> Defaults:
        """These defaults with a run's evaluation settings over them."""
        unknown = sorted(set(settings) - set(self.evaluation_settings()))
        if unknown:
            raise ZooError(
                f"unknown evaluation settings {', '.join(unknown)}; known: {', '.join(self.evaluation_settings())}"
            )
        return dataclasses.replace(self, **settings)


def _value_type(hint) -> type | tuple[type]:
    if typing.get_origin(hint) is list:
        return (typing.get_args(hint)[0],)
    given = [a for a in typing.get_args(hint) if a is not type(None)]  # X | None
    return _value_type(given[0]) if given else hint


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how the zoo treats it."""

    name: str  # as the user gave it: an alias, a folder or a Hub id
    modality: str
    hub: str | None = None
    packaged: str | None = None
    local: Path | None = None
    revision: str | None = None
    defaults: Defaults | None = None  # the modality's catalogue defaults, then the alias's


@cache
def catalogue() -> dict:
    return tomllib.loads(resources.files("zoo.sources").joinpath("catalogue.toml").read_text())


def aliases() -> list[str]:
    return sorted(catalogue()["models"])


def modality_defaults(modality: str) -> Defaults:
    return Defaults.read(f"catalogue.toml [defaults.{modality}]", catalogue()["defaults"].get(modality, {}))


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
            Defaults.read(f"catalogue.toml [models.{name!r}]", {**catalogue()["defaults"].get(kind, {}), **entry}),
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
