"""`zoo nightly`: rebuild every variant of the nightly plan whose inputs changed, publish it,
and report what happened.

A variant is skipped when the publisher already holds it with the same fingerprint (base
revision, engine version, configuration, calibration, evaluation) and it is not marked broken,
so an interrupted run resumes where it stopped; a variant that was compressed and scored but not
yet published is taken from the work folder. Each published variant is verified in a fresh
process (zoo.rescore). One failing variant never stops the others; the run exits non-zero when any
failed or was found broken.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import tomllib

from zoo.compression.config import VARIANT_KINDS, CompressionConfig
from zoo.errors import ZooError
from zoo.files import write_text
from zoo.pipeline import (
    EVAL_SETTINGS,
    CompressRequest,
    Prepared,
    compress_variant,
    default_out_dir,
    evaluate,
    fingerprint,
    prepare,
)
from zoo.publish.publishers import PublishedVariant, Publisher
from zoo.publish.scorecard import SCORECARD, Scorecard
from zoo.publish.verdict import BROKEN
from zoo.rescore import verify_published

log = logging.getLogger(__name__)

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
PUBLISH_KEYS = {"target": str, "organization": str, "private": bool}
# The type of each plan value that is not a compression setting (CompressionConfig checks those);
# a tuple is a list of that type.
VALUE_TYPES = {
    "model": str,
    "modality": str,
    "crs": ((int, float),),
    "methods": (str,),
    "seed": int,
    "calibration": str,
    "n_samples": int,
    "seq_len": int,
    "runner": str,
    "components": (str,),
    "eval_windows": int,
    "eval_limit": int,
    "eval_tasks": (str,),
    "eval_sets": (str,),
    "offline_eval_sets": (str,),
    "eval_seq_len": int,
    "eval_texts": (str,),
    "eval_image_tokens": int,
    "eval_max_new_tokens": int,
}
REGRESSION_TOLERANCE = 0.01  # relative change of a metric, in its bad direction, flagged as a regression
# The CI runner class of an entry without `runner`; a plan's [runners] table maps each class to its
# runs-on labels, so which machines run the zoo is configuration, never code.
DEFAULT_RUNNER = "cpu"
DEFAULT_RUNNERS = {DEFAULT_RUNNER: "ubuntu-latest"}


@dataclass(frozen=True)
class Variant:
    """One (model, CR, method) cell of the nightly plan."""

    entry: dict
    cr: float
    kind: str  # a VARIANT_KINDS key

    @property
    def config(self) -> CompressionConfig:
        settings = {k: v for k, v in self.entry.items() if k in CONFIG_KEYS}
        return CompressionConfig(cr=self.cr, **settings, **VARIANT_KINDS[self.kind])

    @property
    def name(self) -> str:
        return default_out_dir(self.entry["model"], self.config).name


@dataclass
class Outcome:
    variant: str
    model: str
    cr: float
    kind: str
    status: str = "pending"  # rebuilt | skipped | failed
    reason: str = ""
    seconds: float = 0.0
    repo_id: str | None = None
    url: str | None = None
    achieved_cr: float | None = None
    changes: list[dict] = field(default_factory=list)  # metric against the previously published scorecard
    verification: str | None = None  # verified | broken: the published variant reloaded elsewhere
    verification_reason: str = ""  # why it is broken

    @property
    def regressions(self) -> list[dict]:
        return [c for c in self.changes if c["regression"]]

    @property
    def broken(self) -> bool:
        return self.verification == BROKEN


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
        raise ZooError(f"cannot read nightly plan {path}: {exc}") from exc


def read_plan(path: Path) -> tuple[list[Variant], dict]:
    """The variants of a nightly plan, and its [publish] table; errors name the file and entry."""
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
        where = f"{path}: [[models]] #{i + 1}"
        _unknown(where, set(entry), ENTRY_KEYS)
        _check_types(where, entry, VALUE_TYPES)
        if "model" not in entry or not entry.get("crs"):
            raise ZooError(f"{where}: needs `model` and a non-empty `crs` list")
        if entry.get("runner", DEFAULT_RUNNER) not in runners:
            raise ZooError(f"{where}: runner {entry['runner']!r} is not in [runners]: {', '.join(sorted(runners))}")
        kinds = entry.get("methods", ["compot-dynamic"])
        bad = [k for k in kinds if k not in VARIANT_KINDS]
        if bad:
            raise ZooError(f"{where}: unknown methods {bad}; known: {', '.join(VARIANT_KINDS)}")
        try:
            variants += [Variant(entry, float(cr), kind) for cr in entry["crs"] for kind in kinds]
            for v in variants:
                v.config  # noqa: B018  (checks every setting now, not when the variant's turn comes)
        except (ZooError, TypeError, ValueError) as exc:
            raise ZooError(f"{where}: {exc}") from exc
    if not variants:
        raise ZooError(f"nightly plan {path} lists no variants ([[models]] with model and crs)")
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ZooError(f"{path}: variants listed twice: {', '.join(duplicates)}")
    return variants, data.get("publish", {})


def _runners(path: Path, data: dict) -> dict[str, str | list[str]]:
    """The plan's [runners] table over the default: runner class -> runs-on label(s)."""
    table = data.get("runners", {})
    if not isinstance(table, dict) or not all(
        isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)) for v in table.values()
    ):
        raise ZooError(f"{path}: [runners] maps a runner class to a runs-on label or a list of labels, got {table!r}")
    return {**DEFAULT_RUNNERS, **table}


