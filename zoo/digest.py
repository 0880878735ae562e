"""Content hashes: of calibration data, model folders, files and settings. One format,
"sha256:<hex>", so every recorded hash reads the same way."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

SHORT = 16  # hex digits kept for data and folder hashes: a record, not a security boundary


def digest(parts: Iterable[bytes], length: int | None = SHORT) -> str:
    """sha256 of the parts in order, as "sha256:<hex>" (the first `length` digits; None: all)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return "sha256:" + h.hexdigest()[:length]


def file_chunks(path: Path, size: int = 1 << 22) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(size), b"")


def json_digest(data: object) -> str:
    """A stable full hash of JSON data: key order and whitespace do not matter."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return digest([text.encode()], length=None)


def folder_digest(folder: Path) -> str:
    """The content hash of a folder's top-level files: the revision of a local or packaged model."""

    def parts() -> Iterator[bytes]:
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            yield path.name.encode() + b"\0"
            yield from file_chunks(path)

    return digest(parts())
