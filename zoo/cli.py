"""The `zoo` command line."""

from __future__ import annotations

import logging
from collections import Counter
from importlib import resources
from pathlib import Path

import click

from zoo.errors import ZooError
from zoo.publishers import publish_scored, publisher_for


class _ZooGroup(click.Group):
    """Turns ZooError into a one-line message and exit code 1, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_ZooGroup)
@click.option("-v", "--verbose", is_flag=True, help="Show progress logs.")
def main(verbose: bool) -> None:
    """compot-zoo: compress Transformers with COMPOT, score them, publish them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


def _publish_options(command):
    command = click.option("--org", default=None, help="Organisation to publish under (default: zoo.toml [publish]).")(command)
    return click.option("--private/--public", default=None, help="Visibility of new Hub repositories.")(command)


@main.command("list")
def list_models() -> None:
    """Aliases in the zoo manifest."""
    from zoo.models import manifest

    for name, entry in sorted(manifest()["models"].items()):
        source = entry.get("hub", "")
        offline = f"  (offline: packaged {entry['packaged']})" if "packaged" in entry else ""
        click.echo(f"{name:22s} {entry['modality']:8s} {source}{offline}")


@main.command()
@click.argument("model")
@click.option("--cr", type=float, default=0.2, show_default=True, help="Target compression ratio in (0, 1).")
@click.option("--method", type=click.Choice(["compot", "svd-llm"]), default="compot", show_default=True)
@click.option("--static", is_flag=True, help="One CR for every matrix (COMPOT-dagger) instead of dynamic allocation.")
@click.option("--ks-ratio", type=float, default=2.0, show_default=True, help="Dictionary size over sparsity, k/s.")
@click.option("--iters", type=int, default=20, show_default=True, help="Alternating minimisation steps.")
@click.option("--tol", type=float, default=0.0, show_default=True, help="Stop early at this relative objective change (0: off).")
@click.option("--min-cr", type=float, default=None, help="Allocation guard: least CR per matrix.")
@click.option("--max-cr", type=float, default=None, help="Allocation guard: largest CR per matrix.")
@click.option("--calibration", default=None, help="refinedweb, wikitext2, c4, wiki-offline, or a local path.")
@click.option("--n-samples", type=int, default=None, help="Calibration sequences (model default if unset).")
@click.option("--seq-len", type=int, default=None, help="Tokens per calibration sequence.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Checkpoint directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--eval", "evaluate", is_flag=True, help="Score base and compressed model.")
@click.option("--eval-windows", type=int, default=None, help="Cap on perplexity windows (model default if unset).")
@click.option("--eval-limit", type=int, default=None, help="Cap on items per zero-shot task (model default if unset).")
@click.option("--device", default=None, help="Where the engine runs (cpu, cuda); the model's device by default.")
@click.option("--storage-dtype", type=click.Choice(["float16", "bfloat16"]), default="float16", show_default=True)
@click.option("--modality", type=click.Choice(["llm", "whisper", "vlm"]), default=None,
              help="For Hub ids and folders the manifest does not know.")
@click.option("--components", default=None, metavar="NAMES",
              help="Comma-separated stacks to compress, e.g. encoder,decoder for Whisper (default: the modality's).")
@click.option("--push", "push", is_flag=False, flag_value="", default=None, metavar="[TARGET]",
              help="Score (implies --eval) and publish: 'hub', 'hub:ORG' or a local registry folder "
                   "(bare --push: the default local registry).")