def ci_jobs(path: Path) -> list[dict]:
    """One CI job per model of the plan (a GitHub Actions matrix `include`): the model as
    `zoo nightly --model` takes it, a name safe for artifact and cache keys, and the runs-on labels
    of the entry's runner class."""
    variants, _ = read_plan(path)
    runners = _runners(path, _load(path))
    jobs = []
    for entry, _ in by_model(variants):
        runner = entry.get("runner", DEFAULT_RUNNER)
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(entry["model"]).name).strip("-") or "model"
        jobs.append({"model": entry["model"], "name": name, "runner": runner, "runs-on": runners[runner]})
    names = [j["name"] for j in jobs]
    if len(set(names)) != len(names):
        raise ZooError(f"{path}: two models share a job name: {', '.join(sorted(names))}")
    return jobs


def only_model(variants: list[Variant], model: str) -> list[Variant]:
    """The variants of one plan entry (`zoo nightly --model`, one CI job's share of the plan)."""
    chosen = [v for v in variants if v.entry["model"] == model]
    if not chosen:
        known = ", ".join(dict.fromkeys(v.entry["model"] for v in variants))
        raise ZooError(f"the plan has no model {model!r}; it has {known}")
    return chosen


def by_model(variants: list[Variant]) -> Iterator[tuple[dict, list[Variant]]]:
    entries: dict[int, tuple[dict, list[Variant]]] = {}
    for v in variants:
        entries.setdefault(id(v.entry), (v.entry, []))[1].append(v)
    yield from entries.values()


def run_nightly(variants: list[Variant], publisher: Publisher, workdir: Path, report_dir: Path) -> list[Outcome]:
    """Every variant in order, a model loaded, calibrated and its base scored once; the report is
    rewritten after each variant, so a killed run leaves an accurate partial one."""
    publisher.check([v.name for v in variants])
    outcomes = [Outcome(v.name, v.entry["model"], v.cr, v.kind) for v in variants]
    by_name = {o.variant: o for o in outcomes}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for entry, model_variants in by_model(variants):
        try:
            context = ModelContext(entry)
        except Exception as exc:  # noqa: BLE001 - one broken model fails its variants, not the run
            for v in model_variants:
                _fail(by_name[v.name], exc)
            write_report(outcomes, report_dir, publisher, started)
            continue
        for v in model_variants:
            outcome = by_name[v.name]
            start = time.perf_counter()
            try:
                context.build(v, outcome, publisher, workdir)
            except Exception as exc:  # noqa: BLE001
                _fail(outcome, exc)
            outcome.seconds = time.perf_counter() - start
            log.warning("nightly: %s %s %s", v.name, outcome.status, outcome.reason)
            write_report(outcomes, report_dir, publisher, started)
    return outcomes


def _fail(outcome: Outcome, exc: Exception) -> None:
    outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
    log.error("nightly: %s failed\n%s", outcome.variant, traceback.format_exc())


