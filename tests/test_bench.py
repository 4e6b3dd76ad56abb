"""bench/bench_decode.py runs end to end and prints its tables (timings are not checked:
they belong to the bench, never to tests).

    python -m pytest -q tests/test_bench.py
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_prints_its_tables():
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_decode.py"), "--device", "cpu", "--tiny",
           "--threads", "1", "--block-sizes", "4,8", "--rules", "static,dynamic", "--batches", "1,2",
           "--seqs", "2", "--reps", "1", "--min-time", "0", "--no-compile", "--fast-eager",
           "--train-batch", "4", "--rl-prompts", "2", "--rl-k", "2", "--rl-block-size", "4"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "RANDOM WEIGHTS" in out  # no --ckpt: it must say so
    assert "| device | path | B | rule | batch | tok/s | TPF | fwd | ms/fwd | vs AR |" in out
    rows = [line for line in out.splitlines() if line.startswith("| cpu")]
    paths = [r.split("|")[2].strip() for r in rows]
    # per batch: AR, then (eager, fast eager) x 2 block sizes x 2 rules
    assert paths.count("AR") == 2 and paths.count("eager") == 8 and paths.count("fast eager") == 8
    assert any("AR pre-train step" in r for r in rows) and any("block-SFT step" in r for r in rows)
    assert any("TraceRL rollout" in r for r in rows)


def test_bench_missing_checkpoint_is_one_line():
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_decode.py"), "--device", "cpu",
           "--ckpt", "/nonexistent/x.pt"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode != 0 and "does not exist" in res.stderr and "Traceback" not in res.stderr
