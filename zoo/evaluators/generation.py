"""The generation check of chat models: does the model still answer, and does it answer as its base did?

Perplexity and zero-shot tasks score a chat model on text it is never shown in use; a compressed
chat model can keep them close to the base's while most of its answers are empty (end-of-turn
first). So chat models also answer a fixed set of everyday prompts (chat_prompts.json, our own
wording, held apart from every calibration set) through their own chat template, greedily, for a
fixed number of new tokens, and two metrics are kept:

- `answered`: the share of prompts answered with at least MIN_WORDS words. An answer that is only
  the end-of-turn token, empty or whitespace is not an answer.
- `agreement`: the share of the base model's answer tokens that the model predicts as its greedy
  top-1 when fed the base's answer so far (teacher-forced, so the base's answers are all it needs:
  never two models at once). The base scored on its own answers gets 1.0 up to arithmetic noise.
  Teacher forcing alone would still credit a model that answers nothing of its own (the issue's
  end-of-turn at p≈0.47 costs one token of forty), so the tokens of a prompt the model leaves
  unanswered where the base answered count as not agreeing.

Not kept: the model's likelihood of the base's answers. It stays near the base's own while the
model's answers are empty, which is exactly the failure this check exists to show.

The base's answers are plain data (a list of {"prompt", "answer", "tokens"}): kept beside its scores
when the base is scored (Results.answers), they come back as `spec.defaults.chat_reference` when
the compressed model is scored.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from importlib import resources

import torch

from zoo.calibration.chat import Answer, chat_inputs, end_ids, greedy_answers, left_padded, model_device
from zoo.errors import ZooError
from zoo.evaluators.scores import Results, Score
from zoo.sources.catalogue import Defaults

log = logging.getLogger(__name__)

TASK = "generation/chat-prompts"  # the task its metrics are scored under
REFERENCE = "chat_reference"  # the evaluation setting that carries the base's answers
NEW_TOKENS = 40  # the catalogue's eval_chat_tokens, where it does not say
MIN_WORDS = 3
BATCH = 24  # prompts generated or teacher-forced at once, left-padded: the whole set in one go
CARD_PAIRS = 3  # answers of base and compressed shown on a card: the set's first prompts, not chosen ones
# How far below its recorded answered share a reloaded variant may fall (one prompt of 24 is 0.042):
# greedy answers near the three-word line may flip on another machine's arithmetic.
ANSWERED_TOLERANCE = 0.05


@functools.cache
def chat_prompts() -> tuple[str, ...]:
    data = json.loads(resources.files("zoo.evaluators").joinpath("chat_prompts.json").read_text())
    return tuple(data["prompts"])


def is_chat(tokenizer, defaults: Defaults) -> bool:
    """A chat model: the catalogue says so (`chat = true`) and its tokenizer has a chat template."""
    return defaults.chat and bool(getattr(tokenizer, "chat_template", None))


def is_answer(text: str) -> bool:
    return len(text.split()) >= MIN_WORDS


def answered(answers: list[Answer]) -> float:
    return sum(is_answer(a["answer"]) for a in answers) / len(answers)


def unanswered(answers: list[Answer]) -> list[str]:
    """The prompts left without an answer, for error messages."""
    return [a["prompt"] for a in answers if not is_answer(a["answer"])]


def generate_answers(model, tokenizer, new_tokens: int = NEW_TOKENS, batch: int = BATCH) -> list[Answer]:
    """Greedy answers to the chat prompts, `new_tokens` at most, cut after the first end-of-turn."""
    return greedy_answers(model, tokenizer, chat_prompts(), new_tokens, batch)


@torch.no_grad()
def agreement(model, tokenizer, reference: list[Answer], own: list[Answer], batch: int = BATCH) -> float:
    """The share of the reference answers' tokens the model predicts as its greedy top-1, fed the
    reference so far; a prompt the model leaves unanswered where the reference answered agrees on nothing."""
    if [r["prompt"] for r in reference] != [o["prompt"] for o in own]:
        raise ValueError("the reference answers are to other prompts than the model's own")
    inputs, device = chat_inputs(tokenizer, [r["prompt"] for r in reference]), model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids(model, tokenizer)[0]
    matched = total = 0
    for start in range(0, len(reference), batch):
        answers = [r["tokens"] for r in reference[start : start + batch]]
        ids, mask = left_padded([p + a for p, a in zip(inputs[start : start + batch], answers, strict=True)], pad)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers a left-padded row
        width = max(map(len, answers)) + 1  # the answers sit at the right end: only their logits are needed
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=width,
        )
        predicted = out.logits.argmax(-1).cpu()
        for i, tokens in enumerate(answers):
            total += len(tokens)
            ref, mine = reference[start + i], own[start + i]
            if is_answer(ref["answer"]) and not is_answer(mine["answer"]):
                continue
            guess = predicted[i, width - len(tokens) - 1 : width - 1]
            matched += int((guess == torch.tensor(tokens)).sum())
    return matched / total if total else 0.0


def generation_check(
    model, tokenizer, reference: list[Answer] | None = None, new_tokens: int = NEW_TOKENS
) -> tuple[dict[str, float], list[Answer]]:
    """({"answered", "agreement"}, the model's answers); agreement is with `reference` (the base's
    answers), or with the model's own answers when it is the base (None)."""
    start = time.perf_counter()
    own = generate_answers(model, tokenizer, new_tokens)
    scores = {"answered": answered(own), "agreement": agreement(model, tokenizer, reference or own, own)}
    log.info("generation check: %s in %.1f s", scores, time.perf_counter() - start)
    return scores, own


def chat_results(model, tokenizer, defaults: Defaults) -> Results:
    """What the generation check adds to an adapter's results for a chat model: its metrics under
    TASK and its answers, agreement taken against `defaults[REFERENCE]` when there; none for others."""
    if not is_chat(tokenizer, defaults):
        return Results(scores={})
    scores, answers = generation_check(
        model, tokenizer, defaults.chat_reference, defaults.eval_chat_tokens or NEW_TOKENS
    )
    return Results(scores={TASK: {name: Score(value=value) for name, value in scores.items()}}, answers=answers)


def check_answered(answers: list[Answer], recorded: float | None, tolerance: float = ANSWERED_TOLERANCE) -> None:
    """A ZooError naming the unanswered prompts when none is answered, or fewer than `recorded`
    (the share a scorecard recorded) less `tolerance`."""
    share, empty = answered(answers), unanswered(answers)
    if share == 0.0 or (recorded is not None and share < recorded - tolerance):
        was = "" if recorded is None else f", {recorded:.3f} at build time"
        raise ZooError(
            f"{len(empty)} of {len(answers)} chat prompts got no answer of {MIN_WORDS} words or more "
            f"(answered {share:.3f}{was}): " + "; ".join(repr(p) for p in empty)
        )


def answer_pairs(base: list[Answer] | None, compressed: list[Answer] | None, n: int = CARD_PAIRS) -> list[dict] | None:
    """The first `n` prompts with the base's and the compressed model's answers, for the card."""
    if not base or not compressed:
        return None
    return [
        {"prompt": b["prompt"], "base": b["answer"], "compressed": c["answer"]}
        for b, c in zip(base[:n], compressed[:n], strict=True)
    ]
