"""A run killed between blocks resumes at the first unfinished block and saves the same bytes."""

import logging
import shutil

import pytest
from click.testing import CliRunner

import zoo.compression.apply as apply
from tests.conftest import TINY_RUN
from zoo.cli import main
from zoo.format.checkpoint import WEIGHTS
from zoo.format.progress import progress_dir


def _compress(model_dir, text_file, out, *extra):
    args = ["compress", model_dir, *TINY_RUN, "--calibration", text_file, "--iters", 3, "--out", out, *extra]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def factorized(monkeypatch):
    """The prefixes of the blocks factorized (not restored), in order; `fail_at` kills the run there."""
    calls: list[str] = []
    real = apply._compress_block

    def counting(block, job, bar):
        prefix = next(iter(job.names)).rsplit(".", 2)[0]
        if prefix == counting.fail_at:
            raise KeyboardInterrupt  # as a kill would, after the earlier blocks were kept
        calls.append(prefix)
        return real(block, job, bar)

    counting.fail_at = None
    counting.calls = calls
    monkeypatch.setattr(apply, "_compress_block", counting)
    return counting


@pytest.mark.parametrize(
    "extra",
    [("--heal", 0), ("--sequential", "--heal", 0), ("--heal", 3)],
    ids=["16-bit-calibrated", "sequential", "healed"],
)
def test_a_killed_run_resumes_and_saves_the_same_checkpoint(tmp_path, model_dir, text_file, factorized, caplog, extra):
    """Sequentially, the restored block must feed the next one as it was when first compressed."""
    whole = tmp_path / "whole"
    assert _compress(model_dir, text_file, whole, *extra).exit_code == 0
    blocks = list(factorized.calls)
    assert len(blocks) >= 2 and not progress_dir(whole).exists()  # progress goes once the checkpoint is saved

    out = tmp_path / "resumed"
    factorized.calls.clear()
    factorized.fail_at = blocks[1]
    killed = _compress(model_dir, text_file, out, *extra)
    assert killed.exit_code != 0 and not out.exists()
    assert [p.name for p in progress_dir(out).glob("*.safetensors")] == [f"{blocks[0]}.safetensors"]

    factorized.calls.clear()
    factorized.fail_at = None
    with caplog.at_level(logging.WARNING):
        assert _compress(model_dir, text_file, out, *extra).exit_code == 0
    assert factorized.calls == blocks[1:]  # the first block restored, not factorized again
    assert "resuming resumed: 1 block(s) already compressed" in caplog.text
    assert (out / WEIGHTS).read_bytes() == (whole / WEIGHTS).read_bytes()
    assert not progress_dir(out).exists()


def test_a_rerun_with_other_settings_starts_over(tmp_path, model_dir, text_file, factorized, caplog):
    out = tmp_path / "out"
    factorized.fail_at = "model.layers.1"
    assert _compress(model_dir, text_file, out).exit_code != 0
    factorized.calls.clear()
    factorized.fail_at = None
    with caplog.at_level(logging.WARNING):
        assert _compress(model_dir, text_file, out, "--ks-ratio", 3).exit_code == 0
    assert "holds progress of other settings" in caplog.text and "starting out over" in caplog.text
    assert factorized.calls == ["model.layers.0", "model.layers.1"]


def test_a_block_another_run_left_is_rebuilt_not_restored(tmp_path, model_dir, text_file, factorized, caplog):
    """Two runs with other settings on one --out can leave each other's blocks: a block stamped by
    another run (here at CR 0.4) is rebuilt, and the checkpoint is the bytes of a clean run."""
    clean = tmp_path / "clean"
    assert _compress(model_dir, text_file, clean).exit_code == 0
    blocks = list(factorized.calls)

    factorized.fail_at = blocks[1]
    other, out = tmp_path / "other", tmp_path / "out"
    assert _compress(model_dir, text_file, other, "--cr", 0.4).exit_code != 0
    assert _compress(model_dir, text_file, out).exit_code != 0
    foreign = progress_dir(other) / f"{blocks[0]}.safetensors"
    shutil.copy(foreign, progress_dir(out) / foreign.name)  # this run's folder fingerprint, the other's block

    factorized.calls.clear()
    factorized.fail_at = None
    with caplog.at_level(logging.WARNING):
        assert _compress(model_dir, text_file, out).exit_code == 0
    assert f"{foreign.name} was not built by this run's settings (its stamp differs): rebuilding it" in caplog.text
    assert factorized.calls == blocks
    assert (out / WEIGHTS).read_bytes() == (clean / WEIGHTS).read_bytes()
