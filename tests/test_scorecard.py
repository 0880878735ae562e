"""The scorecard schema: JSON round trip, recovery in both directions, the markdown table."""

import dataclasses
import json
import math

import pytest

from zoo.errors import ZooError
from zoo.evaluators.provenance import BENCHMARK, STAND_IN, provenance
from zoo.evaluators.scores import Score
from zoo.publish.scorecard import (
    SCHEMA_VERSION,
    MetricResult,
    Scorecard,
    SliceScore,
    library_versions,
    metrics_from_results,
)
from zoo.publish.scorecard import schema as scorecard_schema


def _scores(flat: dict) -> dict:
    """{task: {metric: value}} as scores without standard errors."""
    return {task: {name: Score(value=value) for name, value in metrics.items()} for task, metrics in flat.items()}


BASE = _scores({"perplexity/wiki-offline": {"perplexity": 20.0}, "zoo_cloze_mc_local": {"acc": 0.5, "acc_norm": 0.6}})
COMPRESSED = _scores(
    {"perplexity/wiki-offline": {"perplexity": 25.0}, "zoo_cloze_mc_local": {"acc": 0.4, "acc_norm": 0.6}}
)


def _card(**changes) -> Scorecard:
    fields = dict(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_revision="abc123",
        variant="smollm2-cr0.2",
        modality="llm",
        method="compot",
        engine_version="0.1.0",
        target_cr=0.2,
        achieved_cr=0.2013,
        allocation="dynamic",
        calibration_set="wiki-offline",
        calibration_hash="sha256:feed",
        metrics=metrics_from_results(BASE, COMPRESSED, provenance),
        compression_seconds=12.5,
        peak_memory_mb=812.0,
        hardware="cpu: 2 cores",
        fingerprint="sha256:" + "ab" * 32,
        command="zoo compress smollm2-135m --cr 0.2 --eval",
    )
    return Scorecard(**{**fields, **changes})


def test_recovery_for_higher_and_lower_is_better():
    assert MetricResult("acc", "t", 0.5, 0.4, True).recovery == pytest.approx(80.0)
    assert MetricResult("perplexity", "t", 20.0, 25.0, False).recovery == pytest.approx(80.0)
    assert MetricResult("wer", "t", 0.1, 0.05, False).recovery == pytest.approx(200.0)
    assert math.isnan(MetricResult("acc", "t", 0.0, 0.3, True).recovery)


def test_metrics_from_results_pairs_and_infers_direction():
    metrics = {(m.task, m.name): m for m in metrics_from_results(BASE, COMPRESSED, provenance)}
    assert set(metrics) == {(t, n) for t, v in BASE.items() for n in v}
    ppl = metrics["perplexity/wiki-offline", "perplexity"]
    assert (ppl.base, ppl.compressed, ppl.higher_is_better) == (20.0, 25.0, False)
    assert metrics["zoo_cloze_mc_local", "acc"].higher_is_better


def test_metrics_from_results_refuses_a_missing_compressed_metric():
    with pytest.raises(ZooError, match="'acc_norm' of task 'zoo_cloze_mc_local'"):
        metrics_from_results(BASE, {**COMPRESSED, "zoo_cloze_mc_local": {"acc": Score(value=0.4)}}, provenance)


def test_json_round_trip_is_identical(tmp_path):
    card = _card()
    assert Scorecard.from_json(card.to_json()) == card
    path = card.save(tmp_path / "scorecard.json")
    loaded = Scorecard.load(path)
    assert loaded == card and loaded.to_json() == card.to_json()
    assert not list(tmp_path.glob(".*.tmp"))
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["metrics"][0]["recovery"] == pytest.approx(80.0)


def test_load_refuses_other_schema_versions(tmp_path):
    data = json.loads(_card().to_json())
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(ZooError, match="schema_version 99"):
        Scorecard.load(path)


def test_allocation_is_static_or_dynamic():
    with pytest.raises(ZooError, match="allocation"):
        _card(allocation="global")


def test_markdown_table_has_base_compressed_and_recovery():
    table = _card().to_markdown_table()
    lines = table.splitlines()
    assert lines[0] == "| task | metric | base | compressed | recovery | data |"
    assert "| perplexity/wiki-offline | perplexity ↓ | 20 | 25 | 80.0% | stand-in |" in lines
    assert "| zoo_cloze_mc_local | acc ↑ | 0.5 | 0.4 | 80.0% | stand-in |" in lines
    assert "| zoo_cloze_mc_local | acc_norm ↑ | 0.6 | 0.6 | 100.0% | stand-in |" in lines


