"""End-to-end distillation under a fixed support: once every block is compressed (and healed), the
factors of the whole model are refined together so that its next-token distributions match the
16-bit model's (the KL divergence of its logits from the 16-bit model's). Healing fits each block's
outputs one at a time; it cannot see what the blocks' remaining errors do together to the
prediction. The mask, k and s stay as factorized, so the bytes are the unhealed variant's.

For models whose backbone (`model.base_model`) gives the hidden states their output embeddings
read, as transformers' causal LMs do: the 16-bit model's final hidden states are kept per sample
before compression (float32, on the host) and its logits remade from them by the same head, which
distillation leaves alone, so no 16-bit copy of the model is held beside the compressed one. The
model runs in a float32 working copy on the device, its compressed layers swapped for trainable
factors, and what they learn is written back into the model's own layers.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from zoo.compression.healing import CHECKED, HealedLinear, cut_rows, relative_adam, seeded_order, spread, units_of
from zoo.compression.layer import CompotLinear
from zoo.errors import ZooError

log = logging.getLogger(__name__)


def teacher_states(model: nn.Module, batches: Sequence[dict], device: torch.device) -> list[torch.Tensor]:
    """The 16-bit model's final hidden states, one (1, tokens, hidden) float32 tensor per sample, on
    the host: what distillation's targets are remade from."""
    work = _working_copy(model, device)
    backbone = backbone_of(work)
    states = []
    with torch.no_grad():
        for batch in tqdm(batches, desc="distill: the 16-bit outputs", unit="batch", leave=False):
            hidden = backbone(**_on(batch, device)).last_hidden_state
            states += [row.unsqueeze(0).cpu() for row in hidden.float()]
    return states


def distill(
    model: nn.Module,
    batches: Sequence[dict],
    teacher: Sequence[torch.Tensor],
    steps: int,
    lr: float,
    seed: int = 0,
    device: torch.device | None = None,
) -> bool:
    """Refine the factors of `model`'s CompotLinear layers in place by `steps` Adam steps on the KL
    divergence of its next-token distributions from the 16-bit model's (`teacher`: `teacher_states`
    of the same `batches`), one sample a step in a seeded order, each factor trained in its output's
    units (as in healing; measured on a few samples) and its step `lr` times its RMS. A few samples
    spread over the set (`CHECKED`, at most a quarter) are held out of the steps: it is kept only
    where it lowers the divergence on them. A whole model fits a few dozen samples far more closely
    than one block does: on SmolLM2 a step too large lowered the divergence on the samples it trained
    on and raised prose perplexity. Returns whether it was kept."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, CompotLinear)}
    if steps <= 0 or not layers:
        return False
    quantized = [name for name, layer in layers.items() if layer.quantized or layer.layout != "stored"]
    if quantized:
        raise ZooError(
            f"distillation refines 16-bit stored factors; {quantized[0]} is quantized or in an inference layout"
        )
    samples = [row for batch in batches for row in _rows(batch)]
    if len(samples) != len(teacher):
        raise ZooError(f"distillation has {len(teacher)} 16-bit outputs for {len(samples)} calibration samples")
    device = device or next(model.parameters()).device
    work = _working_copy(model, device)
    backbone, head = backbone_of(work), work.get_output_embeddings()
    checked = spread(len(samples), max(1, min(CHECKED, len(samples) // 4)))
    fitted = [i for i in range(len(samples)) if i not in checked] or checked
    measured = {name: work.get_submodule(name) for name in layers}
    units = _output_units(backbone, measured, (_on(samples[fitted[j]], device) for j in spread(len(fitted))))
    trained = {}
    for name, layer in layers.items():
        support = layer.support()
        trained[name] = HealedLinear(
            layer.dictionary.mT,
            layer.dense_codes().mT,
            None if support is None else support.mT,
            layer.bias,
            units[name],
        ).to(device)
        work.set_submodule(name, trained[name])
    optimizer = relative_adam(trained.values(), lr)
    before = _mean_divergence(backbone, head, samples, teacher, checked, device)
    order = seeded_order(len(fitted), seed)
    for _ in tqdm(range(steps), desc="distill", unit="step", leave=False):
        i = fitted[next(order)]
        loss = divergence(backbone, head, _on(samples[i], device), teacher[i].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = _mean_divergence(backbone, head, samples, teacher, checked, device)
    if not after < before:
        log.warning("distillation raised the divergence from the 16-bit model (%.4g to %.4g): not kept", before, after)
        return False
    stored = {name: _stored(trained[name], layer) for name, layer in layers.items()}
    bad = next((name for name, tensors in stored.items() if not all(t.isfinite().all() for t in tensors)), None)
    if bad is not None:
        log.warning("distillation took %s's factors beyond %s: not kept", bad, layers[bad].storage_dtype)
        return False
    with torch.no_grad():
        for name, (dictionary, values) in stored.items():
            layers[name].dictionary.copy_(dictionary)
            layers[name].code_values.copy_(values)
    log.info("distillation: divergence from the 16-bit model %.4g -> %.4g", before, after)
    return True


def _output_units(
    backbone: nn.Module, layers: dict[str, CompotLinear], samples: Iterable[dict]
) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
    """Each layer's `output_units`, from its inputs' and atoms' power on a few samples (no Grams
    are kept this late; a forward pass gives their diagonals): a loud input channel would otherwise
    move the output far more per step than a quiet one, as in healing. A layer these samples never
    reach (an expert no token was routed to) gets None: it trains as it is."""
    inputs: dict[str, torch.Tensor] = {}
    atoms: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(layer: CompotLinear, args: tuple) -> None:
            x = args[0].detach().flatten(0, -2).float()
            inputs[name] = inputs.get(name, 0) + x.pow(2).sum(0)
            atoms[name] = atoms.get(name, 0) + (x @ layer.dictionary.float().mT).pow(2).sum(0)

        return hook

    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for sample in samples:
                backbone(**sample)
    finally:
        for handle in handles:
            handle.remove()
    return {name: units_of(inputs[name], atoms[name]) if name in inputs else None for name in layers}


def divergence(backbone: nn.Module, head: nn.Module, sample: dict, target: torch.Tensor) -> torch.Tensor:
    """KL(16-bit || model) of the next-token distributions, mean over one sample's attended tokens;
    `target`: the 16-bit model's final hidden states for it."""
    hidden = backbone(**sample).last_hidden_state
    ours = F.log_softmax(head(hidden).float(), dim=-1)
    with torch.no_grad():
        theirs = F.log_softmax(head(target.to(hidden.dtype)).float(), dim=-1)
    per_token = F.kl_div(ours, theirs, reduction="none", log_target=True).sum(-1)
    mask = sample.get("attention_mask")
    return per_token.mean() if mask is None else per_token[mask.bool()].mean()


