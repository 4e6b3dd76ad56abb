#!/bin/bash
# Experiment helper (docs/experiments.md E14), run from the repo root.
# usage: docs/scripts/long16.sh STEPS SEED...: continue each seed's stage-16 checkpoints of runs/w
# (tstar16, 30 steps; direct16, 70 steps) by STEPS more RL steps at B=16, then evaluate at B=16
# and B=4 (dynamic θ 0.9). Both continuations get the same extra steps, so direct keeps T*'s total.
n=$1; shift
for s in "$@"; do
  for m in tstar16 direct16; do
    out=runs/long/seed$s/${m}_plus$n.pt
    mkdir -p runs/long/seed$s
    [ -f $out ] || OMP_NUM_THREADS=1 python tracerl.py --ckpt runs/w/seed$s/$m.pt --block-size 16 \
        --steps $n --seed $((7000 + s)) --out $out > runs/long/seed$s/$m.log 2>&1
    for B in 16 4; do OMP_NUM_THREADS=1 python eval_math.py --ckpt $out --block-size $B; done
  done
done
