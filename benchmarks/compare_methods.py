"""COMPOT (static and dynamic) against SVD-LLM on one model: same calibration, same storage.

Loads and calibrates once, scores the base once with the modality's own evaluation (the
same as `zoo compress --eval`), then compresses a copy of the base per variant and prints a table:

    .venv/bin/python -m benchmarks.compare_methods --model smollm2-135m --cr 0.2 0.4
    .venv/bin/python -m benchmarks.compare_methods --model whisper-tiny.en --cr 0.1 0.2
"""

from __future__ import annotations

import argparse
import copy
import time

from zoo.compression import VARIANT_KINDS, CompressionConfig, achieved_cr, compress_model
from zoo.modality import get_adapter
from zoo.models import resolve
from zoo.pipeline import calibrate

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cr", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANT_KINDS), choices=list(VARIANT_KINDS))
    parser.add_argument("--calibration", default=None, help="the model's default (offline stand-in) if unset")
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--eval-windows", type=int, default=None, help="perplexity windows (LLMs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="items per task or utterances per set")
    args = parser.parse_args()

    spec = resolve(args.model)
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(spec)
    calibration = calibrate(adapter, loaded, spec, args.calibration, args.n_samples, args.seq_len, seed=0)
    base_model = loaded.model

    def scores() -> dict[str, float]:
        results = adapter.evaluate(loaded, spec, args.eval_windows, args.eval_limit)
        return {f"{task} {metric}": value for task, metrics in results.items() for metric, value in metrics.items()}

    base = scores()
    columns = list(base)
    print(f"{args.model} ({loaded.base_model}), calibration {calibration.name}: {len(calibration.batches)} samples, "
          f"{calibration.tokens} tokens, {calibration.fingerprint}")
    print("| variant | target CR | achieved CR | " + " | ".join(columns) + " | compress s |")
    print("|---" * (len(columns) + 4) + "|")
    print("| base | - | - | " + " | ".join(f"{base[c]:.4g}" for c in columns) + " | - |", flush=True)
    for cr in args.cr:
        for name in args.variants:
            loaded.model = copy.deepcopy(base_model)
            start = time.perf_counter()
            reports = compress_model(loaded.model, adapter, calibration,
                                     CompressionConfig(cr=cr, iters=args.iters, **VARIANT_KINDS[name]))
            seconds = time.perf_counter() - start
            row = scores()
            print(f"| {name} | {cr:g} | {achieved_cr(reports):.4f} | " + " | ".join(f"{row[c]:.4g}" for c in columns)
                  + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
