"""CompotLinear: the drop-in for nn.Linear that a compressed checkpoint holds.

y = (x A) C + b, for every factorizing method of zoo.methods. What is stored is what eq. 11
counts, in the layout of `zoo.methods.layout.stored_tensors`: the dictionary A^T (k, in), each
output's kept codes (all k, or for a masked method its s values and the (out, k) support
bitmask), in 16 bits or GPTQ-quantized and packed (zoo.compression.quantized).

A layer computes from the stored form (on CUDA through the kernels of zoo.compression.kernel,
elsewhere through dense codes rebuilt per call and dropped) until `to_inference` gives it the
layout its device multiplies fastest that takes no more memory than the base layer's weight in
the same dtype. On CUDA that is the stored form itself for COMPOT's codes and for quantized
factors, which the kernels dequantize in registers: nothing wider than stored is allocated.
Elsewhere quantized factors are first dequantized once into 16 bits; then come the factors with
dense 16-bit codes where they are clearly smaller than the weight, else the product itself. A
layer in such a layout no longer holds its factors.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from zoo import methods
from zoo.compression import kernel
from zoo.compression.quantized import (
    QuantLinear,
    StoredLayer,
    dequantized,
    drop_quantized,
    fill_quantized,
    packed,
    packed_tensor,
    quantized_bytes,
    register_quantized,
    unpack_bits,
)
from zoo.engine import Factorization
from zoo.engine.gptq import QuantizedFactors
from zoo.errors import ZooError

FLOAT16_MAX = torch.finfo(torch.float16).max
STORAGE_DTYPES = (torch.float16, torch.bfloat16)
POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int32)
LAYOUTS = ("stored", "factors", "dense")
# Dense codes are kept only where the pair takes at most this share of the weight's bytes:
# two products on nearly as many bytes run slower than one.
FACTORS_MAX_SHARE = 0.75
# Atoms are padded (zero rows and columns) to a multiple of this: CPU GEMM libraries build and
# keep code per distinct shape (about 1 MiB each with oneDNN), so a hundred distinct k would cost
# more memory than the factors save.
ATOMS_MULTIPLE = 64
# Layouts are derived a few rows of codes at a time: temporaries of one size, reused, leave no
# freed memory behind that the C allocator keeps resident.
CHUNK_BYTES = 1 << 18


class CompotLinear(StoredLayer):
    """An nn.Linear stored as a factorization: a dictionary and codes, sparse under a mask for a
    masked method (COMPOT), dense otherwise (a low-rank pair).

    The empty shell (this constructor) is what loaders build before filling it from a
    checkpoint; `from_factorization` builds a filled one from the engine's output.
    """

    def __init__(  # noqa: PLR0913 (nn.Linear's arguments and the stored form's sizes, as a loader reads them)
        self,
        in_features: int,
        out_features: int,
        k: int,
        s: int,
        method: str = "compot",
        bias: bool = False,
        storage_dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype | None = None,
        bits: int = 16,
        group_size: int = 0,
    ) -> None:
        super().__init__()
        spec = methods.get(method)
        if not spec.factorizes:
            raise ZooError(f"CompotLinear: method {method!r} stores no factors")
        if storage_dtype not in STORAGE_DTYPES:
            raise ZooError(f"CompotLinear: storage dtype must be float16 or bfloat16, got {storage_dtype}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (in_features, out_features, k, s)):
            raise ZooError(
                f"CompotLinear: sizes must be integers, got in={in_features!r}, out={out_features!r}, k={k!r}, s={s!r}"
            )
        atoms = spec.max_atoms(in_features, out_features)
        if not 1 <= s <= k <= atoms or min(in_features, out_features) < 1:
            raise ZooError(f"CompotLinear: {method} needs 1 <= s <= k <= {atoms} atoms, got k={k}, s={s}")
        if not spec.masked and s != k:
            raise ZooError(f"CompotLinear: {method} keeps every code (s = k), got k={k}, s={s}")
        if bits != 16 and (not 1 <= bits <= 8 or group_size < 1):
            raise ZooError(f"CompotLinear: quantized factors need 1..8 bits and a group size, got {bits}, {group_size}")
        self.in_features, self.out_features, self.k, self.s, self.method = in_features, out_features, k, s, method
        self.bits, self.group_size, self.storage_dtype = bits, group_size, storage_dtype
        width = spec.width(k, s)
        if bits == 16:
            self.dictionary = nn.Parameter(
                torch.empty(k, in_features, dtype=storage_dtype, device=device), requires_grad=False
            )
            self.code_values = nn.Parameter(
                torch.empty(out_features, width, dtype=storage_dtype, device=device), requires_grad=False
            )
        else:  # GPTQ-quantized factors: packed integers, scales and zero points (zoo.compression.quantized)
            register_quantized(self, "dictionary", k, in_features, bits, group_size, storage_dtype, device)
            register_quantized(self, "code_values", out_features, width, bits, group_size, storage_dtype, device)
        if spec.masked:
            self.register_buffer(
                "code_mask", torch.empty(math.ceil(out_features * k / 8), dtype=torch.uint8, device=device)
            )
        else:
            self.code_mask = None
        self._stored_with_bias(out_features, bias, bias_dtype, device)

    @classmethod
    def from_factorization(
        cls,
        f: Factorization,
        bias: torch.Tensor | None,
        storage_dtype: torch.dtype = torch.float16,
        quantized: QuantizedFactors | None = None,
    ) -> CompotLinear:
        """Storage rounds the factors to 16 bits; float16 falls back to bfloat16 where values overflow it.
        With `quantized` (GPTQ of the same factors) the layer stores those instead, with their scales' dtype."""
        if f.is_dense:
            raise ZooError(f"a dense {f.out_features}x{f.in_features} matrix has no factors to store ({f.reason})")
        codes_t = f.codes.mT  # (out, k)
        if quantized is not None:
            storage_dtype = quantized.dictionary.scales.dtype
        elif storage_dtype == torch.float16 and max(f.dictionary.abs().max(), codes_t.abs().max()) > FLOAT16_MAX:
            storage_dtype = torch.bfloat16
        layer = cls(
            f.in_features,
            f.out_features,
            f.k,
            f.s,
            f.method,
            bias is not None,
            storage_dtype,
            device=f.dictionary.device,
            bias_dtype=None if bias is None else bias.dtype,
            bits=16 if quantized is None else quantized.dictionary.bits,
            group_size=0 if quantized is None else quantized.dictionary.group_size,
        )
        with torch.no_grad():
            if quantized is not None:
                fill_quantized(layer, "dictionary", quantized.dictionary)
                fill_quantized(layer, "code_values", quantized.codes)
            else:
                layer.dictionary.copy_(f.dictionary.mT)
            if layer.code_mask is not None:
                support_t = f.support.mT
                per_row = support_t.sum(dim=1)
                if not bool((per_row == f.s).all()):
                    raise ZooError(
                        f"factorization support must keep exactly s={f.s} codes per output, "
                        f"found {per_row.min().item()}..{per_row.max().item()}"
                    )
                if quantized is None:
                    layer.code_values.copy_(codes_t[support_t].reshape(f.out_features, f.s))
                layer.code_mask.copy_(packed_tensor(support_t, 1))
            elif quantized is None:
                layer.code_values.copy_(codes_t)
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def dense_codes(self) -> torch.Tensor:
        """(out, k) codes in storage dtype: scattered from values + mask for COMPOT."""
        self.require_factors("dense_codes")
        if self.code_mask is not None:
            marked = int(POPCOUNT.to(self.code_mask.device)[self.code_mask.long()].sum())
            if marked != self.code_values.numel():
                raise ZooError(
                    f"{self}: code_mask marks {marked} codes but code_values holds "
                    f"{self.code_values.numel()}; the checkpoint is corrupt"
                )
        return torch.cat([self._code_rows(start, stop) for start, stop in self._chunks()])

    @property
    def quantized(self) -> bool:
        return self.bits != 16

    def _width(self) -> int:
        return methods.get(self.method).width(self.k, self.s)

    def _dequantized_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 16-bit dictionary (k, in) and code values the packed factors stand for."""
        return (
            dequantized(self, "dictionary", self.k, self.in_features, self.bits, self.group_size),
            dequantized(self, "code_values", self.out_features, self._width(), self.bits, self.group_size),
        )

    def _unpacked(self) -> CompotLinear:
        """A 16-bit twin of a quantized layer, sharing its mask and bias: what it computes per call."""
        twin = CompotLinear(
            self.in_features, self.out_features, self.k, self.s, self.method, False, self.storage_dtype, "meta"
        )
        twin.dictionary, twin.code_values = (nn.Parameter(t, requires_grad=False) for t in self._dequantized_factors())
        twin.code_mask, twin.bias = self.code_mask, self.bias
        return twin

    def dequantize_(self) -> None:
        """Trade quantized factors for the 16-bit ones they stand for, in place: the stored form every
        inference layout derives from (no wider than the dtype it computes in)."""
        if self.quantized:
            dictionary, values = self._dequantized_factors()
            drop_quantized(self, "dictionary")
            drop_quantized(self, "code_values")
            self.dictionary = nn.Parameter(dictionary, requires_grad=False)
            self.code_values = nn.Parameter(values, requires_grad=False)
            self.bits, self.group_size = 16, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "stored" and self.quantized:
            return self._packed_forward(x) if kernel.applies(x, self.dictionary_q) else self._unpacked()(x)
        bias = None if self.bias is None else _as(self.bias, x)
        if self.layout == "dense":
            return F.linear(x, _as(self.weight, x), bias)
        if self.layout == "factors":
            return F.linear(F.linear(x, _as(self.dictionary, x)), _as(self.codes, x), bias)
        hidden = F.linear(x, _as(self.dictionary, x))
        if self.code_mask is not None and kernel.applies(hidden, self.code_values):
            out = kernel.sparse_codes_matmul(hidden, self.code_values, self.code_mask, self.k)
            return out if bias is None else out + bias
        codes = self.code_values if self.code_mask is None else self.dense_codes()
        return F.linear(hidden, _as(codes, x), bias)

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both products through the kernels, straight from the packed factors."""
        dictionary = packed(self, "dictionary", self.in_features, self.bits, self.group_size)
        codes = packed(self, "code_values", self._width(), self.bits, self.group_size)
        hidden = kernel.quantized_matmul(x, dictionary)
        if self.code_mask is None:
            out = kernel.quantized_matmul(hidden, codes)
        else:
            out = kernel.sparse_codes_matmul(hidden, codes, self.code_mask, self.k)
        return out if self.bias is None else out + _as(self.bias, out)

    def inference_target(self) -> tuple[str, torch.Tensor]:
        """The layout `to_inference` takes on this device, and the empty tensor it fills: the
        padded dense codes, or the product; for the kernels, nothing to derive."""
        device = next(self.buffers() if self.quantized else self.parameters()).device
        if (self.quantized or self.code_mask is not None) and kernel.applies_on(device):
            return "stored", torch.empty(0, device=device)  # the kernels multiply from the stored form itself
        atoms = min(math.ceil(self.k / ATOMS_MULTIPLE) * ATOMS_MULTIPLE, self.in_features, self.out_features)
        atoms = max(atoms, self.k)
        like = {"dtype": self.storage_dtype, "device": device}
        if atoms * (self.in_features + self.out_features) <= FACTORS_MAX_SHARE * self.in_features * self.out_features:
            return "factors", torch.zeros(self.out_features, atoms, **like)
        return "dense", torch.empty(self.out_features, self.in_features, **like)

    def to_inference(self, target: tuple[str, torch.Tensor] | None = None) -> str:
        """Trade the stored form for the layout this layer's device runs best (see the module
        docstring; `target`: from `inference_target`, made ahead) and return its name. The
        factors are gone afterwards: nothing can save it."""
        if self.layout != "stored":
            return self.layout
        layout, tensor = target or self.inference_target()
        if layout == "stored":
            return layout
        self.dequantize_()
        dictionary = self.dictionary
        with torch.no_grad():
            if layout == "factors":
                for start, stop in self._chunks():
                    tensor[start:stop, : self.k] = self._code_rows(start, stop)
                self.codes = nn.Parameter(tensor, requires_grad=False)
                dictionary = F.pad(dictionary, (0, 0, 0, tensor.shape[1] - self.k))
            else:
                # in float32, rounded once; unlike 16-bit CPU GEMMs, float32 ones keep no code per shape
                wide = dictionary.float()
                for start, stop in self._chunks():
                    tensor[start:stop] = self._code_rows(start, stop).float() @ wide
                self.weight = nn.Parameter(tensor, requires_grad=False)
                dictionary = None
        del self.dictionary, self.code_values, self.code_mask
        if dictionary is not None:
            self.dictionary = nn.Parameter(dictionary, requires_grad=False)
        self.layout = layout
        return layout

    def _chunks(self) -> list[tuple[int, int]]:
        """Row ranges whose 16-bit codes take about CHUNK_BYTES."""
        rows = max(1, CHUNK_BYTES // (2 * self.k))
        return [(i, min(i + rows, self.out_features)) for i in range(0, self.out_features, rows)]

    def _mask_rows(self, start: int, stop: int) -> torch.Tensor:
        first, last = start * self.k, stop * self.k
        return unpack_bits(self.code_mask[first // 8 : -(-last // 8)], 1, (stop - start, self.k), first % 8).bool()

    def support(self) -> torch.Tensor | None:
        """(out, k) bool: the codes each output keeps; None where it keeps all (a low-rank pair)."""
        self.require_factors("support")
        if self.code_mask is None:
            return None
        return torch.cat([self._mask_rows(start, stop) for start, stop in self._chunks()])

    def kept_per_row(self) -> torch.Tensor:
        """How many codes the mask keeps in each output row (all k for SVD-LLM)."""
        self.require_factors("kept_per_row")
        if self.code_mask is None:
            return torch.full((self.out_features,), self.k)
        return torch.cat([self._mask_rows(start, stop).sum(1) for start, stop in self._chunks()])

    def _code_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of the dense codes, from the stored form (exactly s kept per row)."""
        if self.code_mask is None:
            return self.code_values[start:stop]
        mask = self._mask_rows(start, stop)
        codes = torch.zeros(stop - start, self.k, dtype=self.code_values.dtype, device=self.code_values.device)
        return codes.masked_scatter_(mask, self.code_values[start:stop])

    def stored_bits(self) -> int:
        """Bits of the factors as stored (bias excluded, as for the dense layer it replaces)."""
        self.require_factors("stored_bits")
        mask = 0 if self.code_mask is None else self.code_mask.numel()
        if self.quantized:
            return 8 * (quantized_bytes(self, "dictionary") + quantized_bytes(self, "code_values") + mask)
        size = self.dictionary.element_size()
        return 8 * (size * (self.dictionary.numel() + self.out_features * self._width()) + mask)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}, "
            f"k={self.k}, s={self.s}, layout={self.layout}, dtype={str(self.storage_dtype).removeprefix('torch.')}, "
            + (f"bits={self.bits}, group_size={self.group_size}, " if self.quantized else "")
            + f"bias={self.bias is not None}"
        )


def _as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` in `like`'s dtype for this call only: no copy wider than stored is ever kept."""
    return t if t.dtype == like.dtype else t.to(like.dtype)


def to_inference(model: nn.Module) -> dict[str, int]:
    """Every CompotLinear of `model` in its inference layout; how many layers took each.

    A checkpoint loaded from a memory-mapped file keeps the whole map, and every page of it read
    so far, for as long as any tensor views it: the other tensors on CPU are copied out, so that
    the pages of the dropped factors leave resident memory with the map."""
    layers = [m for m in model.modules() if isinstance(m, COMPRESSED)]
    pending = [layer for layer in layers if layer.layout == "stored"]
    # every kept tensor first, then the temporaries: freed, they sit above what is kept, and the
    # C allocator returns them instead of keeping holes between kept tensors
    targets = [layer.inference_target() for layer in pending]
    for layer, target in zip(pending, targets, strict=True):
        layer.to_inference(target)
    counts = dict.fromkeys(LAYOUTS, 0) | Counter(layer.layout for layer in layers)
    if counts["stored"] < sum(counts.values()):
        derived = {
            id(t) for m in model.modules() if isinstance(m, COMPRESSED) for n, t in m.named_parameters() if n != "bias"
        }
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                if id(t) not in derived and t.device.type == "cpu":
                    t.data = t.data.clone()
    return counts


# Every module a compressed checkpoint swaps in for an nn.Linear.
COMPRESSED = (CompotLinear, QuantLinear)
