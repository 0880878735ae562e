"""Compress a model's projections in place: allocation, block-wise Grams, factorization, swap.

Data flows one way: stacks and calibration batches -> Gram statistics -> allocation ->
factorization -> (GPTQ of the factors, with `quantize`) -> CompotLinear modules. Every block's
Grams come from the original (uncompressed) activations, as in SVD-LLM's whitening; with
`sequential`, from what the blocks already compressed give it, as GPTQ calibrates.

The model stays where it was loaded, in its 16-bit dtype. One block at a time is copied to
the device in float32, replayed on the calibration activations (which stay on the device, or
with `offload_activations` in host memory, one batch at a time on the device), factorized
there, and only its compressed layers come back: the device holds one block, its Grams and
the activations, whatever the model's size.

With streamed weights (`source`), the model's blocks start on the meta device: each is read from
the base's files before its turn and dropped after it (its compressed layers too, once the
progress store holds them), so the host holds one block besides what lies outside the blocks.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.compression.config import CompressionConfig
from zoo.compression.grams import (
    BlockInput,
    GramStat,
    KindInputs,
    block_grams,
    capture_kind_inputs,
    replay,
    stack_inputs,
)
from zoo.compression.healing import SharedSamples, heal_block
from zoo.compression.layer import COMPRESSED, CompotLinear
from zoo.compression.plan import probe_seconds
from zoo.compression.quantized import QuantLinear
from zoo.compression.ranks import Ranks
from zoo.compression.report import LayerRecord
from zoo.compression.targets import CalibrationData, Stack
from zoo.engine import Factorization, allocate, factorize_many
from zoo.engine.factorization import intra_op_threads
from zoo.engine.gptq import gptq, quantize_factors, relative_error
from zoo.errors import ZooError
from zoo.methods import DENSE
from zoo.methods import get as method_named
from zoo.methods.layout import stored_tensors

log = logging.getLogger(__name__)

# Calibration batches that may reach a projection with NaN/Inf inputs (left out of its Gram) before
# the run is refused: a few can be a bad sample, more means a broken model or data.
MAX_NONFINITE_SHARE = 0.1


def compression_targets(model: nn.Module, stacks: list[Stack]) -> dict[str, nn.Linear]:
    """Qualified name -> linear for every projection the adapter marks for compression."""
    targets = {}
    for stack in stacks:
        for prefix, block in stack.blocks:
            for name in (n for g in stack.groups for n in g):
                module = block.get_submodule(name)
                if not isinstance(module, nn.Linear):
                    raise ZooError(
                        f"{prefix}.{name} is {type(module).__name__}, not nn.Linear: "
                        "already compressed, or the adapter table is wrong for this model"
                    )
                targets[f"{prefix}.{name}"] = module
    if not targets:
        raise ZooError(
            f"{type(model).__name__} has no compressible linear projections "
            f"(stacks: {', '.join(s.name for s in stacks) or 'none'})"
        )
    return targets


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_group_size(in_features: dict[str, int], config: CompressionConfig) -> None:
    """Refuse a GPTQ group size that does not divide a projection's inputs, naming the first one,
    before any work (the factors' groups run along the same inputs)."""
    if config.quantize is None:
        return
    size = config.quantize_group_size
    bad = {name: n for name, n in in_features.items() if n % size}
    if bad:
        name, n = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ZooError(
            f"quantize group size {size} does not divide {name}'s {n} input features{more}; "
            f"pick a divisor of every projection's inputs, e.g. {_power_of_two_divisor(in_features.values())}"
        )


def _power_of_two_divisor(sizes) -> int:
    """The largest power of two that divides every size (GPTQ kernels like power-of-two groups)."""
    common = math.gcd(*sizes)
    return common & -common


def target_crs(
    targets: dict[str, nn.Linear], config: CompressionConfig, source: SourceWeights | None = None
) -> dict[str, float]:
    """The CR each matrix is asked for: the target everywhere (static), or Algorithm 2's allocation
    (a streamed model's weights read one at a time from `source`); 0.0 (stays dense) everywhere
    for GPTQ alone."""
    if not config.factorizes:
        return dict.fromkeys(targets, 0.0)
    if config.static:
        return {name: config.cr for name in targets}
    weights = {name: linear.weight.detach() for name, linear in targets.items()}
    if source is not None:
        weights = Unheld(weights, lambda name, meta: source.read(f"{name}.weight", meta.dtype))
    return allocate(weights, config.cr, config.min_cr, config.max_cr, device=config.device or default_device()).cr


def shape_costs(
    targets: dict[str, nn.Linear], config: CompressionConfig, device: torch.device, ranks: Ranks
) -> dict[tuple[int, int], float]:
    """Seconds the engine takes per matrix shape, from the plan's probe, measured on rank 0 and
    shared (the deal must be the same everywhere); nothing to deal out for one process."""
    shapes = sorted({tuple(linear.weight.shape) for linear in targets.values()})
    if ranks.size == 1 or not config.factorizes:
        return dict.fromkeys(shapes, 0.0)
    measured = None
    if ranks.main:
        with intra_op_threads(1) if device.type == "cpu" else nullcontext():
            measured = {s: probe_seconds(*s, config.cr, device, config.iters, not config.static) for s in shapes}
    return ranks.broadcast(measured, 0)


class SourceWeights(Protocol):
    """Where a streamed model's tensors are read from, by name (zoo.format.tensor_files.SourceFiles)."""

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor: ...


class Unheld(Mapping[str, torch.Tensor]):
    """Tensors by name, those on the meta device read (`read(name, meta)`) each time they are asked for."""

    def __init__(self, tensors: dict[str, torch.Tensor], read: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
        self.tensors, self.read = tensors, read

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self.tensors[name]
        return self.read(name, tensor) if tensor.is_meta else tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


@dataclasses.dataclass(frozen=True)
class Streamed:
    """A streamed model's blocks: read into it before their turn, in the dtype and on the device the
    model holds its weights, and dropped after it. Without a source nothing is streamed, and these
    do nothing."""

    source: SourceWeights | None
    home: torch.device

    @classmethod
    def of(cls, model: nn.Module, source: SourceWeights | None, stored: bool) -> Streamed:
        """`stored`: the compressed blocks are kept elsewhere (this rank's store, or rank 0's)."""
        if source is not None and not stored:
            raise ZooError("streamed weights need a progress store: the compressed blocks are dropped once stored")
        held = (p.device for p in model.parameters() if not p.is_meta)
        return cls(source, next(held, torch.device("cpu")))

    def state(self, model: nn.Module) -> Unheld | None:
        """The model's state, its blocks' tensors read from the files when a module runs."""
        if self.source is None:
            return None
        return Unheld(model.state_dict(keep_vars=True), lambda name, meta: self.source.read(name, meta.dtype))

    def materialize(self, prefix: str, block: nn.Module) -> None:
        if self.source is None:
            return
        for name, module in block.named_modules(prefix=prefix):
            for key, p in module._parameters.items():
                if p is not None and p.is_meta:
                    value = self.source.read(f"{name}.{key}", p.dtype).to(self.home)
                    module._parameters[key] = nn.Parameter(value, requires_grad=p.requires_grad)

    def drop(self, block: nn.Module, replaced: Iterable[nn.Module]) -> None:
        """Every parameter of the block back on the meta device, and those of the linears its
        compressed layers `replaced`, and those layers' tensors (the progress store holds them)."""
        if self.source is None:
            return
        for module in (*block.modules(), *replaced):
            for key, p in module._parameters.items():
                if p is not None and not p.is_meta:
                    module._parameters[key] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)
            if isinstance(module, COMPRESSED):
                for key, b in module._buffers.items():
                    if b is not None:
                        module._buffers[key] = b.to("meta")


class BlockStore(Protocol):
    """Where finished blocks are kept, so that a killed run resumes (`zoo.format.progress`)."""

    def load(self, prefix: str) -> tuple[list[LayerRecord], dict[str, CompotLinear]] | None: ...

    def save(self, prefix: str, records: list[LayerRecord], layers: dict[str, CompotLinear]) -> None: ...


def compress_model(
    model: nn.Module,
    stacks: list[Stack],
    calibration: CalibrationData,
    config: CompressionConfig,
    store: BlockStore | None = None,
    source: SourceWeights | None = None,
) -> list[LayerRecord]:
    """Replace every target projection of `stacks` (the adapter's, for `config.components`) by a
    CompotLinear, calibrating on `calibration.batches` fed to `model`; one record per matrix.
    Blocks `store` already holds are restored, not factorized: only replayed, for the next
    block's inputs. With `source`, the blocks are streamed from it (the model's stay on the meta
    device, and so do its compressed layers: `store` keeps them, and must be given on rank 0)."""
    ranks = Ranks.current()
    streamed = Streamed.of(model, source, store is not None or not ranks.main)
    targets = compression_targets(model, stacks)
    check_group_size({name: linear.in_features for name, linear in targets.items()}, config)
    crs = target_crs(targets, config, source)
    storage_dtype = getattr(torch, config.storage_dtype or "float16")
    device = torch.device(config.device or default_device())
    batches = len(calibration.batches)
    own_ids = ranks.own(ranks.chunks(batches))  # every batch, alone
    own = [calibration.batches[i] for i in own_ids]
    # Every stack's inputs come from the original model, before any layer is swapped.
    # The part before each stack runs on the device too, its weights copied there module by module.
    # (a streamed model's blocks there are read from its files, module by module)
    away = device if any(p.device.type != device.type for p in model.parameters()) else None
    state = streamed.state(model)
    inputs = {stack.name: capture_kind_inputs(model, stack.blocks, stack.kinds, own, away, state) for stack in stacks}
    costs = shape_costs(targets, config, device, ranks)
    records: list[LayerRecord] = []
    with tqdm(total=len(targets), desc="compress", unit="matrix", disable=not ranks.main) as bar:
        for stack in stacks:
            home = torch.device("cpu") if config.offload_activations else device  # where activations stay
            captured, kinds = stack_inputs(inputs.pop(stack.name), stack.kinds, home, torch.float32)
            streams = Streams(
                teacher=captured if not config.sequential or config.heal else None,
                student=captured if config.sequential or config.heal else None,
                kinds=kinds,
            )
            runs_on = device if home != device else None
            for index, (prefix, block) in enumerate(stack.blocks, 1):
                bar.set_postfix_str(prefix)
                log.info("block %s (%d of %d in %s)", prefix, index, len(stack.blocks), stack.name)
                streamed.materialize(prefix, block)
                streams.enter(index - 1)
                # rank 0 reads the progress for every rank: the same blocks restored everywhere
                done = ranks.broadcast(store.load(prefix) if store is not None and ranks.main else None, 0)
                if done is not None:
                    if streams.teacher is not None:  # the 16-bit block's outputs, before its layers are restored
                        streams.teacher = replay(working_copy(block, device), streams.teacher, runs_on)
                    block_records, layers = done
                    for full, layer in layers.items():
                        linear = targets[full]  # held as this run holds the model (an earlier run may have differed)
                        if layer.bias is not None:
                            layer.bias.data = layer.bias.data.to(linear.weight.dtype)
                        block.set_submodule(full.removeprefix(prefix + "."), layer.to(linear.weight.device))
                    bar.update(len(block_records))
                else:
                    work = working_copy(block, device)
                    calibrating = streams.student if config.sequential else streams.teacher
                    stats, outputs = block_grams(
                        work, stack.groups, calibrating, device=runs_on, ranks=ranks, batches=batches
                    )
                    _check_finite(prefix, stats, batches)
                    if streams.teacher is not None:  # the 16-bit block's outputs are the next block's inputs
                        streams.teacher = outputs if calibrating is streams.teacher else replay(work, streams.teacher)
                    del outputs
                    names = {f"{prefix}.{name}": (name, stats[group[0]]) for group in stack.groups for name in group}
                    healing = (
                        Healing(prefix, SharedSamples(streams.student, streams.teacher, ranks, own_ids), runs_on)
                        if config.heal
                        else None
                    )
                    job = BlockJob(work, names, targets, crs, config, storage_dtype, ranks, costs, healing)
                    block_records = _compress_block(block, job, bar)
                    if store is not None and ranks.main:
                        layers = {r.name: model.get_submodule(r.name) for r in block_records if r.method != "dense"}
                        store.save(prefix, block_records, layers)
                    del work, job, stats, names, healing  # else held while the next block's are made
                if streams.student is not None:  # what this block gives, compressed
                    streams.student = replay(working_copy(block, device), streams.student, runs_on)
                records += block_records
                streamed.drop(block, (targets[f"{prefix}.{name}"] for group in stack.groups for name in group))
    return records


@dataclasses.dataclass
class Streams:
    """The activations the blocks are fed: the 16-bit model's (teacher: SVD-LLM's whitening, and
    healing's targets) and the compressed model's so far (student: `sequential`, and healing's
    inputs). A run carries only the ones it reads."""

    teacher: list[BlockInput] | None
    student: list[BlockInput] | None
    kinds: KindInputs  # what else each kind of block receives

    def enter(self, index: int) -> None:
        """Both streams as the stack's block `index` receives them."""
        self.teacher = None if self.teacher is None else self.kinds.dress(self.teacher, index)
        self.student = None if self.student is None else self.kinds.dress(self.student, index)


@dataclasses.dataclass
class Healing:
    """What healing a block reads: its compressed inputs beside the 16-bit block's outputs."""

    prefix: str
    samples: SharedSamples
    runs_on: torch.device | None


def working_copy(block: nn.Module, device: torch.device) -> nn.Module:
    """The block in float32 on `device`, for replay and factorization; the block itself stays put."""
    return copy.deepcopy(block).to(device=device, dtype=torch.float32)


def _check_finite(prefix: str, stats: dict[str, GramStat], batches: int) -> None:
    for key, stat in stats.items():
        if not stat.nonfinite_batches:
            continue
        share = stat.nonfinite_batches / batches
        message = (
            f"{prefix}.{key}: {stat.nonfinite_batches} of {batches} calibration batches reached it with "
            "NaN/Inf inputs and were left out of its Gram"
        )
        if share > MAX_NONFINITE_SHARE:
            raise ZooError(
                f"{message}; more than {MAX_NONFINITE_SHARE:.0%} means the model or the calibration "
                "data is broken (check the model's dtype and the calibration samples)"
            )
        log.warning(message)


@dataclasses.dataclass(frozen=True)
class BlockJob:
    """One block's compression: its float32 working copy, its projections (qualified name -> name
    in the block and its Gram), the model's linears they replace, their CRs, and the run's settings."""

    work: nn.Module
    names: dict[str, tuple[str, GramStat]]
    targets: dict[str, nn.Linear]
    crs: dict[str, float]
    config: CompressionConfig
    storage_dtype: torch.dtype
    ranks: Ranks
    costs: dict[tuple[int, int], float]  # a matrix's predicted factorization time by its shape, to share them out
    healing: Healing | None = None

    def weight(self, full: str) -> torch.Tensor:
        return self.work.get_submodule(self.names[full][0]).weight.detach()


def _compress_block(block: nn.Module, job: BlockJob, bar: tqdm) -> list[LayerRecord]:
    """Factorize a block's projections side by side from its working copy, heal them together
    (`job.healing`), then swap each into the block itself, where it lives, unless it stays dense."""
    factors = _factorized(job, bar)
    if job.healing is not None:
        factors = _healed(job, factors)
    if job.config.quantize is None:
        built = {full: _built(job, factors.get(full), full) for full in job.names}
    else:  # GPTQ's column loop is many small tensor ops: one thread each, matrices side by side
        costs = {full: float(job.weight(full).numel() * job.weight(full).shape[1]) for full in job.names}
        owners = job.ranks.deal(costs)
        mine = [full for full in job.names if owners[full] == job.ranks.rank]
        workers = max(1, min(torch.get_num_threads(), len(mine))) if work_device(job.work).type == "cpu" else 1
        with intra_op_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="gptq") as pool:
            made = dict(zip(mine, pool.map(lambda full: _built(job, factors.get(full), full), mine), strict=True))
        built = (
            made
            if job.ranks.size == 1
            else {  # one process: nothing travels, nothing moves
                full: job.ranks.broadcast(_on_cpu(made.get(full)), owners[full]) for full in job.names
            }
        )
    records = []
    for full, (name, _) in job.names.items():
        f, linear = factors.get(full), job.targets[full]
        if built[full] is None:
            records.append(_record(job, full, None, None, f.reason if f else "allocation kept it dense"))
            continue
        layer, error = built[full]
        block.set_submodule(name, layer.to(linear.weight.device))
        records.append(_record(job, full, f, layer, error=error))
    return records


