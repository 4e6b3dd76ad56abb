#!/usr/bin/env bash
# The one script a GPU user runs: one table, and an exit status that is 0 only if every part passed.
#
#     bash bench/gpu_check.sh                  # writes runs/gpu_check/ and prints gpu_check.md
#     OUT=/tmp/x bash bench/gpu_check.sh       # elsewhere
#
# 1. the CUDA tests (tests named *cuda*: compiled sampler == eager, decode() compiled on CUDA,
#    packed trace rows on the GPU == CPU; TF32 off in them, so they run with
#    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE unset: it would force TF32 on whatever a test sets);
# 2. decode speed, side by side (bench/bench_decode.py): AR, eager and compiled block sampler at
#    B = 4, 8, 16, dynamic θ 0.9, batch 1 and 64, with TPF, on the default-size model (random
#    weights: speed does not depend on them, TPF does, so TPF here says little); every path is
#    warmed up (compiled) untimed before it is timed;
# 3. a small ladder end to end with --preset gpu's model (4 -> 8, short budgets) and its wall time.
# Without a GPU it runs on CPU to show it works: step 3 then uses the default CPU model size and
# tiny budgets (said in the table), and step 1's tests skip. Without a C compiler torch.compile
# cannot build: the table says so in one line, and the compiled bench rows and tests are skipped.
#
# Each part runs under a timeout that leaves room for its compiles (a fresh compile of one
# sampler graph costs 10-60 s on a GPU; the inductor cache makes later runs quicker). Seconds:
#     GPU_CHECK_TESTS_S (default 900), GPU_CHECK_DECODE_S (1200), GPU_CHECK_LADDER_S (1200)
# A part that fails or times out is named in the table with its exit code, and the script exits 1.
set -uo pipefail  # no -e: a failing part is reported in the table, and the parts after it still run

# The table lines of bench_decode's output: every Markdown row, whatever a device's label is
# (the CPU's "cpu 1t", a GPU's name such as "H100 80GB HBM3").
decode_rows() { grep -E '^\|' "$1"; }

# The ladder's results.md, trimmed to two tables, whole, whatever rows they hold: the main one
# (header "| checkpoint | B=...") and where the time went ("| phase |": ar, compile, ...).
ladder_rows() {
    awk '/^\|/ { if (!in_table) { keep = /^\| (checkpoint \| B=|phase \|)/; if (keep && n++) print "" }
                 in_table = 1; if (keep) print; next }
         { in_table = 0 }
         END { exit n == 0 }' "$1"
}

