"""Fingerprints: one hash of everything that determines a variant, so the nightly job can tell
a published variant that is still current from one whose inputs changed."""

from __future__ import annotations

from zoo.digest import json_digest


def variant_fingerprint(
    base_model: str, base_revision: str | None, engine_version: str, config: dict, calibration: dict, evaluation: dict
) -> str:
    """Equal fingerprints mean the same base weights, engine, configuration (the settings that
    shape the factors), calibration inputs and evaluation settings, hence the same variant and scores."""
    return json_digest(
        {
            "base_model": base_model,
            "base_revision": base_revision,
            "engine_version": engine_version,
            "config": config,
            "calibration": calibration,
            "evaluation": evaluation,
        }
    )
