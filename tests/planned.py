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
