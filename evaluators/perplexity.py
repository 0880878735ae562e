"""Perplexity by the SVD-LLM protocol: the text tokenized once, cut into non-overlapping
windows of `seq_len` tokens (the ragged tail dropped), token-mean NLL over all windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from zoo.errors import ZooError


def perplexity(model, tokenizer, text: str, seq_len: int = 2048, max_windows: int | None = None) -> dict:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    windows = ids.numel() // seq_len
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise ZooError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in tqdm(range(windows), desc="perplexity", unit="window", leave=False):
            chunk = ids[i * seq_len : (i + 1) * seq_len][None].to(device)
            logits = model(chunk, use_cache=False).logits.float()
            if not torch.isfinite(logits).all():
                raise ZooError(f"non-finite logits in perplexity window {i} (tokens {i * seq_len}..{(i + 1) * seq_len})")
            nll = F.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum").item()
            total += nll
            count += seq_len - 1
    mean = total / count
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": count, "windows": windows, "seq_len": seq_len}
