"""Fingerprints: one hash of everything that determines a variant, so the nightly job can tell
a published variant that is still current from one whose inputs changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Settings that change the result but not the computed factors: left out of the fingerprint.
RUNTIME_ONLY = ("device",)


def sha256_json(data: object) -> str:
    """A stable hash of JSON data: key order and whitespace do not matter."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def folder_revision(folder: Path) -> str:
    """The content hash of a model folder's top-level files: the revision of a local or packaged model."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def variant_fingerprint(base_model: str, base_revision: str | None, engine_version: str, config: dict,
                        calibration: dict, evaluation: dict) -> str:
    """Equal fingerprints mean the same base weights, engine, configuration, calibration inputs
    and evaluation settings, hence the same variant and the same scores."""
    return sha256_json({
        "base_model": base_model,
        "base_revision": base_revision,
        "engine_version": engine_version,
        "config": {k: v for k, v in config.items() if k not in RUNTIME_ONLY},
        "calibration": calibration,
        "evaluation": evaluation,
    })
