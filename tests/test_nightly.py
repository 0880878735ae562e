"""`zoo nightly` end to end against a local registry: publish, skip, rebuild what changed, survive
failures and kills; and the GitHub Actions workflow that runs it."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo.cli import main
from zoo.errors import ZooError
from zoo.nightly.manifest import read_manifest
from zoo.nightly.report import compare
from zoo.publish.publishers import LocalRegistry
from zoo.publish.scorecard import MetricResult, Scorecard
from zoo.sources.catalogue import aliases

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"


def _manifest(path: Path, model_dir: Path, text_file: Path, crs, extra: str = "") -> Path:
    path.write_text(f"""
[[models]]
model = "{model_dir}"
crs = {list(crs)}
calibration = "{text_file}"
n_samples = 4
seq_len = 16
iters = 2
eval_windows = 2
eval_seq_len = 32
eval_tasks = []
{extra}""")
    return path


def _nightly(manifest: Path, tmp_path: Path, *more):
    args = [
        "nightly",
        "--manifest",
        manifest,
        "--registry",
        tmp_path / "registry",
        "--workdir",
        tmp_path / "work",
        "--report-dir",
        tmp_path / "report",
        *more,
    ]
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def _report(tmp_path: Path) -> dict[str, dict]:
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    return {v["variant"]: v for v in data["variants"]}


def _statuses(tmp_path: Path) -> dict[str, str]:
    return {name: v["status"] for name, v in _report(tmp_path).items()}


def test_nightly_publishes_skips_and_rebuilds_only_what_changed(tmp_path, model_dir, text_file):
    manifest = _manifest(tmp_path / "nightly.toml", model_dir, text_file, [0.2, 0.4])
    first = _nightly(manifest, tmp_path)
    assert first.exit_code == 0, first.output
    names = ["tiny-llama-compot-dynamic-cr0.2", "tiny-llama-compot-dynamic-cr0.4"]
    assert _statuses(tmp_path) == dict.fromkeys(names, "rebuilt")
    # Each published variant was reloaded in a fresh process and scored its slice as at build time.
    assert {v["verification"] for v in _report(tmp_path).values()} == {"verified"}
    registry = LocalRegistry(tmp_path / "registry", "compot-zoo")
    assert all(v.verification is not None and not v.broken for v in registry.published())
    published = {v.repo_id: v.scorecard for v in registry.published()}
    assert set(published) == {f"compot-zoo/{n}" for n in names}
    assert list((tmp_path / "work").iterdir()) == []  # built variants leave once published, and the lock with the run
    assert "# compot-zoo nightly: 2 rebuilt, 0 skipped, 0 failed" in first.output

    second = _nightly(manifest, tmp_path)
    assert second.exit_code == 0 and _statuses(tmp_path) == dict.fromkeys(names, "skipped")
    assert {v.repo_id: v.scorecard for v in registry.published()} == published  # untouched

    _manifest(manifest, model_dir, text_file, [0.2, 0.3])
    third = _nightly(manifest, tmp_path)
    assert third.exit_code == 0
    assert _statuses(tmp_path) == {names[0]: "skipped", "tiny-llama-compot-dynamic-cr0.3": "rebuilt"}

    # An input that changes a published variant's fingerprint (another calibration seed) rebuilds it and
    # compares its metrics with what was published before.
    _manifest(manifest, model_dir, text_file, [0.2, 0.3], "seed = 1")
    fourth = _nightly(manifest, tmp_path)
    report = _report(tmp_path)
    assert fourth.exit_code == 0 and {v["status"] for v in report.values()} == {"rebuilt"}
    assert report[names[0]]["reason"] == "inputs changed (fingerprint differs)"
    changes = report[names[0]]["changes"]
    assert [(c["task"], c["metric"]) for c in changes] == [("perplexity/wiki-offline", "perplexity")]
    assert changes[0]["previous"] == published[f"compot-zoo/{names[0]}"].metrics[0].compressed
    assert "## Against the previously published scorecards" in (tmp_path / "report" / "report.md").read_text()

    site = CliRunner().invoke(main, ["site", str(tmp_path / "registry"), "--out", str(tmp_path / "site")])
    assert site.exit_code == 0 and (tmp_path / "site" / "index.html").is_file()
    assert "tiny-llama-compot-dynamic-cr0.3" in (tmp_path / "site" / "index.html").read_text()


def test_one_failing_model_does_not_stop_the_others(tmp_path, model_dir, text_file):
    manifest = _manifest(tmp_path / "nightly.toml", model_dir, text_file, [0.25])
    manifest.write_text(manifest.read_text() + '\n[[models]]\nmodel = "no-such-model"\ncrs = [0.2]\n')
    result = _nightly(manifest, tmp_path)
    assert result.exit_code == 1 and "1 of 2 variants failed: no-such-model-compot-dynamic-cr0.2" in result.output
    report = _report(tmp_path)
    assert report["tiny-llama-compot-dynamic-cr0.25"]["status"] == "rebuilt"
    assert report["no-such-model-compot-dynamic-cr0.2"]["status"] == "failed"
    assert "unknown model 'no-such-model'" in report["no-such-model-compot-dynamic-cr0.2"]["reason"]


def test_a_variant_built_but_not_published_is_published_without_recompressing(
    tmp_path, model_dir, text_file, monkeypatch
):
    manifest = _manifest(tmp_path / "nightly.toml", model_dir, text_file, [0.3])

    def unreachable(self, folder, variant):
        raise ConnectionError("registry unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(LocalRegistry, "publish", unreachable)
        failed = _nightly(manifest, tmp_path)
    assert (
        failed.exit_code == 1
        and "ConnectionError: registry unreachable" in _report(tmp_path)["tiny-llama-compot-dynamic-cr0.3"]["reason"]
    )
    monkeypatch.setattr("zoo.pipeline.compress_model", lambda *a: pytest.fail("compressed again"))
    resumed = _nightly(manifest, tmp_path)
    variant = _report(tmp_path)["tiny-llama-compot-dynamic-cr0.3"]
    assert resumed.exit_code == 0 and variant["status"] == "rebuilt"
    assert variant["reason"] == "finished in an interrupted run; published now"


def test_a_variant_that_reloads_differently_is_reported_broken_and_rebuilt_next_night(
    tmp_path, model_dir, text_file, monkeypatch
):
    """The build records a slice score the published files do not reproduce (as when what is saved is
    not what was scored): the fresh process catches it, the report and the registry say broken, the
    run fails, and the next run rebuilds the variant though its fingerprint is unchanged."""
    import dataclasses

    from zoo import pipeline

    manifest = _manifest(tmp_path / "nightly.toml", model_dir, text_file, [0.3])
    name = "tiny-llama-compot-dynamic-cr0.3"
    scored = pipeline.score_slice

    def misrecorded(prepared):
        true = scored(prepared)
        scores = {
            t: {m: dataclasses.replace(v, value=v.value * 1.01) for m, v in s.items()} for t, s in true.scores.items()
        }
        return dataclasses.replace(true, scores=scores)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "score_slice", misrecorded)
        first = _nightly(manifest, tmp_path)
    assert first.exit_code == 1 and f"1 of 1 variants were broken once published: {name}" in first.output
    variant = _report(tmp_path)[name]
    assert variant["status"] == "rebuilt" and variant["verification"] == "broken"
    assert "once reloaded" in variant["verification_reason"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "1 broken once published" in report and "rebuilt ✗ broken" in report and "## Broken once published" in report
    assert LocalRegistry(tmp_path / "registry", "compot-zoo").get(name).broken

    second = _nightly(manifest, tmp_path)
    variant = _report(tmp_path)[name]
    assert second.exit_code == 0 and variant["status"] == "rebuilt" and variant["verification"] == "verified"
    assert variant["reason"] == "the published build was found broken"
    assert not LocalRegistry(tmp_path / "registry", "compot-zoo").get(name).broken


def test_a_killed_run_resumes_without_redoing_finished_variants(tmp_path, model_dir, text_file):
    crs = [0.15, 0.2, 0.25, 0.3]
    manifest = _manifest(tmp_path / "nightly.toml", model_dir, text_file, crs)
    command = [
        sys.executable,
        "-c",
        "from zoo.cli import main; main()",
        "nightly",
        "--manifest",
        str(manifest),
        "--registry",
        str(tmp_path / "registry"),
        "--workdir",
        str(tmp_path / "work"),
        "--report-dir",
        str(tmp_path / "report"),
    ]
    org = tmp_path / "registry" / "compot-zoo"
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600  # a loaded machine takes minutes to publish the first variant
    published = "[!.]*/scorecard.json"  # not a folder still being staged: pathlib's "*" matches ".staging"
    while not list(org.glob(published)) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = {p.parent.name for p in org.glob(published)}
    assert 0 < len(before) < len(crs), f"the kill did not land midway: {before}"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    statuses = _statuses(tmp_path)
    assert {n for n, s in statuses.items() if s == "skipped"} == before
    assert {n for n, s in statuses.items() if s == "rebuilt"} == set(statuses) - before
    assert {p.parent.name for p in org.glob("*/scorecard.json")} == set(statuses)  # the killed run's staging is gone
    assert not [p for p in org.iterdir() if p.name.startswith(".")]  # no half-published folder


def test_compare_flags_changes_in_each_metric_s_bad_direction():
    def card(ppl: float, acc: float) -> Scorecard:
        return Scorecard(
            "b",
            None,
            "v",
            "llm",
            "compot",
            "0.1",
            0.2,
            0.2,
            "dynamic",
            "c",
            "h",
            [MetricResult("perplexity", "ppl", 10.0, ppl, False), MetricResult("acc", "t", 0.5, acc, True)],
            1.0,
            1.0,
            "cpu",
            "sha256:" + "0" * 64,
            "zoo compress b",
        )

    changes = {c.metric: c for c in compare(card(20.0, 0.40), card(20.1, 0.41))}
    assert not changes["perplexity"].regression and not changes["acc"].regression  # within 1%, or better
    changes = {c.metric: c for c in compare(card(20.0, 0.40), card(21.0, 0.38))}
    assert changes["perplexity"].regression and changes["acc"].regression
    assert changes["perplexity"].relative_change == pytest.approx(0.05)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[models]]\nmodel = "m"\ncrs = [0.2]\ncr = 0.3\n', "unknown keys cr"),
        ('[[models]]\nmodel = "m"\ncrs = [0.2]\nmethods = ["compot-global"]\n', r"unknown methods \['compot-global'\]"),
        ('[[models]]\nmodel = "m"\n', "needs `model` and a non-empty `crs`"),
        ('[[models]]\nmodel = "m"\ncrs = [0.2, 0.2]\n', "variants listed twice: m-compot-dynamic-cr0.2"),
        ('[[models]]\nmodel = "m"\ncrs = [1.2]\n', r"cr 1.2 must lie in \(0, 1\)"),
        ("", "lists no variants"),
        ("[[models]\n", "cannot read manifest"),
    ],
)
def test_manifest_errors_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ZooError, match=message):
        read_manifest(path)


@pytest.mark.parametrize("name", ["nightly.toml", "demo.toml"])
def test_the_shipped_manifests_name_known_models(name):
    variants, settings = read_manifest(ROOT / "zoo" / "ci" / name)
    assert {v.entry["model"] for v in variants} <= set(aliases())
    assert name != "nightly.toml" or settings["registry"] == "hub"


def test_the_workflow_is_scheduled_publishes_with_the_secret_and_reports():
    text = WORKFLOW.read_text()
    for needle in (
        "schedule:",
        "cron:",
        "workflow_dispatch:",
        "secrets.HF_TOKEN",
        "zoo nightly",
        "GITHUB_STEP_SUMMARY",
        "actions/cache@",
        "persist-credentials: false",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("tool, args", [("actionlint", []), ("zizmor", ["--offline"])])
def test_the_workflows_pass_actionlint_and_zizmor(tool, args):
    exe = shutil.which(tool, path=str(Path(sys.executable).parent)) or shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} is not installed (pip install compot-zoo[test])")
    workflows = sorted(WORKFLOW.parent.glob("*.yml"))
    assert {w.name for w in workflows} >= {"nightly.yml", "gate.yml"}
    result = subprocess.run([exe, *args, *map(str, workflows)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_by_full_commit_sha():
    for workflow in WORKFLOW.parent.glob("*.yml"):
        for line in workflow.read_text().splitlines():
            if "uses:" in line:
                ref = line.split("uses:", 1)[1].split("#")[0].strip()
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{workflow.name}: {line.strip()}"


def test_the_nightly_runs_one_job_per_model_then_gathers_and_deploys_the_scoreboard():
    text = WORKFLOW.read_text()
    for needle in (
        "--list-jobs",
        "fromJSON(needs.models.outputs.jobs)",
        "runs-on: ${{ matrix.runs-on }}",
        "key: zoo-${{ matrix.name }}-",  # each model's job its own cache
        '--model "$MODEL"',
        "zoo gather",
        "zoo site",
        "actions/upload-pages-artifact@",
        "actions/configure-pages@",
        "actions/deploy-pages@",
    ):
        assert needle in text, needle


def test_the_gate_workflow_comments_the_table_and_reports_only_with_the_label():
    text = (WORKFLOW.parent / "gate.yml").read_text()
    for needle in (
        "pull_request:",
        "labeled",
        "contains(github.event.pull_request.labels.*.name, 'moves-numbers')",
        "--report-only",
        "zoo gate --manifest zoo/ci/gate.toml",
        "marocchino/sticky-pull-request-comment@",
        "path: gate-report/gate.md",
        "zoo nightly --manifest zoo/ci/gate.toml",
    ):
        assert needle in text, needle


def test_a_hub_run_without_a_token_fails_before_loading_anything(tmp_path, model_dir, text_file, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr("zoo.pipeline.prepare", lambda *a, **k: pytest.fail("work started before the check"))
    manifest = _manifest(tmp_path / "nightly.toml", model_dir, text_file, [0.2])
    args = ["nightly", "--manifest", manifest, "--registry", "hub", "--report-dir", tmp_path / "report"]
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 1 and "needs a token: set HF_TOKEN" in result.output
