"""The compressed checkpoint: a self-contained transformers folder, safetensors only.

    model.safetensors      the full state dict: dense weights as they are, compressed
                           layers as dictionary / code_values / code_mask (tied copies once);
                           GPTQ-quantized factors (or weights) as <name>_q / _scales / _zeros
                           (zoo.compression.quantized)
    config.json            the model config plus `quantization_config` {"quant_method":
                           "compot", "layers": {...}}: what zoo.format.quantizer and
                           `load_compressed` rebuild as CompotLinear; its `model_type` is
                           "compot" (the base's moves to `base_model_type`) and its `auto_map`
                           names configuration_compot.py, so that transformers without this
                           project refuses it (zoo.format.quantizer says why)
    configuration_compot.py  the code that `auto_map` names (zoo/format/remote)
    generation_config.json when the model has one
    compot_record.json     the variant record: how it was made, every layer, achieved CR
    (tokenizer / processor files, written by the caller's `extra_files`)

The folder is written under a hidden temporary name beside the target and renamed into
place only when complete, so an interrupted save never leaves a folder that looks done.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zoo import methods
from zoo.compression.layer import COMPRESSED, CompotLinear, to_inference
from zoo.compression.quantized import QuantLinear
from zoo.errors import ZooError
from zoo.files import check_replaceable, check_writable, staged_dir
from zoo.format.record import RECORD, VariantRecord
from zoo.format.tensor_files import write_tensors

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
VARIANT_TYPE = "compot"  # config.json's model_type: unknown to transformers until `import zoo` registers it
BASE_TYPE = "base_model_type"  # config.json key holding the architecture's own model_type
REMOTE_CODE = Path(__file__).with_name("remote") / "configuration_compot.py"
AUTO_MAP = {"AutoConfig": f"{REMOTE_CODE.stem}.CompotConfig"}


# The base architecture's own loaders (e.g. `LlamaForCausalLM.from_pretrained`, which reads any
# config.json whatever its model_type) would fill each compressed projection's missing `weight` with
# random values and only warn. The checkpoint holds one such `weight`, empty: a loader without this
# project then stops on its shape ("size mismatch"); ours drop it (the quantizer marks it expected).
GUARD = "weight"


def guard_keys(layer_names) -> set[str]:
    """The keys a checkpoint's guard may take: a compressed layer's `weight`, which it never stores."""
    return {f"{name}.{GUARD}" for name in layer_names}


def compot_layers(model: nn.Module) -> dict[str, CompotLinear | QuantLinear]:
    """Every compressed layer: factorized (CompotLinear) or quantized dense (QuantLinear)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSED)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """One compressed layer as config.json's layer table names it: what a loader needs to build its
    empty shell. bits 16: not quantized (checkpoints written before quantization lack both keys)."""

    in_features: int
    out_features: int
    k: int
    s: int
    method: str
    bias: bool
    storage_dtype: str
    bits: int = 16
    group_size: int = 0

    @classmethod
    def of(cls, layer: CompotLinear | QuantLinear) -> LayerSpec:
        return cls(
            in_features=layer.in_features,
            out_features=layer.out_features,
            k=layer.k,
            s=layer.s,
            method=layer.method,
            bias=layer.bias is not None,
            storage_dtype=str(layer.storage_dtype).removeprefix("torch."),
            bits=layer.bits,
            group_size=layer.group_size,
        )

    @classmethod
    def read(cls, name: str, entry: object) -> LayerSpec:
        """The spec a layer table's entry holds, each field checked: a checkpoint's metadata is input."""
        fields = dataclasses.fields(cls)
        given = entry if isinstance(entry, dict) else {}
        bad = [
            f"{f.name} ({f.type})"
            for f in fields
            if (f.name in given or f.default is dataclasses.MISSING) and not _typed(given.get(f.name), f.type)
        ]
        if bad:
            raise ZooError(f"compressed layer {name}: quantization_config entry lacks or mistypes {', '.join(bad)}")
        return cls(**{f.name: given[f.name] for f in fields if f.name in given})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def shell(self, name: str, device: torch.device, bias_dtype: torch.dtype) -> CompotLinear | QuantLinear:
        """The empty layer this spec describes; `name` goes in the message."""
        storage_dtype = getattr(torch, self.storage_dtype, None)
        if not isinstance(storage_dtype, torch.dtype):
            raise ZooError(f"compressed layer {name}: unknown storage dtype {self.storage_dtype!r}")
        common = {"storage_dtype": storage_dtype, "device": device, "bias_dtype": bias_dtype}
        try:
            if not methods.get(self.method).factorizes:
                return QuantLinear(self.in_features, self.out_features, self.bits, self.group_size, self.bias, **common)
            return CompotLinear(
                self.in_features,
                self.out_features,
                self.k,
                self.s,
                self.method,
                self.bias,
                bits=self.bits,
                group_size=self.group_size,
                **common,
            )
        except ZooError as exc:
            raise ZooError(f"compressed layer {name}: {exc}") from exc


