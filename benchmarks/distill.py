"""End-to-end distillation of a compressed variant: its scores after each step count and step size,
against the base's, and the time distillation took.

    .venv/bin/python -m benchmarks.distill --model smollm2-135m --variant smollm2-135m-compot-dynamic-cr0.2 \\
        --steps 0 50 150 --lr 1e-4 3e-4 --eval-windows 4 --eval-limit 30

The variant (a folder `zoo compress` wrote from the same base) is reloaded for every row and
distilled on the calibration `zoo compress` would use for the base (the catalogue's unless given).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from zoo.compression.config import CompressionConfig
from zoo.compression.distill import distill, teacher_states
from zoo.compression.layer import to_inference
from zoo.evaluators.generation import REFERENCE
from zoo.format.checkpoint import load_compressed
from zoo.pipeline import CompressRequest, evaluate, prepare, with_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variant", type=Path, required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 50, 150])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--calibration", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-windows", type=int, default=None, help="perplexity windows")
    parser.add_argument("--eval-limit", type=int, default=None, help="items per task")
    args = parser.parse_args()

    eval_settings = {
        k: v for k, v in (("eval_windows", args.eval_windows), ("eval_limit", args.eval_limit)) if v is not None
    }
    request = CompressRequest(
        model=args.model,
        config=CompressionConfig(),
        calibration=args.calibration,
        n_samples=args.n_samples,
        eval_settings=eval_settings,
        evaluate=True,
    )
    prepared = prepare(request)
    device = torch.device(args.device)
    base = evaluate(prepared)
    calibration = prepared.calibration
    start = time.perf_counter()
    teacher = teacher_states(prepared.loaded.model, calibration.batches, device)
    teacher_s = time.perf_counter() - start
    columns = [(t, metric) for t, metrics in base.scores.items() for metric in metrics]
    print(
        f"{args.model}, {args.variant}; calibration {calibration.name}, {len(teacher)} samples; "
        f"16-bit outputs in {teacher_s:.0f} s"
    )
    print(f"| lr | steps | {' | '.join(f'{t} {m}' for t, m in columns)} | kept | distill s |")
    print("|---" * (len(columns) + 4) + "|")
    print(f"| base | - | {' | '.join(f'{base.scores[t][m].value:.4g}' for t, m in columns)} | - | - |", flush=True)
    spec = with_settings(prepared.spec, {REFERENCE: base.answers}) if base.answers is not None else prepared.spec
    for lr in args.lr:
        for steps in args.steps:
            model = load_compressed(args.variant, inference=False)
            start = time.perf_counter()
            kept = distill(model, calibration.batches, teacher, steps, lr, device=device)
            seconds = time.perf_counter() - start
            to_inference(model)
            scores = prepared.adapter.evaluate(
                dataclasses.replace(prepared.loaded, model=model), spec, prepared.online
            ).scores
            values = " | ".join(f"{scores[t][m].value:.4g}" for t, m in columns)
            print(f"| {lr:g} | {steps} | {values} | {kept} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