class ModelContext:
    """One plan entry's model, calibration and (lazily) base scores, shared by its variants."""

    def __init__(self, entry: dict) -> None:
        self.entry = entry
        settings = {k: v for k, v in entry.items() if k in CONFIG_KEYS}  # its dtype shapes the base as prepared
        self.prepared: Prepared = prepare(self.request(CompressionConfig(**settings)))
        self.base_metrics: dict | None = None

    def request(self, config: CompressionConfig, out: Path | None = None) -> CompressRequest:
        """The entry as a `zoo compress --eval --overwrite` request: the same for calibrating and building."""
        e = self.entry
        return CompressRequest(
            e["model"],
            config,
            out,
            True,
            e.get("calibration"),
            e.get("n_samples"),
            e.get("seq_len"),
            e.get("seed", 0),
            True,
            {k: v for k, v in e.items() if k in EVAL_SETTINGS},
            e.get("modality"),
        )

    def fingerprint(self, variant: Variant) -> str:
        return fingerprint(self.prepared, self.request(variant.config))

    def score(self, variant: Variant, out: Path, repo_id: str) -> None:
        """Compress a copy of the base model as `variant` into `out`, scored against the base."""
        if self.base_metrics is None:
            self.base_metrics = evaluate(self.prepared)
        loaded = dataclasses.replace(self.prepared.loaded, model=copy.deepcopy(self.prepared.loaded.model))
        compress_variant(
            dataclasses.replace(self.prepared, loaded=loaded),
            self.request(variant.config, out),
            self.base_metrics,
            repo_id,
        )

    def build(self, variant: Variant, outcome: Outcome, publisher: Publisher, workdir: Path) -> None:
        out = workdir / variant.name
        expected = self.fingerprint(variant)
        previous = publisher.get(variant.name)
        if previous is not None and previous.scorecard.fingerprint == expected and not previous.broken:
            outcome.status, outcome.reason = "skipped", "published fingerprint matches"
            outcome.repo_id, outcome.url, outcome.achieved_cr = (
                previous.repo_id,
                previous.url,
                previous.scorecard.achieved_cr,
            )
            return
        if _finished(out, expected):
            outcome.reason = "finished in an interrupted run; published now"
        else:
            self.score(variant, out, f"{publisher.organization}/{variant.name}")
            outcome.reason = _rebuild_reason(previous, expected)
        published = publisher.publish(out, variant.name)
        shutil.rmtree(out)
        outcome.status, outcome.repo_id, outcome.url = "rebuilt", published.repo_id, published.url
        outcome.achieved_cr = published.scorecard.achieved_cr
        verification = verify_published(publisher, published)
        outcome.verification, outcome.verification_reason = verification.status, verification.reason
        if previous is not None:
            outcome.changes = compare(previous.scorecard, published.scorecard)


def _rebuild_reason(previous: PublishedVariant | None, expected: str) -> str:
    if previous is None:
        return "not published before"
    if previous.scorecard.fingerprint == expected:
        return "the published build was found broken"
    return "inputs changed (fingerprint differs)"


def _finished(out: Path, expected: str) -> bool:
    try:
        return Scorecard.load(out / SCORECARD).fingerprint == expected
    except (ZooError, ValueError, KeyError):
        return False


def compare(previous: Scorecard, current: Scorecard, tolerance: float = REGRESSION_TOLERANCE) -> list[dict]:
    """Each metric both scorecards hold, compressed value then and now; a change in the metric's
    bad direction larger than `tolerance` (relative), or a value that is no number, is a regression."""
    before = {(m.task, m.name): m for m in previous.metrics}
    changes = []
    for m in current.metrics:
        old = before.get((m.task, m.name))
        if old is None:
            continue
        relative = (m.compressed - old.compressed) / abs(old.compressed) if old.compressed else math.inf
        worse = -relative if m.higher_is_better else relative
        changes.append(
            {
                "task": m.task,
                "metric": m.name,
                "previous": old.compressed,
                "current": m.compressed,
                "relative_change": relative,
                "regression": not worse <= tolerance,  # a NaN is a regression too
            }
        )
    return changes


