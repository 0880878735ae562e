"""The static scoreboard site: grouping, slugs, atomic replacement, and the pages as a real browser shows them."""

import base64
import dataclasses
import hashlib
import re
import shutil
import struct
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from zoo.errors import ZooError
from zoo.publish import site
from zoo.publish.publishers import PublishedVariant
from zoo.publish.scorecard import MetricResult, Scorecard
from zoo.publish.site import group_by_model, mean_recovery, plot_data, render_site, slugify

SMOL = "HuggingFaceTB/SmolLM2-135M"
WHISPER = "openai/whisper-tiny.en"
HOSTILE = "evil/<script>window.pwned=1</script>&<img src=x onerror=window.pwned=2>"
PPL, ACC = ("perplexity/wiki-offline", "perplexity"), ("arc_easy", "acc")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _variant(
    base_model: str,
    name: str,
    method: str,
    cr: float,
    ppl: float,
    acc: float | None,
    url: str | None = None,
    modality: str = "llm",
) -> PublishedVariant:
    metrics = [MetricResult(PPL[1], PPL[0], 20.0, ppl, False)]
    if acc is not None:
        metrics.append(MetricResult(ACC[1], ACC[0], 0.6, acc, True))
    card = Scorecard(
        base_model=base_model,
        base_revision="abc",
        variant=name,
        modality=modality,
        method=method,
        engine_version="0.1.0",
        target_cr=cr,
        achieved_cr=cr + 0.0013,
        allocation="dynamic" if method == "compot" else "static",
        calibration_set="wiki-offline",
        calibration_hash="sha256:feed",
        metrics=metrics,
        compression_seconds=12.5 + cr,
        peak_memory_mb=800.0,
        hardware="cpu",
        fingerprint="sha256:0",
        command=f"zoo compress {base_model} --cr {cr} --method {method}",
        file_bytes=int(269e6 * (1 - 0.84 * cr)),
        base_bytes=int(269e6),
    )
    return PublishedVariant(f"zoo/{name}", url or f"https://huggingface.co/zoo/{name}", card)


def _zoo() -> list[PublishedVariant]:
    """Two base models; COMPOT dynamic at CR 0.2 and 0.4, SVD-LLM at 0.2 (one without the accuracy metric)."""
    return [
        _variant(SMOL, "smol-compot-0.4", "compot", 0.4, 31.25, 0.45),
        _variant(SMOL, "smol-compot-0.2", "compot", 0.2, 22.5, 0.57),
        _variant(SMOL, "smol-svd-0.2", "svd-llm", 0.2, 26.0, 0.5),
        _variant(WHISPER, "whisper-compot-0.2", "compot", 0.2, 21.0, 0.58, modality="whisper"),
        _variant(WHISPER, "whisper-compot-0.4", "compot", 0.4, 28.0, 0.5, modality="whisper"),
        _variant(WHISPER, "whisper-svd-0.2", "svd-llm", 0.2, 25.0, None, modality="whisper"),
    ]


def _expected_row(variant: PublishedVariant, columns: list[tuple[str, str]]) -> list[str]:
    """The table row as a reader should see it, formatted here independently of zoo.publish.site."""
    card = variant.scorecard
    cells = [
        card.variant,
        {"compot": "COMPOT", "svd-llm": "SVD-LLM"}[card.method],
        card.allocation,
        f"{card.target_cr:.3f}",
        f"{card.achieved_cr:.3f}",
        f"{card.file_bytes / 1e6:.1f} MB (−{1 - card.file_bytes / card.base_bytes:.1%})",
    ]
    metrics = {(m.task, m.name): m for m in card.metrics}
    for key in columns:
        m = metrics.get(key)
        cells += [f"{m.base:.4g}", f"{m.compressed:.4g}", f"{m.recovery:.1f}%"] if m else ["", "", ""]
    status = "not verified" if variant.verification is None else variant.verification.status
    return cells + [f"{card.compression_seconds:.1f} s", variant.repo_id, status]


