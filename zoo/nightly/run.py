"""The nightly run: every variant of the manifest whose inputs changed is rebuilt, scored and
published, then re-scored in a fresh process (zoo.rescore).

A variant is skipped when the publisher already holds it with the same fingerprint (base
revision, engine version, configuration, calibration, evaluation) and it is not marked broken,
so an interrupted run resumes where it stopped; a variant that was compressed and scored but not
yet published is taken from the work folder. One failing variant never stops the others (run_each,
the gate's loop too).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import shutil
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from zoo.compression.config import CompressionConfig
from zoo.compression.ranks import Ranks
from zoo.errors import UserError, ZooError
from zoo.evaluators.scores import Results
from zoo.files import check_writable, exclusive
from zoo.nightly.manifest import CONFIG_KEYS, Variant, by_model
from zoo.nightly.report import Outcome, compare, write_report
from zoo.pipeline import EVAL_SETTINGS, CompressRequest, Prepared, compress_variant, evaluate, fingerprint, prepare
from zoo.publish.publishers import PublishedVariant, Publisher
from zoo.publish.scorecard import SCORECARD, Scorecard
from zoo.rescore import verify_published

log = logging.getLogger(__name__)
SKIP, PUBLISH, COMPRESS = "skip", "publish", "compress"  # what a variant needs tonight


def run_each(
    variants: list[Variant],
    attempt: Callable[[ModelContext, Variant], None],
    failed: Callable[[Variant, Exception], None],
    finished: Callable[[Variant], None],
) -> None:
    """Every variant in order, its model loaded, calibrated and base-scored once (ModelContext):
    `attempt` builds one; what it raises (or, for each of its variants, what loading the model
    raises) goes to `failed`, never stopping the others; `finished` follows each variant."""
    for entry, model_variants in by_model(variants):
        try:
            context = ModelContext(entry)
        except Exception as exc:  # noqa: BLE001 - one broken model fails its variants, not the run
            for v in model_variants:
                failed(v, exc)
                finished(v)
            continue
        for v in model_variants:
            try:
                attempt(context, v)
            except Exception as exc:  # noqa: BLE001 - one failing variant never stops the others
                failed(v, exc)
            finished(v)


def run_nightly(variants: list[Variant], publisher: Publisher, workdir: Path, report_dir: Path) -> list[Outcome]:
    """Every variant through run_each; the report is rewritten after each variant, so a killed run
    leaves an accurate partial one."""
    main = Ranks.current().main  # under torchrun rank 0 publishes and reports; the others compress with it
    if main:
        publisher.check([v.name for v in variants])
        check_writable(report_dir / "report.json")
    outcomes = {v.name: Outcome(v.name, v.entry["model"], v.cr, v.kind) for v in variants}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def attempt(context: ModelContext, v: Variant) -> None:
        start = time.perf_counter()
        try:
            context.build(v, outcomes[v.name], publisher, workdir)
        finally:
            outcomes[v.name].seconds = time.perf_counter() - start

    def finished(v: Variant) -> None:
        if main:
            log.warning("nightly: %s %s %s", v.name, outcomes[v.name].status, outcomes[v.name].reason)
            write_report(list(outcomes.values()), report_dir, publisher, started)

    with contextlib.ExitStack() as held:
        if main:
            held.enter_context(publisher.lock())
            held.enter_context(exclusive(workdir / ".lock", f"nightly work folder {workdir}"))
        run_each(variants, attempt, lambda v, exc: _fail(outcomes[v.name], exc), finished)
    return list(outcomes.values())


def _fail(outcome: Outcome, exc: Exception) -> None:
    outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
    log_failure(f"nightly: {outcome.variant} failed", exc)


def log_failure(what: str, exc: Exception) -> None:
    """One line for an error the user can fix from its message (its traceback only with -v), so a
    plan of many bad entries stays readable; the whole traceback for anything else (a bug)."""
    if isinstance(exc, UserError):
        log.error("%s: %s", what, exc)
        log.info("%s", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    else:
        log.error("%s", what, exc_info=exc)


class ModelContext:
    """One manifest entry's model, calibration and (lazily) base scores, shared by its variants."""

    def __init__(self, entry: dict) -> None:
        self.entry = entry
        settings = {k: v for k, v in entry.items() if k in CONFIG_KEYS}  # its dtype shapes the base as prepared
        self.prepared: Prepared = prepare(self.request(CompressionConfig(**settings)))
        self.base_results: Results | None = None

    def request(self, config: CompressionConfig, out: Path | None = None) -> CompressRequest:
        """The entry as a `zoo compress --eval --overwrite` request: the same for calibrating and building."""
        e = self.entry
        return CompressRequest(
            model=e["model"],
            config=config,
            out=out,
            overwrite=True,
            calibration=e.get("calibration"),
            n_samples=e.get("n_samples"),
            seq_len=e.get("seq_len"),
            seed=e.get("seed", 0),
            evaluate=True,
            eval_settings={k: v for k, v in e.items() if k in EVAL_SETTINGS},
            modality=e.get("modality"),
        )

    def fingerprint(self, variant: Variant) -> str:
        return fingerprint(self.prepared, self.request(variant.config))

    def score(self, variant: Variant, out: Path, repo_id: str) -> None:
        """Compress a copy of the base model as `variant` into `out`, scored against the base (by
        rank 0: the other ranks of a torchrun job only share the compression)."""
        if self.base_results is None and Ranks.current().main:
            self.base_results = evaluate(self.prepared)
        loaded = dataclasses.replace(self.prepared.loaded, model=copy.deepcopy(self.prepared.loaded.model))
        compress_variant(
            dataclasses.replace(self.prepared, loaded=loaded),
            self.request(variant.config, out),
            self.base_results,
            repo_id,
        )

    def build(self, variant: Variant, outcome: Outcome, publisher: Publisher, workdir: Path) -> None:
        """Skip, publish what an interrupted run finished, or compress, score and publish. Under
        torchrun rank 0 decides and tells the others, which compress with it and do nothing else."""
        out, ranks = workdir / variant.name, Ranks.current()
        step, previous, error = None, None, None
        if ranks.main:
            try:
                step, previous = self._next_step(variant, outcome, publisher, out)
            except Exception as exc:  # noqa: BLE001 - raised once the other ranks know there is nothing to do
                error = exc
        step = ranks.broadcast(step, 0)
        if error is not None:
            raise error
        if step == COMPRESS:
            self.score(variant, out, f"{publisher.organization}/{variant.name}")
        if step == SKIP or not ranks.main:
            return
        published = publisher.publish(out, variant.name)
        shutil.rmtree(out)
        outcome.status, outcome.repo_id, outcome.url = "rebuilt", published.repo_id, published.url
        outcome.achieved_cr = published.scorecard.achieved_cr
        verification = verify_published(publisher, published)
        outcome.verification, outcome.verification_reason = verification.status, verification.reason
        if previous is not None:
            outcome.changes = compare(previous.scorecard, published.scorecard)

    def _next_step(
        self, variant: Variant, outcome: Outcome, publisher: Publisher, out: Path
    ) -> tuple[str, PublishedVariant | None]:
        expected = self.fingerprint(variant)
        previous = publisher.get(variant.name)
        if previous is not None and previous.scorecard.fingerprint == expected and not previous.broken:
            outcome.status, outcome.reason = "skipped", "published fingerprint matches"
            outcome.repo_id, outcome.url, outcome.achieved_cr = (
                previous.repo_id,
                previous.url,
                previous.scorecard.achieved_cr,
            )
            return SKIP, previous
        if _finished(out, expected):
            outcome.reason = "finished in an interrupted run; published now"
            return PUBLISH, previous
        outcome.reason = _rebuild_reason(previous, expected)
        return COMPRESS, previous


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
