#!/usr/bin/env bash
# The test command of README.md and CI: set up, then run every test (slow ones included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
