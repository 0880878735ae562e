"""`zoo gate` against a local registry: an unchanged tree passes, a worsened engine setting fails
(and only reports with --report-only); and the CI plumbing around it: jobs per model, gathering."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import TEXT
from tests.test_nightly import ROOT
from zoo.cli import main
from zoo.engine import factorization
from zoo.errors import ZooError
from zoo.gate import GATE_TOLERANCE, floored
from zoo.nightly.manifest import ci_jobs, only_model, read_manifest
from zoo.nightly.report import MetricChange

# The tiny model learns the text in STEPS steps; at CR 0.8 one engine iteration instead of twenty
# costs it 14% perplexity on that text (0.3% at CR 0.5, where the gate could not tell).
STEPS, CR = 100, 0.8


@pytest.fixture
def trained_dir(tmp_path, text_file):
    """The tiny Llama trained for a moment on the calibration text: a random model's perplexity says
    nothing of how well it was compressed, one that learned the text does."""
    import torch

    from tests.tiny_models import tiny_llama, tiny_tokenizer

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    ids = tokenizer(TEXT * 8, return_tensors="pt").input_ids[:, :96]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    folder = tmp_path / "tiny-llama"
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _manifest(path: Path, model_dir: Path, text_file: Path) -> Path:
    """The trained tiny model, scored on the text it learned, at a CR where iterations count."""
    path.write_text(f"""
[[models]]
model = "{model_dir}"
crs = [{CR}]
calibration = "{text_file}"
n_samples = 8
seq_len = 32
eval_texts = ["{text_file}"]
eval_windows = 2
eval_seq_len = 32
eval_tasks = []
""")
    return path


def _run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


def test_the_gate_passes_an_unchanged_tree_and_fails_a_worsened_engine(tmp_path, trained_dir, text_file, monkeypatch):
    registry, out = tmp_path / "registry", tmp_path / "gate"
    manifest = _manifest(tmp_path / "gate.toml", trained_dir, text_file)
    code, output = _run("nightly", "--manifest", manifest, "--registry", registry, "--workdir", tmp_path / "work",
                        "--report-dir", tmp_path / "report")  # fmt: skip
    assert code == 0, output

    gate = ("gate", "--manifest", manifest, "--against", registry, "--workdir", tmp_path / "work", "--out", out)
    code, output = _run(*gate)
    assert code == 0, output
    assert "## compot-zoo gate: ✅ passed" in output and "| metric | published | now | change |" in output
    report = json.loads((out / "gate.json").read_text())
    (variant,) = report["variants"]
    assert report["passed"] and variant["same_inputs"] and variant["changes"][0]["relative_change"] == 0.0

    # A change to the engine that its fingerprint does not see: one alternating-minimisation step
    # whatever the configuration asks (twenty).
    real = factorization.compot
    monkeypatch.setattr(factorization, "compot", lambda w, k, s, iters, tol=0.0: real(w, k, s, 1, tol))
    code, output = _run(*gate)
    assert code == 1 and f"the gate failed for tiny-llama-compot-dynamic-cr{CR:g}" in output, output
    (variant,) = json.loads((out / "gate.json").read_text())["variants"]
    (change,) = variant["changes"]
    assert variant["same_inputs"] and change["regression"] and change["relative_change"] > GATE_TOLERANCE
    assert "❌ failed" in (out / "gate.md").read_text()

    code, output = _run(*gate, "--report-only")
    assert code == 0 and "report only (this change is meant to move the numbers)" in output


def test_a_variant_never_published_fails_the_gate(tmp_path, model_dir, text_file):
    manifest = _manifest(tmp_path / "gate.toml", model_dir, text_file)
    code, output = _run("gate", "--manifest", manifest, "--against", tmp_path / "empty", "--out", tmp_path / "gate",
                        "--workdir", tmp_path / "work")  # fmt: skip
    assert code == 1 and "no published scorecard to compare with" in output


def test_a_counted_metric_fails_only_beyond_one_item():
    def change(metric: str, previous: float, current: float) -> MetricChange:
        relative = (current - previous) / previous
        return MetricChange(
            task="t", metric=metric, previous=previous, current=current, relative_change=relative, regression=True
        )

    assert not floored(change("wer", 0.0141, 0.0282)).regression  # one word of 71: +100%, still noise
    assert floored(change("wer", 0.0141, 0.0423)).regression  # two words
    assert not floored(change("acc", 0.30, 0.25)).regression and floored(change("acc", 0.30, 0.20)).regression
    assert floored(change("perplexity", 31.0, 31.7)).regression


def test_the_shipped_gate_manifest_is_small():
    variants, settings = read_manifest(ROOT / "zoo" / "ci" / "gate.toml")
    assert [v.name for v in variants] == ["smollm2-135m-compot-dynamic-cr0.2", "whisper-tiny.en-compot-dynamic-cr0.2"]
    assert settings["organization"] != "compot-zoo"  # its smaller evaluations never overwrite the zoo's scorecards


def test_list_jobs_gives_one_job_per_model_with_runner_labels_from_the_manifest(tmp_path):
    manifest = tmp_path / "manifest.toml"
    manifest.write_text("""
