"""One scorecard schema for every modality: base vs compressed, with recovery.

Derived from the variant record and the evaluators' results; free of torch and transformers,
so cards, the site and `zoo browse` read scorecards cheaply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from zoo import methods
from zoo.errors import ZooError
from zoo.evaluators.provenance import BENCHMARK, PROVENANCES
from zoo.evaluators.scores import STDERR, Scores, scores_from_dict, scores_to_dict
from zoo.files import write_text
from zoo.format.record import VariantRecord
from zoo.modality_table import MODALITIES

SCHEMA_VERSION = 5  # 2: fingerprint and command; 3: standard errors, item limit, file sizes; 4: provenance, slice;
# 5: library versions, the run's evaluation settings, the base's Hub id
# Older versions read as scorecards without what came later: no standard errors or limit (2), no
# provenance (None: not recorded) and no verification slice (3), no versions or run settings (4).
READABLE_VERSIONS = (2, 3, 4, 5)
SCHEMA_FILE = Path(__file__).with_name("scorecard.schema.json")
SCORECARD = "scorecard.json"  # its file name in a checkpoint and a published repository
# Metric names (lm-eval's and ours) where smaller is better; any other is higher-is-better.
LOWER_IS_BETTER = frozenset(
    {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "nll", "loss", "wer", "cer"}
)
# The range of each number a scorecard holds: a value outside it, such as a CR of 1e300, comes
# from a corrupt or forged file and is never shown as a result. Those in OPTIONAL_NUMBERS may be None.
RANGES = {
    "target_cr": (0.0, 1.0),
    "achieved_cr": (-1.0, 1.0),
    "compression_seconds": (0.0, 1e9),
    "peak_memory_mb": (0.0, 1e9),
    "file_bytes": (0, 1e15),
    "base_bytes": (0, 1e15),
    "eval_limit": (1, 1e12),
    "heal": (0, 1e9),
    "distill": (0, 1e9),
}
OPTIONAL_NUMBERS = ("file_bytes", "base_bytes", "eval_limit")
METRIC_LIMIT = 1e12  # no metric (an accuracy, a WER, a perplexity) comes near it in magnitude


def check_number(label: str, value: object, lo: float, hi: float) -> None:
    """`value` is a finite number in [lo, hi]; a bool or a string is not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise ZooError(f"{label} {value!r} is not a number in [{lo:g}, {hi:g}]")


# Distributions whose versions shape a variant or its scores: the scorecard records those installed.
LIBRARIES = ("compot-zoo", "torch", "transformers", "safetensors", "huggingface-hub", "datasets", "lm-eval", "jiwer")


def library_versions() -> dict[str, str]:
    """The installed versions of LIBRARIES (read from package metadata: nothing is imported)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def schema() -> dict:
    """The JSON Schema of scorecard.json: the documented file, with the modalities and methods
    this version knows filled in from their one definition."""
    data = json.loads(SCHEMA_FILE.read_text())
    data["properties"]["modality"]["enum"] = list(MODALITIES)
    data["properties"]["method"]["enum"] = list(methods.names())
    return data


def higher_is_better(name: str) -> bool:
    """Direction of a metric from its name ("metric" or "metric/filter"): errors go down, scores up."""
    return name.split("/")[0] not in LOWER_IS_BETTER


@dataclass(frozen=True)
class MetricResult:
    """One metric of one task, measured on the base and on the compressed model."""

    name: str
    task: str
    base: float
    compressed: float
    higher_is_better: bool
    base_stderr: float | None = None  # the evaluator's standard error, where it gives one (lm-eval)
    compressed_stderr: float | None = None
    source: str | None = None  # BENCHMARK or STAND_IN (zoo.evaluators.provenance); None: not recorded

    def __post_init__(self) -> None:
        if self.source is not None and self.source not in PROVENANCES:
            raise ZooError(
                f"metric {self.name!r} of task {self.task!r}: source {self.source!r} is not one of {PROVENANCES}"
            )
        for label in ("base", "compressed", "base_stderr", "compressed_stderr"):
            value = getattr(self, label)
            if value is None and label.endswith(STDERR):
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not abs(value) <= METRIC_LIMIT:
                raise ZooError(
                    f"metric {self.name!r} of task {self.task!r}: the {label} model scored {value!r}, "
                    f"not a finite number within ±{METRIC_LIMIT:g}; a scorecard cannot hold it"
                )

    @property
    def recovery(self) -> float:
        """Percent of the base score kept: compressed/base for scores, base/compressed for errors."""
        num, den = (self.compressed, self.base) if self.higher_is_better else (self.base, self.compressed)
        return 100.0 * num / den if den else math.nan


@dataclass(frozen=True)
class SliceScore:
    """A short fixed slice of the evaluation, scored at build time on the model as it was scored:
    the published variant, reloaded elsewhere, must score the same on it (zoo.rescore)."""

    settings: dict  # the evaluation settings (EVAL_SETTINGS keys) that make the slice
    online: bool  # whether the Hub's sets were scored
    scores: Scores  # as the adapter returned them

    def to_dict(self) -> dict:
        """As scorecard.json holds it: the scores in lm-eval's flat form (zoo.evaluators.scores)."""
        return {"settings": self.settings, "online": self.online, "scores": scores_to_dict(self.scores)}

    @classmethod
    def from_dict(cls, data: dict) -> SliceScore:
        return cls(**{**data, "scores": scores_from_dict(data["scores"], "slice_score")})