def _typed(value: object, kind: str) -> bool:
    """`value` is of the annotated type (a bool is no int)."""
    expected = {"int": int, "bool": bool, "str": str}[kind]
    return isinstance(value, expected) and (expected is bool or not isinstance(value, bool))


def layer_table(model: nn.Module) -> dict[str, dict]:
    return {name: LayerSpec.of(m).to_dict() for name, m in compot_layers(model).items()}


def _saved_tensors(model: nn.Module, dtype: str | None) -> dict[str, tuple[torch.Tensor, torch.dtype]]:
    """Name -> (tensor, dtype it is saved in): each tied weight once (safetensors refuses shared
    tensors; loaders re-tie), floating tensors in `dtype` (None: as they are) except the compressed
    layers' factors, which keep their storage dtype."""
    state = model.state_dict()
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in state and source in state and state[target].data_ptr() == state[source].data_ptr():
            del state[target]
    factors = {f"{name}.{key}" for name, m in compot_layers(model).items() for key in m.state_dict() if key != "bias"}
    cast = getattr(torch, dtype) if dtype else None
    return {
        name: (t, cast if cast is not None and t.is_floating_point() and name not in factors else t.dtype)
        for name, t in state.items()
    }


def state_to_save(model: nn.Module, dtype: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors `save_compressed` writes, in the dtypes `_saved_tensors` gives them."""
    return {name: t.to(saved).contiguous() for name, (t, saved) in _saved_tensors(model, dtype).items()}


def tensor_bytes(model: nn.Module, dtype: str | None = None) -> int:
    """The bytes of the tensors `save_compressed` (or a plain save in `dtype`) writes for `model`,
    counted without making the copy."""
    return sum(t.numel() * saved.itemsize for t, saved in _saved_tensors(model, dtype).values())


def mark_compressed(model: nn.Module) -> None:
    """Name the compressed layers in the model's config and give the model its quantizer, as
    `from_pretrained` gives transformers' quantized models theirs: its own `save_pretrained` then
    writes a folder that `from_pretrained` (after `import zoo`) and `zoo.load` rebuild, guard
    included, so that nothing else loads it at random."""
    from zoo.format.quantizer import CompotConfig, CompotQuantizer  # it builds on this module

    layers = layer_table(model)
    model.config.quantization_config = {"quant_method": "compot", "layers": layers}
    model.hf_quantizer = CompotQuantizer(CompotConfig(layers))


def checkpoint_config(model: nn.Module, dtype: str | None = None):
    """A copy of the model's config that names the compressed layers, as save_pretrained would write it."""
    config = copy.deepcopy(model.config)
    config.quantization_config = {"quant_method": "compot", "layers": layer_table(model)}
    config.architectures = [type(model).__name__]
    config.dtype = dtype or str(model.dtype).removeprefix("torch.")  # what from_pretrained loads it as
    return config


def save_compressed(
    model: nn.Module,
    out_dir: str | Path,
    record: VariantRecord,
    overwrite: bool = False,
    extra_files: Callable[[Path], None] | None = None,
    dropped: Callable[[str, torch.dtype], torch.Tensor] | None = None,
) -> VariantRecord:
    """Write the model, its config and record (and `extra_files`, e.g. the tokenizer) atomically;
    tensors that are not compressed in `record.config.dtype` (None: as they are). Returns the
    record as written, with the weights file's size. A streamed model's tensors that it dropped
    (on the meta device) come from `dropped(name, dtype held in)`, one at a time, into the same
    bytes."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    layers = compot_layers(model)
    if not layers:
        raise ZooError(f"{type(model).__name__} has no compressed layers: nothing compressed to save")
    for name, layer in layers.items():
        layer.require_factors(f"saving {name}")
    dtype = record.config.dtype
    guard = {f"{min(layers)}.{GUARD}": torch.zeros(0, dtype=torch.uint8)}
    with staged_dir(out_dir) as tmp:
        if dropped is None:
            save_file(state_to_save(model, dtype) | guard, tmp / WEIGHTS, metadata={"format": "pt"})
        else:
            _write_dropped(model, dtype, guard, dropped, tmp / WEIGHTS)
        record = dataclasses.replace(record, file_bytes=(tmp / WEIGHTS).stat().st_size)
        write_variant_config(checkpoint_config(model, dtype), tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        record.save(tmp)
        if extra_files is not None:
            extra_files(tmp)
    return record


def _write_dropped(
    model: nn.Module,
    dtype: str | None,
    guard: dict[str, torch.Tensor],
    dropped: Callable[[str, torch.dtype], torch.Tensor],
    path: Path,
) -> None:
    """The file `save_file` writes for `state_to_save(model, dtype) | guard`, each tensor the model
    dropped read back by `dropped` only when its bytes are due."""
    saved = _saved_tensors(model, dtype)
    layout = {name: (to, tuple(t.shape)) for name, (t, to) in saved.items()}
    layout |= {name: (t.dtype, tuple(t.shape)) for name, t in guard.items()}

    def tensor(name: str) -> torch.Tensor:
        if name in guard:
            return guard[name]
        t, to = saved[name]
        return (dropped(name, t.dtype) if t.is_meta else t).to(to).contiguous()

    write_tensors(path, layout, tensor, {"format": "pt"})


def write_variant_config(config, folder: Path) -> None:
    """config.json as transformers writes it, but typed "compot" with the base's type kept aside and
    `auto_map` naming the remote code copied beside it: a loader without this project then stops
    instead of building the base architecture around weights it cannot read."""
    data = json.loads(config.to_json_string())
    data |= {"model_type": VARIANT_TYPE, BASE_TYPE: data["model_type"], "auto_map": AUTO_MAP}
    (folder / CONFIG).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(REMOTE_CODE, folder / REMOTE_CODE.name)


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing target unless asked to overwrite it, and never replace a folder that is
    not a checkpoint (e.g. a typo'd home)."""
    if out_dir.exists() and not overwrite:
        raise ZooError(f"output directory {out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    check_replaceable(out_dir, RECORD, "a compressed checkpoint")
    check_writable(out_dir)


def swap_in_shells(model: nn.Module, layers: dict[str, dict]) -> None:
    """Replace each named nn.Linear by an empty CompotLinear of the recorded shape, on its device.

    Every entry is checked against the architecture before anything is allocated: a checkpoint's
    metadata is input, and a wrong k must not try to allocate terabytes."""
    if not isinstance(layers, dict) or not layers:
        raise ZooError("quantization_config.layers must name at least one compressed layer")
    for name, entry in layers.items():
        spec = LayerSpec.read(name, entry)
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise ZooError(f"compressed layer {name} does not exist in {type(model).__name__}") from exc
        if not isinstance(old, nn.Linear):
            raise ZooError(
                f"compressed layer {name} replaces an nn.Linear, but {type(model).__name__} "
                f"has a {type(old).__name__} there"
            )
        if (old.in_features, old.out_features) != (spec.in_features, spec.out_features):
            raise ZooError(
                f"compressed layer {name} is {spec.out_features}x{spec.in_features}, "
                f"but the architecture's linear is {old.out_features}x{old.in_features}"
            )
        model.set_submodule(name, spec.shell(name, old.weight.device, old.weight.dtype))


def check_factors(model: nn.Module, source: Path) -> None:
    """Refuse loaded factors that cannot be right: NaN/Inf values, or a support mask that does not
    keep exactly s codes per output. `source` names the file in the message."""
    for name, layer in compot_layers(model).items():
        floating = {label: t for label, t in layer.state_dict().items() if t.is_floating_point()}
        for label, t in floating.items():
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ZooError(f"{source}: {name}.{label} holds NaN/Inf values; the checkpoint is corrupt")
        if layer.code_mask is not None:
            per_row = layer.kept_per_row()
            if not bool((per_row == layer.s).all()):
                raise ZooError(
                    f"{source}: {name}.code_mask keeps {int(per_row.min())}..{int(per_row.max())} codes "
                    f"per output, not s={layer.s}; the checkpoint is corrupt"
                )


def _skeleton(path: Path) -> tuple[nn.Module, dict]:
    """The checkpoint's architecture with empty compressed layers swapped in, and its
    `quantization_config`, from config.json alone."""
    import transformers

    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise ZooError(f"{path / name} is missing: {path} is not a compressed checkpoint")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:  # not JSON, or not a config transformers knows
        raise ZooError(f"{path / CONFIG} is not a valid config: {_first_line(exc)}") from exc
    quantization = config.to_dict().get("quantization_config") or {}
    if quantization.get("quant_method") != "compot":
        raise ZooError(f"{path / CONFIG} has no compot quantization_config: not a compressed checkpoint")
    del config.quantization_config  # the shells go in below; the constructor must not build a quantizer
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ZooError(f"{path / CONFIG}: architecture {architecture!r} is not a transformers model class")
    model = model_class(config)
    swap_in_shells(model, quantization["layers"])
    return model, quantization


def load_compressed(path: str | Path, device: str | torch.device = "cpu", inference: bool = True) -> nn.Module:
    """The compressed model from a folder or Hub repo, rebuilt with CompotLinear layers swapped in.

    What to rebuild is read from config.json: its architecture and its `quantization_config`
    layer table, the same as transformers' `from_pretrained` reads through the quantizer. With
    `inference`, the layers then take their inference layout on `device` (`to_inference`), as
    `from_pretrained` gives them; without, they keep their factors, and the model can be saved.
    """
    import transformers

    path = Path(path)
    if not path.exists() and "/" in str(path) and not str(path).startswith((".", "/")):
        path = _hub_snapshot(str(path))  # a published variant on the Hub
    model, quantization = _skeleton(path)
    weights = path / WEIGHTS
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as exc:
        raise ZooError(f"{weights} is corrupt or truncated: {exc}") from exc
    for key in guard_keys(quantization["layers"]):
        state.pop(key, None)
    expected = model.state_dict()
    wrong = [k for k, t in state.items() if k in expected and t.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise ZooError(
            f"{weights}: {k} has shape {tuple(state[k].shape)}, the layer expects "
            f"{tuple(expected[k].shape)}" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
        )
    # assign=True keeps every tensor exactly as saved (dtype included), so outputs match the saved model
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ZooError(
            f"{weights} does not match {type(model).__name__}: "
            f"missing {_listing(missing)}, unexpected {_listing(unexpected)}"
        )
    model.tie_weights()
    check_factors(model, weights)
    if (path / GENERATION_CONFIG).is_file():  # Whisper's task tokens, LLM sampling defaults
        model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    mark_compressed(model)  # so save_pretrained keeps the layer table and the guard
    model = model.to(device).eval()
    if inference:  # and refuses, as from_pretrained's model does, once the factors are gone
        model.hf_quantizer.layouts = to_inference(model)
    return model


def _hub_snapshot(repo_id: str) -> Path:
    """A published variant's files from the Hub (or its cache), or one line saying why not."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(snapshot_download(repo_id))
    except (OSError, ValueError, HfHubHTTPError) as exc:  # offline and not cached, no such repo, a bad id
        raise ZooError(f"cannot load {repo_id} from the Hub: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _listing(keys: list[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"
