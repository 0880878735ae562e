"""Where a quantized factorization loses, layer by layer: the error of the 16-bit factors and of
their GPTQ, with and without balancing each atom between the factors, for COMPOT and SVD-LLM
on real layers fed real text. Errors are calibration-weighted and relative, measured on samples
the factorization and GPTQ never saw (the first half of the samples fits, the second measures):

    .venv/bin/python -m benchmarks.quantized_layers --model smollm2-135m --blocks 3 15 \\
        --compot-cr 0.32 --svd-llm-cr 0.25 --bits 4 --group-size 64
"""

from __future__ import annotations

import argparse

from benchmarks.bench_engine import real_layers
from zoo.engine import factorize
from zoo.engine.gptq import quantize_factors, relative_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", type=int, nargs="+", default=[3, 15])
    parser.add_argument("--compot-cr", type=float, default=0.32)
    parser.add_argument("--svd-llm-cr", type=float, default=0.25)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()

    crs = {"compot": args.compot_cr, "svd-llm": args.svd_llm_cr}
    columns = [f"{method} {part}" for method in crs for part in ("16-bit", "GPTQ", "GPTQ unbalanced")]
    print(f"| matrix | {' | '.join(columns)} |")
    print("|---" * (len(columns) + 1) + "|")
    for name, weight, fit, held in real_layers(args.model, args.blocks, args.n_samples, args.seq_len, splits=2):
        weight = weight.float()
        row = []
        for method, cr in crs.items():
            f = factorize(weight, fit, cr=cr, method=method)
            row.append(relative_error(weight, f.reconstruct(), held))
            for balance in (True, False):
                q = quantize_factors(f, weight, fit, args.bits, args.group_size, name=name, balance=balance)
                row.append(relative_error(weight, q.approx, held))
        print(f"| {name} | {' | '.join(f'{e:.4f}' for e in row)} |", flush=True)


if __name__ == "__main__":
    main()