@dataclass
class Scorecard:
    """What a published variant is and how it scores against its base."""

    base_model: str
    base_revision: str | None
    variant: str
    modality: str
    method: str
    engine_version: str
    target_cr: float
    achieved_cr: float
    allocation: str  # "static" or "dynamic"
    calibration_set: str
    calibration_hash: str
    metrics: list[MetricResult]
    compression_seconds: float
    peak_memory_mb: float
    hardware: str
    fingerprint: str  # sha256 of everything that determines the variant (zoo.publish.fingerprint)
    command: str  # the `zoo compress` command that rebuilds it
    eval_limit: int | None = None  # items per task or set the evaluation was capped at (None: all)
    file_bytes: int | None = None  # the checkpoint's model.safetensors
    base_bytes: int | None = None  # the base's tensors in a 16-bit checkpoint
    slice_score: SliceScore | None = None  # what the published variant is verified against
    quantize: str | None = None  # GPTQ grid of the stored values, e.g. "gptq-w4 g128"; None: 16-bit values
    heal: int = 0  # healing's Adam steps per block; 0: training-free
    distill: int = 0  # end-to-end distillation's Adam steps on the whole model, where kept; 0: none
    # A chat model's answers to the first chat prompts, [{"prompt", "base", "compressed"}], for the card.
    chat_answers: list[dict] | None = None
    # The run's evaluation: its settings, whether the Hub was reachable, and the sets and tasks actually
    # scored (offline, stand-ins replace the catalogue's). None: not recorded (schema 4 and older).
    evaluation: dict | None = None
    versions: dict[str, str] | None = None  # library_versions() where it was built; None: not recorded
    base_hub_id: str | None = None  # the base's Hub id (base_model may be an offline copy); None: none or not recorded
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.allocation not in ("static", "dynamic"):
            raise ZooError(f"scorecard allocation must be 'static' or 'dynamic', got {self.allocation!r}")
        if self.modality not in MODALITIES:
            raise ZooError(f"scorecard modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        for label, (lo, hi) in RANGES.items():
            value = getattr(self, label)
            if value is not None or label not in OPTIONAL_NUMBERS:
                check_number(label, value, lo, hi)

    @property
    def stand_ins(self) -> list[MetricResult]:
        """The metrics not known to come from a real benchmark (stand-ins, or not recorded)."""
        return [m for m in self.metrics if m.source != BENCHMARK]

    @property
    def stand_in_only(self) -> bool:
        """No metric comes from a real benchmark: not a score to publish as the model's quality."""
        return len(self.stand_ins) == len(self.metrics)

    @classmethod
    def from_record(
        cls,
        record: VariantRecord,
        metrics: list[MetricResult],
        eval_limit: int | None = None,
        slice_score: SliceScore | None = None,
        chat_answers: list[dict] | None = None,
        evaluation: dict | None = None,
    ) -> Scorecard:
        """Scores of `record`, built here and now: the versions are this environment's."""
        return cls(
            base_model=record.base_model,
            base_revision=record.base_revision,
            variant=record.variant,
            modality=record.modality,
            method=record.method,
            engine_version=record.engine_version,
            target_cr=record.target_cr,
            achieved_cr=record.achieved_cr,
            allocation=record.allocation,
            calibration_set=record.calibration.name,
            calibration_hash=record.calibration.fingerprint,
            metrics=metrics,
            compression_seconds=record.compression_seconds,
            peak_memory_mb=record.peak_memory_mb,
            hardware=record.hardware,
            fingerprint=record.fingerprint,
            command=record.command,
            eval_limit=eval_limit,
            file_bytes=record.file_bytes,
            base_bytes=record.base_bytes,
            slice_score=slice_score,
            quantize=record.quantize,
            heal=record.config.heal,
            distill=record.config.distill if record.distilled else 0,
            chat_answers=chat_answers,
            evaluation=evaluation,
            versions=library_versions(),
            base_hub_id=record.hub_id,
        )

    def to_dict(self) -> dict:
        """Plain JSON data; each metric carries its recovery for readers without this class."""
        data = asdict(self)
        data["metrics"] = [
            {**asdict(m), "recovery": None if math.isnan(m.recovery) else m.recovery} for m in self.metrics
        ]
        data["slice_score"] = None if self.slice_score is None else self.slice_score.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Scorecard:
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ZooError(f"scorecard schema_version {version!r} is not one of the readable {READABLE_VERSIONS}")
        optional = {f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
        names = {f.name for f in fields(cls)}
        missing = names - optional - data.keys()
        if missing:
            raise ZooError(f"scorecard is missing fields: {', '.join(sorted(missing))}")
        metric_names = {f.name for f in fields(MetricResult)}
        metrics = [MetricResult(**{k: m[k] for k in metric_names if k in m}) for m in data["metrics"]]
        known = {k: data[k] for k in names if k in data}
        slice_score = SliceScore.from_dict(data["slice_score"]) if data.get("slice_score") is not None else None
        return cls(**{**known, "metrics": metrics, "slice_score": slice_score, "schema_version": SCHEMA_VERSION})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Scorecard:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp name, then rename): a reader never sees half a scorecard."""
        return write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Scorecard:
        path = Path(path)
        if not path.is_file():
            raise ZooError(f"no scorecard at {path}")
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except ZooError as exc:
            raise ZooError(f"{path}: {exc}") from exc
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # JSON, UTF-8 and shape errors
            raise ZooError(f"{path} is not a valid scorecard: {exc}") from exc

    def to_markdown_table(self) -> str:
        """Base vs compressed vs recovery, one row per metric, for model cards and the CLI."""
        rows = ["| task | metric | base | compressed | recovery | data |", "| --- | --- | --- | --- | --- | --- |"]
        for m in self.metrics:
            arrow = "↑" if m.higher_is_better else "↓"
            base, compressed = _with_stderr(m.base, m.base_stderr), _with_stderr(m.compressed, m.compressed_stderr)
            source = m.source or "not recorded"
            rows.append(f"| {m.task} | {m.name} {arrow} | {base} | {compressed} | {m.recovery:.1f}% | {source} |")
        if self.eval_limit is not None:
            rows.append(f"\nAt most {self.eval_limit} items per task or set were scored (`--eval-limit`).")
        return "\n".join(rows)


def _with_stderr(value: float, stderr: float | None) -> str:
    return f"{value:.4g}" if stderr is None else f"{value:.4g} ± {stderr:.2g}"


def metrics_from_results(base: Scores, compressed: Scores, source: Callable[[str], str]) -> list[MetricResult]:
    """Pair the scores of the base and the compressed model, each metric marked with its task's
    `source` (zoo.evaluators.provenance.provenance).

    Every base metric must exist for the compressed model: a missing one means the two were
    not evaluated alike, and a scorecard that silently dropped it would mislead.
    """
    results = []
    for task, scores in base.items():
        for name, score in scores.items():
            other = compressed.get(task, {}).get(name)
            if other is None:
                raise ZooError(f"metric {name!r} of task {task!r} is in the base results but not the compressed ones")
            results.append(
                MetricResult(
                    name=name,
                    task=task,
                    base=float(score.value),
                    compressed=float(other.value),
                    higher_is_better=higher_is_better(name),
                    base_stderr=score.stderr,
                    compressed_stderr=other.stderr,
                    source=source(task),
                )
            )
    return results
