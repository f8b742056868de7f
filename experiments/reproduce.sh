#!/usr/bin/env bash
# Reproduce docs/results.md (paper Tables 2 and 3, English; Figure 2, en/es/de) from nothing:
#   bash experiments/reproduce.sh            # everything, resuming whatever an earlier run finished
#   bash experiments/reproduce.sh corpus     # one stage: corpus | tables | multilingual | report
# Every stage is idempotent: synth skips a written corpus, `voxtox label` skips labelled
# recordings, `voxtox ablate` skips finished cells and resumes interrupted ones from their last
# checkpoint. Kill it at any point and run it again.
#
# Sizes are those that one shared 2-core CPU finished (docs/results.md says what was cut);
# ROOT, VOXTOX (the CLI) and the *_HOURS variables override them, e.g. for a GPU machine:
#   EN_HOURS=24 MULTI_HOURS=6 GRID_SUFFIX=-gpu bash experiments/reproduce.sh   (experiments/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-data/repro}
VOXTOX=${VOXTOX:-.venv/bin/voxtox}
EN_HOURS=${EN_HOURS:-2.4}          # English corpus: train/val/test 0.48/0.12/0.40 of it
MULTI_HOURS=${MULTI_HOURS:-0.8}    # Spanish + German corpus for Figure 2
GRID_SUFFIX=${GRID_SUFFIX:-}       # "" (CPU grids) or "-gpu" (experiments/*-gpu.toml)
DATA=$ROOT/data
export VOXTOX_ASR__FALLBACK_TEMPERATURES='[]'   # bounds a session's decoding time (docs/corpus.md)
stage=${1:-all}

log() { printf '\n== %s  %s\n' "$(date '+%F %T')" "$*"; }

synth_and_label() {  # corpus dir, hours, langs, seed, ASR languages (JSON list)
  local corpus=$1 hours=$2 langs=$3 seed=$4 asr_langs=$5
  if [ ! -f "$corpus/corpus.json" ]; then
    log "synth $corpus ($hours h, $langs)"
    "$VOXTOX" synth --out "$corpus" --hours "$hours" --langs "$langs" --seed "$seed" \
      --splits 0.48,0.12,0.40 --toxic-share 0.4 --session-s 20:60
  fi
  for split in train val test; do
    log "label $corpus/$split"
    VOXTOX_ASR__LANGUAGES="$asr_langs" "$VOXTOX" label "$corpus/$split" --split "$split" --data-dir "$DATA"
  done
  log "import the truth of $corpus val/test as human labels"
  "$VOXTOX" import-labels "$corpus/truth/utterances-val.jsonl" "$corpus/truth/utterances-test.jsonl" --data-dir "$DATA"
}

if [[ $stage == all || $stage == corpus ]]; then
  synth_and_label "$ROOT/corpus-en" "$EN_HOURS" en 15 '["en"]'
fi
if [[ $stage == all || $stage == corpus-multi ]]; then
  synth_and_label "$ROOT/corpus-es-de" "$MULTI_HOURS" es,de 16 '["en","es","de"]'
fi
