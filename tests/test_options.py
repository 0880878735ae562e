"""Every documented option not exercised elsewhere, each by its effect: what `zoo list` prints, the
version, progress logs, early stopping, the allocation guards, the saved dtypes, the components, the
device memory limit, the gate's tolerance and organisation, the site's title."""

import dataclasses
import json
import logging

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import zoo
from tests.conftest import TINY_RUN
from zoo.cli import main

FAST = (*TINY_RUN, "--iters", 2, "--heal", 0)


def _invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def _compress(model_dir, text_file, out, *args):
    result = _invoke("compress", model_dir, *FAST, "--calibration", text_file, "--out", out, *args)
    assert result.exit_code == 0, result.output
    return result


def test_list_names_every_catalogue_alias_with_its_modality_and_suite():
    from zoo.sources.catalogue import catalogue

    result = _invoke("list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    models = catalogue()["models"]
    assert len(lines) == 2 * len(models)  # an alias line, then its suite
    for (name, entry), line, suite in zip(sorted(models.items()), lines[::2], lines[1::2], strict=True):
        assert line.split()[:2] == [name, entry["modality"]], line
        assert suite.strip().startswith("suite: ")
    smol = lines[[line.split()[0] for line in lines[::2]].index("smollm2-135m") * 2 :]
    assert "HuggingFaceTB/SmolLM2-135M" in smol[0] and "perplexity/" in smol[1]


def test_version_is_the_package_s():
    result = _invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"compot-zoo, version {zoo.__version__}"


def test_verbose_shows_progress_logs(tmp_path, model_dir, text_file, monkeypatch):
    """-v turns the root logger to INFO: each block's progress line is printed; without it, not."""
    outputs = {}
    for flag in ("-v", None):
        monkeypatch.setattr(logging.root, "handlers", [])  # as in a fresh process: basicConfig takes effect
        monkeypatch.setattr(logging.root, "level", logging.WARNING)
        args = [flag] if flag else []
        result = _invoke(*args, "compress", model_dir, *FAST, "--calibration", text_file, "--out", tmp_path / str(flag))
        assert result.exit_code == 0, result.output
        outputs[flag] = result.output
    assert "INFO block model.layers.0 (1 of 2 in decoder)" in outputs["-v"]
    assert "INFO " not in outputs[None]


def _iterations(monkeypatch) -> list[int]:
    """How many alternating steps each COMPOT factorization ran (its objective has one value more)."""
    from zoo.engine import factorization

    real, steps = factorization.compot, []

    def counted(w, k, s, iters, tol=0.0):
        factors = real(w, k, s, iters, tol)
        if iters == 30:  # not the plan's timing probes (0 and 2 steps)
            steps.append(len(factors.objective) - 1)
        return factors

    monkeypatch.setattr(factorization, "compot", counted)
    return steps


def test_tol_stops_the_alternating_minimisation_early(tmp_path, model_dir, text_file, monkeypatch):
    steps = _iterations(monkeypatch)
    common = ("--iters", 30, "--forms", "single")
    _compress(model_dir, text_file, tmp_path / "full", *common)
    full, steps[:] = list(steps), []
    _compress(model_dir, text_file, tmp_path / "early", *common, "--tol", 0.05)
    assert full and set(full) == {30}  # without --tol every matrix runs the 30 steps asked
    assert len(steps) == len(full) and max(steps) < 30 and sum(steps) < sum(full) / 2, steps
    assert json.loads((tmp_path / "early" / "compot_record.json").read_text())["config"]["tol"] == 0.05


def test_min_and_max_cr_reach_the_allocator(tmp_path, model_dir, text_file, monkeypatch):
    from zoo.compression import apply

    real, seen = apply.allocate, []

    def spy(*args, **kwargs):
        allocation = real(*args, **kwargs)
        seen.append(allocation)
        return allocation

    monkeypatch.setattr(apply, "allocate", spy)
    _compress(model_dir, text_file, tmp_path / "out", "--min-cr", 0.25, "--max-cr", 0.4)
    (allocation,) = seen
    assert (allocation.min_cr, allocation.max_cr) == (0.25, 0.4)
    assert all(cr == 0.0 or 0.25 <= cr <= 0.4 for cr in allocation.cr.values()), allocation.cr
    _compress(model_dir, text_file, tmp_path / "default")
    assert (seen[1].min_cr, seen[1].max_cr) == (0.15, 0.6)  # half and twice the target when not given


def _dtypes(folder) -> dict[str, set[str]]:
    """The dtypes in a checkpoint, of the compressed layers' float tensors and of the rest."""
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    layers = {k for k in tensors if any(p in k for p in ("q_proj.", "k_proj.", "v_proj.", "o_proj.", "_proj."))}
    return {
        "compressed": {tensors[k] for k in layers if tensors[k] in ("F16", "BF16", "F32")},
        "rest": {tensors[k] for k in tensors.keys() - layers},
    }


def test_dtype_and_storage_dtype_are_what_is_saved(tmp_path, model_dir, text_file):
    _compress(model_dir, text_file, tmp_path / "f32", "--dtype", "float32", "--storage-dtype", "bfloat16")
    assert _dtypes(tmp_path / "f32") == {"compressed": {"BF16"}, "rest": {"F32"}}
    _compress(model_dir, text_file, tmp_path / "f16", "--dtype", "float16")  # the factors follow a 16-bit dtype
    assert _dtypes(tmp_path / "f16") == {"compressed": {"F16"}, "rest": {"F16"}}
    model = zoo.load(tmp_path / "f32")
    assert model.model.norm.weight.dtype == torch.float32


def test_components_are_split_on_commas_and_choose_the_stacks(tmp_path, monkeypatch):
    """`--components " encoder, decoder"` asks for both Whisper stacks; `encoder` for one."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from zoo.modalities.whisper import ADAPTER

    asked = []
    monkeypatch.setattr("zoo.pipeline.run_compress", lambda req, *a: asked.append(req) or pytest.skip("asked"))
    config = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64,
                           num_mel_bins=8, max_source_positions=8, max_target_positions=8, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    whisper = WhisperForConditionalGeneration(config)
    for option, stacks in ((" encoder, decoder", ["encoder", "decoder"]), ("encoder", ["encoder"])):
        with pytest.raises(pytest.skip.Exception):
            _invoke("compress", "tiny-whisper", "--components", option, "--out", tmp_path / "x")
        components = asked[-1].config.components
        assert components == tuple(s.strip() for s in option.split(","))
        assert [s.name for s in ADAPTER.stacks(whisper, components)] == stacks


def test_max_device_memory_refuses_a_run_that_would_not_fit_the_gpu(tmp_path, model_dir, text_file, monkeypatch):
    """The plan of a CUDA run is checked against --max-device-memory; without a GPU here, only the
    plan's timing probes (which run on the device) are stood in for."""
    monkeypatch.setattr("zoo.compression.plan.probe_seconds", lambda *args: 0.01)
    monkeypatch.setattr("zoo.compression.plan._gemm_rate", lambda *args: 1e9)
    args = ("compress", model_dir, *FAST, "--calibration", text_file, "--device", "cuda", "--plan")
    planned = _invoke(*args, "--max-device-memory", 64)
    assert planned.exit_code == 0, planned.output
    refused = _invoke(*args, "--max-device-memory", 0.0001)
    assert refused.exit_code == 1 and "of cuda memory, and 0.00 GiB is available; even one" in refused.output


@pytest.fixture
def gate_setup(tmp_path, monkeypatch, model_dir, text_file):
    """A gate manifest of one variant, published under `team` with perplexity 20, that now builds at
    21 (5% worse): the build itself is stood in for, the comparison is the real one."""
    from tests.test_gate import _manifest
    from tests.test_site import _variant
    from zoo.nightly.manifest import read_manifest
    from zoo.nightly.run import ModelContext
    from zoo.publish.scorecard import SCORECARD

    manifest = _manifest(tmp_path / "gate.toml", model_dir, text_file)
    (variant,), _ = read_manifest(manifest)
    published = _variant("tiny", variant.name, "compot", 0.8, ppl=20.0, acc=None).scorecard
    folder = tmp_path / "registry" / "team" / variant.name
    folder.mkdir(parents=True)
    published.save(folder / SCORECARD)
    metric = published.metrics[0]
    worse = dataclasses.replace(published, metrics=[dataclasses.replace(metric, compressed=metric.compressed * 1.05)])

    def score(self, v, out, repo_id):
        out.mkdir(parents=True)
        worse.save(out / SCORECARD)

    monkeypatch.setattr(ModelContext, "__init__", lambda self, entry: setattr(self, "entry", entry))
    monkeypatch.setattr(ModelContext, "score", score)
    return ("gate", "--manifest", manifest, "--against", tmp_path / "registry", "--workdir", tmp_path / "work",
            "--out", tmp_path / "gate")  # fmt: skip


def test_gate_tolerance_decides_what_fails(gate_setup, tmp_path):
    failed = _invoke(*gate_setup, "--org", "team")  # 5% worse, default tolerance 2%
    assert failed.exit_code == 1 and "the gate failed" in failed.output
    passed = _invoke(*gate_setup, "--org", "team", "--tolerance", 0.1)
    assert passed.exit_code == 0 and "a change of more than 10.0% in the metric's bad direction" in passed.output
    report = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert report["tolerance"] == 0.1 and report["passed"]
    (change,) = report["variants"][0]["changes"]
    assert change["relative_change"] == pytest.approx(0.05) and not change["regression"]


def test_gate_org_chooses_the_published_scorecards(gate_setup, tmp_path):
    elsewhere = _invoke(*gate_setup, "--tolerance", 0.1)  # the default organisation has none published
    assert elsewhere.exit_code == 1 and "no published scorecard to compare with" in elsewhere.output
    team = _invoke(*gate_setup, "--tolerance", 0.1, "--org", "team")
    assert team.exit_code == 0, team.output
    (variant,) = json.loads((tmp_path / "gate" / "gate.json").read_text())["variants"]
    assert "/registry/team/" in variant["url"]


def test_site_title_is_on_the_pages(tmp_path):
    from tests.test_site import _variant
    from zoo.publish.scorecard import SCORECARD

    published = _variant("tiny", "tiny-compot", "compot", 0.3, ppl=20.0, acc=None).scorecard
    folder = tmp_path / "registry" / "zoo" / "tiny-compot"
    folder.mkdir(parents=True)
    published.save(folder / SCORECARD)
    result = _invoke("site", tmp_path / "registry", "--org", "zoo", "--out", tmp_path / "site", "--title", "Our <zoo>")
    assert result.exit_code == 0, result.output
    index = (tmp_path / "site" / "index.html").read_text()
    assert "<title>Our &lt;zoo&gt;" in index and "Our <zoo>" not in index  # shown, and escaped
