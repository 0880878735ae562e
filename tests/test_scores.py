"""Typed scores and the flat form every file holds them in: {task: {metric: value, metric_stderr: error}}."""

import pytest

from zoo.errors import ZooError
from zoo.evaluators.scores import Score, scores_from_dict, scores_to_dict

TYPED = {
    "hellaswag": {"acc": Score(value=0.5, stderr=0.02), "acc_norm": Score(value=0.6, stderr=0.021)},
    "gsm8k": {"exact_match/flexible-extract": Score(value=0.3, stderr=0.01)},  # lm-eval's filter kept in the name
    "perplexity/wiki-offline": {"perplexity": Score(value=20.0)},  # no standard error
}
FLAT = {
    "hellaswag": {"acc": 0.5, "acc_stderr": 0.02, "acc_norm": 0.6, "acc_norm_stderr": 0.021},
    "gsm8k": {"exact_match/flexible-extract": 0.3, "exact_match/flexible-extract_stderr": 0.01},
    "perplexity/wiki-offline": {"perplexity": 20.0},
}


def test_the_flat_form_round_trips_each_error_beside_its_metric():
    assert scores_to_dict(TYPED) == FLAT
    assert [list(m) for m in scores_to_dict(TYPED).values()] == [list(m) for m in FLAT.values()]  # the same order
    assert scores_from_dict(FLAT, "here") == TYPED
    assert scores_from_dict(scores_to_dict(TYPED), "here") == TYPED
    assert scores_from_dict({}, "here") == {} and scores_to_dict({}) == {}
    assert scores_from_dict({"t": {"acc_stderr": 0.1, "acc": 0.5}}, "here") == {
        "t": {"acc": Score(value=0.5, stderr=0.1)}
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hellaswag": {"acc": "0.5"}}, r"scorecard.json: metric 'acc' of task 'hellaswag' is '0.5', not a number"),
        ({"hellaswag": {"acc": True}}, r"metric 'acc' of task 'hellaswag' is True, not a number"),
        ({"hellaswag": {"acc": None}}, r"metric 'acc' of task 'hellaswag' is None, not a number"),
        ({"hellaswag": {"acc": 0.5, "acc_stderr": "N/A"}}, r"metric 'acc_stderr' of task 'hellaswag' is 'N/A'"),
        ({"hellaswag": {"acc_stderr": 0.02}}, r"'acc_stderr' of task 'hellaswag' is the standard error of no metric"),
        ({"hellaswag": 0.5}, r"scorecard.json: task 'hellaswag' holds 0.5, not \{metric: value\}"),
        ([0.5], r"scorecard.json: scores are list"),
    ],
)
def test_a_bad_value_names_the_file_the_task_and_the_metric(data, message):
    with pytest.raises(ZooError, match=message):
        scores_from_dict(data, "scorecard.json")


def test_scores_are_keyword_only():
    with pytest.raises(TypeError):
        Score(0.5, 0.02)  # which is the value and which the error is never left to the order
