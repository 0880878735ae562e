"""GPTQ alone against SVD-LLM + GPTQ and COMPOT + GPTQ at equal bytes (the paper's Table 7).

Loads and calibrates once, scores the base once, then compresses and saves a copy of the base
per variant (exactly what `zoo compress ... --eval` writes, record and scorecard included) and
prints one table: metrics, the bytes the target projections store, and the size of each weights file
as saved (the base's too, saved as its 16-bit checkpoint):

    .venv/bin/python -m benchmarks.compare_quantized --model smollm2-135m --group-size 64 \\
        --variants gptq-w3 svd-llm@0.25+gptq-w4 compot@0.32+gptq-w4

A variant is `gptq-wN` (GPTQ alone on the dense projections) or `METHOD@CR[+healN][+distillN][+gptq-wN]`
(factorization at CR, healed for N steps per block, distilled end to end for N steps, and then GPTQ
of its factors if named; SVD-LLM static, COMPOT dynamic). The
factorization alone, in 16 bits, splits a quantized variant's loss into its two parts.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

from zoo import methods
from zoo.compression.config import CompressionConfig
from zoo.pipeline import CompressRequest, compress_variant, evaluate, prepare


def variant_config(spec: str, group_size: int, iters: int, sequential: bool = False) -> CompressionConfig:
    """`gptq-wN`, or `METHOD@CR` followed by `+healSTEPS` and/or `+gptq-wN`."""
    first, *rest = spec.split("+")
    heal = next((int(part.removeprefix("heal")) for part in rest if part.startswith("heal")), 0)
    distill = next((int(part.removeprefix("distill")) for part in rest if part.startswith("distill")), 0)
    quantize = next((part for part in rest if part.startswith("gptq")), None)
    common = dict(sequential=sequential, heal=heal, distill=distill)
    if "@" not in first:
        return CompressionConfig(method="gptq", quantize=first, quantize_group_size=group_size, **common)
    method, cr = first.split("@")
    grid = {"quantize": quantize, "quantize_group_size": group_size} if quantize else {}
    return CompressionConfig(
        cr=float(cr), method=method, static=methods.get(method).static, iters=iters, **grid, **common
    )


def saved_base(model, into: Path) -> int:
    """The size of model.safetensors of the base saved as the 16-bit checkpoint it is published as
    (its own dtype when 16-bit, else bfloat16): measured from the file, header included, as the
    variants' sizes are."""
    import torch

    dtype = model.dtype if model.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    state = {name: tensor.to(dtype) for name, tensor in model.state_dict().items()}
    model.save_pretrained(into, state_dict=state)
    return file_bytes(into)


def file_bytes(folder: Path) -> int:
    """The weights files' bytes as written (every shard)."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variants", nargs="+", default=["gptq-w3", "svd-llm@0.25+gptq-w4", "compot@0.32+gptq-w4"])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--sequential", action="store_true", help="every variant calibrated block by block on itself")
    parser.add_argument("--n-samples", type=int, default=None, help="calibration samples (the catalogue's if unset)")
    parser.add_argument("--calibration", default=None, help="calibration set (the catalogue's if unset)")
    parser.add_argument("--out", type=Path, default=Path("quantized-variants"))
    parser.add_argument("--eval-windows", type=int, default=None, help="perplexity windows (LLMs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="items per task or utterances per set")
    args = parser.parse_args()

    eval_settings = {
        k: v for k, v in (("eval_windows", args.eval_windows), ("eval_limit", args.eval_limit)) if v is not None
    }
    # all checked before any work
    configs = {spec: variant_config(spec, args.group_size, args.iters, args.sequential) for spec in args.variants}
    request = CompressRequest(
        model=args.model,
        config=next(iter(configs.values())),
        calibration=args.calibration,
        n_samples=args.n_samples,
        eval_settings=eval_settings,
        evaluate=True,
    )
    prepared = prepare(request)
    loaded, calibration, base_model = prepared.loaded, prepared.calibration, prepared.loaded.model
    base = evaluate(prepared)  # with a chat model's answers, for the variants' agreement
    columns = [(t, metric) for t, metrics in base.scores.items() for metric in metrics]
    print(
        f"{args.model} ({loaded.base_model}), calibration {calibration.name}: {len(calibration.batches)} batches, "
        f"{calibration.tokens} tokens, {calibration.fingerprint}"
    )
    header = " | ".join(f"{task} {metric}" for task, metric in columns)
    print(f"| variant | {header} | projection bytes | file bytes | achieved CR | compress s (no scoring) |")
    print("|---" * (len(columns) + 5) + "|")
    values = " | ".join(f"{base.scores[t][m].value:.4g}" for t, m in columns)
    base_file = saved_base(base_model, args.out / "16-bit-base")
    print(f"| 16-bit base | {values} | - | {base_file} | - | - |", flush=True)
    for spec, config in configs.items():
        prepared.loaded = dataclasses.replace(loaded, model=copy.deepcopy(base_model))
        req = CompressRequest(
            model=args.model,
            config=config,
            out=args.out / spec,
            overwrite=True,
            calibration=args.calibration,
            n_samples=args.n_samples,
            evaluate=True,
            eval_settings=eval_settings,
        )
        result = compress_variant(prepared, req, base)
        record = result.record
        projection = sum(r.stored_bits for r in record.layers) // 8
        scores = {(m.task, m.name): m.compressed for m in result.scorecard.metrics}
        values = " | ".join(f"{scores.get((t, m), float('nan')):.4g}" for t, m in columns)
        sizes = f"{projection} | {file_bytes(req.out_dir)} | {record.achieved_cr:.4f}"
        print(f"| {spec} | {values} | {sizes} | {record.compression_seconds:.0f} |", flush=True)
        print(f"  {record.command}", flush=True)


if __name__ == "__main__":
    main()
