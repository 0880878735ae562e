"""A chat model calibrates on conversations in its own chat template: a local set of them, or
offline the model's own answers (self-chat), generated once and cached."""

import json

import pytest
import torch
from click.testing import CliRunner

from tests.tiny_models import START, WORDS, tiny_chat_tokenizer, tiny_llama, tiny_tokenizer
from zoo.calibration import chat
from zoo.cli import main
from zoo.errors import ZooError
from zoo.modalities.decoder_llm import ADAPTER
from zoo.sources.loading import LoadedModel


@pytest.fixture
def chat_tokenizer():
    return tiny_chat_tokenizer()


def _conversations(n: int = 12) -> list[list[dict]]:
    words = WORDS[2:]
    return [
        [
            {"role": "user", "content": " ".join(words[i : i + 6])},
            {"role": "assistant", "content": " ".join(words[i + 6 : i + 20])},
        ]
        for i in range(n)
    ]


@pytest.fixture
def chats_file(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps({"messages": c}) for c in _conversations()))
    return path


def test_a_local_chat_set_calibrates_in_the_models_chat_template(chats_file, chat_tokenizer):
    assert chat.is_chat_source(str(chats_file))
    loaded = LoadedModel(tiny_llama(), chat_tokenizer, "tiny")
    data = ADAPTER.calibration(loaded, str(chats_file), 4, 24, seed=0, online=False)
    start, end = chat_tokenizer.convert_tokens_to_ids([START, "<|im_end|>"])
    ids = [t for batch in data.batches for t in batch["input_ids"].reshape(-1).tolist()]
    assert len(ids) == 4 * 24 and data.tokens == 4 * 24
    assert ids.count(start) >= 4 and ids.count(end) >= 4  # turns marked as the template marks them


def test_conversations_without_a_template_are_refused(chats_file):
    with pytest.raises(ZooError, match="no chat template"):
        chat.rendered(tiny_tokenizer(), _conversations(), str(chats_file))


@pytest.mark.parametrize(
    "row, problem",
    [
        ({"messages": [{"from": "human", "value": "hi"}]}, "needs 'role' and 'content'"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot' must be one of"),
        ({"messages": []}, "not a non-empty list of turns"),
    ],
)
def test_a_chat_set_without_the_expected_fields_is_refused_before_any_weights_load(
    tmp_path, model_dir, monkeypatch, row, problem
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    monkeypatch.setattr(ADAPTER, "load", lambda *a, **k: pytest.fail("weights loaded for a bad chat set"))
    args = ["compress", str(model_dir), "--calibration", str(bad), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert str(bad) in result.output and problem in result.output


def test_self_chat_is_generated_once_in_the_template_and_cached(monkeypatch, tmp_path, chat_tokenizer):
    monkeypatch.setenv("COMPOT_ZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(chat, "self_chat_prompts", lambda count, seed: [f"w1 w2 w{i}" for i in range(count)])
    calls = []

    def answers(model, tokenizer, prompts, new_tokens, desc=""):
        calls.append(len(prompts))
        return [{"prompt": p, "answer": "w5 w6 w7", "tokens": [7, 8, 9]} for p in prompts]

    monkeypatch.setattr(chat, "greedy_answers", answers)
    first = chat.self_chat(None, chat_tokenizer, 5, 0, "tiny@1")
    again = chat.self_chat(None, chat_tokenizer, 5, 0, "tiny@1")
    assert calls == [5] and first == again  # the second from the cache
    assert first[0] == [
        {"role": "user", "content": "w1 w2 w0"},
        {"role": "assistant", "content": "w5 w6 w7"},
    ]
    chat.self_chat(None, chat_tokenizer, 5, 0, "other-model@1")  # another model writes its own
    assert calls == [5, 5]


def test_self_chat_prompts_come_from_train_articles_only():
    from zoo.calibration.text import offline_articles

    test_titles = {title for title, _ in offline_articles("test")}
    prompts = chat.self_chat_prompts(40, seed=0)
    assert len(prompts) == 40 and len(set(prompts)) == 40
    assert not any(f"about {t}." in p for t in test_titles for p in prompts)
    assert chat.self_chat_prompts(40, seed=0) == prompts


def test_a_mixed_source_takes_half_its_samples_from_each_set(chats_file, text_file, chat_tokenizer):
    loaded = LoadedModel(tiny_llama(), chat_tokenizer, "tiny")
    data = ADAPTER.calibration(loaded, f"{chats_file}+{text_file}", 5, 24, seed=0, online=False)
    rows = torch.cat([batch["input_ids"] for batch in data.batches])
    start = chat_tokenizer.convert_tokens_to_ids(START)
    assert rows.shape == (5, 24) and data.name == f"{chats_file}+{text_file}"
    assert [bool((row == start).any()) for row in rows] == [True, True, True, False, False]  # 3 chat, 2 prose
