"""Offline lm-eval tasks: deterministic items, loadable by lm-eval, runnable on a tiny model."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from zoo.errors import ZooError
from zoo.evaluators.lm_eval_tasks import (
    CLOZE_MC_TASK,
    LAMBADA_TASK,
    _metrics,
    build_local_tasks,
    cloze_mc_items,
    lambada_items,
    run_lm_eval,
)
from zoo.evaluators.scores import Score

DOCS = [
    "The river rises in the northern hills and flows south through a wide valley. Farmers along its banks grow "
    "wheat, barley and apples. In spring the water often floods the lower fields. The town council built a stone "
    "wall to protect the market square. Since then the square has stayed dry every year.\n"
    "Fishing was once the main trade of the valley. Families sold their catch at the weekly market. Today most of "
    "the boats carry tourists instead of fish. A small museum near the bridge tells the story of the old trade.",
    "The library opened its doors to the public in the autumn of that year. Its first collection held about two "
    "thousand books donated by local families. Readers could borrow three books at a time for two weeks. The "
    "reading room was heated by a large iron stove. Children came after school to read and to do their homework.\n"
    "Over the following decades the collection grew steadily. A new wing was added to hold maps and old "
    "newspapers. The librarians began to lend music records as well as books. Many visitors still remember the "
    "quiet of the old reading room.",
    "The comet was first seen by a young astronomer using a small telescope. She reported its position to the "
    "observatory the same night. Within a week other observers had confirmed the sighting. The comet grew "
    "brighter as it moved closer to the sun. At its peak it could be seen without a telescope.\n"
    "Scientists measured the gas and dust in its long tail. They found water, carbon and several kinds of simple "
    "molecules. The results helped explain how comets form in the cold outer parts of the solar system. The "
    "astronomer later wrote a popular book about her discovery.",
    "The railway reached the village at the end of the nineteenth century. Before that, goods travelled by cart "
    "along a rough mountain road. The new line cut the journey to the city from two days to three hours. "
    "Merchants opened shops near the station to serve the travellers. The population of the village doubled "
    "within ten years.\n"
    "During the war the line carried soldiers and supplies. Several bridges were damaged and later rebuilt with "
    "steel. After the war the station was painted and given a new clock. The old steam engines were replaced by "
    "diesel trains in the sixties.",
]


def _sentences(doc: str) -> list[str]:
    return [s if s.endswith(".") else s + "." for line in doc.split("\n") for s in line.split(". ")]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        DOCS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def test_items_are_deterministic_and_well_formed(tmp_path):
    assert lambada_items(DOCS) == lambada_items(list(DOCS))
    assert cloze_mc_items(DOCS) == cloze_mc_items(list(DOCS))
    first = build_local_tasks(DOCS, tmp_path / "a")
    second = build_local_tasks(DOCS, tmp_path / "b")
    for task in (LAMBADA_TASK, CLOZE_MC_TASK):
        assert (first / f"{task}.jsonl").read_bytes() == (second / f"{task}.jsonl").read_bytes()

    passages = [" ".join(d.split()) for d in DOCS]
    for item in lambada_items(DOCS):
        assert item["target"].isalpha()
        assert any(f"{item['context']} {item['target']}" in p for p in passages)


def test_mc_answer_is_the_true_next_sentence_and_distractors_come_from_other_documents():
    sentences = [_sentences(d) for d in DOCS]
    items = cloze_mc_items(DOCS)
    assert len(items) > 20
    assert {i["label"] for i in items} == {0, 1, 2, 3}  # the answer is not always in one place
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        doc = next(d for d, sents in enumerate(sentences) if item["context"] in sents)
        sents = sentences[doc]
        assert item["choices"][item["label"]] == sents[sents.index(item["context"]) + 1]
        for k, choice in enumerate(item["choices"]):
            if k != item["label"]:
                assert choice not in sents


def test_caps_the_number_of_items():
    assert len(cloze_mc_items(DOCS, max_items=5)) == 5
    assert len(lambada_items(DOCS, max_items=2)) == 2


def test_needs_several_documents():
    with pytest.raises(ZooError, match="other documents"):
        cloze_mc_items(DOCS[:1])


def test_local_tasks_load_through_task_manager(tmp_path):
    from lm_eval.tasks import TaskManager

    path = build_local_tasks(DOCS, tmp_path)
    loaded = TaskManager(include_path=str(path), include_defaults=False).load([LAMBADA_TASK, CLOZE_MC_TASK])
    mc = loaded["tasks"][CLOZE_MC_TASK]
    doc = next(iter(mc.test_docs()))
    first = json.loads((path / f"{CLOZE_MC_TASK}.jsonl").read_text().splitlines()[0])
    assert mc.doc_to_text(doc) == first["context"]
    assert mc.doc_to_choice(doc) == first["choices"]
    assert mc.doc_to_target(doc) == first["label"]
    lam = loaded["tasks"][LAMBADA_TASK]
    doc = next(iter(lam.test_docs()))
    assert lam.doc_to_target(doc) == " " + doc["target"]


def test_run_lm_eval_on_tiny_model(tmp_path, model, tokenizer, monkeypatch, capfd):
    path = build_local_tasks(DOCS, tmp_path)
    monkeypatch.chdir(tmp_path)  # outside a git checkout, as a nightly job's working folder may be
    results = run_lm_eval(
        model, tokenizer, [LAMBADA_TASK, CLOZE_MC_TASK], include_path=str(path), limit=6, batch_size=4
    )
    assert "not a git repository" not in capfd.readouterr().err  # lm-eval's `git describe` is not run
    assert set(results) == {LAMBADA_TASK, CLOZE_MC_TASK}
    assert set(results[LAMBADA_TASK]) == {"acc", "perplexity"}
    assert set(results[CLOZE_MC_TASK]) == {"acc", "acc_norm"}
    assert all(score.stderr is not None for metrics in results.values() for score in metrics.values())
    for metrics in results.values():
        assert 0.0 <= metrics["acc"].value <= 1.0
        p = metrics[
            "acc"
        ].value  # lm-eval's closed form for a mean over 6 items: the sample standard deviation / sqrt(6)
        assert metrics["acc"].stderr == pytest.approx((p * (1 - p) * 6 / 5) ** 0.5 / 6**0.5)
    # a random model over a ~400-token vocabulary is far from certain of the last word
    assert results[LAMBADA_TASK]["perplexity"].value > 10


def test_lm_eval_s_metric_keys_become_scores_with_their_standard_errors():
    reported = {
        "alias": "gsm8k",
        "acc,none": 0.5,
        "acc_stderr,none": 0.02,
        "exact_match,flexible-extract": 0.3,
        "exact_match_stderr,flexible-extract": 0.01,
        "perplexity,none": 12,
        "perplexity_stderr,none": "N/A",  # lm-eval could not compute it
        "samples": True,
    }
    assert _metrics(reported) == {
        "acc": Score(value=0.5, stderr=0.02),
        "exact_match/flexible-extract": Score(value=0.3, stderr=0.01),
        "perplexity": Score(value=12.0),
    }


def test_hub_task_offline_is_a_clear_error_naming_the_task(model, tokenizer):
    with pytest.raises(ZooError, match="'piqa'.*Hugging Face Hub.*zoo_lambada_local"):
        run_lm_eval(model, tokenizer, ["piqa"], limit=2)
