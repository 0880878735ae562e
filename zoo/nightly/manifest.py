"""The manifest of `zoo nightly` and `zoo gate` (zoo/ci/*.toml): which models, CRs and methods to
keep built, with which settings, on which CI runners, published where. Read once and checked whole,
so a typo fails before any work, naming the file and entry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tomllib

from zoo.compression.config import CompressionConfig
from zoo.errors import ZooError
from zoo.methods import variant_kinds
from zoo.pipeline import EVAL_SETTINGS, default_out_dir
from zoo.sources.catalogue import Defaults

# Compression settings a [[models]] entry may set for all its variants: every CompressionConfig
# field but those its `crs` and `methods` set, and where the engine runs.
CONFIG_KEYS = {f.name for f in CompressionConfig.settings()} - {"cr", "method", "static", "device"}
# Keys of a [[models]] entry; any other is a typo and an error.
ENTRY_KEYS = {
    "model",
    "modality",
    "crs",
    "methods",
    "seed",
    "calibration",
    "n_samples",
    "seq_len",
    "runner",
    *CONFIG_KEYS,
    *EVAL_SETTINGS,
}
PUBLISH_KEYS = {"registry": str, "organization": str, "private": bool}
# The type of each manifest value that is not a compression setting (CompressionConfig checks those);
# a tuple is a list of that type.
VALUE_TYPES = {
    "model": str,
    "modality": str,
    "crs": ((int, float),),
    "methods": (str,),
    "seed": int,
    "runner": str,
    "components": (str,),
    **{k: v for k, v in Defaults.value_types().items() if k in ("calibration", "n_samples", "seq_len", *EVAL_SETTINGS)},
}


@dataclass(frozen=True)
class Runner:
    """A CI runner class: the runs-on label(s) its jobs get, and how many processes (GPUs) a job
    starts under torchrun there (1: the plain `zoo nightly`)."""

    runs_on: str | list[str]
    processes: int = 1


# The CI runner class of an entry without `runner`; a manifest's [runners] table maps each class to its
# runs-on labels, so which machines run the zoo is configuration, never code.
DEFAULT_RUNNER = "cpu"
DEFAULT_RUNNERS = {DEFAULT_RUNNER: Runner("ubuntu-latest")}


@dataclass(frozen=True)
class Variant:
    """One (model, CR, method) cell of the manifest."""

    entry: dict
    cr: float
    kind: str  # a variant_kinds() key

    @property
    def config(self) -> CompressionConfig:
        settings = {k: v for k, v in self.entry.items() if k in CONFIG_KEYS}
        return CompressionConfig(cr=self.cr, **settings, **variant_kinds()[self.kind])

    @property
    def name(self) -> str:
        return default_out_dir(self.entry["model"], self.config).name


def _unknown(where: str, keys: set, known: set) -> None:
    if keys - known:
        raise ZooError(f"{where}: unknown keys {', '.join(sorted(keys - known))}; known: {', '.join(sorted(known))}")


def _check_types(where: str, table: dict, types: dict) -> None:
    """Each value of the type `types` names (a tuple: a list of it); bools are no numbers."""
    for key, value in table.items():
        kind = types.get(key)
        if kind is None:
            continue
        items, want = (value, kind[0]) if isinstance(kind, tuple) else ([value], kind)
        ok = (not isinstance(kind, tuple) or isinstance(value, list)) and all(
            isinstance(v, want) and (want is bool or not isinstance(v, bool)) for v in items
        )
        if not ok:
            names = "/".join(t.__name__ for t in want) if isinstance(want, tuple) else want.__name__
            expected = f"a list of {names}" if isinstance(kind, tuple) else f"a {names}"
            raise ZooError(f"{where}: {key} = {value!r} should be {expected}")


def _load(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ZooError(f"cannot read manifest {path}: {exc}") from exc


def read_manifest(path: Path) -> tuple[list[Variant], dict]:
    """The variants of a manifest, and its [publish] table; errors name the file and entry."""
    data = _load(path)
    _unknown(str(path), set(data), {"models", "publish", "runners"})
    if not isinstance(data.get("models", []), list) or not all(isinstance(e, dict) for e in data.get("models", [])):
        raise ZooError(f"{path}: models must be a list of [[models]] tables, got {data['models']!r}")
    if not isinstance(data.get("publish", {}), dict):
        raise ZooError(f"{path}: publish must be a [publish] table, got {data['publish']!r}")
    _unknown(f"{path}: [publish]", set(data.get("publish", {})), set(PUBLISH_KEYS))
    _check_types(f"{path}: [publish]", data.get("publish", {}), PUBLISH_KEYS)
    runners = _runners(path, data)
    variants = []
    for i, entry in enumerate(data.get("models", [])):
        variants += _entry_variants(f"{path}: [[models]] #{i + 1}", entry, runners)
    if not variants:
        raise ZooError(f"manifest {path} lists no variants ([[models]] with model and crs)")
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ZooError(f"{path}: variants listed twice: {', '.join(duplicates)}")
    return variants, data.get("publish", {})


def _entry_variants(where: str, entry: dict, runners: dict) -> list[Variant]:
    """The variants of one [[models]] entry, each setting checked now, not when its turn comes."""
    _unknown(where, set(entry), ENTRY_KEYS)
    _check_types(where, entry, VALUE_TYPES)
    if "model" not in entry or not entry.get("crs"):
        raise ZooError(f"{where}: needs `model` and a non-empty `crs` list")
    if entry.get("runner", DEFAULT_RUNNER) not in runners:
        raise ZooError(f"{where}: runner {entry['runner']!r} is not in [runners]: {', '.join(sorted(runners))}")
    kinds = entry.get("methods", ["compot-dynamic"])
    bad = [k for k in kinds if k not in variant_kinds()]
    if bad:
        raise ZooError(f"{where}: unknown methods {bad}; known: {', '.join(variant_kinds())}")
    try:
        variants = [Variant(entry, float(cr), kind) for cr in entry["crs"] for kind in kinds]
        for v in variants:
            v.config  # noqa: B018  (builds the config, which checks every setting)
    except (ZooError, TypeError, ValueError) as exc:
        raise ZooError(f"{where}: {exc}") from exc
    return variants


def _runner(path: Path, name: str, value: object) -> Runner:
    def labels(v: object) -> bool:
        return isinstance(v, str) or (isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v))

    if labels(value):
        return Runner(value)
    if isinstance(value, dict) and set(value) <= {"runs-on", "processes"} and labels(value.get("runs-on")):
        processes = value.get("processes", 1)
        if isinstance(processes, int) and not isinstance(processes, bool) and processes >= 1:
            return Runner(value["runs-on"], processes)
    raise ZooError(
        f"{path}: [runners] {name} must be a runs-on label, a list of labels, or "
        f"{{ runs-on = LABELS, processes = N }} with N >= 1; got {value!r}"
    )


def _runners(path: Path, data: dict) -> dict[str, Runner]:
    """The manifest's [runners] table over the default: runner class -> its labels and processes."""
    table = data.get("runners", {})
    if not isinstance(table, dict):
        raise ZooError(f"{path}: [runners] must be a table of runner classes, got {table!r}")
    return {**DEFAULT_RUNNERS, **{name: _runner(path, name, value) for name, value in table.items()}}


