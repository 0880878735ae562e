"""GPTQ-quantized tensors as a module stores them, and the dense GPTQ layer.

A quantized (rows, width) matrix `name` is three tensors, `name_q`, `name_scales` and
`name_zeros`, in the layout `zoo.methods.layout.quantized_tensors` gives (and the file checks
and eq. 11's accounting read).

At run time nothing is kept wider than it computes in: on CUDA (`kernel.applies`) the layers
multiply from these packed bytes, dequantized tile by tile inside the kernel; elsewhere they
are dequantized once, at `to_inference`, into the 16-bit tensors they stand for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.compression import kernel
from zoo.engine.gptq import Quantized, dequantize
from zoo.errors import ZooError
from zoo.methods.gptq import GPTQ
from zoo.methods.layout import PACKED, QUANTIZED_PARTS, pack_bits, quantized_tensors


def packed_tensor(values: torch.Tensor, bits: int) -> torch.Tensor:
    """`zoo.methods.layout.pack_bits` of a tensor's values, as a CPU uint8 tensor."""
    return torch.from_numpy(pack_bits(values.detach().cpu().numpy(), bits))


def unpack_bits(packed: torch.Tensor, bits: int, shape: tuple[int, ...], skip: int = 0) -> torch.Tensor:
    """Inverse of `pack_bits`: the integers of `shape` starting `skip` integers into `packed`,
    computed on the packed tensor's device."""
    count = math.prod(shape)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(-1)[skip * bits : (skip + count) * bits]
    if bits == 1:
        return stream.reshape(shape)
    weights = (1 << torch.arange(bits, device=packed.device)).to(torch.uint8)
    return (stream.reshape(count, bits) * weights).sum(dim=1, dtype=torch.uint8).reshape(shape)


def register_quantized(
    module: nn.Module,
    name: str,
    rows: int,
    width: int,
    bits: int,
    group_size: int,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> None:
    """Empty buffers for a quantized (rows, width) matrix `name` (the shapes a checkpoint must match)."""
    for key, stored in quantized_tensors(name, rows, width, bits, group_size).items():
        kind = torch.uint8 if stored.kind == PACKED else dtype
        module.register_buffer(key, torch.empty(stored.shape, dtype=kind, device=device))


def fill_quantized(module: nn.Module, name: str, quantized: Quantized) -> None:
    """Copy the engine's result into the buffers `register_quantized` made."""
    with torch.no_grad():
        getattr(module, f"{name}_q").copy_(packed_tensor(quantized.q, quantized.bits))
        getattr(module, f"{name}_scales").copy_(quantized.scales)
        getattr(module, f"{name}_zeros").copy_(packed_tensor(quantized.zeros, quantized.bits))


def dequantized(module: nn.Module, name: str, rows: int, width: int, bits: int, group_size: int) -> torch.Tensor:
    """The (rows, width) matrix `name` in its scales' 16-bit dtype, on their device."""
    scales = getattr(module, f"{name}_scales")
    q = unpack_bits(getattr(module, f"{name}_q"), bits, (rows, width))
    zeros = unpack_bits(getattr(module, f"{name}_zeros"), bits, tuple(scales.shape))
    return dequantize(q, scales, zeros, group_size).to(scales.dtype)


def packed(module: nn.Module, name: str, width: int, bits: int, group_size: int) -> kernel.Packed:
    """The buffers of the quantized (rows, width) matrix `name`, as the kernel reads them (no copy)."""
    q, scales, zeros = (getattr(module, f"{name}_{part}") for part in QUANTIZED_PARTS)
    return kernel.Packed(q, scales, zeros, bits, group_size, width)


def quantized_bytes(module: nn.Module, name: str) -> int:
    return sum(
        getattr(module, f"{name}_{part}").numel() * getattr(module, f"{name}_{part}").element_size()
        for part in QUANTIZED_PARTS
    )


def drop_quantized(module: nn.Module, name: str) -> None:
    for part in QUANTIZED_PARTS:
        delattr(module, f"{name}_{part}")


class StoredLayer(nn.Module):
    """A compressed layer, which holds its stored form (what a checkpoint saves) until
    `to_inference` trades it for an inference layout (`layout` says which)."""

    layout: str

    def _stored_with_bias(
        self, out_features: int, bias: bool, dtype: torch.dtype | None, device: torch.device | str | None
    ) -> None:
        """An empty bias if the layer has one; the layer holds its stored form."""
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )
        self.layout = "stored"

    def require_factors(self, what: str) -> None:
        if self.layout != "stored":
            raise ZooError(
                f"{what}: {self} runs from its {self.layout} inference layout and no longer holds its stored "
                "form; use the checkpoint it was loaded from (zoo.load(path, inference=False) keeps it)"
            )


