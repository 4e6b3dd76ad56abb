#!/usr/bin/env bash
# The one script a GPU user runs: one table, in about 10 minutes on one GPU.
#
#     bash bench/gpu_check.sh                  # writes runs/gpu_check/ and prints gpu_check.md
#     OUT=/tmp/x bash bench/gpu_check.sh       # elsewhere
#
# 1. the CUDA tests (tests named *cuda*: compiled sampler == eager, decode() compiled on CUDA,
#    packed trace rows on the GPU == CPU; TF32 off in them);
# 2. decode speed, side by side (bench/bench_decode.py): AR, eager and compiled block sampler at
#    B = 4, 8, 16, dynamic θ 0.9, batch 1 and 64, with TPF, on the default-size model (random
#    weights: speed does not depend on them, TPF does, so TPF here says little);
# 3. a small ladder end to end with --preset gpu's model (4 -> 8, short budgets) and its wall time.
# Without a GPU it runs on CPU to show it works: step 3 then uses the default CPU model size and
# tiny budgets (said in the table), and step 1's tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
DEV=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
NAME=$(python -c "import torch, platform; print(torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'cpu')")
t_all=$(date +%s)

echo "== 1/3 CUDA tests" >&2
timeout 300 python -m pytest -q tests/test_fast_sample.py tests/test_packing.py -k cuda -p no:cacheprovider \
    > "$OUT/tests.txt" 2>&1
TESTS=$(grep -E "passed|skipped|failed|error" "$OUT/tests.txt" | tail -1)

echo "== 2/3 decode speed" >&2
if [ "$DEV" = cuda ]; then BATCHES=1,64; REPS=3; else BATCHES=1,64; REPS=1; fi
timeout 300 python bench/bench_decode.py --device "$DEV" --block-sizes 4,8,16 --rules dynamic --batches $BATCHES \
    --reps $REPS --no-train > "$OUT/decode.md" 2>&1
DECODE_RC=$?

echo "== 3/3 a small ladder" >&2
if [ "$DEV" = cuda ]; then
    LADDER=(--preset gpu --stages 4,8 --ar-steps 1500 --sft-steps 750 --first-stage-steps 20 --stage-steps 10
            --curve-every 10 --out "$OUT/ladder")
else  # CPU: the default model, tiny budgets: it shows the pipeline runs, nothing more
    LADDER=(--preset quick --stages 4,8 --ar-steps 40 --sft-steps 20 --n-test 60 --sweep-thresholds 0.9
            --out "$OUT/ladder")
fi
rm -rf "$OUT/ladder"
t0=$(date +%s)
timeout 420 python curriculum.py "${LADDER[@]}" > "$OUT/ladder.log" 2>&1
LADDER_RC=$?
LADDER_S=$(( $(date +%s) - t0 ))

{
    echo "# gpu_check: $NAME ($DEV), torch $(python -c 'import torch; print(torch.__version__)'), $(date -u +%F)"
    echo
    echo "| check | result |"
    echo "|---|---|"
    echo "| CUDA tests | ${TESTS:-none ran} |"
    echo "| decode bench | $([ $DECODE_RC = 0 ] && echo ok || echo "failed (rc $DECODE_RC)") |"
    echo "| ladder: curriculum.py ${LADDER[*]} | $([ $LADDER_RC = 0 ] && echo "ok, ${LADDER_S} s" || echo "failed (rc $LADDER_RC) after ${LADDER_S} s") |"
    echo "| all of the above | $(( $(date +%s) - t_all )) s |"
    echo
    echo "Decode speed (bench/bench_decode.py; random weights):"
    echo
    grep -E "^\|( device|---| $DEV)" "$OUT/decode.md" || tail -3 "$OUT/decode.md"
    echo
    echo "The ladder's table (greedy θ 0.9 / mean@3 / static; accuracy % / TPF) and where its time went:"
    echo
    grep -E "^\|( checkpoint|---| sft| tstar| direct| norl| phase| ar | all )" "$OUT/ladder/results.md" 2>/dev/null \
        || tail -5 "$OUT/ladder.log"
} > "$OUT/gpu_check.md"
cat "$OUT/gpu_check.md"
