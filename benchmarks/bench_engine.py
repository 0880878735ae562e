"""Engine vs a plain float64 reading of Algorithm 1, on real layers fed real text.

Both run in this process on the same weights and Grams, so the printed ratios compare
like with like on whatever machine runs this:

    .venv/bin/python -m benchmarks.bench_engine --model smollm2-135m --blocks 3 15

Each matrix is timed alone through `factorize`, then all of them together through
`factorize_many` (as the pipeline runs a block: side by side, one thread each), both
against the plain reading run one matrix after another on all threads.

On a shared machine, --repeat 3 keeps each side's best of three (runs interleaved), and
--threads 1 avoids OpenMP oversubscription: with other jobs on the cores, every parallel
region of a 2-thread run waits for a descheduled thread and timings swing tenfold.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from benchmarks.reference import plain_compot
from zoo.compression.grams import block_grams, capture_kind_inputs, stack_inputs
from zoo.engine import factorize, factorize_many
from zoo.modalities.base import get_adapter
from zoo.sources.catalogue import resolve


def real_layers(model_name: str, blocks: list[int], n_samples: int, seq_len: int, splits: int = 1):
    """(name, weight, Gram) for every target linear of the chosen blocks; with `splits` > 1,
    one Gram per disjoint share of the samples: (name, weight, Gram 1, Gram 2, ...)."""
    spec = resolve(model_name)
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(spec)
    calibration = adapter.calibration(loaded, "wiki-offline", n_samples, seq_len, seed=0, online=False)
    (stack,) = adapter.stacks(loaded.model)
    groups = stack.groups
    by_kind = capture_kind_inputs(loaded.model, stack.blocks, stack.kinds, calibration.batches)
    inputs, kinds = stack_inputs(by_kind, stack.kinds, torch.device("cpu"))
    for index, (prefix, block) in enumerate(stack.blocks[: max(blocks) + 1]):
        inputs = kinds.dress(inputs, index)  # its kind's mask and rotary table
        cuts = [len(inputs) * i // splits for i in range(splits + 1)]
        shares = [block_grams(block, groups, inputs[a:b]) for a, b in itertools.pairwise(cuts)]
        inputs = [item for _, outputs in shares for item in outputs]
        if index in blocks:
            for group in groups:
                for name in group:
                    grams = [stats[group[0]].gram for stats, _ in shares]
                    yield f"{prefix}.{name}", block.get_submodule(name).weight.detach(), *grams


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", type=int, nargs="+", default=[3, 15])
    parser.add_argument("--cr", type=float, nargs="+", default=[0.2])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many interleaved runs per side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(
        f"{'matrix':42s} {'cr':>4s} {'k':>5s} {'s':>5s} {'engine s':>9s} {'plain s':>9s} {'speedup':>8s} "
        f"{'err ratio':>9s}"
    )
    layers = list(real_layers(args.model, args.blocks, args.n_samples, args.seq_len))
    totals = {"engine": 0.0, "plain": 0.0}
    errors = {"engine": 0.0, "plain": 0.0}
    jobs = {}
    for name, weight, gram in layers:
        for cr in args.cr:
            jobs[f"{name}@{cr}"] = (weight, gram, cr)
            t_engine = t_plain = float("inf")
            for _ in range(args.repeat):
                f, t = _timed(factorize, weight, gram, cr=cr, iters=args.iters, device=args.device)
                t_engine = min(t_engine, t)
                (_, objective), t = _timed(plain_compot, weight, gram, f.k, f.s, args.iters)
                t_plain = min(t_plain, t)
            totals["engine"] += t_engine
            totals["plain"] += t_plain
            errors["engine"] += f.objective[-1]
            errors["plain"] += objective[-1]
            print(
                f"{name:42s} {cr:4.2f} {f.k:5d} {f.s:5d} {t_engine:9.3f} {t_plain:9.3f} "
                f"{t_plain / t_engine:7.2f}x {f.objective[-1] / objective[-1]:9.4f}"
            )
    print(
        f"TOTAL engine {totals['engine']:.2f} s, plain float64 reading {totals['plain']:.2f} s: "
        f"{totals['plain'] / totals['engine']:.2f}x faster; summed whitened error ratio "
        f"engine/plain {errors['engine'] / errors['plain']:.4f}"
    )
    runs = [_timed(factorize_many, jobs, iters=args.iters, device=args.device) for _ in range(args.repeat)]
    t_many = min(t for _, t in runs)
    error = sum(f.objective[-1] for f in runs[0][0].values())
    print(
        f"ALL AT ONCE factorize_many {t_many:.2f} s ({torch.get_num_threads()} workers on CPU): "
        f"{totals['plain'] / t_many:.2f}x faster than the plain reading; summed whitened error ratio "
        f"{error / errors['plain']:.4f}"
    )


if __name__ == "__main__":
    main()
