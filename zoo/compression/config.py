"""What a compression run is asked to do. Each setting carries its default, its help and its
check here, once (as PEFT's configs do); the CLI's options, the nightly manifest's keys and the
command line recorded with a variant are all read from these fields."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zoo import methods
from zoo.errors import ZooError

QUANT_BITS = (2, 3, 4, 8)  # zoo.engine.gptq.SUPPORTED_BITS, torch-free here
QUANTIZE = re.compile(r"gptq-w(\d+)")
STORAGE_DTYPES = ("float16", "bfloat16")
DTYPES = ("bfloat16", "float16", "float32")


def setting(
    default: Any,
    help: str,
    check: Callable[[Any], str | None] | None = None,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    runtime: bool = False,
) -> Any:
    """A dataclass field with its help text; `check(value)` returns what is wrong or None;
    `choices` may be a function, read when checked (the method table grows as methods register);
    `runtime` settings (where it runs) change how fast, not what is computed."""
    return dataclasses.field(
        default=default, metadata={"help": help, "check": check, "choices": choices, "runtime": runtime}
    )


def between(lo: float, hi: float, lo_open: bool = True, hi_open: bool = True) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        if isinstance(value, (int, float)) and math.isfinite(value) and above and below:
            return None
        return f"must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    return check


def choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """A setting's allowed values, as of now."""
    allowed = f.metadata["choices"]
    return allowed() if callable(allowed) else allowed


def at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda value: None if isinstance(value, (int, float)) and value >= lo else f"must be at least {lo:g}"


def quantize_bits(value: str) -> int | None:
    """The bit width a `quantize` setting names (gptq-w4 -> 4), None when it names no GPTQ grid."""
    match = QUANTIZE.fullmatch(value) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def check_quantize(value: Any) -> str | None:
    bits = quantize_bits(value)
    if bits is None:
        return f"is not a GPTQ setting: spell it gptq-w<bits>, e.g. gptq-w4 (bits: {', '.join(map(str, QUANT_BITS))})"
    if bits not in QUANT_BITS:
        return f"asks for an unsupported bit width {bits}; supported: {', '.join(map(str, QUANT_BITS))}"
    return None