def ci_jobs(path: Path) -> list[dict]:
    """One CI job per model of the manifest (a GitHub Actions matrix `include`): the model as
    `zoo nightly --model` takes it, a name safe for artifact and cache keys, the runs-on labels of
    the entry's runner class and the processes its job starts (torchrun's --nproc-per-node)."""
    variants, _ = read_manifest(path)
    runners = _runners(path, _load(path))
    jobs = []
    for entry, _ in by_model(variants):
        runner = entry.get("runner", DEFAULT_RUNNER)
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(entry["model"]).name).strip("-") or "model"
        chosen = runners[runner]
        jobs.append(
            {
                "model": entry["model"],
                "name": name,
                "runner": runner,
                "runs-on": chosen.runs_on,
                "processes": chosen.processes,
            }
        )
    names = [j["name"] for j in jobs]
    if len(set(names)) != len(names):
        raise ZooError(f"{path}: two models share a job name: {', '.join(sorted(names))}")
    return jobs


def only_model(variants: list[Variant], model: str) -> list[Variant]:
    """The variants of one manifest entry (`zoo nightly --model`, one CI job's share of the manifest)."""
    chosen = [v for v in variants if v.entry["model"] == model]
    if not chosen:
        known = ", ".join(dict.fromkeys(v.entry["model"] for v in variants))
        raise ZooError(f"the manifest has no model {model!r}; it has {known}")
    return chosen


def by_model(variants: list[Variant]) -> Iterator[tuple[dict, list[Variant]]]:
    entries: dict[int, tuple[dict, list[Variant]]] = {}
    for v in variants:
        entries.setdefault(id(v.entry), (v.entry, []))[1].append(v)
    yield from entries.values()
