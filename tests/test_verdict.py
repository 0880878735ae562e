"""The verdict on a reloaded variant: the slice scores it must reproduce, and how closely."""

import pytest

from zoo.errors import ZooError
from zoo.publish.verdict import BROKEN, SLICE_TOLERANCE, VERIFIED, Verification, mismatches, verdict

EXPECTED = {"perplexity/wiki-offline": {"perplexity": 20.0}, "wer/librivox-offline": {"wer": 0.0}}


def test_the_same_scores_verify_and_any_other_breaks():
    assert verdict("sha256:a", EXPECTED, EXPECTED).status == VERIFIED
    close = {**EXPECTED, "perplexity/wiki-offline": {"perplexity": 20.0 * (1 + SLICE_TOLERANCE / 2)}}
    assert mismatches(EXPECTED, close) == []  # run-to-run noise of the same weights
    off = {**EXPECTED, "perplexity/wiki-offline": {"perplexity": 20.0 * (1 + 2 * SLICE_TOLERANCE)}}
    assert mismatches(EXPECTED, off) == ["perplexity/wiki-offline perplexity: 20.04 once reloaded, 20 at build time"]
    assert mismatches(EXPECTED, {**EXPECTED, "wer/librivox-offline": {"wer": 0.01}})  # one word in a hundred
    assert mismatches(EXPECTED, {"perplexity/wiki-offline": {"perplexity": 20.0}}) == [
        "wer/librivox-offline wer: not measured"
    ]
    assert mismatches({"t": {"acc": 0.5, "acc_stderr": 0.1}}, {"t": {"acc": 0.5}}) == []  # no score of its own


def test_a_failure_to_load_is_broken_and_the_verdict_round_trips():
    failed = verdict("sha256:a", EXPECTED, None, "the fresh process failed: OSError: no model.safetensors")
    assert failed.status == BROKEN and failed.broken and failed.reason.endswith("no model.safetensors")
    assert Verification.from_json(failed.to_json()) == failed
    with pytest.raises(ZooError, match="verification.json is not a valid verification"):
        Verification.from_json('{"status": "verified"}')
    with pytest.raises(ZooError, match="status must be 'verified' or 'broken'"):
        Verification("fine", "", "sha256:a", EXPECTED, EXPECTED)
