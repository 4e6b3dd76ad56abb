#!/bin/bash
# Experiment helper (docs/experiments.md E10-E13), run from the repo root.
# usage: docs/scripts/diag.sh CKPT  -> one line per eval
c=$1
e() { python eval_math.py --ckpt $c "$@" | sed "s#^$c##"; }
e --block-size 4; e --block-size 4 --rule ltr
for W in 3 -1; do e --block-size 8 --mask-window $W; e --block-size 8 --rule ltr --mask-window $W; done
for W in 3 -1; do e --block-size 16 --mask-window $W; e --block-size 16 --rule ltr --mask-window $W; done
for D in 4 6 8; do e --block-size 16 --commit-distance $D; done
