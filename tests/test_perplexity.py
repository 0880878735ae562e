"""Perplexity by the SVD-LLM protocol, checked against hand computations and built logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.tiny_models import tiny_llama, tiny_tokenizer
from zoo.errors import ZooError
from zoo.evaluators.perplexity import perplexity

TEXT = " ".join(
    [
        "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches",
        "in london and paris during cold winter evenings with hot tea",
    ]
    * 6
)


class ScriptedLM(torch.nn.Module):
    """A causal-LM stand-in whose logits are built from its input, to get known perplexities."""

    def __init__(self, vocab: int, p_correct: float | None = None, nan_window: int | None = None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.p_correct, self.nan_window = vocab, p_correct, nan_window
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids, use_cache=False):
        first = sum(len(x) for x in self.seen)
        self.seen.append(input_ids.clone())
        logits = torch.zeros(*input_ids.shape, self.vocab)
        if self.p_correct is not None:  # the true next token gets probability p_correct
            boost = math.log(self.p_correct * (self.vocab - 1) / (1 - self.p_correct))
            logits[:, :-1].scatter_(2, input_ids[:, 1:, None], boost)
        if self.nan_window is not None and first <= self.nan_window < first + len(input_ids):
            logits[self.nan_window - first, 3, 5] = float("nan")
        return type("Out", (), {"logits": logits})()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_equals_exp_of_hand_computed_nll_and_drops_ragged_tail(tok):
    model = tiny_llama()
    ids = tok(TEXT, return_tensors="pt").input_ids[0]
    seq_len = 25
    assert ids.numel() % seq_len != 0, "the text must leave a ragged tail for this test"
    windows = ids.numel() // seq_len
    batch = ids[: windows * seq_len].view(windows, seq_len)
    with torch.no_grad():
        logits = model(batch).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).item()

    result = perplexity(model, tok, TEXT, seq_len=seq_len, batch_size=2)
    assert result["windows"] == windows
    assert result["tokens"] == windows * (seq_len - 1)
    assert result["seq_len"] == seq_len
    assert result["nll"] == pytest.approx(nll, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_batch_size_does_not_change_the_result(tok):
    model = tiny_llama()
    one = perplexity(model, tok, TEXT, seq_len=20, batch_size=1)
    three = perplexity(model, tok, TEXT, seq_len=20, batch_size=3)
    assert three["perplexity"] == pytest.approx(one["perplexity"], rel=1e-5)


def test_known_perplexity_from_built_logits(tok):
    vocab = len(tok)
    assert perplexity(ScriptedLM(vocab), tok, TEXT, seq_len=16)["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert perplexity(ScriptedLM(vocab, p_correct=0.5), tok, TEXT, seq_len=16)["perplexity"] == pytest.approx(2.0)


def test_model_sees_exactly_the_full_windows(tok):
    ids = tok(TEXT, return_tensors="pt").input_ids[0]
    model = ScriptedLM(len(tok))
    result = perplexity(model, tok, TEXT, seq_len=30, batch_size=4)
    seen = torch.cat(model.seen)
    assert seen.shape == (ids.numel() // 30, 30)
    assert torch.equal(seen.flatten(), ids[: seen.numel()])
    assert result["windows"] == seen.shape[0]


def test_max_windows_caps_the_windows(tok):
    model = ScriptedLM(len(tok))
    result = perplexity(model, tok, TEXT, seq_len=10, max_windows=3, batch_size=2)
    assert result["windows"] == 3 and torch.cat(model.seen).shape[0] == 3


def test_nan_logits_raise_naming_the_window(tok):
    with pytest.raises(ZooError, match="window 2"):
        perplexity(ScriptedLM(len(tok), nan_window=2), tok, TEXT, seq_len=10, batch_size=2)


def test_seq_len_past_the_model_limit_is_clipped_with_a_warning(tok):
    model = tiny_llama()  # max_position_embeddings = 128
    long_text = " ".join([TEXT] * 3)
    with pytest.warns(UserWarning, match="max_position_embeddings 128"):
        result = perplexity(model, tok, long_text, seq_len=4096)
    assert result["seq_len"] == 128


def test_too_short_text_is_an_error(tok):
    with pytest.raises(ZooError, match="fewer than one window"):
        perplexity(tiny_llama(), tok, "the quick brown fox", seq_len=64)
