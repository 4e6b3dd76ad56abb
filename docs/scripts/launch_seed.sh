#!/bin/bash
# Runs on today's code; its --reach-previous call in docs/experiments.md (E12-E17) needs commit 831d74e,
# the last with that flag: git worktree add ../old 831d74e
# Experiment helper (docs/experiments.md E10-E13), run from the repo root.
# usage: docs/scripts/launch_seed.sh NAME SEED [flags...]: wait for runs/base_sSEED/sft4.pt, copy the base, run the ladder
name=$1; s=$2; shift 2
while [ ! -f runs/base_s$s/sft4.pt ]; do sleep 10; done
mkdir -p runs/$name/seed$s; cp runs/base_s$s/{ar.pt,ar.pt.json,sft4.pt,sft4.pt.json} runs/$name/seed$s/
OMP_NUM_THREADS=1 python curriculum.py --stages 4,8,16 --seed $s --out runs/$name/seed$s "$@" > runs/${name}_seed$s.log 2>&1
