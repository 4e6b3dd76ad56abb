#!/bin/bash
# Experiment helper (docs/experiments.md E16), run from the repo root.
# usage: docs/scripts/reach_probe.sh CKPT OUTDIR: RL at B=16 with rollouts limited to commit
# distance D, one reach straight (D=8, 40 steps) against a reach that grows (D=6 for 20 steps,
# then D=8 for 20); each result decoded at B=16 with D = 4, 6, 8 and unlimited.
c=$1; o=$2; mkdir -p $o
rl() { [ -f $o/$3.pt ] || OMP_NUM_THREADS=1 python tracerl.py --ckpt $1 --block-size 16 --commit-distance $2 \
        --steps $4 --seed 900 --out $o/$3.pt > $o/$3.log 2>&1; }
ev() { for D in 4 6 8 0; do OMP_NUM_THREADS=1 python eval_math.py --ckpt $1 --block-size 16 --commit-distance $D; done; }
rl $c 8 d8 40; ev $o/d8.pt
rl $c 6 d6 20; ev $o/d6.pt
rl $o/d6.pt 8 d6d8 20; ev $o/d6d8.pt
