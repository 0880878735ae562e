"""Whether a scored task is a real benchmark or an offline stand-in, read from the definitions of
the sets themselves, so a scorecard (and whoever publishes it) can tell the two apart.

A task is named "<kind>/<set>" ("perplexity/wikitext2", "wer/librispeech-test-clean",
"vlmeval/MMStar") or by its lm-eval task name. Real: a text set on the Hub (WikiText-2, C4,
RefinedWeb), a LibriSpeech split, a VLMEvalKit benchmark, an lm-eval task of its registry.
Stand-in: what is built from shipped assets (the Wikipedia articles, LibriVox clips, flite speech,
scikit-image photographs, the local lm-eval tasks), our own chat prompts ("generation/chat-prompts")
and any local folder.
"""

from __future__ import annotations

BENCHMARK = "benchmark"
STAND_IN = "stand-in"
PROVENANCES = (BENCHMARK, STAND_IN)


def provenance(task: str) -> str:
    """BENCHMARK or STAND_IN for a task as the adapters name it in their results."""
    kind, _, name = task.partition("/")
    if kind == "perplexity":
        from zoo.calibration.text import CALIBRATION_SETS

        real = name in CALIBRATION_SETS
    elif kind == "wer":
        from zoo.calibration.speech import HUB_SETS

        real = name in HUB_SETS
    elif kind == "generation":  # our own chat prompts (zoo.evaluators.generation), no benchmark
        real = False
    elif kind == "vlmeval":
        from zoo.evaluators.vlm import LOCAL_BENCHMARK  # imported only where a VLM was scored

        real = name != LOCAL_BENCHMARK
    else:
        from zoo.evaluators.lm_eval_tasks import LOCAL_TASKS

        real = task not in LOCAL_TASKS
    return BENCHMARK if real else STAND_IN
