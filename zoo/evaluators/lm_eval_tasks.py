"""lm-eval-harness on an in-memory model, and offline tasks built from local English text.

The paper's tasks (piqa, hellaswag, lambada_openai, arc_*, sciq, race, mmlu) load through
lm-eval's own registry and need the Hugging Face Hub. Offline, `build_local_tasks` writes
two lm-eval task folders from caller-given texts: a LAMBADA-style last-word task and a
4-way next-sentence multiple-choice task, both scored by lm-eval itself.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from unittest import mock

from tqdm.auto import tqdm

from zoo.errors import ZooError
from zoo.evaluators.scores import STDERR, Score, Scores
from zoo.files import write_text

LAMBADA_TASK = "zoo_lambada_local"
CLOZE_MC_TASK = "zoo_cloze_mc_local"
LOCAL_TASKS = (LAMBADA_TASK, CLOZE_MC_TASK)
MAX_ITEMS = 300
SEED = 1234  # fixed: the same texts always give the same items
PASSAGE_SENTENCES = 3
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SENTENCE = re.compile(r"[A-Z][^\n]*[.!?]")
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{2,})[.!?\"')]*$")
_MIN_WORDS, _MAX_WORDS = 5, 40

_LAMBADA_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_CLOZE_MC_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _sentences(paragraph: str) -> list[str]:
    """Well-formed sentences of one paragraph (capitalised, end-punctuated, 5 to 40 words)."""
    parts = _SENTENCE_END.split(" ".join(paragraph.split()))
    return [s for s in parts if _SENTENCE.fullmatch(s) and _MIN_WORDS <= len(s.split()) <= _MAX_WORDS]


def _paragraphs(texts: list[str]) -> list[list[list[str]]]:
    """Per document, its paragraphs as sentence lists: continuations never cross a paragraph."""
    return [[s for p in text.split("\n") if (s := _sentences(p))] for text in texts]


def lambada_items(texts: list[str], max_items: int = MAX_ITEMS) -> list[dict]:
    """Passages of consecutive sentences; the target is the passage's final word."""
    items = []
    for doc in _paragraphs(texts):
        for sents in doc:
            for i in range(0, len(sents) - PASSAGE_SENTENCES + 1, PASSAGE_SENTENCES):
                match = _LAST_WORD.match(" ".join(sents[i : i + PASSAGE_SENTENCES]))
                if match:
                    items.append({"context": match.group(1), "target": match.group(2)})
    return random.Random(SEED).sample(items, min(max_items, len(items)))


def cloze_mc_items(texts: list[str], max_items: int = MAX_ITEMS) -> list[dict]:
    """A sentence, its true next sentence, and 3 distractor sentences from other documents."""
    paragraphs = _paragraphs(texts)
    docs = [{s for sents in doc for s in sents} for doc in paragraphs]
    pairs = [
        (d, sents[i], sents[i + 1]) for d, doc in enumerate(paragraphs) for sents in doc for i in range(len(sents) - 1)
    ]
    rng = random.Random(SEED)
    others: dict[int, list[str]] = {}
    items = []
    for d, context, answer in rng.sample(pairs, min(max_items, len(pairs))):
        if d not in others:
            others[d] = sorted(set().union(*(doc for e, doc in enumerate(docs) if e != d)))
            if len(others[d]) < 4:
                raise ZooError(
                    f"the cloze task draws distractors from other documents, but the texts other "
                    f"than text {d} hold only {len(others[d])} usable sentences (need at least 4)"
                )
        choices = [s for s in rng.sample(others[d], 4) if s != answer][:3]
        label = rng.randrange(4)
        choices.insert(label, answer)
        items.append({"context": context, "choices": choices, "label": label})
    return items


def build_local_tasks(texts: list[str], out_dir: Path, max_items: int = MAX_ITEMS) -> Path:
    """Write the offline tasks (YAML + JSONL) into `out_dir` and return it as lm-eval's include_path."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for task, items, template in (
        (LAMBADA_TASK, lambada_items(texts, max_items), _LAMBADA_YAML),
        (CLOZE_MC_TASK, cloze_mc_items(texts, max_items), _CLOZE_MC_YAML),
    ):
        if not items:
            raise ZooError(
                f"no {task} items could be built from the {len(texts)} texts given "
                "(they need paragraphs of several well-formed English sentences)"
            )
        data = out_dir / f"{task}.jsonl"
        write_text(data, "".join(json.dumps(item) + "\n" for item in items))
        write_text(out_dir / f"{task}.yaml", template.format(task=task, data=json.dumps(str(data))))
    return out_dir


def _task_manager(tasks: list[str], include_path: str | None):
    """A TaskManager that knows `tasks`; lm-eval's 14k built-in tasks are indexed only if needed."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path is not None else None)


def _load_tasks(tasks: list[str], include_path: str | None):
    """Load each task (and its data) alone, so a failure names the task at fault.

    Returns the TaskManager and the loaded Task/Group objects (a group keeps its aggregate).
    """
    manager = _task_manager(tasks, include_path)
    loaded = []
    for name in tqdm(tasks, desc="lm-eval tasks", unit="task", leave=False):
        if name not in manager.all_tasks:
            raise ZooError(
                f"{name!r} is neither an lm-eval task nor in include_path {include_path}; "
                f"offline, build local tasks ({', '.join(LOCAL_TASKS)}) with build_local_tasks()"
            )
        try:
            result = manager.load([name])
        except Exception as exc:  # lm-eval and datasets raise many types for an unreachable Hub
            raise ZooError(
                f"lm-eval task {name!r} could not load its data ({type(exc).__name__}: {exc}); "
                "its dataset comes from the Hugging Face Hub, so offline use the local tasks "
                f"({', '.join(LOCAL_TASKS)}) from build_local_tasks() with include_path"
            ) from exc
        if name in result["groups"]:
            loaded.append(result["groups"][name])
        else:  # a task, or a tag that expands to tasks
            loaded.extend(result["tasks"].values())
    return manager, loaded


def _metrics(task_results: dict) -> dict[str, Score]:
    """lm-eval's {"acc,none": x, "acc_stderr,none": e, "alias": ...} as {"acc": Score(value=x, stderr=e)}.

    A filter other than "none" stays in the name as "metric/filter"; a standard error lm-eval
    could not compute ("N/A") is None.
    """
    values, stderrs = {}, {}
    for key, value in task_results.items():
        metric, _, filt = key.partition(",")
        if not filt or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = metric.removesuffix(STDERR) if filt == "none" else f"{metric.removesuffix(STDERR)}/{filt}"
        (stderrs if metric.endswith(STDERR) else values)[name] = float(value)  # "acc_stderr,flex": "acc/flex"
    return {name: Score(value=value, stderr=stderrs.get(name)) for name, value in values.items()}


BOOTSTRAP_ITERS = 1000


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
) -> Scores:
    """Evaluate a transformers causal LM on lm-eval tasks: {task: {metric: Score}}."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM

    if not tasks:
        raise ZooError("run_lm_eval needs at least one task name")
    manager, loaded = _load_tasks(tasks, include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    # lm-eval records the git commit of the working directory with `git describe`, which prints
    # "fatal: not a git repository" outside a checkout; nothing of ours reads that commit.
    with mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", return_value=None):
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=loaded,
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            # Standard errors: closed form for means (acc), this many bootstrap resamples for the rest
            # (perplexity); lm-eval's default of 100000 costs minutes on full tasks.
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=False,
        )
    return {task: _metrics(values) for task, values in results["results"].items()}
