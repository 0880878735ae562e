"""The `zoo` command line."""

from __future__ import annotations

import logging
import typing
from collections import Counter
from importlib import resources
from pathlib import Path

import click

from zoo import __version__
from zoo.compression.config import QUANT_BITS, CompressionConfig
from zoo.errors import UserError, ZooError
from zoo.modality_table import MODALITIES

# zoo.format.export.FORMATS and dense_export.DENSE, named here so that the CLI imports no torch
EXPORT_FORMATS = ("compressed-tensors", "dense")
CI_COMMANDS = ("gate", "gather", "nightly")  # what the workflows run; `zoo --help` lists them apart


class _ZooGroup(click.Group):
    """Turns the errors a user can fix (ZooError, the engine's EngineError) into a one-line message
    and exit code 1, without a traceback; `--help` lists the user's commands apart from CI_COMMANDS."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc

    def format_commands(self, ctx, formatter) -> None:
        commands = {name: self.get_command(ctx, name) for name in self.list_commands(ctx)}
        limit = formatter.width - 6 - max(map(len, commands), default=0)
        for title, ci in (("Commands", False), ("CI commands (the nightly job and the pull-request gate)", True)):
            rows = [(n, c.get_short_help_str(limit)) for n, c in commands.items() if (n in CI_COMMANDS) == ci]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class _SectionedCommand(click.Command):
    """`--help` lists the options in `sections` (title -> option names), in that order; an option no
    section names goes under `default`."""

    def __init__(self, *args, sections: dict[str, tuple[str, ...]], default: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sections, self.default = sections, default

    def format_options(self, ctx, formatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {title: [] for title in (*self.sections, self.default, "Other")}
        options = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        for option in options:
            title = next((t for t, names in self.sections.items() if option.name in names), self.default)
            record = option.get_help_record(ctx)
            if record is not None:
                rows["Other" if option is self.get_help_option(ctx) else title].append(record)
        for title, records in rows.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


@click.group(cls=_ZooGroup)
@click.version_option(__version__, prog_name="compot-zoo")
@click.option("-v", "--verbose", is_flag=True, help="Show progress logs.")
def main(verbose: bool) -> None:
    """compot-zoo: compress Transformers with COMPOT, score them, publish them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


def _publish_options(command):
    command = click.option(
        "--org", default=None, help="Organisation to publish under (default: the catalogue's [publish])."
    )(command)
    command = click.option(
        "--allow-offline-scores",
        is_flag=True,
        help="Publish to the Hub a variant scored only on offline stand-ins (its card says so); "
        "the local registry takes any.",
    )(command)
    return click.option("--private/--public", default=None, help="Visibility of new Hub repositories.")(command)


@main.command("list")
def list_models() -> None:
    """Aliases in the zoo catalogue, each with the benchmark suite it is scored on where the Hub is reachable."""
    from zoo.sources.catalogue import catalogue, resolve

    for name, entry in sorted(catalogue()["models"].items()):
        source = entry.get("hub", "")
        offline = f"  (offline: packaged {entry['packaged']})" if "packaged" in entry else ""
        click.echo(f"{name:22s} {entry['modality']:8s} {source}{offline}")
        suite = resolve(name).defaults
        texts = [f"perplexity/{t}" for t in suite.eval_texts]
        click.echo(f"{'':31s} suite: {', '.join([*texts, *suite.eval_tasks, *suite.eval_sets])}")


SETTINGS = {f.name: f for f in CompressionConfig.settings()}
QUANTIZE_CHOICES = tuple(f"gptq-w{bits}" for bits in QUANT_BITS)
# `zoo compress --help`'s sections; the CompressionConfig settings no other section names are "Compression".
COMPRESS_SECTIONS = {
    "Model and output": ("out", "overwrite", "modality", "dtype"),
    "Compression": (),
    "Calibration": ("calibration", "n_samples", "seq_len", "seed"),
    "Evaluation": ("evaluate", "eval_windows", "eval_limit"),
    "Publishing": ("push", "org", "private", "allow_offline_scores"),
    "Resources": ("plan_only", "max_host_memory", "max_device_memory", "stream", "device", "offload_activations"),
}
COMPRESS_EXAMPLES = """Examples:

\b
  zoo compress smollm2-135m --cr 0.2 --eval
  zoo compress HuggingFaceTB/SmolLM2-135M-Instruct --method gptq --quantize gptq-w4 --push hub:my-org
"""


