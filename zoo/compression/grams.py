"""Input Gram statistics, collected block by block so memory does not grow with depth.

The model runs once up to its first block; from there each block is replayed on the
captured inputs with hooks on the linears it will lose, and its outputs become the next
block's inputs. Only one block's activations are alive at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import cpu_offload
from accelerate.hooks import remove_hook_from_submodules
from torch import nn
from torch.utils._pytree import tree_map

from zoo.compression.ranks import ALONE, Ranks, summed_in_order
from zoo.errors import ZooError


class _ReachedBlock(Exception):
    """Raised by a hook to stop the forward pass once the first block's inputs are seen."""


@dataclass
class BlockInput:
    args: tuple
    kwargs: dict


@dataclass
class GramStat:
    """X^T X / tokens over the finite calibration rows of one shared input (summed, before the division)."""

    gram: torch.Tensor
    tokens: int
    nonfinite_batches: int


@contextmanager
def executed_on(
    model: nn.Module, device: torch.device | None, state: Mapping[str, torch.Tensor] | None = None
) -> Iterator[None]:
    """Run `model`'s forward passes on `device` while its weights stay where they are: accelerate's
    offload hooks copy each module's weights to the device as it runs and drop them after, so
    the device holds one module at a time. `state`: where the weights are read from (default: the
    model's own; a streamed model's blocks are read from its files). Without a device: as it is."""
    if device is None:
        yield
        return
    # the hooks rebuild every parameter on detaching: put the very objects back, so that tied
    # weights stay one parameter and nothing outside sees a new tensor
    held = [
        (table, name, t) for m in model.modules() for table in (m._parameters, m._buffers) for name, t in table.items()
    ]
    cpu_offload(model, device, state_dict=model.state_dict(keep_vars=True) if state is None else state)
    try:
        yield
    finally:
        remove_hook_from_submodules(model)
        for table, name, tensor in held:
            table[name] = tensor


