"""Perplexity by the SVD-LLM protocol: the text tokenized once, cut into non-overlapping
windows of `seq_len` tokens (the ragged tail dropped), token-mean NLL over all windows.

Every window is scored the same way for the base and the compressed model, so their
perplexities compare directly; a non-finite window is an error, never skipped, because
skipping it would flatter a broken compressed model.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from zoo.errors import ZooError

log = logging.getLogger(__name__)


def _device(model: torch.nn.Module) -> torch.device:
    """Where the inputs must go: the device of the model's first parameter (CPU if none)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _clip_seq_len(model: torch.nn.Module, seq_len: int) -> int:
    """Clip to the model's position limit: past it, positions are garbage or an index error.

    A warning, not an error: models with shorter contexts (GPT-2's 1024, Whisper's 448)
    still get a perplexity, and the seq_len actually used is in the result for the record.
    """
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        warnings.warn(
            f"perplexity seq_len {seq_len} exceeds the model's max_position_embeddings "
            f"{limit}; using windows of {limit} tokens",
            stacklevel=3,
        )
        return int(limit)
    return seq_len


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    seq_len: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
) -> dict:
    """Perplexity of `model` on `text` in windows of `seq_len` tokens.

    Returns {"perplexity", "nll" (mean per predicted token), "tokens" (predicted tokens),
    "windows", "seq_len" (after clipping to the model's position limit)}.
    """
    if seq_len < 2:
        raise ZooError(f"perplexity seq_len must be at least 2 (one predicted token), got {seq_len}")
    if batch_size < 1:
        raise ZooError(f"perplexity batch_size must be at least 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise ZooError(f"perplexity max_windows must be at least 1 or None, got {max_windows}")
    seq_len = _clip_seq_len(model, seq_len)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    windows = ids.numel() // seq_len
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise ZooError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    windowed = ids[: windows * seq_len].view(windows, seq_len)
    device = _device(model)
    total = 0.0
    with torch.inference_mode():
        for start in tqdm(range(0, windows, batch_size), desc="perplexity", unit="batch", leave=False):
            batch = windowed[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            bad = ~torch.isfinite(logits).flatten(1).all(dim=1)
            if bad.any():
                raise ZooError(f"non-finite logits in perplexity window {start + int(bad.nonzero()[0])}")
            nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").sum(dim=1)
            bad = ~torch.isfinite(nll)
            if bad.any():
                raise ZooError(f"non-finite loss in perplexity window {start + int(bad.nonzero()[0])}")
            total += nll.double().sum().item()
    tokens = windows * (seq_len - 1)
    mean = total / tokens
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": tokens, "windows": windows, "seq_len": seq_len}
