"""A static scoreboard site of published variants: works offline from file://, no network.

Every page is plain HTML with inline SVG plots (matplotlib), so the site can be copied,
archived or served from anywhere and still shows every number and chart. The index's table of
every variant sorts and filters through one small inline script of ours (`site.js`); each page's
Content-Security-Policy allows that script alone (by its hash) and nothing else, so no script
from a scorecard's content ever runs, even if escaping were to fail.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import matplotlib
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure

from zoo.errors import ZooError
from zoo.evaluators.provenance import STAND_IN
from zoo.files import check_replaceable, check_writable, staged_dir
from zoo.methods import display_name
from zoo.publish.publishers import PublishedVariant
from zoo.publish.scorecard import MetricResult, Scorecard

# Marks a folder as one of our sites: only such a folder (or an empty one) is ever replaced.
SITE_MARKER = ".compot-zoo-site"
# Links to anything else (javascript:, data:) would run code from a scorecard's author.
SAFE_URL_SCHEMES = frozenset({"http", "https", "file"})
MetricKey = tuple[str, str]  # (task, metric name)
# The index's sort and filter script, inlined; it reads text and data attributes, never writes HTML.
SCRIPT = (Path(__file__).parent / "templates" / "site.js").read_text()


def csp(script: str | None) -> str:
    """A page's Content-Security-Policy: inline styles, the empty icon, and `script` alone (by hash)."""
    allowed = "'none'"
    if script is not None:
        allowed = f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
    return f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src {allowed}"


def model_id(card: Scorecard) -> str:
    """The name a model's page goes by: the base's Hub id where the scorecard has one, so an offline
    build (`packaged:...`) and a Hub build of one model share a page; else what was loaded."""
    return card.base_hub_id or card.base_model


@dataclass(frozen=True)
class ModelGroup:
    """One base model's page: its variants in table order and the metric columns they share."""

    base_model: str  # model_id: the Hub id where known
    slug: str
    variants: list[PublishedVariant]

    @property
    def sources(self) -> list[str]:
        """What was loaded as the base, where that is not the page's name (an offline copy)."""
        return sorted({v.scorecard.base_model for v in self.variants} - {self.base_model})

    @property
    def loaded_from(self) -> list[str]:
        """Every base that was loaded, the page's name among them only if it was."""
        return sorted({v.scorecard.base_model for v in self.variants})

    @property
    def modality(self) -> str:
        return ", ".join(sorted({v.scorecard.modality for v in self.variants}))

    @property
    def metric_columns(self) -> dict[MetricKey, bool]:
        """Every metric any variant reports (first-seen order) and whether higher is better;
        a variant without one gets a blank cell."""
        columns: dict[MetricKey, bool] = {}
        for variant in self.variants:
            for metric in variant.scorecard.metrics:
                columns.setdefault(metric_key(metric), metric.higher_is_better)
        return columns

    @property
    def stand_in_columns(self) -> set[MetricKey]:
        """Metrics some variant scored on an offline stand-in rather than a real benchmark."""
        return {metric_key(m) for v in self.variants for m in v.scorecard.metrics if m.source == STAND_IN}

    @property
    def best(self) -> PublishedVariant | None:
        """The variant with the highest mean recovery over all its metrics (`mean_recovery`); a
        broken one never is."""
        scored = [v for v in self.variants if not v.broken and not math.isnan(mean_recovery(v))]
        return max(scored, key=mean_recovery, default=None)


def metric_key(metric: MetricResult) -> MetricKey:
    return metric.task, metric.name


def metrics_by_key(card: Scorecard) -> dict[MetricKey, MetricResult]:
    return {metric_key(m): m for m in card.metrics}


def recoveries(variant: PublishedVariant) -> list[tuple[MetricResult, float]]:
    """Each metric with its recovery, in the scorecard's order: perplexity and WER as much as accuracy."""
    return [(m, m.recovery) for m in variant.scorecard.metrics]


def mean_recovery(variant: PublishedVariant) -> float:
    """The mean recovery over every metric with a defined one, error metrics (perplexity, WER)
    included, so a variant that keeps its accuracy but loses half its perplexity never looks
    whole; pages show each metric's recovery beside it. NaN when none is defined: such variants
    never count as best."""
    defined = [r for _, r in recoveries(variant) if not math.isnan(r)]
    return statistics.fmean(defined) if defined else math.nan