def _value_type(name: str) -> type:
    """int, float or str from the field's annotation ("float | None" is float)."""
    hint = typing.get_type_hints(CompressionConfig)[name]
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def _config_options(command):
    """One option per CompressionConfig setting but the CR, its help, default and choices read from the field."""
    for name, f in reversed(SETTINGS.items()):
        flag, meta = "--" + name.replace("_", "-"), f.metadata
        if name == "cr":
            continue
        if f.default is False:
            option = click.option(flag, name, is_flag=True, help=meta["help"])
        elif name == "components":
            option = click.option(flag, name, default=None, metavar="NAMES", help=meta["help"] + " Comma-separated.")
        else:
            # a setting whose choices grow (the method table) is checked by the config when the run starts
            fixed = meta["choices"] if isinstance(meta["choices"], tuple) else None
            choices = fixed or (QUANTIZE_CHOICES if name == "quantize" else None)
            kind = click.Choice(choices) if choices else _value_type(name)
            option = click.option(
                flag, name, type=kind, default=f.default, show_default=f.default is not None, help=meta["help"]
            )
        command = option(command)
    return command


def _memory_option(where: str, default: str):
    return click.option(
        f"--max-{where}-memory",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="GIB",
        help=f"{where.capitalize()} memory the run may take, in GiB (default: {default}).",
    )


def _check_cr(_ctx, _param, value: float) -> float:
    """An out-of-range CR is a usage error (exit 2) that says what the number means."""
    problem = SETTINGS["cr"].metadata["check"](value)
    if problem:
        raise click.BadParameter(f"{value:g} {problem}. {SETTINGS['cr'].metadata['help']}")
    return value


