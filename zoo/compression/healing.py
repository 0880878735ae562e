"""Healing under a fixed support: after a block is factorized, its factors (the dictionary and the
kept code values) are refined so that the block reproduces the 16-bit block's outputs, the
paper's proposed extension (section 6). The mask, k and s stay as factorized, so the stored
bytes are exactly the unhealed variant's.

Local distillation, block by block: the compressed block reads what the already-compressed
blocks give it (`inputs`) and is fitted by Adam to what the 16-bit block gives on the 16-bit
model's own activations (`targets`), so it also corrects the error its predecessors pass on.
Each tensor's step size is relative to its own scale: COMPOT's atoms and codes differ in scale
by orders of magnitude, and one absolute rate would move some not at all and others too far.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from zoo.compression.grams import BlockInput, block_output, hidden_of, moved
from zoo.compression.ranks import ALONE, Ranks
from zoo.engine import Factorization

log = logging.getLogger(__name__)

# Samples the healed block is checked on against the factorized one (spread over the set): enough
# to see a block pushed off its outputs, few enough to cost a fraction of healing's steps.
CHECKED = 8
# Where healing raised a block's error, it starts over at BACKTRACK times the step, this many times.
BACKTRACKS, BACKTRACK = 1, 0.1
# The least scale a channel is trained in, relative to the mean channel's: its factor row then moves
# at most 1/UNIT_FLOOR times as far a step as trained raw. Whisper-base's decoder has input channels
# at 1e-5 of the mean; trained in those units, their dictionary rows grew several-fold in 32 steps,
# unseen on the calibration data, and GPTQ's 4-bit groups holding them lost everything else (WER 2.4).
UNIT_FLOOR = 1e-2


class HealedLinear(nn.Module):
    """Factors as float32 parameters, y = (x A) (C * support) + b: gradients never reach a pruned
    code, so Adam leaves every one at exactly 0.

    Given `output_units`, each factor is trained in units of what it gives the output: row i of A
    times input i's RMS, row j of C times atom j's. Adam moves every element by about the same
    step, so without this an input channel a hundred times louder than the rest moves the output a
    hundred times more per step (Gemma-3's MLPs: healed raw, block 0's output error went from
    0.003 to 0.7 in 32 steps)."""

    def __init__(
        self,
        dictionary: torch.Tensor,
        codes: torch.Tensor,
        support: torch.Tensor | None,
        bias: torch.Tensor | None,
        units: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """`dictionary` (in, k), `codes` (k, out), their `support` (k, out; None: all kept) and the
        inputs' and atoms' scales they are trained in (`output_units`; None: as they are)."""
        super().__init__()
        dictionary, codes = dictionary.detach().float().clone(), codes.detach().float().clone()  # never the caller's
        inputs, atoms = (None, None) if units is None else units
        self.register_buffer("inputs", inputs)
        self.register_buffer("atoms", atoms)
        self.dictionary = nn.Parameter(dictionary if inputs is None else dictionary * inputs[:, None])
        self.codes = nn.Parameter(codes if atoms is None else codes * atoms[:, None])
        self.register_buffer("support", None if support is None else support.bool())  # a byte a code, not four
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def of(
        cls, f: Factorization, bias: torch.Tensor | None, units: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> HealedLinear:
        return cls(f.dictionary, f.codes, f.support, bias, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dictionary, codes = self._own_units(self.dictionary, self.codes)
        return F.linear(x @ dictionary, codes.mT, self.bias)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (in, k) dictionary and (k, out) codes as trained, in the layer's own units, pruned codes 0."""
        return self._own_units(self.dictionary.detach(), self.codes.detach())

    def _own_units(self, dictionary: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors unscaled, on the weights' side (the activations autograd keeps stay as they
        were), pruned codes 0."""
        if self.inputs is not None:
            dictionary, codes = dictionary / self.inputs[:, None], codes / self.atoms[:, None]
        return dictionary, codes if self.support is None else codes * self.support

    def healed(self, f: Factorization) -> Factorization:
        dictionary, codes = self.factors()
        return dataclasses.replace(f, dictionary=dictionary.to(f.dictionary.dtype), codes=codes.to(f.codes.dtype))


def output_units(dictionary: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The RMS of each input and of each atom (x A, `dictionary` (in, k)) under the inputs' `gram`, relative to the mean
    one's: what `HealedLinear` trains its factors' rows in. Once per matrix, in float32 (a scale,
    not a solve, and float64 products are slow on most GPUs)."""
    g = gram.detach().to(dictionary.device, torch.float32)
    a = dictionary.detach().float()
    return units_of(g.diagonal(), ((g @ a) * a).sum(0))


