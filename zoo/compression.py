"""Compress a model's projections in place: allocation, block-wise Grams, factorization, swap.

Data flows one way: adapter -> calibration batches -> Gram statistics -> allocation ->
factorization -> CompotLinear modules. Every block's Grams come from the original
(uncompressed) activations, as in SVD-LLM's whitening.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.calibrate import GramStat, block_grams, capture_block_inputs
from zoo.engine import allocate, factorize_many
from zoo.engine.storage import dense_bits
from zoo.errors import ZooError
from zoo.layer import CompotLinear
from zoo.modality import Adapter, CalibrationData, Stack


@dataclass
class CompressionConfig:
    cr: float = 0.2
    method: str = "compot"  # or "svd-llm"
    static: bool = False  # one CR for every matrix (COMPOT-dagger) instead of Algorithm 2
    ks_ratio: float = 2.0
    iters: int = 20
    tol: float = 0.0
    min_cr: float | None = None
    max_cr: float | None = None
    storage_dtype: str = "float16"
    device: str | None = None  # where the engine runs; the model's device by default
    components: list[str] | None = None  # which stacks (e.g. Whisper's encoder, decoder); None: the adapter's

    def __post_init__(self) -> None:
        if not 0.0 < self.cr < 1.0:
            raise ZooError(f"CR must lie in (0, 1), got {self.cr}")

    def to_dict(self) -> dict:
        return asdict(self)


# The variants of a model that the zoo publishes and compares, as CompressionConfig settings.
VARIANT_KINDS = {"compot-dynamic": {}, "compot-static": {"static": True},
                 "svd-llm": {"method": "svd-llm", "static": True}}


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    method: str  # compot | svd-llm | dense
    target_cr: float
    cr: float  # eq. 11 for this matrix
    k: int
    s: int
    bits: int
    damping: float
    relative_error: float  # calibration-weighted, ||L^T (W - W^)||^2 / ||L^T W||^2
    gram_tokens: int
    nonfinite_batches: int
    note: str = ""


def compression_targets(model: nn.Module, stacks: list[Stack]) -> dict[str, nn.Linear]:
    """Qualified name -> linear for every projection the adapter marks for compression."""
    targets = {}
    for stack in stacks:
        for prefix, block in stack.blocks:
            for name in (n for g in stack.groups for n in g):
                module = block.get_submodule(name)
                if not isinstance(module, nn.Linear):
                    raise ZooError(f"{prefix}.{name} is {type(module).__name__}, not nn.Linear: "
                                   "already compressed, or the adapter table is wrong for this model")
                targets[f"{prefix}.{name}"] = module
    if not targets:
        raise ZooError(f"{type(model).__name__} has no compressible linear projections "
                       f"(stacks: {', '.join(s.name for s in stacks) or 'none'})")
    return targets


def target_crs(targets: dict[str, nn.Linear], config: CompressionConfig) -> dict[str, float]:
    if config.static:
        return {name: config.cr for name in targets}
    weights = {name: linear.weight.detach() for name, linear in targets.items()}
    return allocate(weights, config.cr, config.min_cr, config.max_cr, device=config.device).cr


def compress_model(model: nn.Module, adapter: Adapter, calibration: CalibrationData,
                   config: CompressionConfig) -> list[LayerReport]:
    """Replace every target projection by a CompotLinear; returns one report per matrix."""
    stacks = adapter.stacks(model, config.components)
    targets = compression_targets(model, stacks)
    crs = target_crs(targets, config)
    storage_dtype = getattr(torch, config.storage_dtype)
    # Every stack's inputs come from the original model, before any layer is swapped.
    inputs = {stack.name: capture_block_inputs(model, stack.blocks[0][1], calibration.batches) for stack in stacks}
    reports: list[LayerReport] = []
    with tqdm(total=len(targets), desc="compress", unit="matrix") as bar:
        for stack in stacks:
            stack_inputs = inputs.pop(stack.name)
            for prefix, block in stack.blocks:
                bar.set_postfix_str(prefix)
                stats, stack_inputs = block_grams(block, stack.groups, stack_inputs)
                names = {f"{prefix}.{name}": (name, stats[group[0]]) for group in stack.groups for name in group}
                reports += _compress_block(block, names, targets, crs, config, storage_dtype, bar)
    return reports


def _compress_block(block: nn.Module, names: dict[str, tuple[str, GramStat]], targets: dict[str, nn.Linear],
                    crs: dict[str, float], config: CompressionConfig, storage_dtype: torch.dtype,
                    bar: tqdm) -> list[LayerReport]:
    """Factorize a block's projections side by side, then swap each in unless it stays dense."""
    jobs = {full: (targets[full].weight.detach(), stat.gram, crs[full])
            for full, (_, stat) in names.items() if crs[full] != 0.0}
    factors = factorize_many(jobs, method=config.method, ks_ratio=config.ks_ratio, iters=config.iters,
                             tol=config.tol, device=config.device, on_done=lambda *_: bar.update())
    bar.update(len(names) - len(jobs))
    reports = []
    for full, (name, stat) in names.items():
        linear = targets[full]
        report = dict(name=full, shape=tuple(linear.weight.shape), target_cr=crs[full],
                      gram_tokens=stat.tokens, nonfinite_batches=stat.nonfinite_batches)
        f = factors.get(full)
        if f is None or f.is_dense:
            reports.append(_dense_report(linear, report, f.reason if f else "allocation kept it dense"))
            continue
        block.set_submodule(name, CompotLinear.from_factorization(f, linear.bias, storage_dtype))
        reports.append(LayerReport(method=f.method, cr=f.cr, k=f.k, s=f.s, bits=f.bits, damping=f.damping,
                                   relative_error=f.relative_error, **report))
    return reports


def _dense_report(linear: nn.Linear, report: dict, note: str) -> LayerReport:
    n, m = linear.weight.shape
    return LayerReport(method="dense", cr=0.0, k=0, s=0, bits=dense_bits(m, n), damping=0.0,
                       relative_error=0.0, note=note, **report)


def achieved_cr(reports: list[LayerReport]) -> float:
    """Model-wide eq. 11 ratio over all target projections, dense ones included."""
    stored = math.fsum(r.bits for r in reports)
    total = math.fsum(dense_bits(r.shape[1], r.shape[0]) for r in reports)
    return 1.0 - stored / total


def compress(model: nn.Module, tokenizer, cr: float = 0.2, calibration: str = "wiki-offline",
             n_samples: int = 128, seq_len: int = 512, seed: int = 0, modality: str = "llm",
             **config) -> list[LayerReport]:
    """Python entry point: compress an in-memory model in place, calibrating on a named set or path.

    `config` takes the other CompressionConfig fields (method, static, ks_ratio, iters, ...).
    """
    from zoo.modality import LoadedModel, get_adapter

    adapter = get_adapter(modality)
    loaded = LoadedModel(model, tokenizer, getattr(model.config, "_name_or_path", type(model).__name__))
    data = adapter.calibration(loaded, calibration, n_samples, seq_len, seed)
    return compress_model(model, adapter, data, CompressionConfig(cr=cr, **config))