def _on_cpu(built: tuple[nn.Module, float] | None) -> tuple[nn.Module, float] | None:
    """A built layer as it travels between ranks (a GPU tensor would arrive on the sender's GPU)."""
    return None if built is None else (built[0].cpu(), built[1])


def _factorized(job: BlockJob, bar: tqdm) -> dict[str, Factorization]:
    """The block's matrices factorized at their CRs (those allocation keeps dense left out), each in
    the method's form or, with mixed forms, an alternative's where that fits better."""
    config = job.config
    jobs = {full: (job.weight(full), stat.gram, job.crs[full]) for full, (_, stat) in job.names.items()}
    jobs = {full: item for full, item in jobs.items() if item[2] != 0.0}
    options = dict(ks_ratio=config.ks_ratio, iters=config.iters, tol=config.tol)
    factors = _shared(job, jobs, config.method, options, bar)
    if config.forms == "mixed":
        for alternative in method_named(config.method).alternatives:
            factors = _better_form(factors, _shared(job, jobs, alternative, {}, None))
    bar.update(len(job.names) - len(jobs))
    return factors


def _shared(job: BlockJob, jobs: dict, method: str, options: dict, bar: tqdm | None) -> dict[str, Factorization]:
    """`jobs` factorized by `method`, each on the rank the deal gives it (one process: all here),
    and every result on every rank."""
    ranks = job.ranks
    owners = ranks.deal({full: job.costs[tuple(item[0].shape)] for full, item in jobs.items()})
    mine = {full: item for full, item in jobs.items() if owners[full] == ranks.rank}
    on_done = None if bar is None else (lambda name, _: _done(bar, name))
    log.debug("rank %d of %d factorizes %d of %d matrices", ranks.rank, ranks.size, len(mine), len(jobs))
    made = factorize_many(mine, method=method, on_done=on_done, **options)
    if ranks.size == 1:
        return made
    device = work_device(job.work)
    shared = {}
    for full in jobs:
        f = ranks.broadcast(_factors_to(made[full], "cpu") if full in made else None, owners[full])
        shared[full] = made[full] if full in made else _factors_to(f, device)
        if bar is not None and full not in made:
            _done(bar, full)
    return shared