def units_of(inputs_power: torch.Tensor, atoms_power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`output_units` from each input's and each atom's mean (or summed) square, however they were measured."""
    return _scales(inputs_power), _scales(atoms_power)


def _scales(power: torch.Tensor) -> torch.Tensor:
    """RMS per channel from its mean square, relative to the mean channel's, at least `UNIT_FLOOR`."""
    rms = power.clamp_min(0).sqrt()
    mean = rms.mean()
    if not mean > 0:
        return torch.ones_like(rms, dtype=torch.float32)
    return (rms / mean).clamp_min(UNIT_FLOOR).float()


def heal_block(  # noqa: PLR0913 (the block, its factors and data, and how to heal them)
    block: nn.Module,
    factors: dict[str, Factorization],
    samples: Sequence[tuple[BlockInput, BlockInput]],
    steps: int,
    lr: float,
    seed: int = 0,
    device: torch.device | None = None,
    desc: str = "heal",
    grams: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Factorization]:
    """`factors` (keyed by linear name within `block`, a float32 working copy) refined by `steps`
    Adam steps on the relative squared error of the block's outputs, one of `samples` (input, 16-bit
    output) a step in a seeded order; `device`: where each runs, when the activations are kept elsewhere;
    `grams`: each factorized linear's input Gram, by the same names, to train it in its output's units.

    Kept only where they lower the block's error on `CHECKED` samples spread over the set: a step
    of fixed relative size can move a well-fitted block away from its outputs (Gemma-3-270M's
    blocks, healed unchecked at the default step, took its perplexity from 47 to 4291). Where it
    does, healing starts over at a tenth of the step, `BACKTRACKS` times, before the block is kept
    as factorized (Gemma's first block: raised at 1e-3, lowered by 18% on held-out inputs at 1e-4)."""
    if steps <= 0 or not factors:
        return factors
    checked = [samples[i] for i in spread(len(samples))]
    units = {name: output_units(f.dictionary, grams[name]) for name, f in factors.items() if grams and name in grams}
    before = None
    for attempt in range(BACKTRACKS + 1):
        step = lr * BACKTRACK**attempt
        student, layers = _trainable_copy(block, factors, units)
        if before is None:
            before = _mean_error(student, checked, device)
        optimizer = relative_adam(layers.values(), step)
        order = seeded_order(len(samples), seed)
        for _ in tqdm(range(steps), desc=desc, unit="step", leave=False):
            x, y = samples[next(order)]
            loss = output_error(student, x, y, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        after = _mean_error(student, checked, device)
        if after < before:
            return {name: layer.healed(factors[name]) for name, layer in layers.items()}
        del student, layers, optimizer  # before the next attempt's copy: one at a time, as the plan counts
        then = f"healing again at step {step * BACKTRACK:g}" if attempt < BACKTRACKS else "kept as factorized"
        log.warning(
            "%s: healing at step %g raised the block's output error (%.3g to %.3g), %s", desc, step, before, after, then
        )
    return factors


def _trainable_copy(
    block: nn.Module, factors: dict[str, Factorization], units: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[nn.Module, dict[str, HealedLinear]]:
    """A copy of `block` whose factorized linears are trainable factors, and those layers by name."""
    student = copy.deepcopy(block)
    student.requires_grad_(False)
    layers = {}
    for name, f in factors.items():
        layers[name] = HealedLinear.of(f, student.get_submodule(name).bias, units.get(name))
        student.set_submodule(name, layers[name])
    return student, layers


def relative_adam(layers: Iterable[HealedLinear], lr: float) -> torch.optim.Adam:
    """Adam over the layers' factors, each tensor's step `lr` times its own RMS."""
    groups = [
        {"params": [p], "lr": lr * max(p.detach().pow(2).mean().sqrt().item(), 1e-12)}
        for layer in layers
        for p in (layer.dictionary, layer.codes)
    ]
    return torch.optim.Adam(groups)


def seeded_order(n: int, seed: int) -> Iterator[int]:
    """Sample indices without end: each pass over the `n` samples in a fresh seeded order."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from reversed(torch.randperm(n, generator=generator).tolist())


def spread(n: int, count: int = CHECKED) -> list[int]:
    """`count` sample indices spread evenly over `n`: what a step is checked on."""
    return sorted({n * j // count for j in range(count)})


def _mean_error(block: nn.Module, samples: Sequence[tuple[BlockInput, BlockInput]], device) -> float:
    with torch.no_grad():
        return math.fsum(output_error(block, x, y, device).item() for x, y in samples) / len(samples)


class SharedSamples(Sequence[tuple[BlockInput, BlockInput]]):
    """Healing's samples, one row of a calibration batch each: (compressed input, 16-bit output)
    over every rank's batches in batch order. A sample another rank holds comes from it when asked
    for; every rank asks for the same samples in the same order (healing's seeded order)."""

    def __init__(
        self,
        inputs: list[BlockInput],
        targets: list[BlockInput],
        ranks: Ranks = ALONE,
        batch_ids: Sequence[int] | None = None,
    ) -> None:
        """`inputs` and `targets`: this rank's batches, numbered `batch_ids` in the run (all of them, in
        order, by default)."""
        self.ranks = ranks
        self.local = [pair for x, y in zip(inputs, targets, strict=True) for pair in zip(rows(x), rows(y), strict=True)]
        ids = range(len(inputs)) if batch_ids is None else batch_ids
        held = ranks.gather([(b, len(rows(x))) for b, x in zip(ids, inputs, strict=True)])
        located = []  # (batch, row, rank, index among that rank's samples)
        for rank, batches in enumerate(held):
            first = itertools.accumulate((n for _, n in batches), initial=0)
            located += [
                (b, row, rank, start + row) for (b, n), start in zip(batches, first, strict=False) for row in range(n)
            ]
        self.index = [(rank, i) for _, _, rank, i in sorted(located)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[BlockInput, BlockInput]:  # type: ignore[override]
        rank, j = self.index[i]
        if self.ranks.size == 1:
            return self.local[j]
        own = None
        if rank == self.ranks.rank:  # a row is a view of its batch: only the row travels
            x, y = self.local[j]
            own = tree_map(
                lambda t: t.clone() if isinstance(t, torch.Tensor) else t, ((x.args, x.kwargs), (y.args, y.kwargs))
            )
        (x_args, x_kwargs), (y_args, y_kwargs) = self.ranks.broadcast(own, rank)
        return BlockInput(x_args, x_kwargs), BlockInput(y_args, y_kwargs)


def output_error(
    block: nn.Module, item: BlockInput, target: BlockInput, device: torch.device | None = None
) -> torch.Tensor:
    """||block(x) - y||^2 / ||y||^2 for one calibration batch, differentiable in the block's factors."""
    run = _trainable(item if device is None else moved(item, device))
    want = hidden_of(target if device is None else moved(target, device)).clone()
    out = block_output(block(*run.args, **run.kwargs))
    return (out - want).pow(2).sum() / want.pow(2).sum().clamp_min(torch.finfo(want.dtype).tiny)


def block_error(block: nn.Module, inputs: list[BlockInput], targets: list[BlockInput], device=None) -> float:
    """The mean relative output error over batches (for measuring healing on held-out inputs)."""
    with torch.no_grad():
        errors = [output_error(block, x, y, device).item() for x, y in zip(inputs, targets, strict=True)]
    return math.fsum(errors) / len(errors)


def rows(item: BlockInput) -> list[BlockInput]:
    """A batch as single samples (views): every tensor whose first dimension is the batch's is cut
    along it, the rest (shared positions, rotary tables) kept whole. Healing steps on one sample
    each: many small steps fit the factors better than a few large ones at the same cost."""
    batch = hidden_of(item).shape[0]
    if batch == 1:
        return [item]
    return [BlockInput(*row) for row in cut_rows((item.args, item.kwargs), batch)]


def cut_rows(tree, batch: int) -> list:
    """`tree` (nested containers of tensors) once per row: each tensor whose first dimension is
    `batch` cut to that row (a view), the others kept whole."""

    def cut(i: int):
        return lambda t: t[i : i + 1] if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == batch else t

    return [tree_map(cut(i), tree) for i in range(batch)]


def _trainable(item: BlockInput) -> BlockInput:
    """Calibration tensors are made under inference mode, which autograd cannot save: plain copies."""
    return BlockInput(*tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, (item.args, item.kwargs)))
