"""Several processes, one checkpoint: `torchrun --nproc-per-node 2 -m zoo compress` (gloo, on the
CPU) writes the single process's model.safetensors byte for byte, and a run that loses a rank
says so and resumes with any number of processes. Both runs take one thread per process: a Gram's
products and healing's steps use every thread a process has (zoo.compression.ranks)."""

import hashlib
import os
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.planned import tiny_llama_plan
from tests.test_whisper import WORDS, _whisper_folder
from zoo.format.checkpoint import WEIGHTS
from zoo.format.progress import progress_dir

ROOT = Path(__file__).resolve().parents[1]
LLAMA_RUN = ("--cr", 0.3, "--n-samples", 8, "--seq-len", 16, "--iters", 3, "--device", "cpu")


def _zoo(args, processes: int, env_path: Path | None = None) -> subprocess.CompletedProcess:
    """`zoo ...` in a fresh interpreter, alone (1) or under torchrun with gloo (2 or more)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(map(str, filter(None, [env_path, ROOT]))),
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "zoo", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()


def _ok(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.parametrize(
    "extra",
    [("--heal", 3), ("--sequential", "--heal", 0, "--quantize", "gptq-w4", "--quantize-group-size", 16)],
    ids=["healed-mixed-forms", "sequential-gptq"],
)
def test_two_gloo_processes_write_the_single_process_checkpoint(tmp_path, model_dir, text_file, extra):
    common = ("compress", model_dir, *LLAMA_RUN, "--calibration", text_file, *extra)
    _ok(_zoo([*common, "--out", tmp_path / "one"], 1))
    two = _zoo([*common, "--out", tmp_path / "two"], 2)
    _ok(two)
    assert _digest(tmp_path / "two") == _digest(tmp_path / "one")
    assert two.stdout.count("Saved to") == 1  # rank 0 alone reports and writes
    assert not progress_dir(tmp_path / "two").exists()


def test_a_tiny_whisper_compressed_by_two_processes_is_byte_identical(tmp_path):
    model = _whisper_folder(tmp_path / "whisper", __import__("torch").float32, 64, 2, 2, 4, 128)
    speech = tmp_path / "speech"
    speech.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        with wave.open(str(speech / f"utt{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes((rng.standard_normal(16000) * 3000).astype("<i2").tobytes())
        (speech / f"utt{i}.txt").write_text(" ".join(WORDS[i : i + 6]))
    common = ("compress", model, "--cr", 0.3, "--calibration", speech, "--n-samples", 4, "--iters", 3)
    common += ("--heal", 2, "--device", "cpu")
    _ok(_zoo([*common, "--out", tmp_path / "one"], 1))
    _ok(_zoo([*common, "--out", tmp_path / "two"], 2))
    assert _digest(tmp_path / "two") == _digest(tmp_path / "one")


# Loaded by every process of the killed run (sitecustomize): rank 1 kills itself, as the kernel's
# OOM killer or a lost node would, when it starts compressing the second block.
DIE_AT_SECOND_BLOCK = """
import os, signal, wrapt
if os.environ.get("RANK") == "1":
    @wrapt.when_imported("zoo.compression.apply")
    def _dying(module):
        real = module._compress_block
        def compress_block(block, job, bar):
            if next(iter(job.names)).startswith("model.layers.1."):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(block, job, bar)
        module._compress_block = compress_block
"""


@pytest.mark.parametrize("rerun_processes", [1, 2])
def test_a_run_that_loses_a_rank_says_so_and_resumes_byte_identical(tmp_path, model_dir, text_file, rerun_processes):
    common = ("compress", model_dir, *LLAMA_RUN, "--calibration", text_file, "--heal", 3)
    _ok(_zoo([*common, "--out", tmp_path / "whole"], 1))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(DIE_AT_SECOND_BLOCK))
    out = tmp_path / "out"
    killed = _zoo([*common, "--out", out], 2, env_path=hooks)
    said = killed.stdout + killed.stderr
    assert killed.returncode != 0 and not out.exists()
    assert "rank: 1" in said and "SIGKILL" in said  # torchrun's summary names the rank that died, and how
    assert [p.name for p in progress_dir(out).glob("*.safetensors")] == ["model.layers.0.safetensors"]
    _ok(_zoo([*common, "--out", out], rerun_processes))
    assert _digest(out) == _digest(tmp_path / "whole")


def test_the_plan_gives_each_process_its_share():
    """Each process holds half the samples' activations; a block's seven matrices are dealt 4 + 3."""
    one, two = (tiny_llama_plan(64, gemm_rate=1e30, processes=n) for n in (1, 2))  # the replays cost nothing
    assert two.lines()[0].startswith("processes        2") and not one.lines()[0].startswith("processes")
    assert two.seconds == pytest.approx(one.seconds * 4 / 7)
    assert two.host_bytes < one.host_bytes and two.host_sample_bytes == pytest.approx(one.host_sample_bytes / 2, 0.01)


def test_a_nightly_job_under_torchrun_publishes_what_one_process_publishes(tmp_path, model_dir, text_file):
    """A runner class with several processes runs the same `zoo nightly` under torchrun: rank 0
    scores, publishes and verifies once; every rank compresses; the weights are the one process's."""
    from tests.test_nightly import _manifest

    manifest = _manifest(tmp_path / "nightly.toml", model_dir, text_file, [0.3], "heal = 2")
    manifest.write_text(manifest.read_text().replace("n_samples = 4", "n_samples = 8"))  # a batch for each rank
    published = {}
    for processes in (1, 2):
        run = tmp_path / f"run{processes}"
        args = ["nightly", "--manifest", manifest, "--registry", run / "registry", "--workdir", run / "work"]
        result = _zoo([*args, "--report-dir", run / "report"], processes)
        _ok(result)
        assert result.stdout.count("# compot-zoo nightly: 1 rebuilt, 0 skipped, 0 failed") == 1
        (weights,) = (run / "registry").rglob(WEIGHTS)
        published[processes] = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert published[2] == published[1]
