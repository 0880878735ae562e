#!/usr/bin/env bash
# The test command of README.md and CI: set up, lint and format-check (ruff), then run every test
# (slow ones included; the layering contract runs among them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