def worst_recovery(variant: PublishedVariant) -> float:
    """The lowest recovery of any metric (NaN when none is defined)."""
    defined = [r for _, r in recoveries(variant) if not math.isnan(r)]
    return min(defined) if defined else math.nan


def smaller(card: Scorecard) -> float:
    """How much smaller the file is than the base's 16-bit checkpoint, in percent; NaN: not recorded."""
    return 100 * (1 - card.file_bytes / card.base_bytes) if card.file_bytes and card.base_bytes else math.nan


def file_mb(card: Scorecard) -> float:
    return card.file_bytes / 1e6 if card.file_bytes else math.nan


def score_sources(card: Scorecard) -> str:
    """Whether the scores come from real benchmarks, offline stand-ins, or both."""
    stand_ins = len(card.stand_ins)
    return "benchmark" if not stand_ins else "stand-in" if stand_ins == len(card.metrics) else "mixed"


def status(variant: PublishedVariant) -> str:
    """ "broken", "verified" or "not verified": what reloading the published variant found."""
    return "not verified" if variant.verification is None else "broken" if variant.broken else "verified"


def sort_value(value: float) -> str:
    """A number for the index's sort (data-sort); blank for NaN, which sorts last either way."""
    return "" if math.isnan(value) else repr(float(value))


def series_name(variant: PublishedVariant, group: ModelGroup | None = None) -> str:
    """The plot's name for the variant's method and allocation; with the loaded base where a page
    holds builds from more than one (an offline copy and the Hub's weights score differently)."""
    card = variant.scorecard
    name = f"{display_name(card.method)} ({card.allocation})"
    return f"{name}, {card.base_model}" if group is not None and len(group.loaded_from) > 1 else name


def slugify(text: str) -> str:
    """A file name safe on every file system and in a URL; never empty, never a dot name."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80].strip("-")
    return slug or "model"


def group_by_model(variants: Sequence[PublishedVariant]) -> list[ModelGroup]:
    """Base models in name order, variants by method, allocation and CR; slugs made unique.

    Two ids that slugify alike (e.g. "a/b" and "a-b") both get a hash of the id, so neither
    page overwrites the other and each keeps its name whatever else is published.
    """
    by_model: dict[str, list[PublishedVariant]] = {}
    for variant in variants:
        by_model.setdefault(model_id(variant.scorecard), []).append(variant)
    names = sorted(by_model)
    plain = [slugify(name) for name in names]
    groups = []
    for name, slug in zip(names, plain, strict=True):
        if plain.count(slug) > 1:
            slug = f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        order = sorted(
            by_model[name],
            key=lambda v: (
                v.scorecard.method,
                v.scorecard.allocation,
                v.scorecard.target_cr,
                v.scorecard.base_model,
                v.scorecard.variant,
            ),
        )
        groups.append(ModelGroup(name, slug, order))
    return groups


def link_url(url: str) -> str | None:
    """The variant's link, or None where following it could run code."""
    return url if urlsplit(url).scheme.lower() in SAFE_URL_SCHEMES else None


def fmt_value(value: float) -> str:
    return f"{value:.4g}"


def fmt_recovery(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}%"


def fmt_file_size(card: Scorecard) -> str:
    """ "215.3 MB (−20.0%)": the file, and how much smaller than the base's 16-bit checkpoint."""
    if not card.file_bytes:
        return "n/a"
    saved = f" (−{1 - card.file_bytes / card.base_bytes:.1%})" if card.base_bytes else ""
    return f"{card.file_bytes / 1e6:.1f} MB{saved}"


def fmt_cr(value: float) -> str:
    return f"{value:.3f}"


def fmt_seconds(value: float) -> str:
    return f"{value:.1f} s"


@dataclass(frozen=True)
class PlotData:
    """One metric's plot: per series, (file MB, score) points; per loaded base, (base file MB, score)."""

    series: dict[str, list[tuple[float, float]]]
    bases: dict[str, tuple[float, float]]  # loaded base -> (its 16-bit file MB or NaN, its score)