[runners]
gpu = ["self-hosted", "a100"]
gpu-8 = { runs-on = ["self-hosted", "8xh100"], processes = 8 }

[[models]]
model = "smollm2-135m"
crs = [0.2, 0.4]

[[models]]
model = "meta-llama/Llama-3.2-1B"
crs = [0.2]
runner = "gpu"

[[models]]
model = "meta-llama/Meta-Llama-3-70B"
crs = [0.2]
runner = "gpu-8"
""")
    code, output = _run("nightly", "--manifest", manifest, "--list-jobs")
    assert code == 0
    one = {"processes": 1}
    assert json.loads(output) == [
        {"model": "smollm2-135m", "name": "smollm2-135m", "runner": "cpu", "runs-on": "ubuntu-latest", **one},
        {
            "model": "meta-llama/Llama-3.2-1B",
            "name": "Llama-3.2-1B",
            "runner": "gpu",
            "runs-on": ["self-hosted", "a100"],
            **one,
        },
        {
            "model": "meta-llama/Meta-Llama-3-70B",
            "name": "Meta-Llama-3-70B",
            "runner": "gpu-8",
            "runs-on": ["self-hosted", "8xh100"],
            "processes": 8,
        },
    ]
    variants, _ = read_manifest(manifest)
    assert [v.name for v in only_model(variants, "smollm2-135m")] == [
        "smollm2-135m-compot-dynamic-cr0.2",
        "smollm2-135m-compot-dynamic-cr0.4",
    ]
    with pytest.raises(ZooError, match="the manifest has no model 'gpt2'"):
        only_model(variants, "gpt2")
    manifest.write_text(manifest.read_text().replace('runner = "gpu"\n', 'runner = "tpu"\n'))
    with pytest.raises(ZooError, match="#2: runner 'tpu' is not in \\[runners\\]: cpu, gpu, gpu-8"):
        read_manifest(manifest)
    manifest.write_text(manifest.read_text().replace("processes = 8", "processes = 0"))
    with pytest.raises(ZooError, match="gpu-8 must be a runs-on label.*processes = N"):
        ci_jobs(manifest)


def test_the_shipped_nightly_manifest_sends_large_models_to_the_configured_gpu_runner():
    jobs = {j["model"]: j for j in ci_jobs(ROOT / "zoo" / "ci" / "nightly.toml")}
    assert jobs["smollm2-135m"]["runs-on"] == "ubuntu-latest"
    assert {j["runner"] for j in jobs.values()} == {"cpu", "gpu", "gpu-8"}
    assert jobs["llama3-70b"]["processes"] == 8 and jobs["smollm2-135m"]["processes"] == 1


def test_gather_joins_the_jobs_reports_and_names_a_job_without_one(tmp_path):
    def report(folder: Path, variant: str, status: str, started: str) -> Path:
        folder.mkdir()
        entry = {"variant": variant, "model": "m", "cr": 0.2, "kind": "compot-dynamic", "status": status,
                 "reason": "", "seconds": 1.0, "repo_id": None, "url": None, "achieved_cr": 0.2, "changes": [],
                 "verification": "verified", "verification_reason": "", "regressions": [], "broken": False}  # fmt: skip
        data = {"started": started, "updated": started, "registry": "hub", "variants": [entry]}
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
