#!/bin/bash
# Issue "B=32 and stability" runs on a 2-core CPU as two lanes side by side, each one
# thread (docs/experiments.md E49), from the repo root:
#   OMP_NUM_THREADS=1 docs/scripts/b32_runs.sh A &  OMP_NUM_THREADS=1 docs/scripts/b32_runs.sh B &
# Each lane waits for its seed's base (docs/scripts/b32.sh base SEED 0.05), then runs
#   the B=32 ladder:   curriculum.py --stages 4,8,16,32 --stage-curve-every 10 -> runs/b32/ladder
#   3x later-stage lr: curriculum.py --stages 4,8,16 --lr 9e-5 --stage-curve-every 10 -> runs/lr3,
#                      reusing that seed's B=32 ladder's ar, sft4 and tstar4 (same flags and
#                      seed: the first stage has its own lr) and its evaluation cache
#   rows budget:       curriculum.py --stages 4,8,16,32 --direct-budget rows -> runs/b32/rows,
#                      reusing every checkpoint of the ladder but direct32
set -e
lane() {
  s=$1
  if [ ! -f runs/b32/ladder/seed$s/results.json ]; then
    until [ "$(wc -l < runs/b32/base/seed$s/evals.jsonl 2>/dev/null)" = 8 ]; do sleep 30; done
    bash docs/scripts/b32.sh place $s 0.05 runs/b32/ladder
    python curriculum.py --stages 4,8,16,32 --out runs/b32/ladder --seeds $s --stage-curve-every 10
  fi
}
lr3() {
  s=$1
  [ -f runs/lr3/seed$s/results.json ] && return
  bash docs/scripts/b32.sh reuse runs/b32/ladder/seed$s runs/lr3/seed$s ar sft4 tstar4
  python curriculum.py --stages 4,8,16 --lr 9e-5 --out runs/lr3 --seeds $s --stage-curve-every 10
}
rows() {
  s=$1
  [ -f runs/b32/rows/seed$s/results.json ] && return
  bash docs/scripts/b32.sh reuse runs/b32/ladder/seed$s runs/b32/rows/seed$s ar sft4 tstar4 tstar8 tstar16 \
      tstar32 norl8 norl16 norl32
  python curriculum.py --stages 4,8,16,32 --direct-budget rows --out runs/b32/rows --seeds $s
}
if [ "$1" = A ]; then lane 1; lr3 0; lr3 1; rows 1
elif [ "$1" = B ]; then lane 2; lr3 2; rows 2; rows 0
else echo "usage: $0 A|B" >&2; exit 2; fi