class _Rows(HTMLParser):
    """Cell texts of each <tr data-variant> in a page, without a browser."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.attrs: dict[str, dict[str, str]] = {}  # each row's attributes
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr" and "data-variant" in dict(attrs):
            self._row = self.rows.setdefault(dict(attrs)["data-variant"], [])
            self.attrs[dict(attrs)["data-variant"]] = dict(attrs)
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data.strip()


def _rows(page: Path) -> dict[str, list[str]]:
    return _parse(page).rows


def _parse(page: Path) -> _Rows:
    parser = _Rows()
    parser.feed(page.read_text())
    return parser


def _expected_index_row(variant: PublishedVariant, model: str) -> list[str]:
    """The index's row as a reader should see it, formatted here independently of zoo.publish.site."""
    card = variant.scorecard
    recoveries = [100 * (m.compressed / m.base if m.higher_is_better else m.base / m.compressed) for m in card.metrics]
    status = "not verified" if variant.verification is None else variant.verification.status
    return [
        model,
        card.modality,
        card.variant,
        {"compot": "COMPOT", "svd-llm": "SVD-LLM"}[card.method],
        card.allocation,
        f"{card.target_cr:.3f}",
        f"{card.file_bytes / 1e6:.1f} MB",
        f"{100 * (1 - card.file_bytes / card.base_bytes):.1f}%",
        f"{sum(recoveries) / len(recoveries):.1f}%",
        f"{min(recoveries):.1f}%",
        "stand-in",  # the test scorecards record no source: not known to be a benchmark
        status,
        "".join(
            f"{m.task} {m.name} {'↑' if m.higher_is_better else '↓'} {r:.1f}%"
            for m, r in zip(card.metrics, recoveries, strict=True)
        ),
    ]


# --- fast tests, no browser -------------------------------------------------------------------------


def test_slugs_are_safe_file_names():
    assert slugify(SMOL) == "huggingfacetb-smollm2-135m"
    for name in (HOSTILE, "../../etc/passwd", "..", "", "名前/モデル", "a" * 300):
        slug = slugify(name)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) and len(slug) <= 80, (name, slug)


def test_grouping_orders_models_and_variants_and_picks_best():
    groups = group_by_model(_zoo())
    assert [g.base_model for g in groups] == [SMOL, WHISPER]
    smol = groups[0]
    assert [v.scorecard.variant for v in smol.variants] == ["smol-compot-0.2", "smol-compot-0.4", "smol-svd-0.2"]
    assert (smol.modality, groups[1].modality) == ("llm", "whisper")
    assert smol.best.scorecard.variant == "smol-compot-0.2"
    assert list(groups[1].metric_columns) == [PPL, ACC]  # the union, though whisper-svd lacks acc
    assert groups[1].metric_columns == {PPL: False, ACC: True}


def test_colliding_slugs_get_distinct_page_names():
    groups = group_by_model(
        [
            _variant("a/b", "x", "compot", 0.2, 21, 0.5),
            _variant("a-b", "y", "compot", 0.2, 21, 0.5),
            _variant("c/d", "z", "compot", 0.2, 21, 0.5),
        ]
    )
    slugs = [g.slug for g in groups]
    assert len(set(slugs)) == 3 and slugs[0].startswith("a-b-") and slugs[2] == "c-d"


def test_empty_registry_says_so(tmp_path):
    index = render_site([], tmp_path / "site")
    assert index == tmp_path / "site" / "index.html"
    assert "The registry is empty" in index.read_text()
    assert not list((tmp_path / "site" / "models").iterdir())