def _factors_to(f: Factorization, device: torch.device | str) -> Factorization:
    tensors = ("dictionary", "codes", "support", "weight")
    return dataclasses.replace(f, **{k: getattr(f, k).to(device) for k in tensors if getattr(f, k) is not None})


def _built(job: BlockJob, f: Factorization | None, full: str) -> tuple[CompotLinear | QuantLinear, float] | None:
    """The layer that replaces `full` and its calibration-weighted error; None: it stays as it is."""
    config, linear, gram = job.config, job.targets[full], job.names[full][1].gram
    weight = job.weight(full)
    if f is None or f.is_dense:
        if config.quantize is None:
            return None
        quantized, approx = gptq(
            weight, gram, config.bits, config.quantize_group_size, scale_dtype=job.storage_dtype, name=full
        )
        return QuantLinear.from_quantized(quantized, linear.bias), relative_error(weight, approx, gram)
    if config.quantize is None:
        return CompotLinear.from_factorization(f, linear.bias, job.storage_dtype), f.relative_error
    # GPTQ approximates the matrix the factors stand for: the weight, or what healing made of it
    fitted = weight if job.healing is None else f.reconstruct()
    q = quantize_factors(f, fitted, gram, config.bits, config.quantize_group_size, job.storage_dtype, full)
    layer = CompotLinear.from_factorization(f, linear.bias, job.storage_dtype, q)
    return layer, relative_error(weight, q.approx, gram)


