"""A checkpoint folder's safetensors files, read one tensor at a time, and a safetensors file
written one tensor at a time: what streamed weights need so that no whole model is ever held.

Reading opens the file that holds a tensor (`model.safetensors`, or the shard that
`model.safetensors.index.json` names) with `safe_open` for that tensor alone, so nothing but the
tensor stays mapped. Writing lays out the file exactly as `safetensors.torch.save_file` would for
the same tensors (the format's header, its order: by dtype, widest alignment first, then by name)
and asks for each tensor only when its bytes are due.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from zoo.errors import ZooError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# safetensors' dtypes in its own order (the Rust `Dtype` enum, increasing alignment), which the
# writer sorts by, widest first; the names are the header's.
DTYPE_ORDER = ("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64")
DTYPE_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.uint64: "U64",
}


@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """The base model's tensors in `folder`, each read from its file when asked for.

    `names` maps a tensor's name in the model to its name in the files (transformers renames some
    checkpoints' keys as it loads them); a name it does not list is the same in both. `values`:
    the dtype the run rounds the base's values to when it holds them in a wider one (a float16
    base held in float32 on a CPU), as the in-memory model's values are."""

    folder: Path
    files: Mapping[str, Path]  # name in the files -> the file holding it
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    values: torch.dtype | None = None

    @classmethod
    def of(cls, folder: Path) -> SourceFiles:
        """The tensors of `folder`'s safetensors files; a folder without any is a ZooError."""
        folder = Path(folder)
        index = folder / INDEX
        if index.is_file():
            try:
                shards = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ZooError(f"{index} is not a safetensors index (no weight_map): {exc}") from exc
            return cls(folder, {name: folder / shard for name, shard in shards.items()})
        single = folder / SINGLE
        if not single.is_file():
            raise ZooError(
                f"{folder} holds no safetensors weights ({SINGLE} or {INDEX}): streaming reads a block's "
                "tensors from them; convert the checkpoint to safetensors, or pass --no-stream"
            )
        try:
            with safe_open(single, framework="pt") as f:
                return cls(folder, dict.fromkeys(f.keys(), single))
        except (SafetensorError, OSError) as exc:
            raise ZooError(f"{single} is corrupt or truncated: {exc}") from exc

    def file_name(self, name: str) -> str:
        return self.names.get(name, name)

    def __contains__(self, name: str) -> bool:
        return self.file_name(name) in self.files

    def check(self, names: Iterable[str]) -> None:
        """Refuse, before any work, a model whose tensors the files do not all hold."""
        missing = [name for name in names if name not in self]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ZooError(
                f"{self.folder} holds no tensor {self.file_name(missing[0])}{more}: its files do not match the model"
            )

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The model's tensor `name` in `dtype`, on the CPU, its values rounded as the run holds them."""
        key = self.file_name(name)
        path = self.files.get(key)
        if path is None:
            raise ZooError(f"{self.folder} holds no tensor {key}")
        try:
            with safe_open(path, framework="pt") as f:
                tensor = f.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise ZooError(f"cannot read {key} from {path}: {exc}") from exc
        if self.values is not None and tensor.is_floating_point():
            tensor = tensor.to(self.values)
        return tensor.to(dtype)


def write_tensors(
    path: Path,
    layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    tensor: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write the file `save_file` writes for tensors of these dtypes and shapes (name -> (dtype,
    shape)), asking `tensor(name)` for each one's values only when its bytes are due."""
    order = sorted(layout, key=lambda name: (-DTYPE_ORDER.index(_dtype_name(layout[name][0])), name))
    header: dict[str, object] = {"__metadata__": metadata} if metadata is not None else {}
    offset = 0
    for name in order:
        dtype, shape = layout[name]
        size = dtype.itemsize * math.prod(shape)
        header[name] = {"dtype": _dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            dtype, shape = layout[name]
            t = tensor(name)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise ZooError(f"{name} is {t.dtype} {tuple(t.shape)}, the file lays out {dtype} {tuple(shape)}")
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise ZooError(f"cannot write a {dtype} tensor to safetensors")
    return DTYPE_NAMES[dtype]
