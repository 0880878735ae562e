"""Text for calibration and perplexity: Hub sets through `datasets`, local files, and the
English Wikipedia articles that gensim's wheel ships (the offline default).

The offline articles are split by title into disjoint train (calibration) and test
(evaluation) parts, so a model is never scored on the text it was calibrated on.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.errors import ZooError
from zoo.hub import hub_reachable

OFFLINE = "wiki-offline"


@dataclass(frozen=True)
class TextSet:
    """A Hub text set: its id, config, data files, field, and paper-default sampling."""

    path: str
    config: str | None
    field: str
    splits: dict[str, str]  # our split name -> the set's split or data file
    n_samples: int
    seq_len: int
    streaming: bool = False


CALIBRATION_SETS = {
    # The paper's default calibration set: 256 sequences x 1024 tokens.
    "refinedweb": TextSet("tiiuae/falcon-refinedweb", None, "content", {"train": "train"}, 256, 1024, streaming=True),
    # The SVD-LLM protocol: 256 x 2048 for calibration, the test split for perplexity.
    "wikitext2": TextSet("Salesforce/wikitext", "wikitext-2-raw-v1", "text",
                         {"train": "train", "test": "test"}, 256, 2048),
    "c4": TextSet("allenai/c4", None, "text", {"train": "en/c4-train.00000-of-01024.json.gz",
                                               "test": "en/c4-validation.00000-of-00008.json.gz"}, 256, 2048),
}
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".gz": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
_REFINEDWEB_DOCS = 20000  # streamed documents: far more tokens than 256 x 1024


def _wiki_articles() -> list[tuple[str, str]]:
    """(title, plain text) of the shipped articles, parsed once and cached as JSON lines."""
    from zoo.assets import cache_dir, fetch_asset

    cached = cache_dir() / "text" / "wiki-offline.jsonl"
    if cached.is_file():
        return [tuple(json.loads(line)) for line in cached.read_text().splitlines()]
    import mwparserfromhell

    articles = []
    for _, el in ET.iterparse(bz2.open(fetch_asset("gensim-enwiki"))):
        if not el.tag.endswith("}page"):
            continue
        raw = el.find("{*}revision/{*}text").text or ""
        if el.find("{*}ns").text == "0" and not raw.lower().startswith("#redirect"):
            text = mwparserfromhell.parse(raw).strip_code()
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "px|" not in ln]
            articles.append((el.find("{*}title").text, "\n".join(lines)))
        el.clear()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text("\n".join(json.dumps(a) for a in articles))
    os.replace(tmp, cached)
    return articles


def _offline_split(split: str) -> list[str]:
    articles = sorted(_wiki_articles())
    if split not in ("train", "test"):
        raise ZooError(f"{OFFLINE} has splits train and test, not {split!r}")
    return [text for i, (_, text) in enumerate(articles) if (i % 4 == 3) == (split == "test")]


def _text_field(columns: list[str], source: str) -> str:
    for name in ("text", "content"):
        if name in columns:
            return name
    raise ZooError(f"{source} has no 'text' or 'content' column (columns: {', '.join(columns)})")


def _local_texts(path: Path, split: str) -> list[str]:
    import datasets

    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ZooError(f"{path} has splits {', '.join(ds)}, not {split!r}")
            ds = ds[split]
    else:
        files = sorted(p for p in (path.iterdir() if path.is_dir() else [path]) if p.suffix in _FILE_BUILDERS)
        if not files:
            raise ZooError(f"{path}: no text data found (expected {', '.join(_FILE_BUILDERS)} files or a saved dataset)")
        ds = datasets.load_dataset(_FILE_BUILDERS[files[0].suffix], data_files=[str(f) for f in files], split="train")
    return [t for t in ds[_text_field(ds.column_names, str(path))] if t and t.strip()]


def _hub_texts(name: str, split: str) -> list[str]:
    import datasets

    spec = CALIBRATION_SETS[name]
    if split not in spec.splits:
        raise ZooError(f"{name} has no {split!r} split here; use one of {', '.join(spec.splits)}")
    if not hub_reachable():
        raise ZooError(f"{name} needs the Hugging Face Hub, which is unreachable from here; "
                       f"use --calibration {OFFLINE} or a local path")
    target = spec.splits[split]
    try:
        if target.endswith(".json.gz"):
            ds = datasets.load_dataset(spec.path, data_files={split: target}, split=split)
        else:
            ds = datasets.load_dataset(spec.path, spec.config, split=target, streaming=spec.streaming)
    except (ConnectionError, OSError) as exc:
        raise ZooError(f"cannot reach {spec.path} on the Hub ({exc}); use --calibration {OFFLINE} "
                       "or a local path") from exc
    if spec.streaming:
        return [row[spec.field] for _, row in zip(range(_REFINEDWEB_DOCS), ds)]
    return [t for t in ds[spec.field] if t and t.strip()]


def load_texts(name_or_path: str, split: str = "train") -> list[str]:
    """Documents of a named set (`CALIBRATION_SETS` or wiki-offline) or of a local path."""
    if name_or_path == OFFLINE:
        return _offline_split(split)
    if name_or_path in CALIBRATION_SETS:
        return _hub_texts(name_or_path, split)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _local_texts(path, split)
    raise ZooError(f"unknown text set {name_or_path!r}: not one of "
                   f"{', '.join([*CALIBRATION_SETS, OFFLINE])} nor an existing path")


def calibration_batches(tokenizer, name_or_path: str, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) token windows drawn at seeded random offsets of the joined train text."""
    ids = tokenizer("\n\n".join(load_texts(name_or_path, "train")), return_tensors="pt").input_ids[0]
    if ids.numel() < seq_len + n_samples:
        raise ZooError(f"{name_or_path} has {ids.numel()} tokens: too few for {n_samples} windows of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=g)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def evaluation_text(name_or_path: str) -> str:
    """The test split joined by blank lines, as the SVD-LLM perplexity script reads it."""
    return "\n\n".join(load_texts(name_or_path, "test"))


def dataset_fingerprint(token_ids: torch.Tensor) -> str:
    """sha256 of the exact calibration tokens, so a checkpoint records what it saw."""
    return hashlib.sha256(token_ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