def _better_form(factors: dict[str, Factorization], other: dict[str, Factorization]) -> dict[str, Factorization]:
    """Per matrix, the other form where it fits the calibration data better at the same CR (tall
    matrices, e.g. Qwen2.5's down_proj, were seen to lose to a low-rank pair under eq. 11); a
    matrix kept dense stays so, as the allocation counted it."""
    better = {
        name
        for name, f in factors.items()
        if not f.is_dense and not other[name].is_dense and other[name].relative_error < f.relative_error
    }
    return {name: other[name] if name in better else f for name, f in factors.items()}


def _healed(job: BlockJob, factors: dict[str, Factorization]) -> dict[str, Factorization]:
    """The block's factors after healing, each with its calibration-weighted error appended to its
    objective (healing fits the block's outputs, so a matrix's own error may rise)."""
    healing, config = job.healing, job.config
    local = {job.names[full][0]: f for full, f in factors.items() if not f.is_dense}
    seed = int.from_bytes(hashlib.sha256(healing.prefix.encode()).digest()[:4], "little")
    healed = heal_block(
        job.work,
        local,
        healing.samples,
        steps=config.heal,
        lr=config.heal_lr,
        seed=seed,
        device=healing.runs_on,
        desc=f"heal {healing.prefix}",
        grams={name: stat.gram for name, stat in job.names.values()},
    )
    result = dict(factors)
    for full, (name, stat) in job.names.items():
        if name in healed:
            f = healed[name]
            error = relative_error(job.weight(full), f.reconstruct(), stat.gram) * f.whitened_norm_sq
            result[full] = dataclasses.replace(f, objective=[*f.objective, error])
    return result


