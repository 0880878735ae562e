"""The generation check of chat models: answered share, agreement with the base, the card, zoo verify."""

import json
import re
import shutil
import time

import pytest
import torch

from tests.tiny_models import END, START, WORDS, saved_with_texts, tiny_chat_tokenizer, tiny_llama
from zoo.compression.config import CompressionConfig
from zoo.errors import ZooError
from zoo.evaluators.generation import (
    REFERENCE,
    TASK,
    answered,
    chat_prompts,
    chat_results,
    check_answered,
    generation_check,
    unanswered,
)
from zoo.evaluators.provenance import STAND_IN, provenance
from zoo.evaluators.scores import Results, Score
from zoo.publish.card import CARD, answers_table, markdown_cell
from zoo.publish.scorecard import SCORECARD, Scorecard, higher_is_better, schema
from zoo.sources.catalogue import modality_defaults


def _ends_turn_at_once(model) -> None:
    """All logits zero: greedy picks id 0, the end-of-turn token, at every step."""
    with torch.no_grad():
        model.model.norm.weight.zero_()


def _answer(text: str, prompt: str = "p") -> dict:
    return {"prompt": prompt, "answer": text, "tokens": [1]}


def test_an_answer_has_three_words_or_more():
    answers = [_answer(t, str(i)) for i, t in enumerate(["", "   \n", "Canberra.", "It is", "It is Canberra."])]
    assert answered(answers) == pytest.approx(1 / 5)
    assert unanswered(answers) == ["0", "1", "2", "3"]


def test_the_model_sees_its_chat_template_left_padded():
    model, tokenizer = tiny_llama(), tiny_chat_tokenizer()
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    generation_check(model, tokenizer, new_tokens=2)
    prompt_batch = seen[0]  # the first forward of generate: the whole set of prompts at once
    assert prompt_batch.shape[0] == len(chat_prompts()) == 24
    for row in prompt_batch.tolist():
        tokens = tokenizer.convert_ids_to_tokens(row)
        while tokens[0] == END:  # left padding
            tokens.pop(0)
        assert tokens[:2] == [START, "user"] and tokens[-3:] == [END, START, "assistant"]  # ready to answer
    leading_pads = (prompt_batch != tokenizer.pad_token_id).int().argmax(-1)
    assert leading_pads.min() == 0 and leading_pads.max() > 0  # shorter prompts are padded on the left


def test_the_base_agrees_with_itself_and_a_chat_model_only_answers_when_the_catalogue_says_so():
    model, tokenizer = tiny_llama(), tiny_chat_tokenizer()
    scores, answers = generation_check(model, tokenizer, new_tokens=6)
    assert scores["agreement"] == 1.0
    assert generation_check(model, tokenizer, answers, new_tokens=6)[0] == scores  # the same, passed back
    assert [a["prompt"] for a in answers] == list(chat_prompts())
    llm = modality_defaults("llm")
    assert chat_results(model, tokenizer, llm) == Results(scores={})  # not a chat model in the catalogue
    chat = llm.updated({"chat": True, "eval_chat_tokens": 6, REFERENCE: answers})
    typed = {name: Score(value=value) for name, value in scores.items()}
    assert chat_results(model, tokenizer, chat) == Results(scores={TASK: typed}, answers=answers)  # beside the scores
    tokenizer.chat_template = None
    assert chat_results(model, tokenizer, chat) == Results(scores={})  # a tokenizer without a chat template


def test_a_model_that_ends_its_turn_first_answers_nothing_and_agrees_with_nothing():
    model, tokenizer = tiny_llama(), tiny_chat_tokenizer()
    base_scores, base_answers = generation_check(model, tokenizer, new_tokens=6)
    assert base_scores["answered"] == 1.0  # random words, six of them
    _ends_turn_at_once(model)
    scores, answers = generation_check(model, tokenizer, base_answers, new_tokens=6)
    assert all(a["answer"] == "" and a["tokens"] == [tokenizer.eos_token_id] for a in answers)
    assert scores == {"answered": 0.0, "agreement": 0.0}


def test_the_chat_task_is_a_stand_in_of_ours_and_both_metrics_go_up():
    assert provenance(TASK) == STAND_IN
    assert higher_is_better("answered") and higher_is_better("agreement")


def test_check_answered_fails_on_empty_answers_or_fewer_than_recorded():
    good = [_answer("one two three", f"p{i}") for i in range(24)]
    check_answered(good, 1.0)
    check_answered(good[:23] + [_answer("", "p23")], 1.0)  # one prompt of 24: within the tolerance
    three_empty = [_answer("", f"p{i}") if i < 3 else a for i, a in enumerate(good)]
    with pytest.raises(
        ZooError, match=r"3 of 24 chat prompts .*answered 0.875, 1.000 at build time\): 'p0'; 'p1'; 'p2'$"
    ):
        check_answered(three_empty, 1.0)
    with pytest.raises(ZooError, match="24 of 24 chat prompts"):
        check_answered([_answer(" ", f"p{i}") for i in range(24)], None)


