"""Several processes against one with as many threads: the same `zoo compress` run as N torchrun
processes of T threads each (gloo on a CPU, NCCL with --device cuda, one GPU per process) and as
one process of N x T threads, in this order, on this machine; the wall time of each, their ratio,
and the record's compression time (calibration and factorization, loading and saving left out).

    .venv/bin/python -m benchmarks.bench_ranks -- smollm2-135m --cr 0.2
    .venv/bin/python -m benchmarks.bench_ranks --processes 2 --threads 1 -- smollm2-135m --cr 0.2 --heal 0

Everything after `--` goes to `zoo compress` (give it no --out). The two checkpoints differ in
their last bits unless the thread counts match (zoo.compression.ranks): the Grams' products and
healing's steps use every thread a process has. Printed: whether they are byte-identical anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zoo.format.checkpoint import WEIGHTS
from zoo.format.record import read_record


def run(args: list[str], out: Path, processes: int, threads: int) -> float:
    """Wall seconds of `zoo compress ARGS --out OUT` as `processes` torchrun ranks of `threads` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "zoo", "compress", *args, "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="per process; the single process gets processes x threads"
    )
    parser.add_argument("compress", nargs=argparse.REMAINDER, help="-- and `zoo compress` arguments")
    args = parser.parse_args()
    compress = [a for a in args.compress if a != "--"]
    with tempfile.TemporaryDirectory(prefix="zoo-bench-ranks-") as tmp:
        many, one = Path(tmp) / "many", Path(tmp) / "one"
        shared = run(compress, many, args.processes, args.threads)
        alone = run(compress, one, 1, args.processes * args.threads)
        digests = {hashlib.sha256((f / WEIGHTS).read_bytes()).hexdigest() for f in (many, one)}
        seconds = {f: read_record(f).compression_seconds for f in (many, one)}
    print(f"zoo compress {' '.join(compress)}")
    print("| run | wall s | compression s |")
    print("| --- | --- | --- |")
    print(f"| {args.processes} processes x {args.threads} thread(s) | {shared:.0f} | {seconds[many]:.0f} |")
    print(f"| 1 process x {args.processes * args.threads} threads | {alone:.0f} | {seconds[one]:.0f} |")
    print(f"wall time ratio (processes / one process): {shared / alone:.2f}")
    print(f"compression time ratio: {seconds[many] / seconds[one]:.2f}")
    print(f"checkpoints byte-identical: {len(digests) == 1}")


if __name__ == "__main__":
    main()