@main.command(
    cls=_SectionedCommand,
    sections=COMPRESS_SECTIONS,
    default="Compression",
    epilog=COMPRESS_EXAMPLES,
)
@click.argument("model")
@click.option(
    "--cr",
    type=float,
    default=SETTINGS["cr"].default,
    show_default=True,
    callback=_check_cr,
    help=SETTINGS["cr"].metadata["help"],
)
@_config_options
@click.option(
    "--calibration",
    default=None,
    help="A calibration set (refinedweb, wikitext2, c4, wiki-offline, librispeech, mathverse, ...) or a local path.",
)
@click.option(
    "--n-samples", type=click.IntRange(min=1), default=None, help="Calibration samples (model default if unset)."
)
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Tokens per calibration sample.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the calibration samples' draw: the same seed, the same samples and the same variant.",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Checkpoint directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--eval", "evaluate", is_flag=True, help="Score base and compressed model.")
@click.option(
    "--eval-windows",
    type=click.IntRange(min=1),
    default=None,
    help="Cap on perplexity windows, LLMs (model default if unset).",
)
@click.option(
    "--eval-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Cap on items per evaluation task or set (model default if unset).",
)
@click.option(
    "--modality",
    type=click.Choice(list(MODALITIES)),
    default=None,
    help="For Hub ids and folders whose config does not say.",
)
@click.option(
    "--push",
    "push",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[REGISTRY]",
    help="Score (implies --eval) and publish: 'hub', 'hub:ORG' or a local registry folder "
    "(bare --push: the default local registry).",
)
@click.option("--plan", "plan_only", is_flag=True, help="Print the run's plan (memory, time) and stop.")
@_memory_option("host", "what is available now")
@_memory_option("device", "what the GPU has free now")
@click.option(
    "--stream/--no-stream",
    default=None,
    help="Read each block's weights from the model's safetensors files in its turn and drop the block after it, "
    "holding one block instead of the model (default: when the model held in memory would not fit "
    "--max-host-memory).",
)
@_publish_options
def compress(  # noqa: PLR0913 - click passes one argument per option
    model: str,
    calibration: str | None,
    n_samples: int | None,
    seq_len: int | None,
    seed: int,
    out: Path | None,
    overwrite: bool,
    evaluate: bool,
    eval_windows: int | None,
    eval_limit: int | None,
    modality: str | None,
    push: str | None,
    plan_only: bool,
    max_host_memory: float | None,
    max_device_memory: float | None,
    stream: bool | None,
    org: str | None,
    private: bool | None,
    allow_offline_scores: bool,
    **settings,
) -> None:
    """Compress MODEL (an alias, a Hub id or a local folder) and save a loadable checkpoint."""
    from zoo.compression.ranks import join_from_environment
    from zoo.format.record import size_line
    from zoo.pipeline import CompressRequest, run_compress
    from zoo.publish.publishers import publisher_for

    if settings["components"]:
        settings["components"] = [c.strip() for c in settings["components"].split(",")]
    config = CompressionConfig(**settings)
    eval_settings = {k: v for k, v in (("eval_windows", eval_windows), ("eval_limit", eval_limit)) if v is not None}
    req = CompressRequest(
        model=model,
        config=config,
        out=out,
        overwrite=overwrite,
        calibration=calibration,
        n_samples=n_samples,
        seq_len=seq_len,
        seed=seed,
        evaluate=evaluate or push is not None,
        eval_settings=eval_settings,
        modality=modality,
        plan_only=plan_only,
        max_host_memory=None if max_host_memory is None else int(max_host_memory * 2**30),
        max_device_memory=None if max_device_memory is None else int(max_device_memory * 2**30),
        stream=stream,
    )
    if plan_only:  # under torchrun, rank 0's plan gives every process's figures
        from zoo.compression.ranks import Ranks
        from zoo.pipeline import plan
        from zoo.sources.hub import hub_reachable

        if Ranks.launched().main:
            plan(req, hub_reachable(), click.echo)
        return
    ranks = join_from_environment()  # torchrun's processes share the run; rank 0 speaks and writes
    publisher, repo_id = None, None
    if push is not None and ranks.main:  # before any work: a missing token or bad name must not cost a compression
        publisher = publisher_for(push or None, org, private, allow_offline_scores)
        publisher.check([req.out_dir.name])
        repo_id = f"{publisher.organization}/{req.out_dir.name}"
    result = run_compress(req, repo_id, click.echo)
    if not ranks.main:
        return
    record = result.record
    methods = Counter(r.method for r in record.layers)
    click.echo(f"\nCompressed {len(record.layers)} projections ({', '.join(f'{n} {m}' for m, n in methods.items())})")
    for r in record.layers[:: max(1, len(record.layers) // 12)]:
        bits = f" bits={r.bits}" if r.bits != 16 else ""
        click.echo(f"  {r.name:45s} {r.method:8s} k={r.k:5d} s={r.s:5d} cr={r.cr:.3f}{bits} err={r.relative_error:.4f}")
    asked = f"Target CR {config.cr:g}" if config.factorizes else f"No factorization ({config.method} alone)"
    click.echo(
        f"{asked}, achieved {record.achieved_cr:.4f} from stored bytes (eq. 11: "
        f"{record.eq11_cr:.4f}), over every target projection, dense-kept ones included"
    )
    stored = sum(r.stored_bits for r in record.layers) // 8
    click.echo(f"Target projections store {stored} bytes ({record.quantize or '16-bit values'})")
    click.echo(
        f"Size: {size_line(record.file_bytes, record.base_bytes)}; tensors not compressed in {record.config.dtype}"
    )
    click.echo(f"Time {record.compression_seconds:.1f} s, peak memory {record.peak_memory_mb:.0f} MiB")
    for note in record.base_notes:
        click.echo(f"Note: {note}")
    if result.scorecard is not None:
        click.echo("\n" + result.scorecard.to_markdown_table())
    click.echo(f"Saved to {result.out_dir}")
    if publisher is not None:
        _publish(publisher, result.out_dir)


def _publish(publisher, folder: Path) -> None:
    published = publisher.publish(folder, folder.name)
    click.echo(f"Published {published.repo_id} to {publisher!r}: {published.url}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("registry", required=False)
@_publish_options
def publish(
    checkpoint: Path, registry: str | None, org: str | None, private: bool | None, allow_offline_scores: bool
) -> None:
    """Publish a scored CHECKPOINT (from `zoo compress --eval`) to REGISTRY: 'hub', 'hub:ORG' or a
    local registry folder (default: the local registry). The checkpoint folder is only read."""
    from zoo.publish.publishers import check_folder, publisher_for

    check_folder(checkpoint)
    _publish(publisher_for(registry, org, private, allow_offline_scores), checkpoint)  # publish() checks first


@main.command("export")
@click.argument("variant")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default=EXPORT_FORMATS[0],
    show_default=True,
    help="compressed-tensors: the pack-quantized layout that vLLM serves and transformers loads with the "
    "compressed-tensors package (GPTQ-only variants). dense: any variant as a plain 16-bit checkpoint of its "
    "base architecture, which every runtime reads; the savings do not survive it.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export there.")
def export(variant: str, fmt: str, out: Path, overwrite: bool) -> None:
    """Write VARIANT (folder or Hub id) in a format that runtimes read without compot-zoo: a GPTQ-only one
    in compressed-tensors' layout; any one as a dense 16-bit checkpoint (the savings gone). Factorized
    (COMPOT, SVD-LLM) variants have no standard compressed format."""
    if fmt == "dense":
        from zoo.format.dense_export import export_dense

        result = export_dense(variant, out, overwrite)
        click.echo(
            f"Exported {result.layers} compressed layers to {result.out} as a dense 16-bit checkpoint: "
            f"{result.notes[0]}."
        )
        return
    from zoo.format.export import export as export_variant

    result = export_variant(variant, out, fmt, overwrite)
    grids = ", ".join(f"{bits}-bit g{group}" for bits, group in result.schemes)
    click.echo(
        f"Exported {result.layers} quantized layers ({grids}, asymmetric) to {result.out} as {result.format} "
        "pack-quantized: vLLM serves it, transformers loads it with the compressed-tensors package."
    )
    for note in result.notes:
        click.echo(f"Note: {note}.")


def _manifest_path(manifest_path: Path | None, default: str) -> Path:
    return manifest_path or Path(str(resources.files("zoo.ci") / default))


def _manifest_option(default: str, what: str):
    return click.option(
        "--manifest",
        "manifest_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help=f"{what} (default: the project's zoo/ci/{default}).",
    )


def _manifest_publisher(
    settings: dict, registry: str | None, org: str | None, private: bool | None, allow_offline_scores: bool = False
):
    """The publisher a command's options name, the manifest's [publish] table filling the rest."""
    from zoo.publish.publishers import publisher_for

    return publisher_for(
        registry or settings.get("registry"),
        org or settings.get("organization"),
        settings.get("private") if private is None else private,
        allow_offline_scores,
    )


def _workdir_option(name: str):
    return click.option(
        "--workdir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help=f"Where variants are built (default: the cache's {name}/).",
    )


def _report_dir_option(what: str):
    return click.option(
        "--report-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("nightly-report"),
        show_default=True,
        help=f"Where {what} go.",
    )


@main.command()
@_manifest_option("nightly.toml", "Models x CRs x methods to keep fresh")
@click.option(
    "--registry",
    default=None,
    help="Where variants are published: 'hub', 'hub:ORG' or a local registry folder (default: the manifest's, "
    "else the local registry).",
)
@click.option("--model", default=None, help="Only this model of the manifest (one CI job's share).")
@click.option(
    "--list-jobs",
    is_flag=True,
    help="Print the manifest's CI jobs, one per model with its runner labels, as a JSON list, and stop.",
)
@_workdir_option("nightly")
@_report_dir_option("report.json and report.md")
@_publish_options
def nightly(  # noqa: PLR0913 - click passes one argument per option
    manifest_path: Path | None,
    registry: str | None,
    model: str | None,
    list_jobs: bool,
    workdir: Path | None,
    report_dir: Path,
    org: str | None,
    private: bool | None,
    allow_offline_scores: bool,
) -> None:
    """Rebuild, score and publish every variant whose inputs changed since it was published (or
    was found broken), then verify each in a fresh process."""
    import json

    from zoo.compression.ranks import join_from_environment
    from zoo.nightly.manifest import ci_jobs, only_model, read_manifest
    from zoo.nightly.run import run_nightly
    from zoo.sources.assets import cache_dir

    manifest_path = _manifest_path(manifest_path, "nightly.toml")
    if list_jobs:
        click.echo(json.dumps(ci_jobs(manifest_path)))
        return
    variants, settings = read_manifest(manifest_path)
    if model is not None:
        variants = only_model(variants, model)
    publisher = _manifest_publisher(settings, registry, org, private, allow_offline_scores)
    ranks = join_from_environment()  # a runner class with several processes: torchrun's ranks build together
    outcomes = run_nightly(variants, publisher, workdir or cache_dir() / "nightly", report_dir)
    if not ranks.main:
        return
    click.echo((report_dir / "report.md").read_text())
    problems = []
    for what, names in (
        ("failed", [o.variant for o in outcomes if o.status == "failed"]),
        ("were broken once published", [o.variant for o in outcomes if o.broken]),
    ):
        if names:
            problems.append(f"{len(names)} of {len(outcomes)} variants {what}: {', '.join(names)}")
    if problems:
        raise click.ClickException(f"{'; '.join(problems)} (see {report_dir / 'report.md'})")


@main.command()
@click.argument("variant")
@click.argument("registry", required=False)
@click.option("--org", default=None, help="Organisation (default: the catalogue's [publish]).")
def verify(variant: str, registry: str | None, org: str | None) -> None:
    """Download the published VARIANT from REGISTRY in a fresh process, reload it, score the slice its
    scorecard recorded and mark it verified or broken where it is published (as `zoo nightly` does)."""
    from zoo.publish.publishers import publisher_for
    from zoo.rescore import verify_published

    publisher = publisher_for(registry, org)
    published = publisher.get(variant)
    if published is None:
        raise ZooError(f"{publisher!r} holds no variant {variant!r}")
    result = verify_published(publisher, published)
    if result.broken:
        raise click.ClickException(f"{published.repo_id} is broken: {result.reason}")
    click.echo(f"{published.repo_id} verified: it reloads and scores its slice as at build time")


@main.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@_report_dir_option("the gathered report.json and report.md")
def gather(reports: tuple[Path, ...], report_dir: Path) -> None:
    """Gather the report folders of `zoo nightly --model` jobs into one nightly report; fails when a
    variant failed or a job left no report."""
    from zoo.nightly.report import gather_reports

    data = gather_reports(list(reports), report_dir)
    click.echo((report_dir / "report.md").read_text())
    if data["counts"]["failed"] or data["missing"]:
        raise click.ClickException(
            f"{data['counts']['failed']} variants failed, {len(data['missing'])} jobs left no report "
            f"(see {report_dir / 'report.md'})"
        )


@main.command()
@_manifest_option("gate.toml", "The variants to check")
@click.option(
    "--against",
    default=None,
    help="Published scorecards to compare with: 'hub', 'hub:ORG' or a local registry folder (default: the manifest's).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=None,
    help="Relative worsening of a metric that fails the gate (default: zoo/gate.py's GATE_TOLERANCE, set from "
    "measured run-to-run noise).",
)
@click.option("--report-only", is_flag=True, help="A change meant to move the numbers: report the table, never fail.")
@_workdir_option("gate")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("gate-report"),
    show_default=True,
    help="Where gate.json and gate.md (the pull-request comment) go.",
)
@click.option("--org", default=None, help="Organisation (default: the manifest's [publish]).")
def gate(
    manifest_path: Path | None,
    against: str | None,
    tolerance: float | None,
    report_only: bool,
    workdir: Path | None,
    out: Path,
    org: str | None,
) -> None:
    """Compress and score the gate manifest and compare each metric with the published scorecards;
    exit non-zero when one worsens beyond the tolerance (unless --report-only)."""
    from zoo.files import check_writable
    from zoo.gate import GATE_TOLERANCE, run_gate, write_gate_report
    from zoo.nightly.manifest import read_manifest
    from zoo.sources.assets import cache_dir

    variants, settings = read_manifest(_manifest_path(manifest_path, "gate.toml"))
    publisher = _manifest_publisher(settings, against, org, None)
    check_writable(out / "gate.md")  # before the work, not after
    tolerance = GATE_TOLERANCE if tolerance is None else tolerance
    results = run_gate(variants, publisher, workdir or cache_dir() / "gate", tolerance)
    report = write_gate_report(results, out, repr(publisher), tolerance, report_only)
    click.echo(report.read_text())
    failed = [r.variant for r in results if not r.passed]
    if failed and not report_only:
        raise click.ClickException(f"the gate failed for {', '.join(failed)} (see {report})")


@main.command()
@click.argument("registry", required=False)
@click.option(
    "--base-model",
    default=None,
    help="Only variants of this base model: a substring of its Hub id or of what was loaded (e.g. packaged:...).",
)
@click.option("--modality", type=click.Choice(list(MODALITIES)), default=None, help="Only variants of this modality.")
@click.option("--org", default=None, help="Organisation (default: the catalogue's [publish]).")
def browse(registry: str | None, base_model: str | None, modality: str | None, org: str | None) -> None:
    """List the published variants of REGISTRY with their scorecards."""
    from zoo.format.record import size_line
    from zoo.publish.publishers import publisher_for

    variants = [
        v
        for v in publisher_for(registry, org, None).published()
        if (base_model is None or _names_base(v.scorecard, base_model))
        and (modality is None or v.scorecard.modality == modality)
    ]
    if not variants:
        click.echo("No published variants" + (" match" if base_model or modality else "") + ".")
        return
    for v in sorted(variants, key=lambda v: (v.scorecard.base_model, v.scorecard.method, v.scorecard.target_cr)):
        s = v.scorecard
        click.echo(
            f"\n{v.repo_id}  [{s.modality}] {s.base_model}  {s.method} {s.allocation}  "
            f"CR {s.target_cr:g} (achieved {s.achieved_cr:.4f})  {v.url}"
        )
        click.echo(f"Size: {size_line(s.file_bytes, s.base_bytes)}")
        if v.broken:
            click.echo(f"BROKEN once published: {v.verification.reason}")
        click.echo(s.to_markdown_table())


def _names_base(scorecard, query: str) -> bool:
    """Whether `query` names the scorecard's base: by what was loaded, or by its Hub id (an offline
    copy's scorecard names both)."""
    names = (scorecard.base_model, scorecard.base_hub_id or "")
    return any(query.lower() in name.lower() for name in names)


@main.command()
@click.argument("registry", required=False)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("site"),
    show_default=True,
    help="Site folder (replaced whole; a non-empty folder that is not a site is refused).",
)
@click.option("--title", default="compot-zoo", show_default=True, help="The site's title, on every page.")
@click.option("--org", default=None, help="Organisation (default: the catalogue's [publish]).")
def site(registry: str | None, out: Path, title: str, org: str | None) -> None:
    """Render REGISTRY's published variants as a static scoreboard site in OUT."""
    from zoo.publish.publishers import publisher_for
    from zoo.publish.site import render_site

    index = render_site(publisher_for(registry, org, None).published(), out, title)
    click.echo(f"Site written to {index} (open {index.resolve().as_uri()})")
