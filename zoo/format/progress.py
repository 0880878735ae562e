"""Per-block progress of a compression run, so a killed run resumes where it stopped.

Beside the output folder, `.<name>.progress/` holds one safetensors file per finished block
(its compressed layers' tensors as stored, their shells and records in the metadata) and the
fingerprint of what determines the blocks (base weights, engine, configuration, calibration). A
rerun with the same fingerprint restores those blocks instead of factorizing them again; another
fingerprint means other settings, and the folder is started over. Each block is stamped too (the
fingerprint and its own name), so a block another run left there (two runs on one `--out`, a file
copied in) is rebuilt, never restored. The folder goes once the checkpoint is saved.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from zoo.compression.layer import CompotLinear
from zoo.compression.report import LayerRecord
from zoo.digest import json_digest
from zoo.errors import ZooError
from zoo.files import write_file, write_text
from zoo.format.checkpoint import LayerSpec
from zoo.format.tensor_files import SourceFiles

log = logging.getLogger(__name__)
FINGERPRINT = "fingerprint.txt"


def progress_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.progress"


class BlockProgress:
    """The `BlockStore` of `compress_model` for a run writing `out_dir`."""

    def __init__(self, out_dir: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = progress_dir(out_dir), fingerprint
        self._holders: dict[str, Path] | None = None  # a stored tensor's name -> its block's file, once asked
        stamp = self.folder / FINGERPRINT
        if self.folder.exists():
            if stamp.is_file() and stamp.read_text() == fingerprint:
                done = len(list(self.folder.glob("*.safetensors")))
                log.warning("resuming %s: %d block(s) already compressed in %s", out_dir.name, done, self.folder)
            else:
                log.warning(
                    "%s holds progress of other settings (or is damaged): starting %s over", self.folder, out_dir.name
                )
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(stamp, fingerprint)

    def _file(self, prefix: str) -> Path:
        return self.folder / f"{prefix}.safetensors"

    def _stamp(self, prefix: str) -> str:
        """What block `prefix` of this run is built from: the run's fingerprint and the block's name."""
        return json_digest({"fingerprint": self.fingerprint, "block": prefix})

    def load(self, prefix: str) -> tuple[list[LayerRecord], dict[str, CompotLinear]] | None:
        """Block `prefix`'s records and compressed layers (qualified name -> layer, on CPU), if this
        run's settings built it; one stamped otherwise is removed, to be built again."""
        path = self._file(prefix)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata()
                if (meta or {}).get("stamp") != self._stamp(prefix):
                    log.warning("%s was not built by this run's settings (its stamp differs): rebuilding it", path)
                    path.unlink()
                    return None
                records = [LayerRecord.from_dict(r) for r in json.loads(meta["records"])]
                layers = {}
                for name, entry in json.loads(meta["layers"]).items():
                    bias_dtype = getattr(torch, entry.pop("bias_dtype"))
                    layer = LayerSpec.read(name, entry).shell(name, torch.device("cpu"), bias_dtype)
                    state = {key: f.get_tensor(f"{name}.{key}") for key in layer.state_dict()}
                    layer.load_state_dict(state, assign=True)
                    layers[name] = layer
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
            raise ZooError(f"{path} is damaged ({exc}); remove {self.folder} to start over") from exc
        return records, layers

    def save(self, prefix: str, records: list[LayerRecord], layers: dict[str, CompotLinear]) -> None:
        tensors, specs = {}, {}
        for name, layer in layers.items():
            tensors |= {f"{name}.{key}": t.contiguous().cpu() for key, t in layer.state_dict().items()}
            bias_dtype = layer.bias.dtype if layer.bias is not None else layer.storage_dtype
            specs[name] = {**LayerSpec.of(layer).to_dict(), "bias_dtype": str(bias_dtype).removeprefix("torch.")}
        metadata = {
            "records": json.dumps([r.to_dict() for r in records]),
            "layers": json.dumps(specs),
            "stamp": self._stamp(prefix),
        }
        write_file(self._file(prefix), lambda tmp: save_file(tensors, tmp, metadata=metadata))
        self._holders = None

    def tensor(self, name: str) -> torch.Tensor | None:
        """A compressed layer's tensor as a finished block keeps it; None when none keeps it."""
        if self._holders is None:
            self._holders = {}
            for path in sorted(self.folder.glob("*.safetensors")):
                with safe_open(path, framework="pt") as f:
                    self._holders |= dict.fromkeys(f.keys(), path)
        path = self._holders.get(name)
        if path is None:
            return None
        with safe_open(path, framework="pt") as f:
            return f.get_tensor(name)

    def dropped(self, source: SourceFiles) -> Callable[[str, torch.dtype], torch.Tensor]:
        """Where a streamed model's dropped tensors are, by name, in the dtype it held them in: its
        compressed layers' in the finished blocks, the rest in the base's files."""

        def tensor(name: str, dtype: torch.dtype) -> torch.Tensor:
            stored = self.tensor(name)
            return source.read(name, dtype) if stored is None else stored.to(dtype)

        return tensor

    def finish(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def left(self) -> str:
        """What a failed run leaves for a resume, to end its message with: the blocks it finished
        are kept, and said to be; a folder without any is removed."""
        done = len(list(self.folder.glob("*.safetensors")))
        if not done:
            self.finish()
            return ""
        return f"; {done} finished block(s) kept in {self.folder}: rerun the same command to resume"
