"""`zoo compress` end to end: resolve, load, calibrate, (score base), compress, save, score."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import resource
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoo import __version__
from zoo.compression import CompressionConfig, LayerReport, achieved_cr, compress_model
from zoo.engine import ENGINE_VERSION
from zoo.errors import ZooError
from zoo.fingerprint import variant_fingerprint
from zoo.hub import hub_reachable
from zoo.modality import Adapter, CalibrationData, LoadedModel, get_adapter
from zoo.models import ModelSpec, resolve
from zoo.scorecard import SCORECARD, Scorecard, metrics_from_results

log = logging.getLogger(__name__)


@dataclass
class CompressRequest:
    model: str
    config: CompressionConfig
    out: Path | None = None
    overwrite: bool = False
    calibration: str | None = None
    n_samples: int | None = None
    seq_len: int | None = None
    seed: int = 0
    evaluate: bool = False
    eval_windows: int | None = None
    eval_limit: int | None = None
    modality: str | None = None


@dataclass
class CompressResult:
    out_dir: Path
    layers: list[LayerReport]
    achieved_cr: float
    seconds: float
    peak_memory_mb: float
    scorecard: object | None = None
    notes: list[str] = field(default_factory=list)


def default_out_dir(model: str, config: CompressionConfig) -> Path:
    alloc = "static" if config.static else "dynamic"
    return Path(f"{Path(model).name}-{config.method}-{alloc}-cr{config.cr:g}")


def pick_calibration(requested: str | None, defaults: dict) -> str:
    """The requested set, else the model's default, else its offline stand-in when the Hub is unreachable."""
    if requested:
        return requested
    default, offline = defaults.get("calibration"), defaults.get("offline_calibration")
    if offline and (default is None or (default != offline and not hub_reachable())):
        if default:
            log.warning("Hub offline: calibrating on %s instead of %s", offline, default)
        return offline
    if default is None:
        raise ZooError("the zoo manifest names no calibration set for this model; pass --calibration")
    return default


def calibration_settings(spec: ModelSpec, source: str | None, n_samples: int | None,
                         seq_len: int | None) -> tuple[str, int, int]:
    """The calibration set, sample count and length as asked, with the model's manifest defaults filling the rest."""
    return (pick_calibration(source, spec.defaults), n_samples or spec.defaults.get("n_samples", 256),
            seq_len or spec.defaults.get("seq_len", 1024))


def calibrate(adapter: Adapter, loaded: LoadedModel, spec: ModelSpec, source: str | None,
              n_samples: int | None, seq_len: int | None, seed: int) -> CalibrationData:
    return adapter.calibration(loaded, *calibration_settings(spec, source, n_samples, seq_len), seed)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU x{os.cpu_count()} ({platform.processor() or platform.system()})"


def command_line(spec: ModelSpec, req: CompressRequest) -> str:
    """The `zoo compress` command that rebuilds this variant, every setting that shapes it spelled out."""
    config, defaults = req.config, CompressionConfig()
    args = ["zoo", "compress", spec.name, "--cr", f"{config.cr:g}"]
    if spec.local is None and spec.hub == spec.name and spec.modality != "llm":
        args += ["--modality", spec.modality]
    if config.method != defaults.method:
        args += ["--method", config.method]
    if config.static:
        args.append("--static")
    for flag, name in (("--ks-ratio", "ks_ratio"), ("--iters", "iters"), ("--tol", "tol"), ("--min-cr", "min_cr"),
                       ("--max-cr", "max_cr"), ("--storage-dtype", "storage_dtype")):
        if getattr(config, name) != getattr(defaults, name):
            args += [flag, f"{getattr(config, name):g}" if isinstance(getattr(config, name), float)
                     else str(getattr(config, name))]
    if config.components:
        args += ["--components", ",".join(config.components)]
    source, n_samples, seq_len = calibration_settings(spec, req.calibration, req.n_samples, req.seq_len)
    args += ["--calibration", source, "--n-samples", str(n_samples), "--seq-len", str(seq_len),
             "--seed", str(req.seed), "--eval"]
    if req.eval_windows is not None:
        args += ["--eval-windows", str(req.eval_windows)]
    if req.eval_limit is not None:
        args += ["--eval-limit", str(req.eval_limit)]
    return shlex.join(args)


def fingerprint(spec: ModelSpec, loaded: LoadedModel, calibration: CalibrationData, req: CompressRequest) -> str:
    """What determines the variant and its scores; the evaluation depends on whether the Hub's sets
    are reachable, so that is part of it too."""
    evaluation = {"windows": req.eval_windows, "limit": req.eval_limit, "hub": hub_reachable(),
                  **{k: v for k, v in spec.defaults.items() if k.startswith("eval") or k.startswith("offline_eval")}}
    return variant_fingerprint(loaded.base_model, loaded.revision, ENGINE_VERSION, req.config.to_dict(),
                               {"name": calibration.name, "fingerprint": calibration.fingerprint,
                                "samples": len(calibration.batches), "seed": req.seed}, evaluation)


