"""COMPOT (static and dynamic) against SVD-LLM on one model: same calibration, same storage.

Loads and calibrates once, scores the base once with the modality's own evaluation (the
same as `zoo compress --eval`), then compresses a copy of the base per variant and prints a table:

    .venv/bin/python -m benchmarks.compare_methods --model smollm2-135m --cr 0.2 0.4
    .venv/bin/python -m benchmarks.compare_methods --model whisper-tiny.en --cr 0.1 0.2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time

from zoo.compression.apply import compress_model
from zoo.compression.config import CompressionConfig
from zoo.compression.report import achieved_cr
from zoo.methods import variant_kinds
from zoo.pipeline import CompressRequest, evaluate, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cr", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--variants", nargs="+", default=list(variant_kinds()), choices=list(variant_kinds()))
    parser.add_argument("--calibration", default=None, help="the model's default (offline stand-in) if unset")
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--eval-windows", type=int, default=None, help="perplexity windows (LLMs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="items per task or utterances per set")
    args = parser.parse_args()

    eval_settings = {
        k: v for k, v in (("eval_windows", args.eval_windows), ("eval_limit", args.eval_limit)) if v is not None
    }
    prepared = prepare(
        CompressRequest(
            model=args.model,
            config=CompressionConfig(),
            calibration=args.calibration,
            n_samples=args.n_samples,
            seq_len=args.seq_len,
            eval_settings=eval_settings,
        )
    )
    loaded, calibration, base_model = prepared.loaded, prepared.calibration, prepared.loaded.model

    def scores() -> dict[str, float]:
        results = evaluate(prepared)
        return {
            f"{task} {metric}": score.value
            for task, metrics in results.scores.items()
            for metric, score in metrics.items()
        }

    base = scores()
    columns = list(base)
    print(
        f"{args.model} ({loaded.base_model}), calibration {calibration.name}: {len(calibration.batches)} samples, "
        f"{calibration.tokens} tokens, {calibration.fingerprint}"
    )
    print("| variant | target CR | achieved CR | " + " | ".join(columns) + " | compress s |")
    print("|---" * (len(columns) + 4) + "|")
    print("| base | - | - | " + " | ".join(f"{base[c]:.4g}" for c in columns) + " | - |", flush=True)
    for cr in args.cr:
        for name in args.variants:
            prepared.loaded = dataclasses.replace(loaded, model=copy.deepcopy(base_model))
            config = CompressionConfig(cr=cr, iters=args.iters, **variant_kinds()[name])
            start = time.perf_counter()
            reports = compress_model(
                prepared.loaded.model, prepared.adapter.stacks(prepared.loaded.model), calibration, config
            )
            seconds = time.perf_counter() - start
            row = scores()
            print(
                f"| {name} | {cr:g} | {achieved_cr(reports):.4f} | "
                + " | ".join(f"{row[c]:.4g}" for c in columns)
                + f" | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