def test_written_scorecards_follow_the_documented_json_schema():
    """The schema file documents the format for readers in other languages; it must describe what we write."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = scorecard_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(_card().to_json())
    jsonschema.validate(data, schema)
    nan_base = _card(metrics=[MetricResult("acc", "t", 0.0, 0.3, True)])
    jsonschema.validate(json.loads(nan_base.to_json()), schema)  # an undefined recovery is null, valid JSON
    sliced = _card(
        slice_score=SliceScore({"eval_windows": 2}, False, _scores({"perplexity/wiki-offline": {"perplexity": 3.0}}))
    )
    jsonschema.validate(json.loads(sliced.to_json()), schema)
    assert Scorecard.from_json(sliced.to_json()) == sliced
    for broken in (
        {**data, "achieved_cr": "0.2"},
        {k: v for k, v in data.items() if k != "fingerprint"},
        {**data, "extra": 1},
        {**data, "modality": "video"},
        {**data, "metrics": [{**data["metrics"][0], "source": "hearsay"}]},
        {**data, "slice_score": {"settings": {}, "online": False}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_standard_errors_pair_with_their_metric_and_version_2_still_reads():
    base = {"hellaswag": {"acc": Score(value=0.5, stderr=0.02)}}
    compressed = {"hellaswag": {"acc": Score(value=0.45, stderr=0.021)}}
    (metric,) = metrics_from_results(base, compressed, provenance)
    assert (metric.base_stderr, metric.compressed_stderr) == (0.02, 0.021)
    card = _card(metrics=[metric], eval_limit=200)
    assert "| hellaswag | acc ↑ | 0.5 ± 0.02 | 0.45 ± 0.021 | 90.0% | benchmark |" in card.to_markdown_table()
    assert "At most 200 items per task or set" in card.to_markdown_table()
    old = json.loads(_card().to_json())
    old["schema_version"] = 2
    del old["eval_limit"], old["slice_score"]
    for m in old["metrics"]:
        del m["base_stderr"], m["compressed_stderr"], m["source"]
    unrecorded = [dataclasses.replace(m, source=None) for m in _card().metrics]
    assert Scorecard.from_dict(old).metrics == unrecorded  # what the zoo published before reads on


def test_provenance_comes_from_the_sets_and_version_3_reads_as_unrecorded():
    """Each set's own definition says whether it is a real benchmark; a scorecard holding none is stand-in only."""
    real = ["perplexity/wikitext2", "perplexity/c4", "wer/librispeech-test-other", "vlmeval/MMStar", "hellaswag"]
    stand_ins = ["perplexity/wiki-offline", "perplexity/my-texts.jsonl", "wer/librivox-offline", "wer/tts-wiki-test"]
    stand_ins += ["vlmeval/ZooPhotosMCQ", "zoo_lambada_local", "zoo_cloze_mc_local"]
    assert {t: provenance(t) for t in real + stand_ins} == {
        **dict.fromkeys(real, BENCHMARK),
        **dict.fromkeys(stand_ins, STAND_IN),
    }
    offline = _card()
    assert offline.stand_in_only and len(offline.stand_ins) == 3
    mixed = metrics_from_results(
        {**BASE, "hellaswag": {"acc": Score(value=0.5)}},
        {**COMPRESSED, "hellaswag": {"acc": Score(value=0.4)}},
        provenance,
    )
    assert not _card(metrics=mixed).stand_in_only and len(_card(metrics=mixed).stand_ins) == 3
    old = json.loads(_card(metrics=mixed).to_json())
    old["schema_version"] = 3
    del old["slice_score"]
    for m in old["metrics"]:
        del m["source"]
    loaded = Scorecard.from_dict(old)
    assert {m.source for m in loaded.metrics} == {None} and loaded.stand_in_only  # not recorded is not real
    assert loaded.slice_score is None and loaded.schema_version == SCHEMA_VERSION
    with pytest.raises(ZooError, match="source 'made-up'"):
        MetricResult("acc", "t", 0.5, 0.4, True, source="made-up")


def test_versions_and_the_runs_evaluation_round_trip_and_version_4_reads_them_as_unrecorded():
    import jsonschema
    import torch
    import transformers

    versions = library_versions()
    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__
    assert "compot-zoo" in versions
    evaluation = {"eval_windows": 8, "online": False, "scored": ["perplexity/wiki-offline", "zoo_cloze_mc_local"]}
    card = _card(evaluation=evaluation, versions=versions)
    assert Scorecard.from_json(card.to_json()) == card
    jsonschema.validate(json.loads(card.to_json()), scorecard_schema())
    old = json.loads(card.to_json())
    old["schema_version"] = 4
    del old["evaluation"], old["versions"]
    loaded = Scorecard.from_dict(old)
    assert (loaded.evaluation, loaded.versions) == (None, None)


def test_a_scorecard_written_before_typed_scores_loads_them_and_saves_back_byte_identical(tmp_path):
    """The slice's scores stay lm-eval's flat form on disk: errors beside their metrics, filters in the name."""
    flat = {
        "hellaswag": {"acc": 0.5, "acc_stderr": 0.02, "acc/flex": 0.4, "acc/flex_stderr": 0.03},
        "perplexity/wiki-offline": {"perplexity": 3.0},
    }
    written = json.loads(_card().to_json())
    written["slice_score"] = {"settings": {"eval_windows": 2}, "online": False, "scores": flat}
    path = tmp_path / "scorecard.json"
    path.write_text(json.dumps(written, indent=2))  # as Scorecard.save wrote it
    loaded = Scorecard.load(path)
    assert loaded.slice_score.scores == {
        "hellaswag": {"acc": Score(value=0.5, stderr=0.02), "acc/flex": Score(value=0.4, stderr=0.03)},
        "perplexity/wiki-offline": {"perplexity": Score(value=3.0)},
    }
    assert loaded.to_json() == path.read_text()
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    written["slice_score"]["scores"]["hellaswag"]["acc"] = "0.5"
    path.write_text(json.dumps(written))
    with pytest.raises(ZooError, match=r"scorecard.json: slice_score: metric 'acc' of task 'hellaswag' is '0.5'"):
        Scorecard.load(path)
