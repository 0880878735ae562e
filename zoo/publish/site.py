"""A static scoreboard site of published variants: works offline from file://, no JavaScript.

Every page is plain HTML with inline SVG plots (matplotlib), so the site can be copied,
archived or served from anywhere and still shows every number and chart.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class ModelGroup:
    """One base model's page: its variants in table order and the metric columns they share."""

    base_model: str
    slug: str
    variants: list[PublishedVariant]

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
        """The variant keeping most of the base quality (`mean_recovery`); a broken one never is."""
        scored = [v for v in self.variants if not v.broken and not math.isnan(mean_recovery(v))]
        return max(scored, key=mean_recovery, default=None)


def metric_key(metric: MetricResult) -> MetricKey:
    return metric.task, metric.name


def metrics_by_key(card: Scorecard) -> dict[MetricKey, MetricResult]:
    return {metric_key(m): m for m in card.metrics}


def mean_recovery(variant: PublishedVariant) -> float:
    """The mean recovery of the variant's scores (accuracies); of its error metrics (perplexity,
    WER) only where it has no score, so ratios of perplexities are never averaged with
    accuracies. NaN when no metric has a defined recovery: such variants never count as best."""
    defined = [m for m in variant.scorecard.metrics if not math.isnan(m.recovery)]
    kind = [m.recovery for m in defined if m.higher_is_better] or [m.recovery for m in defined]
    return statistics.fmean(kind) if kind else math.nan


def series_name(variant: PublishedVariant) -> str:
    card = variant.scorecard
    return f"{display_name(card.method)} ({card.allocation})"


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
        by_model.setdefault(variant.scorecard.base_model, []).append(variant)
    names = sorted(by_model)
    plain = [slugify(name) for name in names]
    groups = []
    for name, slug in zip(names, plain, strict=True):
        if plain.count(slug) > 1:
            slug = f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        order = sorted(
            by_model[name],
            key=lambda v: (v.scorecard.method, v.scorecard.allocation, v.scorecard.target_cr, v.scorecard.variant),
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


def metric_plot(group: ModelGroup, key: MetricKey) -> Markup:
    """One metric against achieved CR, a line per method+allocation, the base as a dashed line.

    Markers on every point, so a series with a single CR still shows. Text goes out as SVG
    <text> (escaped by matplotlib) with mathtext off, so a "$" in a name stays a "$"; the
    fixed hash salt makes the same scorecards give byte-identical pages.
    """
    found = [(v, m) for v in group.variants for m in v.scorecard.metrics if metric_key(m) == key]
    series: dict[str, list[tuple[float, float]]] = {}
    for variant, metric in found:
        series.setdefault(series_name(variant), []).append((variant.scorecard.achieved_cr, metric.compressed))
    style = {"svg.fonttype": "none", "svg.hashsalt": "compot-zoo", "text.parse_math": False}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(5.2, 3.2), layout="constrained")
        ax = fig.add_subplot()
        # Runs of one evaluation may differ in the last digits; one reference line is what a reader needs.
        base = statistics.median(m.base for _, m in found)
        ax.axhline(base, color="0.45", linestyle="--", linewidth=1, label="base", gid="base")
        for i, (name, points) in enumerate(sorted(series.items())):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=name, gid=f"series-{i}")  # gid: the SVG group's id, a stable hook
        ax.set_title(f"{key[0]}: {key[1]}")
        ax.set_xlabel("achieved compression ratio")
        ax.set_ylabel(f"{key[1]} ({'higher' if group.metric_columns[key] else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
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
_ENV.globals.update(
    metrics_by_key=metrics_by_key, mean_recovery=mean_recovery, metric_plot=metric_plot, series_name=series_name
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
            page = _ENV.get_template("model.html").render(title=title, group=group)
            (tmp / "models" / f"{group.slug}.html").write_text(page, encoding="utf-8")
        index = _ENV.get_template("index.html").render(title=title, groups=groups)
        (tmp / "index.html").write_text(index, encoding="utf-8")
    return out_dir / "index.html"