def plot_data(group: ModelGroup, key: MetricKey) -> PlotData:
    """Quality against file size: each variant at its model.safetensors' MB (one without a recorded
    size is left out), each loaded base at its 16-bit checkpoint's MB."""
    found = [(v, m) for v in group.variants for m in v.scorecard.metrics if metric_key(m) == key]
    series: dict[str, list[tuple[float, float]]] = {}
    for variant, metric in found:
        if variant.scorecard.file_bytes:
            series.setdefault(series_name(variant, group), []).append((file_mb(variant.scorecard), metric.compressed))
    bases = {}
    for source in group.loaded_from:
        mine = [(v.scorecard, m) for v, m in found if v.scorecard.base_model == source]
        if mine:
            # Runs of one evaluation may differ in the last digits; one reference per base is what a reader needs.
            sizes = [c.base_bytes / 1e6 for c, _ in mine if c.base_bytes]
            size = statistics.median(sizes) if sizes else math.nan
            bases[source] = (size, statistics.median(m.base for _, m in mine))
    return PlotData({name: sorted(points) for name, points in sorted(series.items())}, bases)


def metric_plot(group: ModelGroup, key: MetricKey) -> Markup:
    """One metric against file size (MB), a line per method+allocation, each base as a dashed line
    and a point at its own 16-bit size.

    Markers on every point, so a series with a single CR still shows. Text goes out as SVG
    <text> (escaped by matplotlib) with mathtext off, so a "$" in a name stays a "$"; the
    fixed hash salt makes the same scorecards give byte-identical pages.
    """
    data = plot_data(group, key)
    style = {"svg.fonttype": "none", "svg.hashsalt": "compot-zoo", "text.parse_math": False}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(5.2, 3.2), layout="constrained")
        ax = fig.add_subplot()
        for i, (source, (size, score)) in enumerate(data.bases.items()):
            label = "base" if len(data.bases) == 1 else f"base, {source}"
            gid = "base" if i == 0 else f"base-{i}"
            ax.axhline(score, color="0.45", linestyle="--" if i == 0 else ":", linewidth=1, label=label, gid=gid)
            if not math.isnan(size):
                ax.plot([size], [score], marker="s", color="0.45", linestyle="none", gid=f"{gid}-point")
        for i, (name, points) in enumerate(data.series.items()):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=name, gid=f"series-{i}")  # gid: the SVG group's id, a stable hook
        ax.set_title(f"{key[0]}: {key[1]}")
        ax.set_xlabel("model.safetensors (MB); base: its 16-bit checkpoint")
        ax.set_ylabel(f"{key[1]} ({'higher' if group.metric_columns[key] else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return Markup(svg[svg.index("<svg") :])  # inline: drop the XML declaration and doctype


# Autoescaping: model, variant and metric names come from users. StrictUndefined: a template typo fails loudly.
_ENV = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(
    value=fmt_value,
    recovery=fmt_recovery,
    cr=fmt_cr,
    file_size=fmt_file_size,
    seconds=fmt_seconds,
    link_url=link_url,
    method_name=display_name,
)


def fmt_megabytes(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} MB"


_ENV.filters.update(sort_value=sort_value, megabytes=fmt_megabytes, status=status, score_sources=score_sources)
_ENV.globals.update(
    metrics_by_key=metrics_by_key,
    mean_recovery=mean_recovery,
    worst_recovery=worst_recovery,
    recoveries=recoveries,
    smaller=smaller,
    file_mb=file_mb,
    score_sources=score_sources,
    status=status,
    metric_plot=metric_plot,
    series_name=series_name,
    script=SCRIPT,
    csp=csp,
)


def render_site(variants: Sequence[PublishedVariant], out_dir: Path, title: str = "compot-zoo") -> Path:
    """Write index.html and models/<slug>.html; return the index.

    The site is rendered into a temporary sibling of `out_dir` that then takes its place,
    so a reader sees the old site or the new one, never a mix or half a page.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, SITE_MARKER, "a site rendered by `zoo site`")
    check_writable(out_dir)
    if not variants and (out_dir / SITE_MARKER).is_file():  # e.g. every scorecard unreadable
        raise ZooError(f"no readable published variant: the site in {out_dir} is kept, not replaced by an empty one")
    groups = group_by_model(variants)
    with staged_dir(out_dir) as tmp:
        (tmp / SITE_MARKER).write_text("rendered by compot-zoo's `zoo site`; replaced on every run\n")
        (tmp / "models").mkdir()
        for group in groups:
            page = _ENV.get_template("model.html").render(title=title, group=group, policy=csp(None))
            (tmp / "models" / f"{group.slug}.html").write_text(page, encoding="utf-8")
        rows = [(group, variant) for group in groups for variant in group.variants]
        index = _ENV.get_template("index.html").render(title=title, groups=groups, rows=rows, policy=csp(SCRIPT))
        (tmp / "index.html").write_text(index, encoding="utf-8")
    return out_dir / "index.html"