def capture_block_inputs(
    model: nn.Module,
    first_block: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> list[BlockInput]:
    """Run the model on each batch only up to `first_block` and keep what it receives; with a
    `device`, the part before the block runs there (`executed_on`, its weights read from `state`)."""
    prefix = next(name for name, module in model.named_modules() if module is first_block)
    return capture_kind_inputs(model, [(prefix, first_block)], None, batches, device, state)[""]


def capture_kind_inputs(
    model: nn.Module,
    blocks: Sequence[tuple[str, nn.Module]],
    kinds: Sequence[str] | None,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, list[BlockInput]]:
    """For each kind of block in a stack (`kinds`, one per block; None: one kind, ""), what the first
    block of that kind receives on each batch. Only the first block's hidden states are the model's:
    the stack's blocks do not run here but pass their hidden states on unchanged, since the others
    are kept for what else their kind receives (its attention mask, its rotary table), which
    depends on the batch alone. The model runs only up to the last block needed."""
    kinds = list(kinds or [""] * len(blocks))
    firsts = {kinds.index(kind): kind for kind in dict.fromkeys(kinds)}
    last = max(firsts)
    captured: dict[str, list[BlockInput]] = {kind: [] for kind in firsts.values()}
    held = list(blocks[: last + 1])
    for index, (prefix, block) in enumerate(held):
        keep = captured[firsts[index]].append if index in firsts else None
        model.set_submodule(prefix, _Standing(block, keep, stop=index == last))
    try:
        with torch.inference_mode(), executed_on(model, device, state):
            for batch in batches:
                try:
                    model(**batch)
                except _ReachedBlock:
                    pass
    finally:
        for prefix, block in held:
            model.set_submodule(prefix, block)
    if not captured[kinds[0]]:
        raise ZooError("no calibration batch reached the first block: the calibration set is empty")
    return captured


class _Standing(nn.Module):
    """Stands in for a block while its inputs are captured: keeps what it receives (`keep`), then
    passes the hidden states on unchanged, or ends the pass (`stop`). It holds no weights, so none
    is read or moved for it; the model's loop may still read the block's attributes through it."""

    def __init__(self, block: nn.Module, keep: Callable[[BlockInput], None] | None, stop: bool) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # not a submodule: offload hooks leave it alone
        self.keep, self.stop = keep, stop

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "block" not in self.__dict__:
                raise
            return getattr(self.__dict__["block"], name)

    def forward(self, *args, **kwargs):
        if self.keep is not None:
            self.keep(BlockInput(args, dict(kwargs)))
        if self.stop:
            raise _ReachedBlock
        return hidden_of(BlockInput(args, kwargs))


def block_output(out):
    """Blocks return their hidden states alone or first in a tuple, by transformers version."""
    return out[0] if isinstance(out, tuple) else out


def moved(item: BlockInput, device: torch.device, dtype: torch.dtype | None = None) -> BlockInput:
    """`item` on `device`, its floating tensors in `dtype` (None: as they are); pinned when it
    goes to host memory while a GPU is in use, so that copies to the GPU run asynchronously."""
    pin = device.type == "cpu" and torch.cuda.is_available()

    def move(value):
        if not isinstance(value, torch.Tensor):
            return value
        value = value.to(device, dtype) if dtype is not None and value.is_floating_point() else value.to(device)
        return value.pin_memory() if pin else value

    return BlockInput(*tree_map(move, (item.args, item.kwargs)))


def replay(block: nn.Module, inputs: list[BlockInput], device: torch.device | None = None) -> list[BlockInput]:
    """The block's outputs on each input, as the next block's inputs, kept where the inputs are;
    with `device`, each input is moved there for its run."""
    outputs = []
    with torch.inference_mode():
        for item in inputs:
            run = item if device is None else moved(item, device)
            out = block_output(block(*run.args, **run.kwargs))
            if device is not None:
                out = out.to(hidden_of(item).device)
            outputs.append(with_hidden(item, out))
    return outputs


def hidden_of(item: BlockInput) -> torch.Tensor:
    return item.args[0] if item.args else item.kwargs["hidden_states"]


def with_hidden(item: BlockInput, hidden: torch.Tensor) -> BlockInput:
    """`item` with other hidden states: what a block receives besides them is kept."""
    if item.args:
        return BlockInput((hidden,) + tuple(item.args[1:]), item.kwargs)
    return BlockInput((), {**item.kwargs, "hidden_states": hidden})


def dressed(items: list[BlockInput], kind: list[BlockInput]) -> list[BlockInput]:
    """Each item's hidden states with what else its batch gives a block of another `kind` (as
    `capture_kind_inputs` captured it: its mask and rotary table)."""
    return [with_hidden(template, hidden_of(item)) for item, template in zip(items, kind, strict=True)]


@dataclasses.dataclass
class KindInputs:
    """What each kind of a stack's blocks receives besides hidden states (`capture_kind_inputs`),
    without hidden states: a stream is dressed with it as each block receives it."""

    kinds: list[str] | None  # each block's kind; None: the stack's blocks all receive the same
    templates: dict[str, list[BlockInput]]

    def dress(self, items: list[BlockInput], index: int) -> list[BlockInput]:
        """`items` as block `index` of the stack receives them."""
        return items if self.kinds is None else dressed(items, self.templates[self.kinds[index]])


def stack_inputs(
    by_kind: dict[str, list[BlockInput]], kinds: list[str] | None, home: torch.device, dtype: torch.dtype | None = None
) -> tuple[list[BlockInput], KindInputs]:
    """The stack's first block's inputs (`capture_kind_inputs`' for its `kinds`) on `home`, floating
    tensors in `dtype` (None: as they are), and what else each kind receives, no hidden states held."""
    first = kinds[0] if kinds else ""
    captured = [moved(item, home, dtype) for item in by_kind.pop(first)]
    if not kinds:
        return captured, KindInputs(None, {})
    other = {kind: [moved(with_hidden(i, None), home, dtype) for i in items] for kind, items in by_kind.items()}
    return captured, KindInputs(kinds, {first: [with_hidden(item, None) for item in captured], **other})


def block_grams(
    block: nn.Module,
    groups: Sequence[Sequence[str]],
    inputs: list[BlockInput],
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
    ranks: Ranks = ALONE,
    batches: int | None = None,
) -> tuple[dict[str, GramStat], list[BlockInput]]:
    """Grams of each group's shared input, keyed by the group's first linear, and the block's outputs.

    Linears in one group read the same tensor (q/k/v, gate/up), so one Gram serves them all.
    Batches whose inputs hold NaN/Inf are left out of the Gram and counted. With several `ranks`,
    `inputs` are this rank's share of the run's `batches` (zoo.compression.ranks): the Grams are
    every rank's, the outputs this rank's.
    """
    chunks = ranks.chunks(len(inputs) if batches is None else batches)
    mine = [c for c in range(len(chunks)) if ranks.owner(c) == ranks.rank]
    starts = dict(zip(mine, itertools.accumulate((len(chunks[c]) for c in mine), initial=0), strict=False))
    outputs: list[BlockInput] = []
    keys = [group[0] for group in groups]

    def partial(c: int) -> list[torch.Tensor]:
        stats, out = _summed(block, keys, inputs[starts[c] : starts[c] + len(chunks[c])], dtype, device)
        outputs.extend(out)
        return [t for key in keys for t in (stats[key].gram, _counts(stats[key]))]

    def zeros() -> list[torch.Tensor]:
        empty = _empty_stats(block, keys, dtype)
        return [t for key in keys for t in (empty[key].gram, _counts(empty[key]))]

    total = summed_in_order(ranks, len(chunks), partial, zeros)
    stats = {}
    for key, gram, counts in zip(keys, total[::2], total[1::2], strict=True):
        tokens, nonfinite = (int(n) for n in counts.tolist())
        if tokens:  # none: every batch was NaN/Inf there, which the caller reports with the block's name
            gram /= tokens
        stats[key] = GramStat(gram, tokens, nonfinite)
    return stats, outputs


def _counts(stat: GramStat) -> torch.Tensor:
    """A partial Gram's counts as a tensor that travels and adds up with it (float64: exact to 2^53)."""
    return torch.tensor([stat.tokens, stat.nonfinite_batches], dtype=torch.float64, device=stat.gram.device)


def _empty_stats(block: nn.Module, keys: Sequence[str], dtype: torch.dtype) -> dict[str, GramStat]:
    stats = {}
    for key in keys:
        linear = block.get_submodule(key)
        stats[key] = GramStat(
            torch.zeros(linear.in_features, linear.in_features, dtype=dtype, device=linear.weight.device), 0, 0
        )
    return stats


def _summed(
    block: nn.Module, keys: Sequence[str], inputs: list[BlockInput], dtype: torch.dtype, device: torch.device | None
) -> tuple[dict[str, GramStat], list[BlockInput]]:
    """X^T X summed over `inputs`, batch after batch, not yet divided by the tokens; and the outputs."""
    stats = _empty_stats(block, keys, dtype)
    handles = []
    for key in keys:

        def accumulate(_module, args, _out, stat=stats[key]):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            if not torch.isfinite(x).all():
                stat.nonfinite_batches += 1
                return
            # Per-batch product in float32 (fast GEMM), summed across batches in float64.
            x = x.float()
            stat.gram += (x.mT @ x).to(dtype)
            stat.tokens += x.shape[0]

        handles.append(block.get_submodule(key).register_forward_hook(accumulate))
    try:
        outputs = replay(block, inputs, device)
    finally:
        for h in handles:
            h.remove()
    return stats, outputs
