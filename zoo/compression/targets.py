"""What an adapter hands the compressor: the blocks and linears to compress, and the batches
that calibrate them. Plain containers, so adapters depend on nothing of the algorithm."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Stack:
    """Blocks that feed each other in order, and the linears of each block to compress,
    grouped by the input they share (q/k/v; gate/up). A model may have several stacks
    (Whisper's encoder and decoder); each is calibrated from its own first block.

    `kinds`: each block's kind where blocks differ in what they receive besides the hidden states
    (Gemma 3's sliding and full attention layers: their own mask and rotary table); None: all alike."""

    name: str
    blocks: list[tuple[str, nn.Module]]  # (qualified name, module), in calibration order
    groups: list[list[str]]  # linear names relative to a block
    kinds: list[str] | None = None


@dataclass
class CalibrationData:
    batches: list[dict]  # model(**batch) inputs
    name: str  # the set: a catalogue name or a local path
    fingerprint: str  # digest of the exact inputs
    tokens: int