def prepare(req: CompressRequest, overrides: dict | None = None) -> tuple[ModelSpec, Adapter, LoadedModel,
                                                                           CalibrationData]:
    """Everything before compression: resolve, load, calibrate; each error here costs no compression work.
    `overrides` replace the manifest's defaults for this model (e.g. its evaluation suites)."""
    spec = resolve(req.model, req.modality)
    if overrides:
        spec = dataclasses.replace(spec, defaults={**spec.defaults, **overrides})
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(spec)
    calibration = calibrate(adapter, loaded, spec, req.calibration, req.n_samples, req.seq_len, req.seed)
    return spec, adapter, loaded, calibration


def run_compress(req: CompressRequest) -> CompressResult:
    """`zoo compress`: one variant, compressed in place in the loaded model."""
    out = Path(req.out) if req.out else default_out_dir(req.model, req.config)
    if out.exists() and not req.overwrite:
        raise ZooError(f"output directory {out} exists; pass --overwrite to replace it")
    spec, adapter, loaded, calibration = prepare(req)
    base_metrics = adapter.evaluate(loaded, spec, req.eval_windows, req.eval_limit) if req.evaluate else None
    return compress_variant(adapter, loaded, spec, calibration, req, out, base_metrics)


def compress_variant(adapter: Adapter, loaded: LoadedModel, spec: ModelSpec, calibration: CalibrationData,
                     req: CompressRequest, out: Path, base_metrics: dict | None) -> CompressResult:
    """Compress `loaded.model` in place, save the checkpoint, and with `base_metrics` score it,
    writing scorecard.json and the model card beside it."""
    from zoo.card import inherited_license, write_card
    from zoo.checkpoint import save_compressed

    config = req.config
    start = time.perf_counter()
    layers = compress_model(loaded.model, adapter, calibration, config)
    seconds = time.perf_counter() - start
    peak = peak_memory_mb()
    cr = achieved_cr(layers)
    manifest = {
        "format": "compot-zoo/1",
        "zoo_version": __version__,
        "engine_version": ENGINE_VERSION,
        "auto_class": adapter.auto_class,
        "modality": spec.modality,
        "base_model": loaded.base_model,
        "hub_id": spec.hub,
        "base_revision": loaded.revision,
        "base_notes": loaded.notes,
        "license": inherited_license(spec),
        "alias": spec.name,
        "variant": out.name,
        "method": config.method,
        "allocation": "static" if config.static else "dynamic",
        "config": config.to_dict(),
        "target_cr": config.cr,
        "achieved_cr_eq11": cr,
        "calibration": {"name": calibration.name, "fingerprint": calibration.fingerprint,
                        "tokens": calibration.tokens, "samples": len(calibration.batches), "seed": req.seed},
        "fingerprint": fingerprint(spec, loaded, calibration, req),
        "command": command_line(spec, req),
        "compression_seconds": seconds,
        "peak_memory_mb": peak,
        "hardware": hardware(),
        "layer_reports": [vars(r) for r in layers],
    }
    save_compressed(loaded.model, out, manifest, overwrite=req.overwrite,
                    extra_files=lambda tmp: adapter.save_processor(loaded, tmp))
    result = CompressResult(out, layers, cr, seconds, peak, notes=list(loaded.notes))
    if base_metrics is not None:
        compressed_metrics = adapter.evaluate(loaded, spec, req.eval_windows, req.eval_limit)
        result.scorecard = build_scorecard(manifest, metrics_from_results(base_metrics, compressed_metrics))
        result.scorecard.save(out / SCORECARD)
        write_card(out)
    return result


def build_scorecard(manifest: dict, metrics: list) -> Scorecard:
    return Scorecard(base_model=manifest["base_model"], base_revision=manifest["base_revision"],
                     variant=manifest["variant"], modality=manifest["modality"], method=manifest["method"],
                     allocation=manifest["allocation"], engine_version=manifest["engine_version"],
                     target_cr=manifest["target_cr"], achieved_cr=manifest["achieved_cr_eq11"],
                     calibration_set=manifest["calibration"]["name"],
                     calibration_hash=manifest["calibration"]["fingerprint"], metrics=metrics,
                     compression_seconds=manifest["compression_seconds"],
                     peak_memory_mb=manifest["peak_memory_mb"], hardware=manifest["hardware"],
                     fingerprint=manifest["fingerprint"], command=manifest["command"])
