#!/bin/bash
# Experiment helper (docs/experiments.md E21), run from the repo root.
# usage: docs/scripts/ltr_k.sh RUN: fixed left-to-right decoding with k tokens per forward for the
#   checkpoints of one finished run folder: the B=4 model at B=4 with k=4 (its whole block in one
#   forward) and every last-stage checkpoint at B=16 with k=4 and k=8 (steps = B/k).
run=$1
for spec in "sft4 4 1" "sft4 16 4" "sft4 16 2" "tstar16 16 4" "tstar16 16 2" "direct16 16 4" "direct16 16 2" "norl16 16 4"; do
  set -- $spec
  printf '%s B=%s ltr k=%s: ' $1 $2 $(( $2 / $3 ))
  OMP_NUM_THREADS=1 python eval_math.py --ckpt $run/$1.pt --block-size $2 --rule ltr --steps-per-block $3 2>&1 | tail -1
done
