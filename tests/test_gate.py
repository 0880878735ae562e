"""`zoo gate` against a local registry: an unchanged tree passes, a worsened engine setting fails
(and only reports with --report-only); and the CI plumbing around it: jobs per model, gathering."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_nightly import ROOT
from zoo.cli import main
from zoo.errors import ZooError
from zoo.nightly import ci_jobs, only_model, read_plan


def _plan(path: Path, model_dir: Path, text_file: Path, iters: int) -> Path:
    """The tiny model at a CR high enough that the engine's iterations show in its perplexity."""
    path.write_text(f"""
[[models]]
model = "{model_dir}"
crs = [0.5]
calibration = "{text_file}"
n_samples = 8
seq_len = 32
iters = {iters}
eval_windows = 2
eval_seq_len = 32
eval_tasks = []
""")
    return path


def _run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


def test_the_gate_passes_an_unchanged_tree_and_fails_a_worsened_engine(tmp_path, model_dir, text_file):
    registry, out = tmp_path / "registry", tmp_path / "gate"
    plan = _plan(tmp_path / "gate.toml", model_dir, text_file, 20)
    code, output = _run("nightly", "--plan", plan, "--target", registry, "--workdir", tmp_path / "work",
                        "--report-dir", tmp_path / "report")  # fmt: skip
    assert code == 0, output

    gate = ("gate", "--plan", plan, "--against", registry, "--workdir", tmp_path / "work", "--out", out)
    code, output = _run(*gate)
    assert code == 0, output
    assert "## compot-zoo gate: ✅ passed" in output and "| metric | published | now | change |" in output
    report = json.loads((out / "gate.json").read_text())
    (variant,) = report["variants"]
    assert report["passed"] and variant["same_inputs"] and variant["changes"][0]["relative_change"] == 0.0

    _plan(plan, model_dir, text_file, 1)  # one alternating-minimisation step instead of twenty
    code, output = _run(*gate)
    assert code == 1 and "the gate failed for tiny-llama-compot-dynamic-cr0.5" in output, output
    (change,) = json.loads((out / "gate.json").read_text())["variants"][0]["changes"]
    assert change["regression"] and change["relative_change"] > 0.02
    assert "❌ failed" in (out / "gate.md").read_text()

    code, output = _run(*gate, "--report-only")
    assert code == 0 and "report only (this change is meant to move the numbers)" in output


def test_a_variant_never_published_fails_the_gate(tmp_path, model_dir, text_file):
    plan = _plan(tmp_path / "gate.toml", model_dir, text_file, 2)
    code, output = _run("gate", "--plan", plan, "--against", tmp_path / "empty", "--out", tmp_path / "gate",
                        "--workdir", tmp_path / "work")  # fmt: skip
    assert code == 1 and "no published scorecard to compare with" in output


def test_the_shipped_gate_plan_is_small():
    variants, settings = read_plan(ROOT / "zoo" / "ci" / "gate.toml")
    assert [v.name for v in variants] == ["smollm2-135m-compot-dynamic-cr0.2", "whisper-tiny.en-compot-dynamic-cr0.2"]
    assert settings["organization"] != "compot-zoo"  # its smaller evaluations never overwrite the zoo's scorecards


def test_list_jobs_gives_one_job_per_model_with_runner_labels_from_the_plan(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text("""
[runners]
gpu = ["self-hosted", "a100"]

[[models]]
model = "smollm2-135m"
crs = [0.2, 0.4]

[[models]]
model = "meta-llama/Llama-3.2-1B"
crs = [0.2]
runner = "gpu"
""")
    code, output = _run("nightly", "--plan", plan, "--list-jobs")
    assert code == 0
    assert json.loads(output) == [
        {"model": "smollm2-135m", "name": "smollm2-135m", "runner": "cpu", "runs-on": "ubuntu-latest"},
        {
            "model": "meta-llama/Llama-3.2-1B",
            "name": "Llama-3.2-1B",
            "runner": "gpu",
            "runs-on": ["self-hosted", "a100"],
        },
    ]
    variants, _ = read_plan(plan)
    assert [v.name for v in only_model(variants, "smollm2-135m")] == [
        "smollm2-135m-compot-dynamic-cr0.2",
        "smollm2-135m-compot-dynamic-cr0.4",
    ]
    with pytest.raises(ZooError, match="the plan has no model 'gpt2'"):
        only_model(variants, "gpt2")
    plan.write_text(plan.read_text().replace('runner = "gpu"', 'runner = "tpu"'))
    with pytest.raises(ZooError, match="asks for runner 'tpu'; \\[runners\\] has cpu, gpu"):
        ci_jobs(plan)


def test_the_shipped_nightly_plan_sends_large_models_to_the_configured_gpu_runner():
    jobs = {j["model"]: j for j in ci_jobs(ROOT / "zoo" / "ci" / "nightly.toml")}
    assert jobs["smollm2-135m"]["runs-on"] == "ubuntu-latest"
    assert {j["runner"] for j in jobs.values()} == {"cpu", "gpu"}


def test_gather_joins_the_jobs_reports_and_names_a_job_without_one(tmp_path):
    def report(folder: Path, variant: str, status: str, started: str) -> Path:
        folder.mkdir()
        entry = {"variant": variant, "model": "m", "cr": 0.2, "kind": "compot-dynamic", "status": status,
                 "reason": "", "seconds": 1.0, "repo_id": None, "url": None, "achieved_cr": 0.2, "changes": [],
                 "regressions": []}  # fmt: skip
        data = {"started": started, "updated": started, "target": "hub", "variants": [entry]}
        (folder / "report.json").write_text(json.dumps(data))
        return folder

    a = report(tmp_path / "a", "a-cr0.2", "rebuilt", "2026-01-01T02:00:00+00:00")
    b = report(tmp_path / "b", "b-cr0.2", "skipped", "2026-01-01T01:00:00+00:00")
    code, output = _run("gather", a, b, "--report-dir", tmp_path / "all")
    assert code == 0, output
    data = json.loads((tmp_path / "all" / "report.json").read_text())
    assert [v["variant"] for v in data["variants"]] == ["a-cr0.2", "b-cr0.2"]
    assert data["started"] == "2026-01-01T01:00:00+00:00" and data["counts"]["rebuilt"] == 1
    assert "# compot-zoo nightly: 1 rebuilt, 1 skipped, 0 failed" in output

    code, output = _run("gather", a, tmp_path / "c", "--report-dir", tmp_path / "all")
    assert code == 1 and "1 jobs left no report" in output
    assert f"No report from {tmp_path / 'c'}" in (tmp_path / "all" / "report.md").read_text()
