#!/bin/bash
# The B=32 setting (docs/experiments.md E48), run from the repo root.
#   docs/scripts/b32.sh base SEED SHARE...
#       AR pre-training (train.py's defaults, the curriculum's) into runs/b32/base/seedSEED/ar.pt
#       unless it is there, then for every SHARE s a block SFT from it with --sft-block-mix
#       4:(0.8-s),8:0.15,16:0.05,32:s (the default tail of 4,8,16 with a share s of B=32 batches
#       taken from B=4; share 0 is the default 4,8,16 ladder's base) into
#       runs/b32/base/seedSEED/share{s}/sft4.pt, each decoded at B=4, 8, 16, 32
#       (dynamic θ 0.9): greedy and mean of 3 samples at T=1, one JSON line per decode appended
#       to runs/b32/base/seedSEED/evals.jsonl.
#   docs/scripts/b32.sh place SEED SHARE LADDER
#       copies that seed's ar.pt and share{s}/sft4.pt into LADDER/seedSEED (curriculum.py --seeds'
#       layout), the SFT sidecar naming ar.pt's bytes as its parent, so that
#       `python curriculum.py --stages 4,8,16,32 --out LADDER --seeds ...` trains its RL stages from
#       this base instead of building its own (the sidecar's block_mix says which base it is).
#   docs/scripts/b32.sh reuse SRC DEST NAME...
#       copies the named checkpoints of the seed folder SRC (with their sidecars, so each
#       still names its parent's bytes) and SRC's evaluation cache eval.json into DEST, so that a
#       curriculum run into DEST with other flags keeps them (curriculum.Run.have) and decodes
#       only what it trains anew (eval.json is keyed by each checkpoint's sha256).
set -e
cmd=$1; s=$2; shift 2
out=runs/b32/base/seed$s
if [ "$cmd" = base ]; then
  mkdir -p $out
  [ -f $out/ar.pt ] || python train.py --stage ar --seed $s --out $out --log-every 200
  for f in "$@"; do
    d=$out/share$f
    mix=$(python -c "f=$f; print(f'4:{0.8-f:g},8:0.15,16:0.05' + (f',32:{f:g}' if f else ''))")
    [ -f $d/sft4.pt ] || python train.py --stage sft --seed $s --init $out/ar.pt --out $d --log-every 200 \
        --sft-block-mix $mix
    for B in 4 8 16 32; do
      for how in "" "--samples 3 --temperature 1"; do
        python eval_math.py --ckpt $d/sft4.pt --block-size $B $how --json \
          | python -c "import json,sys; r=json.load(sys.stdin); r.update(seed=$s, share=$f); print(json.dumps(r))" \
          >> $out/evals.jsonl
      done
    done
  done
elif [ "$cmd" = place ]; then
  f=$1; dest=$2/seed$s
  mkdir -p $dest
  cp $out/ar.pt $out/ar.pt.json $dest/
  cp $out/share$f/sft4.pt $out/share$f/sft4.pt.json $dest/
  python -c "
import json, sys; sys.path.insert(0, '.')
from model import file_sha256
p = '$dest/sft4.pt.json'; m = json.load(open(p))
m.update(parent_sha256=file_sha256('$dest/ar.pt'), method='sft'); json.dump(m, open(p, 'w'), indent=1)"
elif [ "$cmd" = reuse ]; then
  dest=$1; shift
  mkdir -p $dest
  for n in "$@"; do cp $s/$n.pt $s/$n.pt.json $dest/; done
  cp $s/eval.json $dest/
else
  echo "usage: $0 base SEED SHARE... | place SEED SHARE LADDER | reuse SRC DEST NAME..." >&2; exit 2
fi
