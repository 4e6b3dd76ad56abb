#!/bin/bash
# Runs on today's code; most of its calls in docs/experiments.md (E19-E38) pass flags removed in issue 28
# (--grow-spread, --ref-to, ...): those need commit 831d74e, the last with them: git worktree add ../old 831d74e
# Experiment helper (docs/experiments.md E19-), run from the repo root.
# usage: docs/scripts/variant.sh BASE NAME SEED [flags...]
#   waits for BASE/seedSEED/sft4.pt (a default ladder, e.g. runs/def), copies its AR and SFT
#   checkpoints and its eval cache in (cp -p keeps the mtimes, so sft4's cached decodes stay
#   valid), then runs the ladder with the extra flags into runs/NAME/seedSEED, one thread.
#   COPY_T4=1 also copies tstar4 (for flags that do not change the first stage);
#   COPY="tstar4 direct16" copies the named checkpoints (ones the flags provably leave
#   unchanged: same parent, seed, flags and step count); AR_ONLY=1 copies ar.pt alone (for
#   flags that change the SFT stage, e.g. --sft-steps), and no eval cache.
base=$1; name=$2; s=$3; shift 3
src=$base/seed$s; out=runs/$name/seed$s
copy="${COPY:-}"; [ "${COPY_T4:-0}" = 1 ] && copy="$copy tstar4"
[ "${AR_ONLY:-0}" = 1 ] && need=ar || need="sft4 $copy"
for n in $need; do while [ ! -f $src/$n.pt ]; do sleep 10; done; done
mkdir -p $out
cp -p $src/ar.pt $src/ar.pt.json $out/
if [ "${AR_ONLY:-0}" != 1 ]; then
  for n in sft4 $copy; do cp -p $src/$n.pt $src/$n.pt.json $out/; done
  [ -f $src/eval.json ] && cp -p $src/eval.json $out/
fi
OMP_NUM_THREADS=1 python curriculum.py --seed $s --out $out "$@" > runs/${name}_seed$s.log 2>&1