class QuantLinear(StoredLayer):
    """An nn.Linear kept dense and GPTQ-quantized (the `--method gptq` baseline, and the matrices
    allocation leaves dense in a quantized run). It computes from the packed form: on CUDA through
    the kernel, for good; elsewhere dequantizing per call, until `to_inference` dequantizes it once
    into a 16-bit weight."""

    method = GPTQ.name
    k = s = 0
    code_mask = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool = False,
        storage_dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if min(in_features, out_features, group_size) < 1 or not 1 <= bits <= 8:
            raise ZooError(
                f"QuantLinear: need positive sizes and 1..8 bits, got in={in_features}, out={out_features}, "
                f"bits={bits}, group_size={group_size}"
            )
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self.storage_dtype = storage_dtype
        register_quantized(self, "weight", out_features, in_features, bits, group_size, storage_dtype, device)
        self._stored_with_bias(out_features, bias, bias_dtype, device)

    @classmethod
    def from_quantized(cls, quantized: Quantized, bias: torch.Tensor | None) -> QuantLinear:
        out_features, in_features = quantized.q.shape
        layer = cls(
            in_features,
            out_features,
            quantized.bits,
            quantized.group_size,
            bias is not None,
            quantized.scales.dtype,
            device=quantized.q.device,
            bias_dtype=None if bias is None else bias.dtype,
        )
        fill_quantized(layer, "weight", quantized)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias.detach())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        return dequantized(self, "weight", self.out_features, self.in_features, self.bits, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.layout == "stored" and kernel.applies(x, self.weight_q):
            out = kernel.quantized_matmul(x, packed(self, "weight", self.in_features, self.bits, self.group_size))
            return out if bias is None else out + bias
        weight = self.weight if self.layout == "dense" else self.dequantized_weight()
        return F.linear(x, weight.to(x.dtype), bias)

    def inference_target(self) -> tuple[str, torch.Tensor]:
        """Where the kernel applies, the packed form itself; else the empty 16-bit weight to fill."""
        device = self.weight_scales.device
        if kernel.applies_on(device):
            return "stored", torch.empty(0, device=device)
        return "dense", torch.empty(self.out_features, self.in_features, dtype=self.storage_dtype, device=device)

    def to_inference(self, target: tuple[str, torch.Tensor] | None = None) -> str:
        """Keep the packed form where the kernel multiplies from it; else dequantize once into the
        16-bit weight (the base layer's size at most) and drop the packed form."""
        if self.layout == "stored":
            layout, tensor = target or self.inference_target()
            if layout == "stored":
                return layout
            with torch.no_grad():
                tensor.copy_(self.dequantized_weight())
            drop_quantized(self, "weight")
            self.weight = nn.Parameter(tensor, requires_grad=False)
            self.layout = "dense"
        return self.layout

    def stored_bits(self) -> int:
        self.require_factors("stored_bits")
        return 8 * quantized_bytes(self, "weight")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}, "
            f"bits={self.bits}, group_size={self.group_size}, layout={self.layout}, bias={self.bias is not None}"
        )