# One part's cell: part_result RC SECONDS TIMEOUT VAR [DETAIL].
part_result() {
    local rc=$1 secs=$2 limit=$3 var=$4 detail=${5:+: $5}
    if [ "$rc" = 0 ]; then echo "ok, $secs s${detail}"
    # 124: timeout's TERM ended it; 137: its KILL, 30 s later (or, before the limit, something else's)
    elif [ "$rc" = 124 ] || { [ "$rc" = 137 ] && [ "$secs" -ge "$limit" ]; }; then
        echo "FAILED: timed out after $limit s (raise $var)${detail}"
    else echo "FAILED (rc $rc) after $secs s${detail}"
    fi
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi  # sourced (tests/test_bench.py): the functions only

cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
TESTS_S=${GPU_CHECK_TESTS_S:-900}
DECODE_S=${GPU_CHECK_DECODE_S:-1200}
LADDER_S=${GPU_CHECK_LADDER_S:-1200}
mkdir -p "$OUT"
DEV=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
NAME=$(python -c "import torch, platform
print(torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'cpu')")
NOCC=$(python -c "import sys, sample; print(sample.compile_unavailable(sys.argv[1]) or '')" "$DEV")
t_all=$(date +%s)
FAILED=()
if [ -n "$NOCC" ]; then
    echo "gpu_check: $NOCC; the compiled sampler's bench rows and tests are skipped" >&2
    NO_COMPILE=(--no-compile)
else
    NO_COMPILE=()
fi

# run_part NAME LIMIT LOG CMD...: runs CMD under LIMIT seconds into LOG; sets RC and SECS.
run_part() {
    local name=$1 limit=$2 log=$3 t0
    shift 3
    t0=$(date +%s)
    timeout -k 30 "$limit" "$@" > "$log" 2>&1
    RC=$?
    SECS=$(( $(date +%s) - t0 ))
    [ "$RC" = 0 ] || FAILED+=("$name")
}

echo "== 1/3 CUDA tests (at most $TESTS_S s)" >&2
run_part "CUDA tests" "$TESTS_S" "$OUT/tests.txt" env -u TORCH_ALLOW_TF32_CUBLAS_OVERRIDE \
    python -m pytest -q -rs tests/test_fast_sample.py tests/test_packing.py -k cuda -p no:cacheprovider
TESTS_RC=$RC
TESTS=$(part_result $RC $SECS "$TESTS_S" GPU_CHECK_TESTS_S \
    "$(grep -E "passed|skipped|failed|error|deselected" "$OUT/tests.txt" | tail -1)")

echo "== 2/3 decode speed (at most $DECODE_S s)" >&2
if [ "$DEV" = cuda ]; then REPS=3; else REPS=1; fi
run_part "decode bench" "$DECODE_S" "$OUT/decode.md" python bench/bench_decode.py --device "$DEV" \
    --block-sizes 4,8,16 --rules dynamic --batches 1,64 --reps $REPS --no-train "${NO_COMPILE[@]}"
DECODE=$(part_result $RC $SECS "$DECODE_S" GPU_CHECK_DECODE_S)

echo "== 3/3 a small ladder (at most $LADDER_S s)" >&2
if [ "$DEV" = cuda ]; then
    LADDER=(--preset gpu --stages 4,8 --ar-steps 1500 --sft-steps 750 --first-stage-steps 20 --stage-steps 10
            --curve-every 10 "${NO_COMPILE[@]}" --out "$OUT/ladder")
else  # CPU: the default model, tiny budgets: it shows the pipeline runs, nothing more
    LADDER=(--preset quick --stages 4,8 --ar-steps 40 --sft-steps 20 --n-test 60 --sweep-thresholds 0.9
            --out "$OUT/ladder")
fi
rm -rf "$OUT/ladder"
run_part "ladder" "$LADDER_S" "$OUT/ladder.log" python curriculum.py "${LADDER[@]}"
LADDER_RC=$RC
LADDER_RES=$(part_result $RC $SECS "$LADDER_S" GPU_CHECK_LADDER_S)

{
    echo "# gpu_check: $NAME ($DEV), torch $(python -c 'import torch; print(torch.__version__)')," \
        "$(date -u +%F)"
    echo
    echo "| check | result |"
    echo "|---|---|"
    echo "| C compiler | ${NOCC:-found: torch.compile can build}${NOCC:+: compiled rows and tests skipped} |"
    echo "| CUDA tests | $TESTS |"
    echo "| decode bench | $DECODE |"
    echo "| ladder: curriculum.py ${LADDER[*]} | $LADDER_RES |"
    if [ ${#FAILED[@]} = 0 ]; then
        echo "| all of the above | ok, $(( $(date +%s) - t_all )) s |"
    else
        failed=$(printf '%s, ' "${FAILED[@]}")
        echo "| all of the above | FAILED: ${failed%, }; $(( $(date +%s) - t_all )) s |"
    fi
    echo
    echo "Decode speed (bench/bench_decode.py; random weights):"
    echo
    decode_rows "$OUT/decode.md" || tail -3 "$OUT/decode.md"
    echo
    echo "The ladder's table (greedy θ 0.9 / mean@3 / static; accuracy % / TPF) and where its time went:"
    echo
    { [ "$LADDER_RC" = 0 ] && ladder_rows "$OUT/ladder/results.md" 2>/dev/null; } \
        || tail -5 "$OUT/ladder.log"
    if [ "$TESTS_RC" != 0 ]; then
        echo
        echo "CUDA tests ($OUT/tests.txt):"
        echo
        tail -15 "$OUT/tests.txt"
    fi
} > "$OUT/gpu_check.md"
cat "$OUT/gpu_check.md"
[ ${#FAILED[@]} = 0 ]
