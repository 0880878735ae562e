"""One row per compressed projection: what it became and what it costs, in bits as stored
and as eq. 11 counts them. Torch-free, so the checkpoint's record, cards and scorecards read it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerRecord:
    name: str  # qualified module name
    shape: tuple[int, int]  # (out_features, in_features)
    method: str  # compot | svd-llm | gptq (dense, quantized) | dense
    target_cr: float  # what allocation asked of this matrix (0.0: keep dense)
    k: int
    s: int
    storage_dtype: str | None  # of the factors; None for a dense matrix
    stored_bits: int  # the factors' tensors as saved (a dense matrix: its 16-bit weight)
    eq11_bits: (
        int  # 16mk + 16sn + kn (COMPOT), 16(m + n)k (SVD-LLM), 16mn (dense); quantized: storage.quantized_factor_bits
    )
    damping: float
    relative_error: float  # calibration-weighted, ||L^T (W - W^)||^2 / ||L^T W||^2
    gram_tokens: int
    nonfinite_batches: int
    note: str = ""
    bits: int = 16  # of the stored values; below 16, GPTQ-quantized with a scale and zero point per group
    group_size: int = 0

    @property
    def dense_bits(self) -> int:
        """The 16-bit dense matrix every CR is measured against."""
        return 16 * self.shape[0] * self.shape[1]

    @property
    def cr(self) -> float:
        return 1.0 - self.eq11_bits / self.dense_bits

    def to_dict(self) -> dict:
        return {**asdict(self), "cr": self.cr}

    @classmethod
    def from_dict(cls, data: dict) -> LayerRecord:
        return cls(**{k: v for k, v in data.items() if k != "cr"} | {"shape": tuple(data["shape"])})


def achieved_cr(layers: list[LayerRecord], bits: str = "stored_bits") -> float:
    """1 - stored / 16-bit dense bits over every target projection, dense-kept ones included;
    `bits="eq11_bits"` counts what eq. 11 predicts instead of what was stored."""
    return 1.0 - sum(getattr(r, bits) for r in layers) / sum(r.dense_bits for r in layers)
