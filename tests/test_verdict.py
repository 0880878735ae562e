"""The verdict on a reloaded variant: the slice scores it must reproduce, and how closely."""

import json

import pytest

from zoo.errors import ZooError
from zoo.evaluators.scores import Score
from zoo.publish.verdict import BROKEN, SLICE_TOLERANCE, VERIFIED, Verification, mismatches, verdict

EXPECTED = {
    "perplexity/wiki-offline": {"perplexity": Score(value=20.0)},
    "wer/librivox-offline": {"wer": Score(value=0.0)},
}


def test_the_same_scores_verify_and_any_other_breaks():
    assert verdict("sha256:a", EXPECTED, EXPECTED).status == VERIFIED
    close = {**EXPECTED, "perplexity/wiki-offline": {"perplexity": Score(value=20.0 * (1 + SLICE_TOLERANCE / 2))}}
    assert mismatches(EXPECTED, close) == []  # run-to-run noise of the same weights
    off = {**EXPECTED, "perplexity/wiki-offline": {"perplexity": Score(value=20.0 * (1 + 2 * SLICE_TOLERANCE))}}
    assert mismatches(EXPECTED, off) == ["perplexity/wiki-offline perplexity: 20.04 once reloaded, 20 at build time"]
    assert mismatches(EXPECTED, {**EXPECTED, "wer/librivox-offline": {"wer": Score(value=0.01)}})  # a word in 100
    assert mismatches(EXPECTED, {"perplexity/wiki-offline": {"perplexity": Score(value=20.0)}}) == [
        "wer/librivox-offline wer: not measured"
    ]
    # The standard error is no score to reproduce: another run of the slice may estimate it otherwise.
    with_error = {"t": {"acc": Score(value=0.5, stderr=0.1)}}
    assert mismatches(with_error, {"t": {"acc": Score(value=0.5, stderr=0.2)}}) == []


def test_a_failure_to_load_is_broken_and_the_verdict_round_trips():
    failed = verdict("sha256:a", EXPECTED, None, "the fresh process failed: OSError: no model.safetensors")
    assert failed.status == BROKEN and failed.broken and failed.reason.endswith("no model.safetensors")
    assert Verification.from_json(failed.to_json()) == failed
    with pytest.raises(ZooError, match="verification.json is not a valid verification"):
        Verification.from_json('{"status": "verified"}')
    with pytest.raises(ZooError, match="status must be 'verified' or 'broken'"):
        Verification("fine", "", "sha256:a", EXPECTED, EXPECTED)


def test_a_verification_written_before_typed_scores_reads_and_writes_back_byte_identical():
    flat = {"zoo_cloze_mc_local": {"acc": 0.5, "acc_stderr": 0.1}, "perplexity/wiki-offline": {"perplexity": 20.0}}
    written = {
        "status": "broken",
        "reason": "zoo_cloze_mc_local acc: 0.6 once reloaded, 0.5 at build time",
        "fingerprint": "sha256:a",
        "expected": flat,
        "measured": {**flat, "zoo_cloze_mc_local": {"acc": 0.6, "acc_stderr": 0.1}},
        "checked": "2025-01-01T00:00:00+00:00",
    }
    text = json.dumps(written, indent=2)  # as Verification.to_json wrote it
    loaded = Verification.from_json(text)
    assert loaded.expected["zoo_cloze_mc_local"] == {"acc": Score(value=0.5, stderr=0.1)}
    assert loaded.measured["perplexity/wiki-offline"] == {"perplexity": Score(value=20.0)}
    assert loaded.to_json() == text
    with pytest.raises(ZooError, match=r"hub/v/verification.json measured: metric 'acc' of task 't' is 'NaN'"):
        Verification.from_json(json.dumps({**written, "measured": {"t": {"acc": "NaN"}}}), "hub/v/verification.json")
