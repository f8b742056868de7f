#!/usr/bin/env bash
# Reproduce docs/results.md (paper Tables 2 and 3, English; Figure 2, en/es/de) from nothing:
#   bash experiments/reproduce.sh            # everything, resuming whatever an earlier run finished
#   bash experiments/reproduce.sh STAGE      # one stage: corpus | tables | multilingual | report
# Every stage is idempotent: synth skips a written corpus, `voxtox label` skips labelled
# recordings, `voxtox ablate` skips finished cells and resumes interrupted ones from their last
# checkpoint. Kill it at any point and run it again.
#
# Sizes are those one shared 2-core CPU finished (docs/results.md says what was cut). The
# variables below override them; the same grids at 10x the data on a GPU machine
# (experiments/README.md):
#   EN_HOURS=24 MULTI_HOURS=10 ROOT=data/repro-10x RUNS=runs/10x DOCS=runs/10x/docs \
#     VOXTOX_ASR__DEVICE=cuda VOXTOX_ASR__COMPUTE_TYPE=float16 bash experiments/reproduce.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-data/repro}           # corpora and the labelled data
RUNS=${RUNS:-runs}                 # the grids' runs
DOCS=${DOCS:-docs}                 # where the report stage writes the CSV, plots and corpus reports
VOXTOX=${VOXTOX:-.venv/bin/voxtox}
EN_HOURS=${EN_HOURS:-2.4}          # English corpus (Tables 2, 3); train/val/test 0.48/0.12/0.40 of it
MULTI_HOURS=${MULTI_HOURS:-1.0}    # Spanish + German corpus (Figure 2), split alike
DATA=$ROOT/data
export VOXTOX_ASR__FALLBACK_TEMPERATURES='[]'   # bounds a session's decoding time (docs/corpus.md)
stage=${1:-all}

log() { printf '\n== %s  %s\n' "$(date '+%F %T')" "$*"; }

synth_and_label() {  # corpus dir, hours, languages (comma-separated), seed
  local corpus=$1 hours=$2 langs=$3 seed=$4
  if [ ! -f "$corpus/corpus.json" ]; then
    log "synth $corpus ($hours h, $langs)"
    "$VOXTOX" synth --out "$corpus" --hours "$hours" --langs "$langs" --seed "$seed" \
      --splits 0.48,0.12,0.40 --toxic-share 0.4 --session-s 20:60
  fi
  for split in train val test; do
    for lang in ${langs//,/ }; do
      # Each recording's language is given to the ASR, as a per-locale deployment knows it
      # (file names end in -<lang>); Whisper base on espeak speech needs it (../shared/DESIGN.md §7).
      log "label $corpus/$split ($lang)"
      VOXTOX_ASR__LANGUAGES="[\"$lang\"]" "$VOXTOX" label "$corpus/$split/*-$lang.*" --split "$split" --data-dir "$DATA"
    done
  done
  log "import the truth of $corpus val/test as human labels"
  "$VOXTOX" import-labels "$corpus/truth/utterances-val.jsonl" "$corpus/truth/utterances-test.jsonl" --data-dir "$DATA"
}

if [[ $stage == all || $stage == corpus ]]; then
  synth_and_label "$ROOT/corpus-en" "$EN_HOURS" en 15
  synth_and_label "$ROOT/corpus-es-de" "$MULTI_HOURS" es,de 16
fi
if [[ $stage == all || $stage == tables ]]; then
  log "Tables 2 and 3 (English)"
  "$VOXTOX" ablate experiments/tables-en.toml --data-dir "$DATA" --out "$RUNS/tables-en"
fi
if [[ $stage == all || $stage == multilingual ]]; then
  log "Figure 2 (en, es, de)"
  "$VOXTOX" ablate experiments/figure2-multilingual.toml --data-dir "$DATA" --out "$RUNS/figure2"
  log "Figure 2 with the paper's 6 epochs"
  "$VOXTOX" ablate experiments/figure2-multilingual-6-epochs.toml --data-dir "$DATA" --out "$RUNS/figure2-6-epochs"
fi
if [[ $stage == all || $stage == report ]]; then
  log "$DOCS: results-grid.csv, plots, the corpora's label quality"
  mkdir -p "$DOCS"
  grids=(tables-en figure2 figure2-6-epochs)
  { head -n 1 "$RUNS/tables-en/results-grid.csv"; for grid in "${grids[@]}"; do tail -n +2 "$RUNS/$grid/results-grid.csv"; done; } \
    > "$DOCS/results-grid.csv"
  for grid in "${grids[@]}"; do cp "$RUNS/$grid/evaluation/test/ap.png" "$DOCS/results-$grid-ap.png"; done
  # Both corpora share one data dir: each one's clips are told apart by language.
  for corpus in corpus-en corpus-es-de; do
    langs="'en'"; [[ $corpus == corpus-es-de ]] && langs="'es', 'de'"
    "$VOXTOX" corpus-report "$ROOT/$corpus" --data-dir "$DATA" --no-label --out "$DOCS/results-$corpus.md"
    .venv/bin/python experiments/training_labels.py "$ROOT/$corpus" --data-dir "$DATA" --filter "lang IN ($langs)" \
      > "$DOCS/results-$corpus-train-labels.md"
  done
  echo "tables: $RUNS/tables-en/results.md, $RUNS/figure2/results.md, $RUNS/figure2-6-epochs/results.md (docs/results.md quotes them)"
fi
