"""`zoo gate`: the check on every change. A small fixed manifest (zoo/ci/gate.toml) is compressed and
scored as the nightly job would, and each metric is compared with the published scorecard of the
same variant; the table goes to a pull-request comment, and the gate fails when a metric worsens
beyond GATE_TOLERANCE, unless the change says it is meant to move the numbers (report only).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from zoo.files import exclusive, write_text
from zoo.nightly.manifest import Variant
from zoo.nightly.report import MetricChange, change_table, compare
from zoo.nightly.run import ModelContext, log_failure, run_each
from zoo.publish.publishers import Publisher
from zoo.publish.scorecard import SCORECARD, Scorecard

log = logging.getLogger(__name__)

# Relative change of a metric, in its bad direction, that fails the gate, chosen from measured
# run-to-run noise (docs/publishing.md, "The gate on every change"): three runs of SmolLM2 on one 2-core CPU,
# and a fourth with 1 torch thread instead of 2, were bit-identical in every metric; Whisper's three
# runs with 2 threads were too, while 1 thread moved one word of the 183 in tts-wiki-test (3.7%
# of its WER). 2% leaves continuous metrics (perplexity) room for another machine's arithmetic.
GATE_TOLERANCE = 0.02
# Counted metrics move by whole items: the gate manifest scores 20 items per lm-eval task and 71 and 183
# words in its WER sets, so one item (0.05 accuracy) or one word (up to 0.014 WER) is the finest
# change, and the measured thread-count noise was one word. Such a metric fails the gate only when
# it also worsens by more than this (absolute): more than one item or word. A chat model's
# `answered` moves by one prompt of 24 (0.042).
ABSOLUTE_FLOOR = {"acc": 0.06, "acc_norm": 0.06, "wer": 0.015, "answered": 0.05}


@dataclass
class GateResult:
    """One variant of the gate manifest: its metrics now against the published ones."""

    variant: str
    url: str | None = None  # the published variant compared with; None when there is none
    same_inputs: bool | None = None  # whether the published fingerprint is the one built now
    changes: list[MetricChange] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and self.url is not None and not any(c.regression for c in self.changes)


def run_gate(variants: list[Variant], publisher: Publisher, workdir: Path, tolerance: float) -> list[GateResult]:
    """Build and score every variant (nothing is published), compare it with `publisher`'s copy."""
    results = {v.name: GateResult(v.name) for v in variants}

    def attempt(context: ModelContext, v: Variant) -> None:
        result, out = results[v.name], workdir / v.name
        try:
            published = publisher.get(v.name)
            context.score(v, out, f"{publisher.organization}/{v.name}")
            now = Scorecard.load(out / SCORECARD)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if published is not None:
            result.url = published.url
            result.same_inputs = published.scorecard.fingerprint == now.fingerprint
            result.changes = [floored(c) for c in compare(published.scorecard, now, tolerance)]

    def failed(v: Variant, exc: Exception) -> None:
        results[v.name].error = _error(exc)

    def finished(v: Variant) -> None:
        log.warning("gate: %s %s", v.name, "passed" if results[v.name].passed else "failed")

    with exclusive(workdir / ".lock", f"gate work folder {workdir}"):
        run_each(variants, attempt, failed, finished)
    return list(results.values())


def floored(change: MetricChange) -> MetricChange:
    """A change within one item or word of a counted metric is noise, whatever its relative size."""
    small = abs(change.current - change.previous) <= ABSOLUTE_FLOOR.get(change.metric, 0.0)
    return replace(change, regression=change.regression and not small)


def _error(exc: Exception) -> str:
    log_failure("gate", exc)
    return f"{type(exc).__name__}: {exc}"


def markdown(results: list[GateResult], against: str, tolerance: float, report_only: bool) -> str:
    """The pull-request comment: the verdict, then metric, published, now and change per variant."""
    failed = [r for r in results if not r.passed]
    if not failed:
        verdict = "✅ passed"
    elif report_only:
        verdict = "ℹ️ report only (this change is meant to move the numbers): it would have failed"
    else:
        verdict = "❌ failed"
    lines = [
        f"## compot-zoo gate: {verdict}",
        "",
        f"Each metric of the gate manifest's variants against the scorecards published in {against}; a change "
        f"of more than {tolerance:.1%} in the metric's bad direction fails the gate (accuracy and WER: "
        "only when also more than one item or word).",
        "",
        *change_table([(r.variant, c) for r in results for c in r.changes], "published", " ❌"),
    ]
    notes = []
    for r in results:
        if r.error:
            notes.append(f"- {r.variant}: ❌ could not be built and scored: {r.error}")
        elif r.url is None:
            notes.append(f"- {r.variant}: ❌ no published scorecard to compare with")
        elif not r.same_inputs:
            notes.append(f"- {r.variant}: its inputs differ from the published one's (fingerprint); see {r.url}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_gate_report(results: list[GateResult], out: Path, against: str, tolerance: float, report_only: bool) -> Path:
    """gate.json and gate.md in `out`, each under a temporary name then renamed; returns gate.md."""
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "against": against,
        "tolerance": tolerance,
        "report_only": report_only,
        "passed": all(r.passed for r in results),
        "variants": [{**asdict(r), "passed": r.passed} for r in results],
    }
    write_text(out / "gate.json", json.dumps(data, indent=2))
    return write_text(out / "gate.md", markdown(results, against, tolerance, report_only))
