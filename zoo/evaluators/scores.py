"""Scores as they cross the layers: each metric a typed record holding its standard error.

lm-eval writes a metric's standard error as a key of its own beside it ("acc", "acc_stderr"), and
every file that holds scores (scorecard.json's slice, verification.json, the rescore process's
output) keeps that flat form, so readers in other languages and the files already published read on.
scores_to_dict and scores_from_dict are the one place it is written and read; in memory a metric
is never mistaken for its error, and a chat model's answers travel beside the metrics (Results),
never among them. Free of torch: scorecards and the site read scores cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo.calibration.chat import Answer

STDERR = "_stderr"  # on disk, a metric's standard error sits beside it as "<metric>_stderr"


@dataclass(frozen=True, kw_only=True)
class Score:
    """One metric's value, and the evaluator's standard error of it where it gives one (lm-eval)."""

    value: float
    stderr: float | None = None


Scores = dict[str, dict[str, Score]]  # {task: {metric: Score}}; a metric may be "metric/filter"


@dataclass(frozen=True, kw_only=True)
class Results:
    """What an adapter's evaluation returns: the scores, and a chat model's answers to the chat
    prompts (zoo.evaluators.generation), data kept to hold the compressed model's answers against."""

    scores: Scores
    answers: list[Answer] | None = None


def scores_to_dict(scores: Scores) -> dict:
    """The flat form {task: {metric: value, "<metric>_stderr": error}}, each error right after its metric."""
    flat = {}
    for task, metrics in scores.items():
        flat[task] = {}
        for name, score in metrics.items():
            flat[task][name] = score.value
            if score.stderr is not None:
                flat[task][name + STDERR] = score.stderr
    return flat


def scores_from_dict(data: dict, where: str) -> Scores:
    """The flat form read back, each "<metric>_stderr" joined to its metric and every number kept as
    read, so a file written back is the same bytes. `where` (a file, a field) names the source of a
    value that is not a number, or of an error without its metric (nothing writes one, and dropping
    it would change the file the next time it is written)."""
    if not isinstance(data, dict):
        raise ZooError(f"{where}: scores are {type(data).__name__}, not {{task: {{metric: value}}}}")
    return {task: _task_scores(flat, task, where) for task, flat in data.items()}


def _task_scores(flat: object, task: str, where: str) -> dict[str, Score]:
    if not isinstance(flat, dict):
        raise ZooError(f"{where}: task {task!r} holds {flat!r}, not {{metric: value}}")
    for name, value in flat.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ZooError(f"{where}: metric {name!r} of task {task!r} is {value!r}, not a number")
        if name.endswith(STDERR) and name.removesuffix(STDERR) not in flat:
            raise ZooError(f"{where}: {name!r} of task {task!r} is the standard error of no metric")
    return {
        name: Score(value=value, stderr=flat.get(name + STDERR))
        for name, value in flat.items()
        if not name.endswith(STDERR)
    }