def _done(bar: tqdm, name: str) -> None:
    bar.set_postfix_str(name, refresh=False)
    bar.update()
    log.debug("factorized %s", name)


def work_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _record(
    job: BlockJob,
    full: str,
    f: Factorization | None,
    layer: CompotLinear | QuantLinear | None,
    note: str = "",
    error: float = 0.0,
) -> LayerRecord:
    linear, stat, target_cr = job.targets[full], job.names[full][1], job.crs[full]
    group_size = job.config.quantize_group_size
    weight = linear.weight
    common = dict(
        name=full,
        shape=tuple(weight.shape),
        target_cr=target_cr,
        gram_tokens=stat.tokens,
        nonfinite_batches=stat.nonfinite_batches,
        note=note,
    )
    if layer is None:  # kept dense: stored as the weight is
        bits = 8 * weight.numel() * weight.element_size()
        return LayerRecord(
            method=DENSE,
            k=0,
            s=0,
            storage_dtype=None,
            stored_bits=bits,
            eq11_bits=16 * weight.numel(),
            damping=0.0,
            relative_error=0.0,
            **common,
        )
    method = method_named(layer.method)
    k, s = (f.k, f.s) if method.factorizes else (0, 0)
    n, m = weight.shape
    bits = layer.bits
    quantized = stored_tensors(method, m, n, k=k, s=s, bits=bits, group_size=group_size)
    return LayerRecord(
        method=method.name,
        k=k,
        s=s,
        storage_dtype=str(layer.storage_dtype).removeprefix("torch."),
        stored_bits=layer.stored_bits(),
        eq11_bits=f.bits if bits == 16 else sum(t.bits for t in quantized.values()),
        damping=0.0 if f is None else f.damping,
        relative_error=error,
        bits=bits,
        group_size=0 if bits == 16 else group_size,
        **common,
    )
