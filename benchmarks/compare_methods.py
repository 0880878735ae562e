"""COMPOT (static and dynamic) against SVD-LLM on one model: same calibration, same storage.

Loads and calibrates once, scores the base once, then compresses a fresh copy per variant
and prints a perplexity table:

    .venv/bin/python -m benchmarks.compare_methods --model smollm2-135m --cr 0.2 0.4
"""

from __future__ import annotations

import argparse
import copy
import time

from zoo.compression import CompressionConfig, achieved_cr, compress_model
from zoo.evaluators.perplexity import perplexity
from zoo.modality import get_adapter
from zoo.models import resolve

VARIANTS = {"svd-llm": dict(method="svd-llm", static=True), "compot-static": dict(static=True),
            "compot-dynamic": dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cr", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--eval-seq-len", type=int, default=2048)
    args = parser.parse_args()

    spec = resolve(args.model)
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(spec)
    calibration = adapter.calibration(loaded, "wiki-offline", args.n_samples, args.seq_len, seed=0)
    from zoo.calibration.text import evaluation_text

    text = evaluation_text("wiki-offline")
    base_state = copy.deepcopy(loaded.model.state_dict())

    def ppl(model):
        return perplexity(model, loaded.processor, text, args.eval_seq_len, args.eval_windows)["perplexity"]

    print(f"{args.model} ({loaded.base_model}), calibration {calibration.name} {calibration.tokens} tokens "
          f"{calibration.fingerprint}, perplexity on {args.eval_windows} x {args.eval_seq_len} held-out tokens")
    print(f"| variant | target CR | achieved CR | perplexity | compress s |\n|---|---|---|---|---|")
    print(f"| base | - | - | {ppl(loaded.model):.2f} | - |", flush=True)
    for cr in args.cr:
        for name in args.variants:
            model = adapter.load(spec).model
            model.load_state_dict(base_state)
            start = time.perf_counter()
            reports = compress_model(model, adapter, calibration,
                                     CompressionConfig(cr=cr, iters=args.iters, **VARIANTS[name]))
            seconds = time.perf_counter() - start
            print(f"| {name} | {cr:g} | {achieved_cr(reports):.4f} | {ppl(model):.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
