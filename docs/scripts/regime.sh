#!/bin/bash
# The regime sweep (docs/experiments.md E42), run from the repo root, one thread.
# usage: docs/scripts/regime.sh SEED [TAILS...]
#   AR pre-training (train.py defaults) into runs/regime/seedSEED/ar.pt, then for every tail
#   fraction f (default 0 0.1 0.2 0.4) block SFT from it with --sft-block-mix
#   4:(1-f),8:0.75f,16:0.25f into runs/regime/seedSEED/tail{f}/sft4.pt, then each decoded at
#   B=4, 8, 16 (dynamic θ 0.9): greedy and mean of 3 samples at T=1, one JSON line per decode
#   appended to runs/regime/seedSEED/evals.jsonl.
s=$1; shift; tails="${*:-0 0.1 0.2 0.4}"
out=runs/regime/seed$s; mkdir -p $out
export OMP_NUM_THREADS=1
[ -f $out/ar.pt ] || python train.py --stage ar --seed $s --out $out --log-every 200
for f in $tails; do
  d=$out/tail$f
  mix=$(python -c "f=$f; print(f'4:{1-f:g},8:{0.75*f:g},16:{0.25*f:g}' if f else '')")
  [ -f $d/sft4.pt ] || python train.py --stage sft --seed $s --init $out/ar.pt --out $d --log-every 200 \
      ${mix:+--sft-block-mix $mix}
  for B in 4 8 16; do
    python eval_math.py --ckpt $d/sft4.pt --block-size $B --json \
      | python -c "import json,sys; r=json.load(sys.stdin); r.update(seed=$s, tail=$f); print(json.dumps(r))" >> $out/evals.jsonl
    python eval_math.py --ckpt $d/sft4.pt --block-size $B --samples 3 --temperature 1 --json \
      | python -c "import json,sys; r=json.load(sys.stdin); r.update(seed=$s, tail=$f); print(json.dumps(r))" >> $out/evals.jsonl
  done
done
