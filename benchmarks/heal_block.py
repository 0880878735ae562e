"""Healing one real block: its output error on held-out calibration batches, before and after, per
step count and step size, with the time healing took against the factorization's own.

    .venv/bin/python -m benchmarks.heal_block --model smollm2-135m --block 15 --steps 0 50 100 200 --lr 1e-3 3e-3

The block is fed the 16-bit model's activations; its first half of the calibration batches
heals it, the second half measures it (the pipeline heals on all of them). The errors are
healing's own, over a whole sample; "per token" is the mean of each token's, as the next block's
norm sees it (the whole-sample ratio is mostly the first token's, the attention sink's).
"""

from __future__ import annotations

import argparse
import time

import torch

from zoo.compression.apply import working_copy
from zoo.compression.config import CompressionConfig
from zoo.compression.grams import (
    BlockInput,
    block_grams,
    block_output,
    capture_kind_inputs,
    hidden_of,
    replay,
    stack_inputs,
)
from zoo.compression.healing import HealedLinear, SharedSamples, block_error, heal_block
from zoo.engine import allocate, factorize_many
from zoo.pipeline import CompressRequest, prepare


def token_error(block: torch.nn.Module, inputs: list[BlockInput], targets: list[BlockInput]) -> float:
    """The mean over every token of ||block(x)_t - y_t||^2 / ||y_t||^2."""
    errors = []
    with torch.no_grad():
        for x, y in zip(inputs, targets, strict=True):
            out, want = block_output(block(*x.args, **x.kwargs)), hidden_of(y)
            norms = want.pow(2).sum(-1).clamp_min(torch.finfo(want.dtype).tiny)
            errors.append(((out - want).pow(2).sum(-1) / norms).flatten())
    return torch.cat(errors).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--block", type=int, default=15)
    parser.add_argument("--cr", type=float, default=0.2)
    parser.add_argument("--method", default="compot")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 50, 100, 200])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--raw", action="store_true", help="train the factors as they are, not in their output's units")
    args = parser.parse_args()

    request = CompressRequest(model=args.model, config=CompressionConfig(cr=args.cr), n_samples=args.n_samples)
    prepared = prepare(request)
    model = prepared.loaded.model
    stack = prepared.adapter.stacks(model)[0]
    device = torch.device(args.device)
    by_kind = capture_kind_inputs(model, stack.blocks, stack.kinds, prepared.calibration.batches)
    inputs, kinds = stack_inputs(by_kind, stack.kinds, device, torch.float32)
    for index, (_, block) in enumerate(stack.blocks[: args.block]):
        inputs = replay(working_copy(block, device), kinds.dress(inputs, index))
    inputs = kinds.dress(inputs, args.block)
    prefix, block = stack.blocks[args.block]
    work = working_copy(block, device)
    half = len(inputs) // 2
    stats, targets = block_grams(work, stack.groups, inputs[:half])
    held_out = replay(work, inputs[half:])
    names = [n for g in stack.groups for n in g]
    weights = {n: work.get_submodule(n).weight.detach() for n in names}
    crs = allocate(weights, args.cr).cr
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    start = time.perf_counter()
    jobs = {n: (weights[n], stats[next(g[0] for g in stack.groups if n in g)].gram, crs[n]) for n in names}
    factors = factorize_many(jobs, method=args.method)
    sync()
    factorize_s = time.perf_counter() - start
    print(f"{args.model} {prefix} at CR {args.cr} ({args.method}): factorized in {factorize_s:.1f} s")
    print("| lr | steps | train error | held-out error | held-out, per token | heal s | heal / factorize |")
    print("|---|---|---|---|---|---|---|")
    for lr in args.lr:
        for steps in args.steps:
            start = time.perf_counter()
            grams = None if args.raw else {n: stats[g[0]].gram for g in stack.groups for n in g}
            healed = heal_block(work, factors, SharedSamples(inputs[:half], targets), steps, lr, grams=grams)
            sync()
            seconds = time.perf_counter() - start
            student = working_copy(work, device)
            for name, f in healed.items():
                student.set_submodule(name, HealedLinear.of(f, work.get_submodule(name).bias))
            train, test = block_error(student, inputs[:half], targets), block_error(student, inputs[half:], held_out)
            per_token = token_error(student, inputs[half:], held_out)
            print(
                f"| {lr:g} | {steps} | {train:.5f} | {test:.5f} | {per_token:.5f} | {seconds:.1f} "
                f"| {seconds / factorize_s:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
