#!/usr/bin/env bash
# The main job on embedded defaults: set up, then label multilingual voice-chat-like audio with
# an ephemeral Prefect API and local Parquet/DuckDB, and show what came out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/voxtox demo "$@"
