#!/usr/bin/env bash
# Set up, then run the test suite (real models, small inputs, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/labelstudio.sh install  # for tests/test_labelstudio.py; the demo's set-up never needs it
.venv/bin/ruff check .  # the linter ([tool.ruff] in pyproject.toml): clean, or no tests
.venv/bin/python scripts/typecheck.py  # the type checker ([tool.basedpyright]): no more errors than its baseline
# Two worker processes, a test file each at a time (module fixtures stay in one process): the suite
# keeps a 2-core machine busy that one process left half idle (README, "Development").
exec .venv/bin/python -m pytest -q -n "${VOXTOX_TEST_WORKERS:-2}" --dist loadfile "$@"