def test_tables_hold_the_numbers_and_blank_cells_for_missing_metrics(tmp_path):
    zoo = _zoo()
    render_site(zoo, tmp_path / "site")
    for group in group_by_model(zoo):
        rows = _rows(tmp_path / "site" / "models" / f"{group.slug}.html")
        assert rows == {v.scorecard.variant: _expected_row(v, [PPL, ACC]) for v in group.variants}
    assert _rows(tmp_path / "site" / "models" / "openai-whisper-tiny-en.html")["whisper-svd-0.2"][9:12] == ["", "", ""]


def test_a_single_cr_is_plotted_as_a_point(tmp_path):
    render_site([_variant(SMOL, "only", "compot", 0.3, 25.0, None)], tmp_path / "site")
    page = (tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html").read_text()
    assert page.count("<svg") == 1 and "COMPOT (dynamic)" in page and 'id="line2d_' in page
    assert "<script" not in page


def test_unsafe_links_are_not_rendered_as_links(tmp_path):
    render_site([_variant(SMOL, "bad", "compot", 0.2, 25.0, 0.5, url="javascript:alert(1)")], tmp_path / "site")
    for page in (tmp_path / "site" / "index.html", tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html"):
        assert "javascript:" not in page.read_text()


def test_rerender_replaces_the_whole_site_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "site"
    render_site(_zoo(), out)
    render_site(_zoo()[:3], out)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["huggingfacetb-smollm2-135m.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_failed_render_keeps_the_old_site(tmp_path, monkeypatch):
    out = tmp_path / "site"
    render_site(_zoo(), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(group, key):
        raise RuntimeError("plot failed")

    monkeypatch.setitem(site._ENV.globals, "metric_plot", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        render_site(_zoo()[:1], out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_refuses_to_replace_a_folder_that_is_not_a_site(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(ZooError, match="refusing to replace"):
        render_site(_zoo(), tmp_path / "home")
    assert (tmp_path / "home" / "thesis.tex").read_text() == "years of work"
    (tmp_path / "empty").mkdir()
    assert render_site(_zoo(), tmp_path / "empty").is_file()


def test_same_scorecards_give_identical_pages(tmp_path):
    render_site(_zoo(), tmp_path / "a")
    render_site(_zoo(), tmp_path / "b")
    for page in (tmp_path / "a").rglob("*.html"):
        assert page.read_bytes() == (tmp_path / "b" / page.relative_to(tmp_path / "a")).read_bytes()


# --- the site in a real headless browser ------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)  # Playwright passes --no-sandbox itself
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """Open a file in a fresh page; after the test, no console error or page error may have happened."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []

    def open_(path: Path):
        page = context.new_page()
        page.on(
            "console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        )
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        response = page.goto(path.as_uri())
        assert response is None or response.ok
        return page

    yield open_
    context.close()
    assert errors == []


def _assert_inert(page) -> None:
    """Hostile names were shown as text: no script element but the index's own, none ran, no javascript: link."""
    assert page.evaluate("Array.from(document.scripts, s => s.textContent)") in ([], [site.SCRIPT])
    assert page.evaluate("window.pwned") is None
    assert page.locator("a[href^='javascript']").count() == 0


def test_site_in_a_browser(tmp_path, open_page):
    hostile = _variant(HOSTILE, "<b>pwn</b>", "compot", 0.2, 24.0, 0.5, url="javascript:window.pwned=3")
    hostile.scorecard.metrics[0] = MetricResult(
        "ppl</text></svg><script>window.pwned=4</script>", "t$x$", 20.0, 24.0, False
    )
    zoo = _zoo() + [hostile]
    index = render_site(zoo, tmp_path / "site")
    groups = group_by_model(zoo)

    page = open_page(index)
    links = page.locator("a.model-link")
    # One row per variant, each naming its model; the hostile name shown as text.
    assert links.all_inner_texts() == [g.base_model for g in groups for _ in g.variants]
    first_rows = [sum(len(g.variants) for g in groups[:i]) for i in range(len(groups))]
    for i, group in zip(first_rows, groups, strict=True):
        page.locator("a.model-link").nth(i).click()
        assert page.url == (tmp_path / "site" / "models" / f"{group.slug}.html").as_uri()
        assert page.locator("h1").inner_text() == group.base_model
        rows = page.locator("table.scorecard tbody tr")
        columns = list(group.metric_columns)
        assert [r.locator("td").all_inner_texts() for r in rows.all()] == [
            _expected_row(v, columns) for v in group.variants
        ]
        _assert_inert(page)
        page.go_back()
    _assert_inert(page)

    smol = open_page(tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html")
    plots = smol.locator("figure.plot > svg")
    assert plots.count() == 2
    for plot in plots.all():
        box = plot.bounding_box()
        assert box["width"] > 200 and box["height"] > 100
        series = plot.locator("g[id^='series-']")  # COMPOT (dynamic) at two CRs, SVD-LLM at one
        assert series.count() == 2
        sizes = [s.evaluate("g => { const b = g.getBBox(); return [b.width, b.height]; }") for s in series.all()]
        assert all(w > 0 and h > 0 for w, h in sizes) and max(w for w, _ in sizes) > 50, sizes
        assert plot.locator("g#base path").evaluate("p => p.getBBox().width") > 100
    assert set(smol.locator("figure.plot svg text").all_text_contents()) >= {
        "COMPOT (dynamic)",
        "SVD-LLM (static)",
        "base",
    }

    shot = tmp_path / "model.png"
    smol.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and width >= 1000 and height >= 600 and len(data) > 20_000


def test_mean_recovery_counts_perplexity_as_much_as_accuracy():
    # Perplexity kept at 50% (20 -> 40) and accuracy at 100%: a perplexity loss is never hidden.
    both = _variant(SMOL, "both", "compot", 0.2, ppl=40.0, acc=0.6)
    assert mean_recovery(both) == pytest.approx(75.0)
    assert site.worst_recovery(both) == pytest.approx(50.0)
    assert mean_recovery(_variant(SMOL, "ppl-only", "compot", 0.2, ppl=40.0, acc=None)) == pytest.approx(50.0)


def test_a_broken_variant_in_the_registry_shows_as_broken_in_a_browser(tmp_path, open_page):
    """A registry where verification found one variant broken: `zoo site` marks it on both pages, in
    words and colour, and never calls it the best."""
    from click.testing import CliRunner

    from zoo.cli import main
    from zoo.evaluators.scores import Score
    from zoo.publish.publishers import LocalRegistry
    from zoo.publish.scorecard import SCORECARD
    from zoo.publish.verdict import VERIFICATION, verdict

    slice_scores = {PPL[0]: {PPL[1]: Score(value=22.5)}}
    verdicts = {
        "smol-compot-0.2": verdict("sha256:0", slice_scores, {PPL[0]: {PPL[1]: Score(value=97.0)}}),  # best, broken
        "smol-compot-0.4": verdict("sha256:0", slice_scores, slice_scores),
    }
    sources = {PPL[0]: "stand-in", ACC[0]: "benchmark"}
    for variant in _zoo()[:3]:
        folder = tmp_path / "registry" / "zoo" / variant.scorecard.variant
        folder.mkdir(parents=True)
        metrics = [dataclasses.replace(m, source=sources[m.task]) for m in variant.scorecard.metrics]
        dataclasses.replace(variant.scorecard, metrics=metrics).save(folder / SCORECARD)
        if variant.scorecard.variant in verdicts:
            (folder / VERIFICATION).write_text(verdicts[variant.scorecard.variant].to_json())
    published = LocalRegistry(tmp_path / "registry", "zoo").published()
    assert {v.scorecard.variant: v.broken for v in published} == {
        "smol-compot-0.2": True,
        "smol-compot-0.4": False,
        "smol-svd-0.2": False,
    }
    args = ["site", str(tmp_path / "registry"), "--org", "zoo", "--out", str(tmp_path / "site")]
    assert CliRunner().invoke(main, args).exit_code == 0

    index = open_page(tmp_path / "site" / "index.html")
    broken = index.locator("tr[data-variant='smol-compot-0.2']")
    assert broken.locator(".status").inner_text() == "BROKEN"  # upper-cased by the page's style
    assert "wiki-offline perplexity: 97 once reloaded, 22.5 at build time" in broken.locator(".status").get_attribute(
        "title"
    )
    assert broken.evaluate("tr => getComputedStyle(tr).backgroundColor") == "rgb(255, 235, 233)"
    assert index.locator("tr[data-variant='smol-compot-0.4'] .status").inner_text() == "verified"
    assert index.locator("tr[data-variant='smol-svd-0.2'] .status").inner_text() == "not verified"
    index.locator("select[data-filter='status']").select_option("broken")  # a visitor finds what is broken
    assert _visible(index) == ["smol-compot-0.2"]

    page = open_page(tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html")
    rows = {r.get_attribute("data-variant"): r for r in page.locator("table.scorecard tbody tr").all()}
    assert rows["smol-compot-0.2"].get_attribute("class") == "broken"
    assert rows["smol-compot-0.2"].locator("td").last.inner_text() == "BROKEN"
    assert [rows[n].locator("td").last.inner_text() for n in ("smol-compot-0.4", "smol-svd-0.2")] == [
        "verified",
        "not verified",
    ]
    assert "do not use them" in page.locator("p.broken-note").inner_text()
    assert "Highest mean recovery over every metric: smol-svd-0.2" in page.locator("p.best").inner_text()
    headers = page.locator("table.scorecard thead th[scope='colgroup']").all_inner_texts()
    assert [h.splitlines()[-1] for h in headers] == ["stand-in", "acc ↑"]  # only the stand-in says so


# --- the index's table, perplexity recovery, file size on the plots, one page per Hub id --------------


def _policy(html: str) -> str:
    """The page's Content-Security-Policy, as the browser reads it."""
    return unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html).group(1))


def _visible(page) -> list[str]:
    """The variants of the index's rows a visitor sees, top to bottom."""
    return page.locator("#variants tbody tr:visible").evaluate_all("rows => rows.map(r => r.dataset.variant)")


def test_index_is_a_table_of_every_variant_with_sort_and_filter_controls(tmp_path):
    zoo = _zoo()
    index = render_site(zoo, tmp_path / "site")
    parsed = _parse(index)
    assert parsed.rows == {v.scorecard.variant: _expected_index_row(v, v.scorecard.base_model) for v in zoo}
    for v in zoo:
        attrs = parsed.attrs[v.scorecard.variant]
        assert (attrs["data-modality"], attrs["data-method"], attrs["data-status"]) == (
            v.scorecard.modality,
            v.scorecard.method,
            "not verified",
        )
    html = index.read_text()
    headers = re.findall(r'<th scope="col" aria-sort="none" data-type="(\w+)"><button type="button" data-sort', html)
    assert headers == ["text"] * 5 + ["number"] * 5 + ["text"] * 2  # every column but the metric list sorts
    for name, options in (("modality", ["llm", "whisper"]), ("method", ["compot", "svd-llm"])):
        select = re.search(rf'<select data-filter="{name}">(.*?)</select>', html).group(1)
        assert re.findall(r'<option value="([^"]*)">', select) == ["", *options]
    # The one script is ours, and the page's policy allows it alone, by its hash.
    assert re.findall(r"<script>(.*?)</script>", html, flags=re.S) == [site.SCRIPT]
    digest = base64.b64encode(hashlib.sha256(site.SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in _policy(html)
    for page in (tmp_path / "site" / "models").iterdir():
        assert "<script" not in page.read_text() and "script-src 'none'" in _policy(page.read_text())


def test_hostile_names_are_escaped_in_the_index_cells_and_attributes(tmp_path):
    hostile = _variant(HOSTILE, '"><script>window.pwned=5</script>', "compot", 0.2, 24.0, 0.5)
    hostile.scorecard.metrics[0] = MetricResult('acc" onmouseover="window.pwned=6', "<i>t</i>", 20.0, 24.0, False)
    index = render_site([hostile], tmp_path / "site")
    html = index.read_text()
    assert html.count("<script") == 1 and "window.pwned=5</script>" not in html and "<i>t</i>" not in html
    assert 'data-variant="&#34;&gt;&lt;script&gt;window.pwned=5&lt;/script&gt;"' in html
    assert 'data-metric="&lt;i&gt;t&lt;/i&gt; acc&#34; onmouseover=&#34;window.pwned=6"' in html
    parsed = _parse(index)
    assert parsed.rows[hostile.scorecard.variant][0] == HOSTILE  # shown as text


def test_perplexity_recovery_is_shown_beside_the_mean(tmp_path):
    # Accuracy kept whole, perplexity doubled: the index and the page show the 50%, and count it in the mean.
    variant = _variant(SMOL, "half-ppl", "compot", 0.2, ppl=40.0, acc=0.6)
    render_site([variant], tmp_path / "site")
    row = _rows(tmp_path / "site" / "index.html")["half-ppl"]
    assert row[8:10] == ["75.0%", "50.0%"]  # mean over both metrics, worst
    assert row[12] == "perplexity/wiki-offline perplexity ↓ 50.0%arc_easy acc ↑ 100.0%"
    page = (tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html").read_text()
    best = re.search(r'<p class="best">(.*?)</p>', page, flags=re.S).group(1)
    assert "half-ppl" in best and "75.0% mean" in best and "perplexity ↓ 50.0%" in best


def test_plots_put_file_size_on_the_x_axis(tmp_path):
    zoo = _zoo()
    smol = group_by_model(zoo)[0]
    data = plot_data(smol, PPL)
    mb = {v.scorecard.variant: v.scorecard.file_bytes / 1e6 for v in smol.variants}  # 223.8 MB at CR 0.2
    assert data.series == {
        "COMPOT (dynamic)": [(mb["smol-compot-0.4"], 31.25), (mb["smol-compot-0.2"], 22.5)],
        "SVD-LLM (static)": [(mb["smol-svd-0.2"], 26.0)],
    }
    assert data.bases == {SMOL: (269.0, 20.0)}  # the base at its 16-bit checkpoint's size
    render_site(zoo, tmp_path / "site")
    page = (tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html").read_text()
    assert page.count("model.safetensors (MB)") == 2 and "compression ratio" not in page
    # A variant whose file size was not recorded has no x: it is left out of the plot, not put at 0.
    unsized = _variant(SMOL, "unsized", "compot", 0.3, 25.0, None)
    unsized.scorecard.file_bytes = None
    assert plot_data(group_by_model([*zoo[:1], unsized])[0], PPL).series == {
        "COMPOT (dynamic)": [(mb["smol-compot-0.4"], 31.25)]
    }


def test_a_packaged_and_a_hub_build_of_one_model_share_one_page(tmp_path):
    hub = _variant(SMOL, "smol-hub", "compot", 0.2, 22.0, 0.57)
    offline = _variant("packaged:smollm2-135m", "smol-offline", "compot", 0.4, 30.0, 0.5)
    for variant in (hub, offline):  # both scorecards name the base's Hub id; the offline one loaded a copy
        variant.scorecard.base_hub_id = SMOL
    older = _variant(SMOL, "smol-older", "svd-llm", 0.2, 26.0, 0.5)  # a scorecard from before base_hub_id
    index = render_site([offline, hub, older], tmp_path / "site")
    assert [p.name for p in (tmp_path / "site" / "models").iterdir()] == ["huggingfacetb-smollm2-135m.html"]
    assert {row[0] for row in _rows(index).values()} == {SMOL}
    page = tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html"
    html = page.read_text()
    assert re.search(r"<h1>(.*?)</h1>", html).group(1) == SMOL
    rows = _rows(page)
    assert {name: cells[1] for name, cells in rows.items()} == {  # the weights each was built from
        "smol-hub": SMOL,
        "smol-offline": "packaged:smollm2-135m",
        "smol-older": SMOL,
    }
    assert "an offline copy of HuggingFaceTB/SmolLM2-135M" in html
    # Scored against different base weights, each build keeps its own base line and series.
    data = plot_data(group_by_model([offline, hub, older])[0], PPL)
    assert set(data.bases) == {SMOL, "packaged:smollm2-135m"}
    assert set(data.series) == {
        f"COMPOT (dynamic), {SMOL}",
        "COMPOT (dynamic), packaged:smollm2-135m",
        f"SVD-LLM (static), {SMOL}",
    }


def test_the_index_sorts_and_filters_in_a_browser(tmp_path, open_page):
    hostile = _variant(HOSTILE, "<b>pwn</b>", "compot", 0.3, 24.0, 0.5, url="javascript:window.pwned=3")
    zoo = _zoo() + [hostile]
    page = open_page(render_site(zoo, tmp_path / "site"))
    by_name = {v.scorecard.variant: v.scorecard for v in zoo}
    assert len(_visible(page)) == len(zoo)

    def sort(label: str) -> list[str]:
        page.locator("#variants thead button", has_text=label).click()
        return _visible(page)

    ascending = sort("File size")
    assert [by_name[n].file_bytes for n in ascending] == sorted(c.file_bytes for c in by_name.values())
    assert page.locator("#variants thead th", has_text="File size").get_attribute("aria-sort") == "ascending"
    descending = sort("File size")
    assert [by_name[n].file_bytes for n in descending] == sorted((c.file_bytes for c in by_name.values()), reverse=True)
    worst = sort("Worst recovery")
    assert worst[0] == "smol-compot-0.4" and worst != descending  # 64.0%: its perplexity
    assert sort("Variant") == sorted(by_name, key=str)  # text columns sort as text

    page.locator("select[data-filter='modality']").select_option("whisper")
    assert sorted(_visible(page)) == ["whisper-compot-0.2", "whisper-compot-0.4", "whisper-svd-0.2"]
    page.locator("#filter-text").fill("svd")
    assert _visible(page) == ["whisper-svd-0.2"]
    assert page.locator("#shown").inner_text() == "1"
    page.locator("select[data-filter='modality']").select_option("")
    assert sorted(_visible(page)) == ["smol-svd-0.2", "whisper-svd-0.2"]
    page.locator("#filter-text").fill("window.pwned")  # the hostile row is found by its text, and stays text
    assert _visible(page) == ["<b>pwn</b>"]
    _assert_inert(page)


def test_the_pages_policy_stops_any_script_but_ours(tmp_path, browser):
    """Were escaping ever to fail, a script that reached a page would still not run: the policy
    allows the index's own script by its hash and nothing else (a model page: no script at all)."""
    render_site(_zoo(), tmp_path / "site")
    injected = "<script>window.pwned=7</script><img src=x onerror='window.pwned=8'>"
    pages = [tmp_path / "site" / "index.html", tmp_path / "site" / "models" / "huggingfacetb-smollm2-135m.html"]
    context = browser.new_context()
    try:
        for path in pages:
            path.write_text(path.read_text().replace("<main>", "<main>" + injected))
            page = context.new_page()
            refused = []
            page.on("console", lambda msg, refused=refused: refused.append(msg.text) if msg.type == "error" else None)
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            assert page.evaluate("window.pwned") is None
            assert any("Content Security Policy" in text for text in refused), refused
            # The index's own script still ran (it shows the controls); the model page has none but the injected one.
            if path.name == "index.html":
                assert page.locator("#controls").is_visible()
        assert page.evaluate("document.scripts.length") == 1  # the injected one, inert
    finally:
        context.close()
