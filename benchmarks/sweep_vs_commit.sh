#!/usr/bin/env bash
# Wall time of one sweep command, start-up included: an older commit with its default
# (sequential) launcher vs this checkout with `hydra/launcher=parallel`, alternated ROUNDS
# times (this machine's speed drifts, so only ratios within a round mean much).
#
#   benchmarks/sweep_vs_commit.sh [REV] [ROUNDS] [extra overrides...]
#
# REV defaults to 098a96e, the last commit before the speed work (issue 6). The default
# command is that issue's "done when" sweep: 4 StdCNN cells, one 55k epoch each, eval=none.
# Needs the data under $ROBUSTHP_DATA_DIR (or ../shared/datasets) and the .venv of `make`.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-098a96e}
ROUNDS=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
PY=${PY:-.venv/bin/python}
export ROBUSTHP_DATA_DIR=${ROBUSTHP_DATA_DIR:-$(cd .. && pwd)/shared/datasets}
ARGS=(dataset=mnist model=stdcnn regime=lr batch_size=32 momentum=0,0.2,0.5,0.9 epochs=1 eval=none
      data.download=false trainer.progress_bar=false "$@")
TMP=$(mktemp -d)
trap 'git worktree remove --force "$TMP/old" >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT
git worktree add --detach -q "$TMP/old" "$REV"
CONF="$TMP/old/conf"; [ -d "$CONF" ] || CONF="$TMP/old/src/robusthp/conf"

seconds() { local t0; t0=$(date +%s.%N); "$@" > "$TMP/log" 2>&1 || { tail -5 "$TMP/log" >&2; exit 1; }
            python3 -c "import sys; print(f'{$(date +%s.%N) - $t0:.1f}')"; }
ok() { grep -l '"status": "ok"' "$1"/*/results.json 2>/dev/null | wc -l; }

echo "sweep: ${ARGS[*]}"
for r in $(seq 1 "$ROUNDS"); do
  old=$(seconds env PYTHONPATH="$TMP/old/src" "$PY" -m robusthp.run --config-path="$CONF" -m "${ARGS[@]}" \
        hydra.sweep.dir="$TMP/sweep-old-$r")
  new=$(seconds "$PY" -m robusthp.run -m hydra/launcher=parallel "${ARGS[@]}" hydra.sweep.dir="$TMP/sweep-new-$r")
  echo "round $r: $REV sequential ${old} s ($(ok "$TMP/sweep-old-$r") ok), HEAD parallel ${new} s" \
       "($(ok "$TMP/sweep-new-$r") ok): $(python3 -c "print(f'{$old / $new:.2f}')")x"
done