def test_answers_are_escaped_for_markdown():
    assert markdown_cell("  ") == "*(no answer)*"
    assert markdown_cell("a|b <b>x</b> **y** [l](u) `c` $x$ &amp;\n\nnext") == (
        r"a\|b \<b\>x\</b\> \*\*y\*\* \[l\](u) \`c\` \$x\$ \&amp;<br><br>next"
    )
    table = answers_table([{"prompt": "Why | how?", "base": "A | B\nC", "compressed": ""}])
    row = table.splitlines()[-1]
    assert len(re.split(r"(?<!\\)\|", row)) == 5  # three cells: no pipe of the answers splits one
    assert answers_table(None) == ""


@pytest.fixture(scope="module")
def chat_scored(tmp_path_factory):
    """A tiny chat Llama compressed and scored through the pipeline, with the chat prompts answered."""
    from zoo.pipeline import CompressRequest, run_compress

    root = tmp_path_factory.mktemp("chat")
    base, texts = saved_with_texts(root, "tiny-chat", tiny_chat_tokenizer(), " ".join(WORDS * 2), 8)
    settings = {"chat": True, "eval_chat_tokens": 6, "eval_windows": 2, "eval_limit": 5, "eval_tasks": []}
    request = CompressRequest(
        model=str(base),
        config=CompressionConfig(cr=0.3, iters=3),
        out=root / "tiny-chat-compot",
        calibration=str(texts),
        n_samples=4,
        seq_len=16,
        evaluate=True,
        eval_settings=settings,
    )
    return run_compress(request).out_dir


def test_the_scorecard_and_the_card_carry_the_chat_check(chat_scored):
    scorecard = Scorecard.load(chat_scored / SCORECARD)
    chat = {m.name: m for m in scorecard.metrics if m.task == TASK}
    assert set(chat) == {"answered", "agreement"}
    assert chat["agreement"].base == 1.0 and all(m.source == STAND_IN for m in chat.values())
    assert [p["prompt"] for p in scorecard.chat_answers] == list(chat_prompts()[:3])
    assert all(set(p) == {"prompt", "base", "compressed"} for p in scorecard.chat_answers)
    # The verification slice carries the base's answers, so a fresh process scores agreement alike.
    settings = scorecard.slice_score.settings
    assert settings["chat"] is True and len(settings[REFERENCE]) == 24 and settings["eval_chat_tokens"] == 8
    assert all(isinstance(s, Score) for m in scorecard.slice_score.scores.values() for s in m.values())  # no answers
    assert set(scorecard.slice_score.scores[TASK]) == {"answered", "agreement"}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads((chat_scored / SCORECARD).read_text()), schema())  # as documented
    card = (chat_scored / CARD).read_text()
    assert "## Answers, base and compressed" in card
    assert answers_table(scorecard.chat_answers) in card
    assert f"| {TASK} | answered ↑ |" in card


def test_verify_fails_naming_the_prompts_a_reloaded_chat_model_leaves_unanswered(chat_scored, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from zoo.rescore import score_download

    scorecard = Scorecard.load(chat_scored / SCORECARD)
    measured = score_download(chat_scored)  # what the fresh process runs on a download
    recorded = scorecard.slice_score.scores[TASK]
    assert measured[TASK].keys() == recorded.keys()
    assert all(score.value == pytest.approx(recorded[name].value) for name, score in measured[TASK].items())

    broken = tmp_path / "broken"
    shutil.copytree(chat_scored, broken)
    weights = broken / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["model.norm.weight"] = torch.zeros_like(tensors["model.norm.weight"])  # ends its turn at once
    save_file(tensors, str(weights), metadata)
    with pytest.raises(
        ZooError, match=r"24 of 24 chat prompts got no answer .*'What is the capital city of Australia\?'"
    ):
        score_download(broken)


@pytest.mark.slow
def test_the_packaged_smollm2_answers_its_chat_prompts():
    """The real base as the pipeline scores it (bfloat16): it answers, and agrees with itself."""
    from zoo.modalities.decoder_llm import ADAPTER
    from zoo.sources.catalogue import resolve
    from zoo.sources.loading import LoadOptions

    spec = resolve("smollm2-135m")
    loaded = ADAPTER.load(spec, LoadOptions(dtype="bfloat16"))
    start = time.perf_counter()
    results = chat_results(loaded.model, loaded.processor, spec.defaults)
    seconds = time.perf_counter() - start
    scores = {name: score.value for name, score in results.scores[TASK].items()}
    print(f"SmolLM2-135M-Instruct base, {len(chat_prompts())} chat prompts: {scores} in {seconds:.1f} s")
    assert scores["answered"] >= 0.9 and scores["agreement"] >= 0.95
    assert "Canberra" in results.answers[0]["answer"]


def test_the_gate_takes_one_prompt_of_24_for_noise_but_not_two():
    from zoo.gate import floored
    from zoo.nightly.report import MetricChange

    def change(previous: float, current: float) -> MetricChange:
        relative = (current - previous) / previous
        return MetricChange(
            task=TASK, metric="answered", previous=previous, current=current, relative_change=relative, regression=True
        )

    assert not floored(change(1.0, 23 / 24)).regression and floored(change(1.0, 22 / 24)).regression
