"""What a nightly run reports (report.json, report.md): each variant's outcome and its metrics
against the previously published scorecard. The metric changes and their markdown table are the
gate's too (zoo.gate)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from zoo.errors import ZooError
from zoo.files import write_text
from zoo.publish.publishers import Publisher
from zoo.publish.scorecard import Scorecard
from zoo.publish.verdict import BROKEN

STATUSES = ("rebuilt", "skipped", "failed", "pending")  # an Outcome's
REGRESSION_TOLERANCE = 0.01  # relative change of a metric, in its bad direction, flagged as a regression


@dataclass(frozen=True, kw_only=True)
class MetricChange:
    """One metric two scorecards both hold: the compressed model's value then and now."""

    task: str
    metric: str
    previous: float
    current: float
    relative_change: float
    regression: bool  # worse beyond the tolerance in the metric's bad direction, or no number


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
    changes: list[MetricChange] = field(default_factory=list)  # against the previously published scorecard
    verification: str | None = None  # verified | broken: the published variant reloaded elsewhere
    verification_reason: str = ""  # why it is broken

    @property
    def regressions(self) -> list[MetricChange]:
        return [c for c in self.changes if c.regression]

    @property
    def broken(self) -> bool:
        return self.verification == BROKEN


def compare(previous: Scorecard, current: Scorecard, tolerance: float = REGRESSION_TOLERANCE) -> list[MetricChange]:
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
            MetricChange(
                task=m.task,
                metric=m.name,
                previous=old.compressed,
                current=m.compressed,
                relative_change=relative,
                regression=not worse <= tolerance,  # a NaN is a regression too
            )
        )
    return changes


def change_table(rows: list[tuple[str, MetricChange]], before: str, flag: str) -> list[str]:
    """The markdown table of (variant, change) rows, `before` heading the previous values and
    `flag` marking a regression: the nightly report's and the gate's."""
    lines = [f"| variant | task | metric | {before} | now | change |", "| --- | --- | --- | --- | --- | --- |"]
    for variant, c in rows:
        lines.append(
            f"| {variant} | {c.task} | {c.metric} | {c.previous:.4g} | {c.current:.4g} | "
            f"{100 * c.relative_change:+.2f}%{flag if c.regression else ''} |"
        )
    return lines


def write_report(outcomes: list[Outcome], report_dir: Path, publisher: Publisher, started: str) -> None:
    """report.json and report.md, each written under a temporary name and renamed."""
    variants = [
        {**dataclasses.asdict(o), "regressions": [dataclasses.asdict(c) for c in o.regressions], "broken": o.broken}
        for o in outcomes
    ]
    updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write(report_dir, {"started": started, "updated": updated, "registry": repr(publisher), "variants": variants})


def _write(report_dir: Path, data: dict) -> dict:
    """The report with its counts, as written."""
    report_dir.mkdir(parents=True, exist_ok=True)
    data = {**data, "counts": _counts(data["variants"])}
    write_text(report_dir / "report.json", json.dumps(data, indent=2))
    write_text(report_dir / "report.md", markdown_report(data))
    return data


def _counts(variants: list[dict]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
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
            reports.append(_checked(json.loads((folder / "report.json").read_text())))
        except (OSError, ValueError) as exc:  # ZooError is a ValueError
            missing.append(f"{folder}: {type(exc).__name__}: {exc}")
    if not reports:
        raise ZooError("no report to gather: " + "; ".join(missing or ["no report folders given"]))
    data = {
        "started": min(r["started"] for r in reports),
        "updated": max(r["updated"] for r in reports),
        "registry": ", ".join(dict.fromkeys(r["registry"] for r in reports)),
        "variants": [v for r in reports for v in r["variants"]],
        "missing": missing,
    }
    return _write(out, data)


NUMBER = (int, float)
# What a job's report.json must hold, with the types `markdown_report` reads: a report from another
# version, or edited by hand, is named and left out rather than met as a KeyError halfway through.
REPORT_FIELDS = {"started": str, "updated": str, "registry": str, "variants": list}
VARIANT_FIELDS = {
    "variant": str,
    "status": str,
    "reason": str,
    "seconds": NUMBER,
    "url": (str, type(None)),
    "achieved_cr": (*NUMBER, type(None)),
    "regressions": list,
    "broken": bool,
    "changes": list,
    "verification_reason": str,
}
CHANGE_FIELDS = {
    "task": str,
    "metric": str,
    "previous": NUMBER,
    "current": NUMBER,
    "relative_change": NUMBER,
    "regression": bool,
}


def _checked(data: object) -> dict:
    """A job's report as read, once its fields have the types a report is written with."""
    _check_fields(data, REPORT_FIELDS, "report.json")
    for n, variant in enumerate(data["variants"], 1):
        _check_fields(variant, VARIANT_FIELDS, f"variant #{n}")
        if variant["status"] not in STATUSES:
            raise ZooError(f"variant #{n}: status {variant['status']!r} is not one a nightly run writes")
        for change in variant["changes"]:
            _check_fields(change, CHANGE_FIELDS, f"variant #{n}'s changes")
    return data


def _check_fields(data: object, types: dict[str, type | tuple], what: str) -> None:
    if not isinstance(data, dict):
        raise ZooError(f"{what} is {type(data).__name__}, not an object")
    for key, kind in types.items():
        if key not in data:
            raise ZooError(f"{what} lacks {key!r}")
        if not isinstance(data[key], kind) or (isinstance(data[key], bool) and kind is not bool):
            raise ZooError(f"{what}: {key} is {data[key]!r}, of the wrong type")


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
        f"Registry: {data['registry']}. Started {data['started']}, updated {data['updated']}.",
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
    rows = [(v["variant"], MetricChange(**c)) for v in data["variants"] for c in v["changes"]]
    if rows:
        lines += ["", "## Against the previously published scorecards", "", *change_table(rows, "previous", " ⚠")]
    return "\n".join(lines) + "\n"
