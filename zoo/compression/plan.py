"""What a run will take, said before any weights are loaded: sizes from the model's skeleton (a
meta-device copy built from its config), time from a measured probe of one block's shapes.

Host memory, the larger of two moments: loading (the checkpoint's pages as they are read, plus
the model converted to its dtype when the file holds another) and compressing (the model at rest
in its dtype, the captured block inputs and, when the device is the CPU, everything the device
holds too, and the activations when they are offloaded), over this process as it is once the
probes ran. With streamed weights, no loading moment and no model at rest: the parts outside
the blocks and one block (the largest) in the model's dtype take their place. Device memory: one
block in float32, its Grams in float64, the calibration activations in float32 (a block's inputs
and outputs; offloaded, one sample's), and the larger of the engine's workspace for the matrices
it factorizes at once and, after it, healing's trainable factors, their optimizer and autograd;
with end-to-end distillation, the larger of that and the whole model distilling.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.compression.healing import CHECKED
from zoo.compression.ranks import GRAM_CHUNKS, Ranks
from zoo.compression.targets import Stack
from zoo.engine import allocate, factorize
from zoo.engine.factorization import intra_op_threads
from zoo.errors import ZooError

GIB = 2**30
# The engine's peak workspace for one (out, in) matrix, in float64 copies of the weight and of
# its input Gram, from peak resident memory measured on shapes from 576 to 5120 wide, one matrix
# at a time (6 and 0.6 fit those within 3%); matrices factorized side by side took about 20% more.
ENGINE_WEIGHT_COPIES, ENGINE_GRAM_COPIES = 7, 0.6
# Floats autograd keeps per token and per input or output feature of a block's projections while
# healing one sample (their inputs, the dictionaries' outputs, the norms' and activations' own).
HEAL_SAVED = 3
# Bytes per trainable dense code in distillation: the float32 value, its gradient and Adam's two
# moments, the masked copy autograd keeps for the backward pass, and the mask's byte.
DISTILL_CODE_BYTES = 4 * 4 + 4 + 1


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


@dataclass(frozen=True)
class Plan:
    parameters: int
    dtype: str  # the model's at rest
    at_rest_bytes: int  # the model in its dtype, held on the host
    device: str
    samples: int
    tokens: int  # calibration tokens (or positions) per sample
    host_bytes: int
    device_bytes: int  # the CPU's share of host_bytes when the device is the CPU
    host_sample_bytes: int  # what one more calibration sample adds to host_bytes
    device_sample_bytes: int  # and to device_bytes
    seconds: float  # replays, Grams, allocation and factorization, from the probes
    processes: int = 1  # torchrun's ranks: every memory figure is one process's, the time the run's
    streamed_host_bytes: int = 0  # host_bytes with the weights streamed from disk
    streamed_bytes: int = 0  # what a streamed run holds of the model: outside the blocks, and one block
    streamed: bool = False  # whether the run streams its weights (the host figure it is held to)
    distill_bytes: int = 0  # end-to-end distillation's device bytes, within device_bytes (0: no distillation)

    @property
    def peak_host_bytes(self) -> int:
        return self.streamed_host_bytes if self.streamed else self.host_bytes

    def lines(self) -> list[str]:
        shared = [f"processes        {self.processes} (torchrun): memory per process"] if self.processes > 1 else []
        weights = (
            f"streamed from disk, one block at a time ({gib(self.streamed_bytes)} held)"
            if self.streamed
            else f"held in memory ({gib(self.at_rest_bytes)})"
        )
        lines = shared + [
            f"parameters       {self.parameters / 1e9:.3f} B ({gib(self.at_rest_bytes)} in {self.dtype})",
            f"weights          {weights}",
            f"calibration      {self.samples} samples x {self.tokens} tokens on {self.device}",
            f"peak host memory {gib(self.peak_host_bytes)}",
            f"peak {self.device} memory {gib(self.device_bytes)}"
            + (" (the same memory as the host's)" if self.device == "cpu" else ""),
            f"time             about {self.seconds / 60:.1f} min to compress",
        ]
        if self.distill_bytes:
            lines.append(f"distill          {gib(self.distill_bytes)} on {self.device}: the whole model")
        return lines

    def check(self, host_limit: int, device_limit: int | None) -> None:
        """Refuse, naming what would fit, a run whose estimate exceeds a limit (bytes)."""
        checks = [("host", self.peak_host_bytes, host_limit, self.host_sample_bytes)]
        if self.device != "cpu" and device_limit is not None:
            checks.append((self.device, self.device_bytes, device_limit, self.device_sample_bytes))
        for where, need, limit, per_sample in checks:
            if need <= limit:
                continue
            if self.distill_bytes >= self.device_bytes and (where != "host" or self.device == "cpu"):
                raise ZooError(
                    f"the run needs about {gib(need)} of {where} memory, and {gib(limit)} is available: end-to-end "
                    f"distillation holds the whole model and its trainable factors ({gib(self.distill_bytes)}); "
                    "compress without --distill, or where there is more memory"
                )
            fits = (limit - (need - self.samples * per_sample)) // per_sample if per_sample else 0
            hint = (
                f"--n-samples {fits} (or a smaller --seq-len) would fit"
                if fits >= 1
                else "even one calibration sample would not fit: use a machine with more memory"
            )
            if where != "host" and fits < self.samples and fits >= 1:  # the activations are the device's
                hint += ", or --offload-activations with these samples"
            raise ZooError(f"the run needs about {gib(need)} of {where} memory, and {gib(limit)} is available; {hint}")


def make_plan(
    skeleton: nn.Module,
    stacks: list[Stack],
    samples: int,
    tokens: int,
    carried_floats: Callable[[str, int], tuple[int, int]],
    dtype: torch.dtype,
    file_dtype: torch.dtype,
    device: torch.device,
    resident: Callable[[], int],
    workers: int,
    cr: float,
    iters: int,
    dynamic: bool,
    offload: bool,
    heal_steps: int = 0,
    processes: int = 1,
    distill_steps: int = 0,
) -> Plan:
    """`skeleton`: the model on the meta device; `carried_floats(stack, tokens)`: the floats one
    sample carries into a block of that stack, as (replaced by each block: its hidden states;
    the same for every block: position embeddings, the encoder's output for cross-attention).
    The plan gives the host figures of both ways to hold the weights, in memory and streamed
    (`streamed` false: `Plan.check` holds the run to the first).

    With several `processes` (zoo.compression.ranks), each holds the model, a block and its Grams
    (its chunk's partial and the one it receives beside the sum), and its share of the samples;
    the replays split, healing does not (every rank heals alike), and each block's matrices are
    dealt out largest first, so a block takes its most loaded rank's time."""
    size = torch.empty((), dtype=dtype).element_size()
    parameters = sum(p.numel() for p in skeleton.parameters())
    device_bytes = device_sample = captured = offloaded = 0
    seconds = 0.0
    parallel = workers if device.type == "cpu" else 1  # on CPU, matrices run side by side on a thread each
    mine = math.ceil(samples / min(processes, GRAM_CHUNKS))  # this process's share of the samples
    gram_copies = 2 if processes == 1 else 3  # the sum in chunk order, the chunk being added (and one received)
    for stack in stacks:
        block = stack.blocks[0][1]  # a stack's blocks share their shapes
        linears = [block.get_submodule(name) for group in stack.groups for name in group]
        grams = [block.get_submodule(group[0]).in_features for group in stack.groups]
        block_parameters = sum(p.numel() for p in block.parameters())
        replaced, constant = carried_floats(stack.name, tokens)
        # a block's inputs and outputs, sharing the constant part; healing also carries the
        # compressed model's inputs and outputs beside the 16-bit model's
        per_sample = (4 if heal_steps else 2) * replaced + constant
        on_device = 1 if offload else mine  # offloaded, one sample's batch at a time
        held = (
            4 * block_parameters  # the float32 working copy
            + 8 * gram_copies * sum(n * n for n in grams)  # its Grams
            + 4 * on_device * per_sample  # the activations in float32
        )
        engine = sum(sorted((_engine_bytes(m.out_features, m.in_features) for m in linears), reverse=True)[:parallel])
        healing = (  # a trainable copy with its gradients and Adam's two moments; one sample's autograd
            4 * 4 * block_parameters + 4 * HEAL_SAVED * tokens * sum(m.in_features + m.out_features for m in linears)
            if heal_steps
            else 0
        )
        work = held + max(engine, healing)  # healing starts once the engine's workspace is freed
        if work > device_bytes:
            # one more sample of the run adds a process its share of one
            device_bytes, device_sample = work, 0 if offload else 4 * per_sample * mine // samples
        captured += size * mine * (replaced + constant)  # every stack's, before the first is compressed
        if offload:
            offloaded = max(offloaded, 4 * mine * per_sample)
        flops = 2 * mine * tokens * (block_parameters + sum(n * n for n in grams))  # replay and Grams
        if heal_steps:  # the compressed block's replay, and each step's forward and backward on one sample
            flops += 2 * tokens * block_parameters * (mine + 3 * heal_steps)
        widest = max(linears, key=lambda m: m.weight.numel())
        counts = Counter((m.out_features, m.in_features) for m in linears)
        with intra_op_threads(1 if parallel > 1 else torch.get_num_threads()):
            probed = {shape: probe_seconds(*shape, cr, device, iters, dynamic) for shape in counts}
        costs = {f"{shape}#{i}": probed[shape] for shape, n in counts.items() for i in range(n)}
        owners = Ranks(0, processes).deal(costs)
        busiest = max(sum(c for name, c in costs.items() if owners[name] == r) for r in range(processes))
        seconds += len(stack.blocks) * (flops / _gemm_rate(widest.in_features, widest.out_features, device))
        seconds += len(stack.blocks) * busiest / parallel
    distilling = 0
    if distill_steps:
        distilling, teacher, flops = _distill_figures(skeleton, stacks, samples, tokens, cr, distill_steps)
        device_bytes = max(device_bytes, distilling)
        captured += teacher
        widest = max((m for m in skeleton.modules() if isinstance(m, nn.Linear)), key=lambda m: m.weight.numel())
        seconds += flops / _gemm_rate(widest.in_features, widest.out_features, device)
    at_rest = parameters * size
    on_cpu = device.type == "cpu"
    read = parameters * torch.empty((), dtype=file_dtype).element_size()
    loading = read + (at_rest if file_dtype != dtype else 0)
    compressing = captured + offloaded + (device_bytes if on_cpu else 0)
    blocks = [sum(p.numel() for p in block.parameters()) for stack in stacks for _, block in stack.blocks]
    streamed = size * (parameters - sum(blocks) + max(blocks))  # outside the blocks, and the largest block
    # after the probes, which imported and warmed what the run uses, and whose freed memory the
    # allocator keeps for it
    now = resident()
    host = now + max(loading, at_rest + compressing)
    host_sample = (captured + offloaded) // max(samples, 1) + (device_sample if on_cpu else 0)
    name = str(dtype).removeprefix("torch.")
    return Plan(
        parameters,
        name,
        at_rest,
        device.type,
        samples,
        tokens,
        host,
        device_bytes,
        host_sample,
        device_sample,
        seconds,
        processes,
        now + streamed + compressing,
        streamed,
        distill_bytes=distilling,
    )


def _distill_figures(
    skeleton: nn.Module, stacks: list[Stack], samples: int, tokens: int, cr: float, steps: int
) -> tuple[int, int, float]:
    """End-to-end distillation's device bytes (the whole model in float32, its factors trainable with
    gradients and Adam's moments, one sample's autograd and logits), the host bytes of the 16-bit
    model's final hidden states it keeps, and its flops (that model's pass, a few samples' passes to
    measure the units and check the result, then each step's forward and backward)."""
    vocab, width = skeleton.get_output_embeddings().weight.shape
    shapes = [
        (block.get_submodule(name).in_features, block.get_submodule(name).out_features)
        for stack in stacks
        for _, block in stack.blocks
        for group in stack.groups
        for name in group
    ]
    trained = 2 * (1 - cr) * sum(i * o for i, o in shapes)  # dense codes: twice the kept ones at k = 2s
    parameters = sum(p.numel() for p in skeleton.parameters())
    device = (
        4 * parameters
        + DISTILL_CODE_BYTES * trained
        + 4 * HEAL_SAVED * tokens * sum(i + o for i, o in shapes)
        + 4 * 4 * tokens * vocab  # logits, both log-softmaxes and the gradient
    )
    flops = 2 * tokens * parameters * (samples + 3 * CHECKED + 3 * steps)  # the check before and after, the units
    return int(device), 4 * samples * tokens * width, flops


def _engine_bytes(out: int, inp: int) -> int:
    return int(8 * (ENGINE_WEIGHT_COPIES * out * inp + ENGINE_GRAM_COPIES * inp * inp))


def _gemm_rate(inp: int, out: int, device: torch.device, rows: int = 2048) -> float:
    """Float32 multiply-adds per second (x2) of this device on a layer of this shape."""
    x, w = torch.randn(rows, inp, device=device), torch.randn(out, inp, device=device)
    torch.nn.functional.linear(x, w)  # warm up
    _sync(device)
    start = time.perf_counter()
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    _sync(device)
    return 3 * 2 * rows * inp * out / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_seconds(out: int, inp: int, cr: float, device: torch.device, iters: int, dynamic: bool) -> float:
    """Seconds the engine takes on a random matrix of this shape at `iters` iterations: one run
    with none (the whitening, the start and one sparse coding) and one with two, extrapolated;
    with `dynamic`, the spectrum the allocation computes too."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(out, inp, generator=g).to(device)
    gram = torch.eye(inp, dtype=torch.float64, device=device)
    start = time.perf_counter()
    factorize(weight, gram, cr=cr, iters=0)
    if dynamic:
        allocate({"probe": weight}, cr)
    _sync(device)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    factorize(weight, gram, cr=cr, iters=2)
    _sync(device)
    per_iter = max(time.perf_counter() - start - setup, 0.0) / 2
    return setup + iters * per_iter
