"""Is the Hugging Face Hub reachable? Asked once per run, so offline machines fail over at once
instead of sitting through huggingface_hub's retries on every request. And what a Hub
repository's config says it is, before any weights are downloaded."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)


@functools.cache
def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def hub_model_type(repo_id: str, revision: str | None = None) -> str | None:
    """The `model_type` in a Hub repository's config.json (one small download), or None when it
    cannot be read (no such repository, gated, no network): loading will then say why."""
    from huggingface_hub import hf_hub_download

    try:
        with open(hf_hub_download(repo_id, "config.json", revision=revision)) as f:
            return json.load(f).get("model_type")
    except Exception as exc:  # noqa: BLE001 - any failure only leaves the modality to the default
        log.warning("could not read %s's config.json to tell its modality: %s", repo_id, exc)
        return None
