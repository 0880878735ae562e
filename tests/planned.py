"""A `zoo compress` run in its own process, for comparing its plan with what it measured."""

import json
import re
import subprocess
import sys
from pathlib import Path


def planned_and_measured_host_memory(args: list, out: Path) -> tuple[float, float]:
    """(planned, measured) peak host memory in GiB of `zoo compress *args --device cpu --out out`:
    the plan it printed before loading weights, and the peak its record measured."""
    command = [sys.executable, "-c", "from zoo.cli import main; main()", "compress", *args, "--device", "cpu"]
    run = subprocess.run([*map(str, command), "--out", str(out)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    planned = float(re.search(r"peak host memory ([\d.]+) GiB", run.stdout)[1])
    measured = json.loads((out / "compot_record.json").read_text())["peak_memory_mb"] / 1024
    return planned, measured


def tiny_llama_plan(samples: int, gemm_rate: float = 1e9, **settings):
    """The plan of a tiny random Llama on the CPU, every probed matrix taking 1 s and the replays
    running at `gemm_rate` (the timed probes are noise at this size); `settings`: make_plan's
    heal_steps, processes, ..."""
    from unittest import mock

    import torch

    import zoo.compression.plan as plan
    from tests.tiny_models import tiny_llama
    from zoo.modalities.decoder_llm import ADAPTER

    model = tiny_llama()
    with (
        mock.patch.object(plan, "probe_seconds", lambda *a: 1.0),
        mock.patch.object(plan, "_gemm_rate", lambda *a: gemm_rate),
    ):
        return plan.make_plan(
            model,
            ADAPTER.stacks(model),
            samples=samples,
            tokens=64,
            carried_floats=lambda stack, tokens: ADAPTER.carried_floats(model.config, stack, tokens),
            dtype=torch.float32,
            file_dtype=torch.float32,
            device=torch.device("cpu"),
            resident=lambda: 0,
            workers=1,
            cr=0.3,
            iters=2,
            dynamic=False,
            offload=False,
            **settings,
        )