def write_report(outcomes: list[Outcome], report_dir: Path, publisher: Publisher, started: str) -> None:
    """report.json and report.md, each written under a temporary name and renamed."""
    variants = [{**dataclasses.asdict(o), "regressions": o.regressions, "broken": o.broken} for o in outcomes]
    updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write(report_dir, {"started": started, "updated": updated, "target": repr(publisher), "variants": variants})


def _write(report_dir: Path, data: dict) -> dict:
    """The report with its counts, as written."""
    report_dir.mkdir(parents=True, exist_ok=True)
    data = {**data, "counts": _counts(data["variants"])}
    write_text(report_dir / "report.json", json.dumps(data, indent=2))
    write_text(report_dir / "report.md", markdown_report(data))
    return data


def _counts(variants: list[dict]) -> dict[str, int]:
    counts = {s: 0 for s in ("rebuilt", "skipped", "failed", "pending")}
    for v in variants:
        counts[v["status"]] += 1
    counts["regressions"] = sum(bool(v["regressions"]) for v in variants)
    counts["broken"] = sum(bool(v["broken"]) for v in variants)
    return counts


def gather_reports(report_dirs: list[Path], out: Path) -> dict:
    """One report of the CI jobs' reports (one job per model), written to `out` like a run's own;
    the folders of jobs that left no readable report are listed in it as `missing`."""
    reports, missing = [], []
    for folder in report_dirs:
        try:
            reports.append(json.loads((folder / "report.json").read_text()))
        except (OSError, ValueError) as exc:
            missing.append(f"{folder}: {type(exc).__name__}: {exc}")
    if not reports:
        raise ZooError("no report to gather: " + "; ".join(missing or ["no report folders given"]))
    data = {
        "started": min(r["started"] for r in reports),
        "updated": max(r["updated"] for r in reports),
        "target": ", ".join(dict.fromkeys(r["target"] for r in reports)),
        "variants": [v for r in reports for v in r["variants"]],
        "missing": missing,
    }
    return _write(out, data)


def markdown_report(data: dict) -> str:
    """The run summary people read (the GitHub Actions job summary)."""
    c = data["counts"]
    lines = [
        f"# compot-zoo nightly: {c['rebuilt']} rebuilt, {c['skipped']} skipped, {c['failed']} failed"
        + (f", {c['pending']} not reached" if c["pending"] else "")
        + (f", {c['regressions']} with regressions" if c["regressions"] else "")
        + (f", {c['broken']} broken once published" if c["broken"] else "")
        + (f", {len(data['missing'])} jobs without a report" if data.get("missing") else ""),
        "",
        f"Target: {data['target']}. Started {data['started']}, updated {data['updated']}.",
        "",
        "| variant | status | achieved CR | time s | why |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v in data["variants"]:
        status = v["status"] + (" ⚠ regression" if v["regressions"] else "") + (" ✗ broken" if v["broken"] else "")
        cr = f"{v['achieved_cr']:.4f}" if v["achieved_cr"] is not None else "-"
        name = f"[{v['variant']}]({v['url']})" if v["url"] else v["variant"]
        reason = v["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {status} | {cr} | {v['seconds']:.0f} | {reason} |")
    broken = [v for v in data["variants"] if v["broken"]]
    if broken:
        lines += [
            "",
            "## Broken once published",
            "",
            "Downloaded and reloaded in a fresh process, these did not score their slice as at build time:",
            "",
        ]
        lines += [f"- {v['variant']}: {v['verification_reason']}" for v in broken]
    for problem in data.get("missing", []):
        lines.append(f"\nNo report from {problem}")
    changed = [v for v in data["variants"] if v["changes"]]
    if changed:
        lines += [
            "",
            "## Against the previously published scorecards",
            "",
            "| variant | task | metric | previous | now | change |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for v in changed:
            for ch in v["changes"]:
                flag = " ⚠" if ch["regression"] else ""
                lines.append(
                    f"| {v['variant']} | {ch['task']} | {ch['metric']} | {ch['previous']:.4g} | "
                    f"{ch['current']:.4g} | {100 * ch['relative_change']:+.2f}%{flag} |"
                )
    return "\n".join(lines) + "\n"
