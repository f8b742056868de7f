#!/usr/bin/env bash
# Label Studio for `voxtox review` (docs/review.md), in its own virtual environment: its pins
# (pyarrow < 25, Django 5.2) clash with voxtox's, and it is ~1 GB, so the demo's set-up never
# installs it; the tests (scripts/test.sh) and `voxtox review export --push` on first use do.
#
#   bash scripts/labelstudio.sh install            # .venv-labelstudio (~1 min, ~1 GB); no-op when there
#   bash scripts/labelstudio.sh start [PORT] [DIR] # serve on 127.0.0.1:PORT (default 8080), data in DIR
#
# `start` runs in the foreground (exec) with a login from the environment:
# LABEL_STUDIO_USERNAME (an e-mail), LABEL_STUDIO_PASSWORD and LABEL_STUDIO_USER_TOKEN (the API
# token voxtox sends as `Authorization: Token ...`, set it as LABEL_STUDIO_API_KEY for voxtox).
# Audio is served from LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: voxtox's data dir).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.23.2  # ../shared/DESIGN.md §8: tried with this release
VENV=${VOXTOX_LABEL_STUDIO_VENV:-$PWD/.venv-labelstudio}

install() {
  if [ -x "$VENV/bin/label-studio" ] && "$VENV/bin/python" -c "import label_studio" 2>/dev/null; then
    return 0
  fi
  python=${PYTHON:-python3.11}
  command -v "$python" >/dev/null || python=python3
  echo "== installing label-studio==$VERSION into $VENV (once; ~1 min, ~1 GB)" >&2
  [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
  log=$(mktemp)
  for attempt in 1 2; do  # a second try rides out a transient registry error
    if "$VENV/bin/python" -m pip install -q "label-studio==$VERSION" >"$log" 2>&1; then
      rm -f "$log"; return 0
    fi
    grep -v "is ignored" "$log" >&2
    [ "$attempt" -eq 2 ] && { echo "pip install label-studio==$VERSION failed (log above)" >&2; exit 1; }
  done
}

start() {
  local port=${1:-8080} dir=${2:-$PWD/voxtox-data/label-studio}
  install
  mkdir -p "$dir"
  : "${LABEL_STUDIO_USERNAME:?set LABEL_STUDIO_USERNAME (an e-mail) for the login}"
  : "${LABEL_STUDIO_PASSWORD:?set LABEL_STUDIO_PASSWORD for the login}"
  : "${LABEL_STUDIO_USER_TOKEN:?set LABEL_STUDIO_USER_TOKEN (the API token voxtox uses)}"
  # No telemetry and no call home for the latest version; audio from local files; its files
  # and what it writes under HOME go under DIR, not the user's.
  export SENTRY_DSN= FRONTEND_SENTRY_DSN= COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false HOME="$dir"
  export LABEL_STUDIO_BASE_DATA_DIR="$dir"
  export LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
  export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=${LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT:-$PWD/voxtox-data}
  # --internal-host is what it listens on (--host only builds links); the legacy token is
  # accepted only when enabled on the first start.
  exec "$VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$port" \
    --host "http://127.0.0.1:$port" --data-dir "$dir" \
    --username "$LABEL_STUDIO_USERNAME" --password "$LABEL_STUDIO_PASSWORD" \
    --user-token "$LABEL_STUDIO_USER_TOKEN" --enable-legacy-api-token
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  *) echo "usage: $0 install | start [PORT] [DATA_DIR]" >&2; exit 2 ;;
esac
