#!/bin/bash
# Experiment helper (docs/experiments.md E19-), run from the repo root.
# usage: docs/scripts/variant.sh BASE NAME SEED [flags...]
#   waits for BASE/seedSEED/sft4.pt (a default ladder, e.g. runs/def), copies its AR and SFT
#   checkpoints and its eval cache in (cp -p keeps the mtimes, so sft4's cached decodes stay
#   valid), then runs the ladder with the extra flags into runs/NAME/seedSEED, one thread.
#   COPY_T4=1 also copies tstar4 (for flags that do not change the first stage).
base=$1; name=$2; s=$3; shift 3
src=$base/seed$s; out=runs/$name/seed$s
while [ ! -f $src/sft4.pt ] || { [ "${COPY_T4:-0}" = 1 ] && [ ! -f $src/tstar4.pt ]; }; do sleep 10; done
mkdir -p $out
cp -p $src/ar.pt $src/ar.pt.json $src/sft4.pt $src/sft4.pt.json $out/
[ "${COPY_T4:-0}" = 1 ] && cp -p $src/tstar4.pt $src/tstar4.pt.json $out/
[ -f $src/eval.json ] && cp -p $src/eval.json $out/
OMP_NUM_THREADS=1 python curriculum.py --stages 4,8,16 --seed $s --out $out "$@" > runs/${name}_seed$s.log 2>&1
