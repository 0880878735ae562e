"""`zoo compress` end to end: resolve, load, calibrate, (score base), compress, save, score."""

from __future__ import annotations

import logging
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoo import __version__
from zoo.compression import CompressionConfig, LayerReport, achieved_cr, compress_model
from zoo.engine import ENGINE_VERSION
from zoo.errors import ZooError
from zoo.hub import hub_reachable
from zoo.modality import Adapter, CalibrationData, LoadedModel, get_adapter
from zoo.models import ModelSpec, resolve
from zoo.scorecard import Scorecard, metrics_from_results

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


def calibrate(adapter: Adapter, loaded: LoadedModel, spec: ModelSpec, source: str | None,
              n_samples: int | None, seq_len: int | None, seed: int) -> CalibrationData:
    """The calibration set as asked, with the model's manifest defaults filling what was not."""
    return adapter.calibration(loaded, pick_calibration(source, spec.defaults),
                               n_samples or spec.defaults.get("n_samples", 256),
                               seq_len or spec.defaults.get("seq_len", 1024), seed)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU x{os.cpu_count()} ({platform.processor() or platform.system()})"


def run_compress(req: CompressRequest) -> CompressResult:
    from zoo.checkpoint import save_compressed

    config = req.config
    if not 0.0 < config.cr < 1.0:
        raise ZooError(f"--cr must lie in (0, 1), got {config.cr}")
    spec = resolve(req.model, req.modality)
    out = Path(req.out) if req.out else default_out_dir(spec.name, config)
    if out.exists() and not req.overwrite:
        raise ZooError(f"output directory {out} exists; pass --overwrite to replace it")
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(spec)
    calibration = calibrate(adapter, loaded, spec, req.calibration, req.n_samples, req.seq_len, req.seed)
    base_metrics = adapter.evaluate(loaded, spec, req.eval_windows, req.eval_limit) if req.evaluate else None

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
        "base_revision": loaded.revision,
        "base_notes": loaded.notes,
        "alias": spec.name,
        "variant": out.name,
        "method": config.method,
        "allocation": "static" if config.static else "dynamic",
        "config": config.to_dict(),
        "target_cr": config.cr,
        "achieved_cr_eq11": cr,
        "calibration": {"name": calibration.name, "fingerprint": calibration.fingerprint,
                        "tokens": calibration.tokens, "samples": len(calibration.batches), "seed": req.seed},
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
        result.scorecard.save(out / "scorecard.json")
    return result


def build_scorecard(manifest: dict, metrics: list) -> Scorecard:
    return Scorecard(base_model=manifest["base_model"], base_revision=manifest["base_revision"],
                     variant=manifest["variant"], modality=manifest["modality"], method=manifest["method"],
                     allocation=manifest["allocation"], engine_version=manifest["engine_version"],
                     target_cr=manifest["target_cr"], achieved_cr=manifest["achieved_cr_eq11"],
                     calibration_set=manifest["calibration"]["name"],
                     calibration_hash=manifest["calibration"]["fingerprint"], metrics=metrics,
                     compression_seconds=manifest["compression_seconds"],
                     peak_memory_mb=manifest["peak_memory_mb"], hardware=manifest["hardware"])