@_publish_options
def compress(model: str, cr: float, method: str, static: bool, ks_ratio: float, iters: int, tol: float,
             min_cr: float | None, max_cr: float | None, calibration: str | None, n_samples: int | None,
             seq_len: int | None, seed: int, out: Path | None, overwrite: bool, evaluate: bool,
             eval_windows: int | None, eval_limit: int | None, device: str | None, storage_dtype: str, modality: str | None,
             components: str | None, push: str | None, org: str | None, private: bool | None) -> None:
    """Compress MODEL (an alias, a Hub id or a local folder) and save a loadable checkpoint."""
    from zoo.compression import CompressionConfig
    from zoo.pipeline import CompressRequest, default_out_dir, run_compress

    config = CompressionConfig(cr=cr, method=method, static=static, ks_ratio=ks_ratio, iters=iters, tol=tol,
                               min_cr=min_cr, max_cr=max_cr, storage_dtype=storage_dtype, device=device,
                               components=[c.strip() for c in components.split(",")] if components else None)
    out = out or default_out_dir(model, config)
    publisher = None
    if push is not None:  # before any work: a missing token or bad name must not cost a compression
        publisher = publisher_for(push or None, org, private)
        publisher.check([out.name])
    result = run_compress(CompressRequest(model, config, out, overwrite, calibration, n_samples, seq_len, seed,
                                          evaluate or publisher is not None, eval_windows, eval_limit, modality))
    methods = Counter(r.method for r in result.layers)
    click.echo(f"\nCompressed {len(result.layers)} projections ({', '.join(f'{n} {m}' for m, n in methods.items())})")
    for r in result.layers[:: max(1, len(result.layers) // 12)]:
        click.echo(f"  {r.name:45s} {r.method:8s} k={r.k:5d} s={r.s:5d} cr={r.cr:.3f} err={r.relative_error:.4f}")
    click.echo(f"Target CR {cr:g}, achieved {result.achieved_cr:.4f} (eq. 11 over all target projections, dense-kept ones included)")
    click.echo(f"Time {result.seconds:.1f} s, peak memory {result.peak_memory_mb:.0f} MiB")
    for note in result.notes:
        click.echo(f"Note: {note}")
    if result.scorecard is not None:
        click.echo("\n" + result.scorecard.to_markdown_table())
    click.echo(f"Saved to {result.out_dir}")
    if publisher is not None:
        _publish(publisher, result.out_dir)


def _publish(publisher, folder: Path) -> None:
    published = publish_scored(publisher, folder, folder.name)
    click.echo(f"Published {published.repo_id} to {publisher!r}: {published.url}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("target", required=False)
@_publish_options
def publish(checkpoint: Path, target: str | None, org: str | None, private: bool | None) -> None:
    """Publish a scored CHECKPOINT (from `zoo compress --eval`) to TARGET: 'hub', 'hub:ORG' or a
    local registry folder (default: the local registry)."""
    from zoo.publishers import check_folder

    check_folder(checkpoint, card=False)  # the card is (re)written for the repository's name below
    publisher = publisher_for(target, org, private)
    publisher.check([checkpoint.name])
    _publish(publisher, checkpoint)


@main.command()
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Models x CRs x methods to keep fresh (default: the project's ci/nightly.toml).")
@click.option("--target", default=None, help="'hub', 'hub:ORG' or a local registry folder (default: the manifest's, "
                                             "else the local registry).")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where variants are built before publishing (default: the cache's nightly/).")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("nightly-report"),
              show_default=True, help="Where report.json and report.md go.")
@_publish_options
def nightly(manifest_path: Path | None, target: str | None, workdir: Path | None, report_dir: Path, org: str | None,
            private: bool | None) -> None:
    """Rebuild, score and publish every variant whose inputs changed since it was published."""
    from zoo.assets import cache_dir
    from zoo.nightly import read_manifest, run_nightly

    variants, settings = read_manifest(manifest_path or Path(str(resources.files("zoo.ci") / "nightly.toml")))
    publisher = publisher_for(target or settings.get("target"), org or settings.get("organization"),
                           settings.get("private") if private is None else private)
    outcomes = run_nightly(variants, publisher, workdir or cache_dir() / "nightly", report_dir)
    click.echo((report_dir / "report.md").read_text())
    failed = [o.variant for o in outcomes if o.status == "failed"]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(outcomes)} variants failed: {', '.join(failed)} "
                                   f"(see {report_dir / 'report.md'})")


@main.command()
@click.argument("target", required=False)
@click.option("--base-model", default=None, help="Only variants of this base model (substring match).")
@click.option("--modality", type=click.Choice(["llm", "whisper", "vlm"]), default=None)
@click.option("--org", default=None, help="Organisation (default: zoo.toml [publish]).")
def browse(target: str | None, base_model: str | None, modality: str | None, org: str | None) -> None:
    """List the published variants of TARGET with their scorecards."""
    variants = [v for v in publisher_for(target, org, None).published()
                if (base_model is None or base_model.lower() in v.scorecard.base_model.lower())
                and (modality is None or v.scorecard.modality == modality)]
    if not variants:
        click.echo("No published variants" + (" match" if base_model or modality else "") + ".")
        return
    for v in sorted(variants, key=lambda v: (v.scorecard.base_model, v.scorecard.method, v.scorecard.target_cr)):
        s = v.scorecard
        click.echo(f"\n{v.repo_id}  [{s.modality}] {s.base_model}  {s.method} {s.allocation}  "
                   f"CR {s.target_cr:g} (achieved {s.achieved_cr:.4f})  {v.url}")
        click.echo(s.to_markdown_table())


@main.command()
@click.argument("target", required=False)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("site"), show_default=True,
              help="Site folder (replaced whole; a non-empty folder that is not a site is refused).")
@click.option("--title", default="compot-zoo", show_default=True)
@click.option("--org", default=None, help="Organisation (default: zoo.toml [publish]).")
def site(target: str | None, out: Path, title: str, org: str | None) -> None:
    """Render TARGET's published variants as a static scoreboard site in OUT."""
    from zoo.site import render_site

    index = render_site(publisher_for(target, org, None).published(), out, title)
    click.echo(f"Site written to {index} (open {index.resolve().as_uri()})")
