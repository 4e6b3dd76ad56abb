"""bench/bench_decode.py runs end to end and prints its tables (timings are not checked:
they belong to the bench, never to tests); bench/gpu_check.sh's table picks the right lines
and says which part failed and how.

    python -m pytest -q tests/test_bench.py
"""
import os
import subprocess
import sys

import pytest

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


def test_bench_without_a_compiler_says_so_in_one_line_and_leaves_the_compiled_rows_out(tmp_path):
    """No C++ compiler on PATH: one line on stderr, no traceback, exit 0, every row but the compiled ones."""
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_decode.py"), "--device", "cpu", "--tiny",
           "--block-sizes", "4", "--rules", "dynamic", "--batches", "1", "--seqs", "1", "--reps", "1",
           "--min-time", "0", "--no-train"]
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=dict(env, PATH=str(tmp_path)))  # an empty folder: no compiler
    assert res.returncode == 0, res.stderr[-2000:]
    said = [line for line in res.stderr.splitlines() if "compiler" in line]
    assert len(said) == 1 and "no C++ compiler" in said[0] and "Traceback" not in res.stderr
    paths = [r.split("|")[2].strip() for r in res.stdout.splitlines() if r.startswith("| cpu")]
    assert paths == ["AR", "eager"]


def _gpu_check(fn, *args):
    """One of gpu_check.sh's functions, run by sourcing the script (which then runs nothing else)."""
    res = subprocess.run(["bash", "-c", f'source bench/gpu_check.sh && {fn} "$@"', "_", *args],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    return res.returncode, res.stdout


def test_gpu_check_keeps_the_table_rows_whatever_the_device_is_called(tmp_path):
    from report import phase_lines
    table = ["| device | path | B | rule | batch | tok/s | TPF |", "|---|---|---|---|---|---|---|",
             "| H100 80GB HBM3 | AR | - | - | 1 | 900 | 1.00 |",
             "| H100 80GB HBM3 | compiled | 4 | dynamic | 64 | 9,000 | 2.10 |"]
    (tmp_path / "decode.md").write_text("\n".join(["# bench_decode: RANDOM WEIGHTS", "model 1.2M params", ""]
                                                  + table + ["", "(40s)"]) + "\n")
    assert _gpu_check("decode_rows", str(tmp_path / "decode.md")) == (0, "\n".join(table) + "\n")
    main = ["| checkpoint | B=4 dynamic | B=8 dynamic |", "|---|---|---|", "| sft4 | 50.0 / 1.10 | 40.0 / 1.30 |",
            "| tstar8 | 60.0 / 1.40 | 55.0 / 2.00 |"]
    phases = phase_lines([("ar (pre-training)", 10.0), ("sft4 (SFT)", 5.0), ("compile", 30.0),
                          ("tstar8 rollout", 8.0), ("evaluation: greedy table", 2.0)])
    other = ["| checkpoint | decode B | left-to-right |", "|---|---|---|", "| sft4 | 4 | 0.59 |"]
    (tmp_path / "results.md").write_text("\n".join(["# T* results", "", "60 test problems.", ""] + main
                                                   + ["", "Ŝ:", ""] + other
                                                   + ["", "Where the time went:", ""] + phases) + "\n")
    rc, out = _gpu_check("ladder_rows", str(tmp_path / "results.md"))
    assert (rc, out.splitlines()) == (0, main + [""] + phases) and "| compile | 30.0 |" in out
    (tmp_path / "results.md").write_text("# T* results\n\nno table\n")
    assert _gpu_check("ladder_rows", str(tmp_path / "results.md"))[0] != 0  # so gpu_check shows the log instead


def test_gpu_check_names_how_a_part_failed():
    assert _gpu_check("part_result", "0", "12", "900", "V", "3 passed")[1] == "ok, 12 s: 3 passed\n"
    assert _gpu_check("part_result", "2", "4", "900", "V")[1] == "FAILED (rc 2) after 4 s\n"
    assert _gpu_check("part_result", "124", "900", "900", "GPU_CHECK_TESTS_S")[1] == \
        "FAILED: timed out after 900 s (raise GPU_CHECK_TESTS_S)\n"
    assert _gpu_check("part_result", "137", "3", "900", "V")[1] == "FAILED (rc 137) after 3 s\n"  # killed early


def test_no_tf32_skips_when_the_environment_forces_tf32(monkeypatch, request):
    """TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 would turn TF32 on under the CUDA twins: their fixture skips, saying why."""
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    with pytest.raises(pytest.skip.Exception, match="TORCH_ALLOW_TF32_CUBLAS_OVERRIDE is set"):
        request.getfixturevalue("no_tf32")
