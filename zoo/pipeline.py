"""`zoo compress` end to end: resolve, load, calibrate, (score base), compress, save, score.

The one module besides the CLI and the nightly job that sees every layer. Whether the Hub can
be reached is decided once per run, here, and passed down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import resource
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn

from zoo import __version__
from zoo.compression.apply import BlockStore, check_group_size, compress_model, compression_targets, default_device
from zoo.compression.config import CompressionConfig
from zoo.compression.distill import backbone_of, distill, teacher_states
from zoo.compression.layer import to_inference
from zoo.compression.plan import Plan, gib, make_plan
from zoo.compression.ranks import Ranks
from zoo.compression.report import LayerRecord
from zoo.compression.targets import CalibrationData
from zoo.engine import ENGINE_VERSION
from zoo.errors import UserError, ZooError
from zoo.evaluators.generation import REFERENCE, answer_pairs
from zoo.evaluators.provenance import provenance
from zoo.evaluators.scores import Results
from zoo.files import exclusive, sibling_lock
from zoo.format.checkpoint import check_out_dir, mark_compressed, save_compressed, tensor_bytes
from zoo.format.progress import BlockProgress
from zoo.format.record import CalibrationInfo, VariantRecord
from zoo.format.tensor_files import SourceFiles
from zoo.modalities.base import Adapter, get_adapter
from zoo.modality_table import DEFAULT, modality_of
from zoo.publish.card import inherited_license, write_card
from zoo.publish.fingerprint import variant_fingerprint
from zoo.publish.scorecard import SCORECARD, MetricResult, Scorecard, SliceScore, metrics_from_results
from zoo.sources.catalogue import Defaults, ModelSpec, modality_defaults, resolve
from zoo.sources.hub import hub_reachable
from zoo.sources.loading import LoadedModel, LoadOptions

log = logging.getLogger(__name__)

# Evaluation settings a run may override over the catalogue's (the nightly plan sets the suites too).
EVAL_SETTINGS = tuple(name for name in Defaults.evaluation_settings() if name != REFERENCE)
# The slice a published variant is verified on (zoo.rescore), over the run's own settings: two
# perplexity windows, no zero-shot tasks and 8-token answers to the chat prompts for LLMs, four
# utterances or questions per set.
SLICE_SETTINGS = {"eval_windows": 2, "eval_limit": 4, "eval_tasks": [], "eval_chat_tokens": 8}
# Settings that name the sets and tasks to score: a scorecard records those actually scored instead.
SET_LISTS = ("eval_texts", "eval_tasks", "eval_sets", "offline_eval_sets")
# Those with a `zoo compress` flag, in the order the recorded command spells them.
EVAL_FLAGS = {"eval_windows": "--eval-windows", "eval_limit": "--eval-limit"}


@dataclass(frozen=True, kw_only=True)
class CompressRequest:
    model: str  # an alias, a local folder or a Hub id
    config: CompressionConfig
    out: Path | None = None  # default: default_out_dir
    overwrite: bool = False
    calibration: str | None = None  # a set's name or a local path; None: the catalogue's for the modality
    n_samples: int | None = None
    seq_len: int | None = None
    seed: int = 0
    evaluate: bool = False
    eval_settings: dict = field(default_factory=dict)  # EVAL_SETTINGS keys over the catalogue's
    modality: str | None = None  # overrides what the catalogue or the model's config says
    plan_only: bool = False  # print the plan and stop
    max_host_memory: int | None = None  # bytes; default: what the host has available now
    max_device_memory: int | None = None  # bytes; default: what the GPU has free now
    stream: bool | None = None  # weights streamed from disk block by block; None: when the model would not fit

    def __post_init__(self) -> None:
        unknown = set(self.eval_settings) - set(EVAL_SETTINGS)
        if unknown:
            raise ZooError(
                f"unknown evaluation settings {', '.join(sorted(unknown))}; known: {', '.join(EVAL_SETTINGS)}"
            )

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else default_out_dir(self.model, self.config)


@dataclass
class Prepared:
    """A model loaded and calibrated once, from which any number of variants are compressed."""

    spec: ModelSpec
    adapter: Adapter
    loaded: LoadedModel
    calibration: CalibrationData
    online: bool
    sampling: tuple[str, int, int]  # the calibration set, samples and length it was calibrated with
    dtype: str  # of the checkpoint's uncompressed tensors; the model holds values rounded to it
    base_bytes: int  # the base's tensors in a 16-bit checkpoint
    prepared_peak_mb: float  # peak memory once loaded and calibrated; a record's peak is at least this


@dataclass
class CompressResult:
    out_dir: Path
    record: VariantRecord
    scorecard: Scorecard | None = None


def default_out_dir(model: str, config: CompressionConfig) -> Path:
    name = Path(model).name
    if not config.factorizes:
        return Path(f"{name}-{config.quantize}-g{config.quantize_group_size}")
    quantized = f"-{config.quantize}" if config.quantize else ""
    return Path(f"{name}-{config.method}-{config.allocation}-cr{config.cr:g}{quantized}")


def calibration_settings(
    spec: ModelSpec, source: str | None, n_samples: int | None, seq_len: int | None, online: bool
) -> tuple[str, int, int]:
    """The calibration set, sample count and length as asked, the catalogue's defaults filling the
    rest; offline, a set on the Hub gives way to the modality's offline stand-in."""
    defaults = spec.defaults
    if source is None:
        source, offline = defaults.calibration, defaults.offline_calibration
        if offline and (source is None or (source != offline and not online)):
            if source:
                log.warning("Hub offline: calibrating on %s instead of %s", offline, source)
            source = offline
        if source is None:
            raise ZooError("the zoo catalogue names no calibration set for this model; pass --calibration")
    n_samples = defaults.n_samples if n_samples is None else n_samples
    seq_len = defaults.seq_len if seq_len is None else seq_len
    for name, value in (("n_samples", n_samples), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ZooError(f"{name} must be a positive integer, got {value!r}")
    return source, n_samples, seq_len


def shown(name: str) -> str:
    """A model or data source as a published record names it: an absolute local path by its last
    part only, so records, scorecards and cards never reveal a machine's folders."""
    path = Path(name).expanduser()
    return path.name if path.is_absolute() else name


def peak_memory_mb() -> float:
    """The GPU's peak allocation on CUDA, else this process's peak resident memory: Linux's VmHWM,
    since ru_maxrss also counts the memory a parent held when it started this process."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory() -> None:
    """Make `peak_memory_mb` count from what is held now: CUDA's peak statistics, or Linux's
    VmHWM (clear_refs); where neither can be reset, the peak keeps counting from the start."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU x{os.cpu_count()} ({platform.processor() or platform.system()})"


def _as_argument(value: object) -> str:
    """A setting as its flag takes it: components comma-separated, floats as short as they go."""
    if isinstance(value, list):
        return ",".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def command_line(prepared: Prepared, req: CompressRequest) -> str:
    """The `zoo compress` command that rebuilds this variant, every setting that shapes it spelled out."""
    req = effective(prepared, req)
    spec = prepared.spec
    args = ["zoo", "compress", shown(spec.name)]
    if req.config.factorizes:  # quantization alone has no CR to ask for
        args += ["--cr", f"{req.config.cr:g}"]
    if spec.local is None and spec.hub == spec.name and spec.modality != DEFAULT:
        args += ["--modality", spec.modality]
    for name, value in req.config.changed().items():
        if name == "cr":
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args += [flag, _as_argument(value)]
    source, n_samples, seq_len = prepared.sampling
    args += [
        "--calibration",
        shown(source),
        "--n-samples",
        str(n_samples),
        "--seq-len",
        str(seq_len),
        "--seed",
        str(req.seed),
    ]
    if req.evaluate:  # scored: the command rebuilds the scorecard too
        args.append("--eval")
        for name, flag in EVAL_FLAGS.items():
            if req.eval_settings.get(name) is not None:
                args += [flag, str(req.eval_settings[name])]
    return shlex.join(args)


def fingerprint(prepared: Prepared, req: CompressRequest) -> str:
    """What determines the variant and its scores; the evaluation depends on whether the Hub's sets
    are reachable, so that is part of it too."""
    req = effective(prepared, req)
    evaluation = {
        "hub": prepared.online,
        **{k: v for k, v in prepared.spec.defaults.evaluation().items() if k != REFERENCE},
    }
    return _fingerprint(prepared, req, evaluation)


def blocks_fingerprint(prepared: Prepared, req: CompressRequest) -> str:
    """What determines the compressed blocks: the variant's fingerprint without its evaluation."""
    return _fingerprint(prepared, effective(prepared, req), {})


def _fingerprint(prepared: Prepared, req: CompressRequest, evaluation: dict) -> str:
    calibration = prepared.calibration
    return variant_fingerprint(
        prepared.loaded.base_model,
        prepared.loaded.revision,
        ENGINE_VERSION,
        req.config.determining(),
        {
            "name": calibration.name,
            "fingerprint": calibration.fingerprint,
            "samples": len(calibration.batches),
            "seed": req.seed,
        },
        evaluation,
    )


def held_dtype(dtype: str, device: torch.device) -> str:
    """The dtype the base is held in: its checkpoint's, except float16 on a CPU-only run, held in
    float32 with float16-rounded values, since CPUs multiply float16 slowly (6x float32 on ours)
    while bfloat16 runs fast."""
    return "float32" if dtype == "float16" and device.type == "cpu" else dtype


def plan(req: CompressRequest, online: bool, report: Callable[[str], None] = log.info) -> Plan:
    """The run's plan, from the model's skeleton and a probe of its shapes, before any weights are
    read: reported line by line, and a ZooError when it would not fit the memory there is. The
    weights are streamed when asked (`req.stream`), or unasked when the model held in memory would
    not fit the host's."""
    spec = resolve(req.model, req.modality, online)
    adapter = get_adapter(spec.modality)
    source, n_samples, seq_len = calibration_settings(spec, req.calibration, req.n_samples, req.seq_len, online)
    adapter.check_calibration(source, online)
    skeleton = adapter.load(spec, LoadOptions(online=online, dtype=req.config.dtype, weights=False))
    resolved = req.config.resolved(skeleton.dtype, spec.defaults.dtype, spec.defaults.heal)
    dtype = resolved.dtype
    device = torch.device(req.config.device or default_device())
    config = skeleton.model.config
    stacks = adapter.stacks(skeleton.model, req.config.components)
    targets = compression_targets(skeleton.model, stacks)
    check_group_size({name: linear.in_features for name, linear in targets.items()}, req.config)
    the_plan = make_plan(
        skeleton.model,
        stacks,
        n_samples,
        seq_len,
        lambda stack, tokens: adapter.carried_floats(config, stack, tokens),
        getattr(torch, held_dtype(dtype, device)),
        getattr(torch, skeleton.dtype or "float32"),
        device,
        lambda: psutil.Process().memory_info().rss,
        torch.get_num_threads(),
        req.config.cr,
        req.config.iters,
        not req.config.static,
        req.config.offload_activations,
        resolved.heal,
        Ranks.launched().size,
        resolved.distill,
    )
    host_limit = req.max_host_memory or psutil.virtual_memory().available
    streamed = req.stream if req.stream is not None else the_plan.host_bytes > host_limit
    streamed = Ranks.current().broadcast(streamed, 0)  # under torchrun, every rank as rank 0 decides
    the_plan = dataclasses.replace(the_plan, streamed=streamed)
    report(f"Plan for {shown(spec.name)}:")
    for line in the_plan.lines():
        report(f"  {line}")
    check_disk(req.out_dir, sum(p.numel() for p in skeleton.model.parameters()), targets, req.config, report)
    device_limit = req.max_device_memory
    if device_limit is None and device.type == "cuda":
        device_limit = torch.cuda.mem_get_info(device)[0]
    the_plan.check(host_limit, device_limit)
    if streamed:
        check_streamable(req, skeleton)
    check_distillable(resolved, adapter, skeleton.model, streamed)
    return the_plan


def check_distillable(config: CompressionConfig, adapter: Adapter, model: nn.Module, streamed: bool) -> None:
    """Refuse, before loading, a distillation that cannot run: it holds the whole model on one device,
    and is built for LLMs only."""
    if not config.distill:
        return
    if not adapter.distills:
        raise ZooError(f"distill is built for LLMs; {adapter.modality} models do not distill yet: compress without it")
    if Ranks.launched().size > 1:
        raise ZooError("distill does not run under torchrun yet: compress with one process, or without distill")
    if streamed:
        raise ZooError(
            "distill trains the whole model at once, and this run streams its weights one block at a time "
            "(the model would not fit the host's memory, or --stream): compress without distill"
        )
    backbone_of(model)


def check_streamable(req: CompressRequest, skeleton: LoadedModel) -> None:
    """Refuse, before loading, a streamed run that cannot be: scoring needs the whole model, and
    the blocks are read from safetensors files (a Hub model's are checked once fetched)."""
    if req.evaluate:
        raise ZooError(
            "this run streams its weights from disk (the model held in memory would not fit, or --stream), and "
            "--eval scores the whole model in memory: compress without --eval, or give --no-stream"
        )
    if skeleton.folder is not None:
        SourceFiles.of(skeleton.folder)


def check_disk(
    out: Path, parameters: int, targets: dict[str, nn.Linear], config: CompressionConfig, report: Callable
) -> None:
    """Refuse a run whose checkpoint and per-block progress would not fit where they go, before any
    weights load. Both are 16-bit: the checkpoint is the base less CR of its projections, the
    progress blocks hold the projections' compressed share until the checkpoint is saved."""
    projections = 2 * sum(linear.weight.numel() for linear in targets.values())
    shrink = config.cr if config.factorizes else 1 - config.bits / 16
    needed = int(2 * parameters - shrink * projections + (1 - shrink) * projections)
    folder = out.absolute().parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    report(f"  disk             {gib(needed)} for the checkpoint and its progress in {folder} ({gib(free)} free)")
    if free < needed:
        raise ZooError(
            f"{folder} has {gib(free)} free; writing {out} takes about {gib(needed)} (the checkpoint and its "
            "per-block progress): free some space there or pass another --out"
        )


def prepare(req: CompressRequest, online: bool | None = None, report: Callable[[str], None] = log.info) -> Prepared:
    """Everything before compression: plan, resolve, load, calibrate; each error here costs no
    compression work. `online` (default: whether the Hub answers now) is decided once for the whole run."""
    online = hub_reachable() if online is None else online
    the_plan = plan(req, online, report)
    reset_peak_memory()  # what this process held before the run (other work in a notebook, other tests) is not its
    held = the_plan.dtype
    spec = resolve(req.model, req.modality, online)
    spec = with_settings(spec, req.eval_settings)
    adapter = get_adapter(spec.modality)
    loaded = adapter.load(
        spec, LoadOptions(online=online, dtype=held, stream=the_plan.streamed, components=req.config.components)
    )
    dtype = req.config.resolved(loaded.dtype, spec.defaults.dtype, spec.defaults.heal).dtype
    base_bytes = tensor_bytes(loaded.model, "float16")
    if held != dtype:  # calibrated and scored as its checkpoint holds it
        with torch.no_grad():
            for p in loaded.model.parameters():
                p.copy_(p.to(getattr(torch, dtype)))
        if loaded.weights is not None:  # and so are the streamed blocks, as they are read
            loaded.weights = dataclasses.replace(loaded.weights, values=getattr(torch, dtype))
    sampling = calibration_settings(spec, req.calibration, req.n_samples, req.seq_len, online)
    calibration = adapter.calibration(loaded, *sampling, req.seed, online)
    return Prepared(spec, adapter, loaded, calibration, online, sampling, dtype, base_bytes, peak_memory_mb())


def effective(prepared: Prepared, req: CompressRequest) -> CompressRequest:
    """The request with concrete dtypes: the checkpoint's is the one the model was prepared for."""
    config = req.config.resolved(prepared.loaded.dtype, prepared.dtype, prepared.spec.defaults.heal)
    if config.dtype != prepared.dtype:
        raise ZooError(
            f"the model was prepared for {prepared.dtype} checkpoints; a {config.dtype} checkpoint needs its own run"
        )
    return dataclasses.replace(req, config=config)


def evaluate(prepared: Prepared) -> Results:
    """The model's scores as it is now, on the evaluation its catalogue entry and the request name; a
    chat model's come with its answers, its agreement taken with the base's answers where the spec
    holds them (REFERENCE). What scoring held is not the compression's: the peak count starts again
    afterwards."""
    results = prepared.adapter.evaluate(prepared.loaded, prepared.spec, prepared.online)
    reset_peak_memory()
    return results


def with_settings(spec: ModelSpec, settings: dict) -> ModelSpec:
    return dataclasses.replace(spec, defaults=spec.defaults.updated(settings))


def score_slice(prepared: Prepared) -> SliceScore:
    """The model's scores as it is now on the verification slice: the run's evaluation settings
    (and a chat model's base answers) with SLICE_SETTINGS over them, all recorded, so a fresh
    process can score the same slice."""
    settings = {**prepared.spec.defaults.evaluation(), **SLICE_SETTINGS}
    results = prepared.adapter.evaluate(prepared.loaded, with_settings(prepared.spec, settings), prepared.online)
    return SliceScore(settings, prepared.online, results.scores)


def run_evaluation(prepared: Prepared, metrics: list[MetricResult]) -> dict:
    """The evaluation as this run scored it: its settings, whether the Hub was reachable, and the sets
    and tasks the metrics come from, which offline are the stand-ins, not the catalogue's lists."""
    given = prepared.spec.defaults.evaluation()
    settings = {k: v for k, v in given.items() if k not in (*SET_LISTS, REFERENCE)}
    return {**settings, "online": prepared.online, "scored": list(dict.fromkeys(m.task for m in metrics))}


def calibration_samples(calibration: CalibrationData) -> int:
    """Samples, not batches: an LLM's batch holds several token windows, Whisper's and Qwen-VL's one sample."""
    return sum(batch.get("input_ids", batch.get("input_features")).shape[0] for batch in calibration.batches)


def run_compress(
    req: CompressRequest, repo_id: str | None = None, report: Callable[[str], None] = log.info
) -> CompressResult:
    """`zoo compress`: one variant, compressed in place in the loaded model; `repo_id` is the
    repository the card names (default: the variant's folder name); `report` hears the plan. Under
    torchrun, rank 0 alone checks, locks, scores and writes the output directory
    (zoo.compression.ranks); the other ranks share the compression and return its record."""
    main = Ranks.current().main
    if main:
        check_out_dir(req.out_dir, req.overwrite)
    with exclusive(sibling_lock(req.out_dir), f"output directory {req.out_dir}") if main else contextlib.nullcontext():
        prepared = prepare(req, report=report if main else log.debug)
        base_results = evaluate(prepared) if req.evaluate and main else None
        return compress_variant(prepared, req, base_results, repo_id)


def compress_loaded(
    prepared: Prepared, req: CompressRequest, variant: str, store: BlockStore | None = None
) -> VariantRecord:
    """Compress `prepared`'s model in place and describe the result; the model's config then names
    its compressed layers, so its own `save_pretrained` writes a folder that reloads. Blocks
    `store` holds from a killed run of the same variant are restored."""
    req = effective(prepared, req)
    model, config, batches = prepared.loaded.model, req.config, prepared.calibration.batches
    start = time.perf_counter()
    device = torch.device(config.device or default_device())
    teacher = teacher_states(model, batches, device) if config.distill else None  # before it is compressed
    stacks = prepared.adapter.stacks(model, config.components)
    layers = compress_model(model, stacks, prepared.calibration, config, store, prepared.loaded.weights)
    distilled = teacher is not None and distill(
        model, batches, teacher, config.distill, config.distill_lr, req.seed, device
    )
    seconds = time.perf_counter() - start
    mark_compressed(model)
    return build_record(prepared, req, variant, layers, seconds, distilled)


def compress_variant(
    prepared: Prepared, req: CompressRequest, base_results: Results | None, repo_id: str | None = None
) -> CompressResult:
    """Compress `prepared`'s model in place and save the checkpoint at `req.out_dir`; with
    `base_results` (evaluate's for the base), score it and write scorecard.json and the model
    card (naming `repo_id`)."""
    out = req.out_dir
    if not Ranks.current().main:  # rank 0 keeps the progress and writes
        return CompressResult(out, compress_loaded(prepared, req, out.name))
    progress = BlockProgress(out, blocks_fingerprint(prepared, req))
    try:
        record = compress_loaded(prepared, req, out.name, progress)
        record = save_compressed(
            prepared.loaded.model,
            out,
            record,
            overwrite=req.overwrite,
            extra_files=lambda tmp: prepared.adapter.save_processor(prepared.loaded, tmp),
            dropped=None if prepared.loaded.weights is None else progress.dropped(prepared.loaded.weights),
        )
    except UserError as exc:  # a full disk, NaN inputs, ...: said once, with what is kept
        raise ZooError(f"{exc}{progress.left()}") from exc
    progress.finish()
    result = CompressResult(out, record)
    if base_results is not None:
        to_inference(prepared.loaded.model)  # scored as it runs once loaded
        reference = base_results.answers  # a chat base's answers, None for others
        if reference is not None:  # the compressed model's answers are held against them
            prepared = dataclasses.replace(prepared, spec=with_settings(prepared.spec, {REFERENCE: reference}))
        results = evaluate(prepared)
        metrics = metrics_from_results(base_results.scores, results.scores, provenance)
        limit = prepared.spec.defaults.eval_limit
        result.scorecard = Scorecard.from_record(
            record,
            metrics,
            limit,
            score_slice(prepared),
            answer_pairs(reference, results.answers),
            run_evaluation(prepared, metrics),
        )
        result.scorecard.save(out / SCORECARD)
        write_card(out, record, result.scorecard, repo_id or out.name)
    return result


def build_record(
    prepared: Prepared,
    req: CompressRequest,
    variant: str,
    layers: list[LayerRecord],
    seconds: float,
    distilled: bool,
) -> VariantRecord:
    spec, loaded, calibration = prepared.spec, prepared.loaded, prepared.calibration
    return VariantRecord(
        variant=variant,
        modality=spec.modality,
        auto_class=prepared.adapter.auto_class,
        alias=shown(spec.name),
        base_model=shown(loaded.base_model),
        base_revision=loaded.revision,
        hub_id=spec.hub,
        license=inherited_license(spec, prepared.online),
        base_notes=tuple(loaded.notes),
        config=req.config,
        calibration=CalibrationInfo(
            shown(calibration.name),
            calibration.fingerprint,
            calibration.tokens,
            calibration_samples(calibration),
            req.seed,
        ),
        layers=tuple(layers),
        fingerprint=fingerprint(prepared, req),
        command=command_line(prepared, req),
        compression_seconds=seconds,
        peak_memory_mb=max(prepared.prepared_peak_mb, peak_memory_mb()),
        hardware=hardware(),
        zoo_version=__version__,
        engine_version=ENGINE_VERSION,
        base_bytes=prepared.base_bytes,
        distilled=distilled,
    )


def compress(
    model: nn.Module,
    processor,
    cr: float = 0.2,
    *,
    modality: str | None = None,
    calibration: str | None = None,
    n_samples: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    **settings,
) -> VariantRecord:
    """Python entry point: compress an in-memory model in place, calibrated as `zoo compress`
    would calibrate it (the catalogue's set and sizes for its modality unless given).

    `processor` is its tokenizer or processor; `settings` are the other CompressionConfig fields
    (method, static, ks_ratio, iters, ...). Returns the variant's record (`.layers`: one row per
    target projection), also kept as `model.compot_record` for `zoo.save`. Afterwards the model's
    own `save_pretrained` / `push_to_hub` write folders that reload compressed.
    """
    config = CompressionConfig(cr=cr, **settings)
    kind = modality or modality_of(getattr(model.config, "model_type", ""))
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    online = hub_reachable()
    spec = ModelSpec(name, kind, defaults=modality_defaults(kind))
    req = CompressRequest(
        model=name, config=config, calibration=calibration, n_samples=n_samples, seq_len=seq_len, seed=seed
    )
    adapter = get_adapter(kind)
    check_distillable(config, adapter, model, streamed=False)
    loaded = LoadedModel(model, processor, name)
    sampling = calibration_settings(spec, calibration, n_samples, seq_len, online)
    data = adapter.calibration(loaded, *sampling, seed, online)
    dtype = config.resolved(str(model.dtype).removeprefix("torch."), spec.defaults.dtype, spec.defaults.heal).dtype
    base_bytes = tensor_bytes(model, "float16")
    prepared = Prepared(spec, adapter, loaded, data, online, sampling, dtype, base_bytes, peak_memory_mb())
    record = compress_loaded(prepared, req, req.out_dir.name)
    model.compot_record = record
    return record


def save(model: nn.Module, out: str | Path, processor=None, overwrite: bool = False) -> Path:
    """Save a model `compress` compressed as a checkpoint folder with its record (and `processor`'s
    files), the same folder `zoo compress` writes without `--eval`."""
    record = getattr(model, "compot_record", None)
    if record is None:
        raise ZooError(f"{type(model).__name__} was not compressed by zoo.compress: nothing to save as a variant")
    adapter = get_adapter(record.modality)
    loaded = LoadedModel(model, processor, record.base_model)
    extra = None if processor is None else (lambda tmp: adapter.save_processor(loaded, tmp))
    save_compressed(model, Path(out), record, overwrite=overwrite, extra_files=extra)
    return Path(out)
