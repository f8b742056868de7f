#!/usr/bin/env bash
# Set up, then run the test suite (real models, small inputs, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
