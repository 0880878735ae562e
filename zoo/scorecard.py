"""One scorecard schema for every modality: base vs compressed, with recovery."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
# Metrics where smaller is better; everything else is taken as higher-is-better.
LOWER_IS_BETTER = {"perplexity", "nll", "wer", "cer"}


@dataclass
class MetricResult:
    task: str
    name: str
    base: float
    compressed: float

    @property
    def higher_is_better(self) -> bool:
        return self.name not in LOWER_IS_BETTER

    @property
    def recovery(self) -> float:
        """Percent of the base score kept: compressed/base for accuracies, base/compressed for errors."""
        num, den = (self.compressed, self.base) if self.higher_is_better else (self.base, self.compressed)
        return 100.0 * num / den if den else float("nan")


@dataclass
class Scorecard:
    base_model: str
    variant: str
    modality: str
    method: str
    allocation: str
    engine_version: str
    target_cr: float
    achieved_cr: float
    calibration: dict
    metrics: list[MetricResult]
    compression_seconds: float
    peak_memory_mb: float
    hardware: str
    base_revision: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        data = asdict(self)
        data["metrics"] = [{**asdict(m), "recovery": m.recovery, "higher_is_better": m.higher_is_better}
                           for m in self.metrics]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Scorecard:
        metrics = [MetricResult(m["task"], m["name"], m["base"], m["compressed"]) for m in data["metrics"]]
        return cls(**{**data, "metrics": metrics})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Scorecard:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_markdown_table(self) -> str:
        rows = ["| task | metric | base | compressed | recovery |", "|---|---|---|---|---|"]
        rows += [f"| {m.task} | {m.name} | {m.base:.4g} | {m.compressed:.4g} | {m.recovery:.1f}% |"
                 for m in self.metrics]
        return "\n".join(rows)


def metrics_from_results(base: dict[str, dict[str, float]], compressed: dict[str, dict[str, float]]) -> list[MetricResult]:
    """Pair evaluator outputs {task: {metric: value}} of the base and the compressed model."""
    return [MetricResult(task, name, value, compressed[task][name])
            for task, values in base.items() for name, value in values.items()
            if name in compressed.get(task, {})]