def _mean_divergence(backbone, head, samples, teacher, indices, device) -> float:
    with torch.no_grad():
        values = [divergence(backbone, head, _on(samples[i], device), teacher[i].to(device)).item() for i in indices]
    return math.fsum(values) / len(values)


def _stored(trained: HealedLinear, layer: CompotLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained factors in the layer's stored form: (k, in) dictionary and each output's kept codes."""
    dictionary, codes = trained.factors()
    codes = codes.mT  # (out, k)
    if trained.support is not None:
        codes = codes[trained.support.mT].reshape(layer.out_features, layer.s)
    return dictionary.mT.to(layer.storage_dtype).cpu(), codes.to(layer.storage_dtype).cpu()


def backbone_of(model: nn.Module) -> nn.Module:
    """The module whose last hidden states the output embeddings read; a ZooError where there is none."""
    backbone = model.base_model
    if backbone is model or model.get_output_embeddings() is None:
        raise ZooError(
            f"{type(model).__name__} has no backbone and output head apart: distillation reads the logits "
            "that head makes of the backbone's hidden states"
        )
    return backbone


def _working_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in float32 on `device`, its tensors copied straight there (a whole second copy on the
    host would be the model's size again); tied weights stay tied."""

    def copied(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device, torch.float32 if t.is_floating_point() else None, copy=True)

    memo = {id(p): nn.Parameter(copied(p), requires_grad=False) for p in model.parameters()}
    memo |= {id(b): copied(b) for b in model.buffers()}
    return copy.deepcopy(model, memo).eval()


def _rows(batch: dict) -> list[dict]:
    """A calibration batch as single samples: tensors cut along the batch's first dimension."""
    return cut_rows(batch, next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])


def _on(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