@dataclass(frozen=True)
class CompressionConfig:
    cr: float = setting(
        0.2,
        "Compression ratio: the share of the compressed projections' 16-bit storage "
        "removed (eq. 11); 0.2 keeps 80% of it.",
        between(0.0, 1.0),
    )
    method: str = setting(
        "compot",
        "Compression method (zoo.methods): "
        + "; ".join(f"{m.name}: {m.summary}" for m in methods.METHODS.values())
        + ". One that factorizes nothing needs --quantize.",
        choices=methods.names,
    )
    forms: str = setting(
        "mixed",
        "mixed: a matrix takes the form of one of its method's alternatives (COMPOT's: SVD-LLM's low-rank "
        "pair) where that has the lower calibration-weighted error at the same CR (the record names each "
        "matrix's form); single: every matrix in the method's form, as the paper.",
        choices=("mixed", "single"),
    )
    static: bool = setting(False, "One CR for every matrix (COMPOT-dagger) instead of dynamic allocation.")
    ks_ratio: float = setting(2.0, "Dictionary size over sparsity, k/s.", at_least(1.0))
    iters: int = setting(20, "Alternating minimisation steps.", at_least(0))
    tol: float = setting(0.0, "Stop early at this relative objective change (0: off).", at_least(0.0))
    min_cr: float | None = setting(
        None, "Allocation guard: least CR per matrix (default: half the target).", between(0.0, 1.0, lo_open=False)
    )
    max_cr: float | None = setting(
        None, "Allocation guard: largest CR per matrix (default: twice the target, at most 0.9).", between(0.0, 1.0)
    )
    quantize: str | None = setting(
        None,
        "GPTQ after factorization, in the same calibration pass: gptq-w4 stores every compressed projection's "
        "factors (and those left dense) as 4-bit integers with a 16-bit scale and a zero point per group; "
        "bits 2, 3, 4 or 8.",
        check_quantize,
    )
    quantize_group_size: int = setting(
        128,
        "Entries per GPTQ scale and zero point, along a row; must divide every compressed projection's inputs.",
        at_least(1),
    )
    sequential: bool = setting(
        False,
        "Calibrate each block on what the blocks already compressed give it (GPTQ's sequential mode), "
        "not on the 16-bit model's activations.",
    )
    heal: int | None = setting(
        None,
        "Healing: Adam steps per block, one calibration sample each, that refine its factors (dictionary and "
        "kept codes; mask, k and s fixed, so the bytes are the same) to reproduce the 16-bit block's outputs; "
        "0: the paper's training-free method. A block keeps its healing only where it lowers the block's output "
        "error. Default: the model's or modality's, from the catalogue (32 for LLMs and Qwen-VL; 0 for Whisper "
        "and Qwen2.5-Coder, which healing was measured to worsen).",
        at_least(0),
    )
    heal_lr: float = setting(1e-3, "Healing's Adam step, relative to each factor's RMS.", between(0.0, 1.0))
    distill: int = setting(
        0,
        "End-to-end distillation: Adam steps on the whole compressed model, one calibration sample each, after "
        "every block is compressed and healed, that refine all the factors together (mask, k and s fixed, so "
        "the bytes are the same) to match the 16-bit model's next-token distributions (KL on the logits). Kept "
        "only where it lowers that divergence. Holds the whole model in float32 on the device; LLMs only, and "
        "not yet with --quantize, streamed weights or torchrun. 0: off.",
        at_least(0),
    )
    distill_lr: float = setting(3e-4, "Distillation's Adam step, relative to each factor's RMS.", between(0.0, 1.0))
    dtype: str | None = setting(
        None,
        "Dtype of the checkpoint's tensors that are not compressed (embeddings, norms, heads): the base's own "
        "when it is 16-bit, else the modality's (bfloat16; float16 for Whisper); float32 for experiments.",
        choices=DTYPES,
    )
    storage_dtype: str | None = setting(
        None,
        "Dtype of the stored factors (default: the checkpoint's dtype when 16-bit, else float16).",
        choices=STORAGE_DTYPES,
    )
    components: tuple[str, ...] | None = setting(
        None, "Stacks to compress, e.g. encoder,decoder for Whisper (default: the modality's)."
    )
    device: str | None = setting(
        None,
        "Where each block is calibrated and factorized (cpu, cuda); cuda when present. The model stays where "
        "it was loaded.",
        runtime=True,
    )
    offload_activations: bool = setting(
        False,
        "Keep the calibration activations in host memory, moving one batch at a time to the device: for a "
        "GPU that cannot hold them all.",
        runtime=True,
    )

    def __post_init__(self) -> None:
        if self.components is not None:
            object.__setattr__(self, "components", tuple(self.components))
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or value == f.default:
                continue
            problem = meta["check"](value) if meta["check"] else None
            allowed = choices(f)
            if allowed and value not in allowed:
                problem = f"must be one of {', '.join(allowed)}"
            if problem:
                raise ZooError(f"{f.name} {value!r} {problem}")
        if not self.factorizes and self.quantize is None:
            raise ZooError(
                f"method {self.method} quantizes the dense projections and factorizes nothing: pass quantize "
                "(--quantize gptq-w3)"
            )
        if not isinstance(self.quantize_group_size, int) or isinstance(self.quantize_group_size, bool):
            raise ZooError(f"quantize_group_size {self.quantize_group_size!r} must be a positive integer")
        self._check_applies()
        if self.min_cr is not None and self.min_cr > self.cr or self.max_cr is not None and self.max_cr < self.cr:
            raise ZooError(
                f"allocation guards must bracket the target: min_cr {self.min_cr} <= cr {self.cr} "
                f"<= max_cr {self.max_cr}"
            )

    def _check_applies(self) -> None:
        """A setting that changes nothing for this run is refused, not recorded as if it had."""
        if self.quantize is None and self.quantize_group_size != type(self).quantize_group_size:
            raise ZooError(
                f"quantize_group_size {self.quantize_group_size} applies only with quantize (--quantize gptq-w4)"
            )
        if not self.factorizes and self.static:
            raise ZooError(
                f"static does not apply to method {self.method}: it factorizes nothing, so it allocates no CR"
            )
        if not self.factorizes and self.heal:
            raise ZooError(f"heal does not apply to method {self.method}: it has no factors to heal")
        if not self.factorizes and self.distill:
            raise ZooError(f"distill does not apply to method {self.method}: it has no factors to distill")
        if self.distill and self.quantize is not None:
            raise ZooError(
                "distill with quantize is not built yet: GPTQ quantizes each block's factors as it is compressed, "
                "before distillation would refine them; distill a 16-bit variant, or quantize without distill"
            )

    @classmethod
    def settings(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["components"] = list(self.components) if self.components else None
        return data

    def determining(self) -> dict:
        """The settings that shape the factors (runtime ones left out): what a fingerprint hashes."""
        runtime = {f.name for f in self.settings() if f.metadata["runtime"]}
        return {k: v for k, v in self.to_dict().items() if k not in runtime}

    def changed(self) -> dict:
        """The determining settings that differ from their defaults, in field order."""
        defaults = CompressionConfig().determining()
        return {k: v for k, v in self.determining().items() if v != defaults[k]}

    def resolved(self, base_dtype: str | None, default_dtype: str, default_heal: int) -> CompressionConfig:
        """The config with concrete dtypes and healing: the checkpoint's dtype is the one asked for, else
        the base's own when it is 16-bit (a float32 base is a copy for computing, not what was published),
        else `default_dtype`; the factors' follows it when 16-bit, else float16. Healing is the one asked
        for, else the modality's `default_heal` (none without factors)."""
        dtype = self.dtype or (base_dtype if base_dtype in STORAGE_DTYPES else default_dtype)
        storage = self.storage_dtype or (dtype if dtype in STORAGE_DTYPES else "float16")
        heal = self.heal if self.heal is not None else default_heal if self.factorizes else 0
        return dataclasses.replace(self, dtype=dtype, storage_dtype=storage, heal=heal)

    @property
    def factorizes(self) -> bool:
        return methods.get(self.method).factorizes

    @property
    def bits(self) -> int | None:
        """The GPTQ bit width, None when nothing is quantized."""
        return None if self.quantize is None else quantize_bits(self.quantize)

    @property
    def allocation(self) -> str:
        return "static" if self.static else "dynamic"
