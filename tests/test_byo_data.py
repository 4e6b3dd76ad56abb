"""Bring your own data: a hand-written GSM8K-style JSONL through train.py, eval_math.py,
tracerl.py and curriculum.py (subprocesses, a few steps), and the one-line errors when a
question or an answer does not fit the model's areas.

    python -m pytest -q tests/test_byo_data.py
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3+4=7 #### 7"),
    ("A box holds 6 pens. How many pens are in 3 boxes?", "6*3=18 #### 18"),
    ("Sara had 12 stickers and gave away 5. How many are left?", "12-5=7 #### 7"),
    ("Each bag has 4 balls. Ann has 5 bags. How many balls?", "4*5=20 #### 20"),
    ("Ben read 9 pages on Monday and 8 on Tuesday. How many pages?", "9+8=17 #### 17"),
    ("There are 15 birds and 6 fly away. How many birds stay?", "15-6=9 #### 9"),
]
TEST = [
    ("Mia has 5 cats and gets 2 more. How many cats now?", "5+2=7 #### 7"),
    ("A pack has 3 cups. How many cups in 4 packs?", "3*4=12 #### 12"),
    ("Leo had 10 coins and spent 4. How many coins are left?", "10-4=6 #### 6"),
]
# every question above fits 72 bytes with its newline; every answer + eos fits 24
MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--prompt-len", "72", "--max-seq-len", "96",
         "--device", "cpu"]


def write(path, rows):
    with open(path, "w") as f:
        for q, a in rows:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    return str(path)


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def one_error_line(p):
    assert p.returncode != 0, p.stdout[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("byo")
    return ["--train-jsonl", write(d / "train.jsonl", TRAIN), "--test-jsonl", write(d / "test.jsonl", TEST)], d


@pytest.fixture(scope="module")
def trained(files):
    data, d = files
    out = d / "run"
    p = run("train.py", *data, *MODEL, "--ar-steps", "3", "--sft-steps", "3", "--batch-size", "4",
            "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


def test_train_on_own_jsonl(trained):
    out, p = trained
    assert (out / "ar.pt").exists() and (out / "sft4.pt").exists()
    with open(out / "sft4.pt.json") as f:
        task = json.load(f)["task"]
    assert task["train_jsonl"].endswith("train.jsonl") and task["test_jsonl"].endswith("test.jsonl")


def test_eval_on_own_jsonl(trained, files):
    out, _ = trained
    data, _ = files
    for extra in ([], ["--test-jsonl", data[3]]):  # the checkpoint's recorded split, or given
        p = run("eval_math.py", "--ckpt", str(out / "sft4.pt"), "--block-size", "4", "--json",
                "--device", "cpu", *extra)
        assert p.returncode == 0, p.stderr[-3000:]
        row = json.loads(p.stdout.strip().splitlines()[-1])
        assert row["n"] == len(TEST) and 0.0 <= row["accuracy"] <= 1.0


def test_tracerl_on_own_jsonl_with_value_model(trained, files):
    out, _ = trained
    data, _ = files
    p = run("tracerl.py", "--ckpt", str(out / "sft4.pt"), "--block-size", "4", "--steps", "1",
            "--n-prompts", "2", "--k", "2", "--value-model", "--train-jsonl", data[1],
            "--device", "cpu", "--out", str(out / "rl4.pt"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "vloss" in p.stdout and (out / "rl4.pt").exists()
    # it records its parent (--ckpt) as a run folder's checkpoints do, so it can join one
    with open(out / "rl4.pt.json") as f:
        assert json.load(f)["parent_sha256"] == hashlib.sha256((out / "sft4.pt").read_bytes()).hexdigest()


def test_too_long_fails_in_one_line_naming_the_flag(files, trained, tmp_path):
    data, _ = files
    small = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--device", "cpu", "--ar-steps", "1",
             "--sft-steps", "1", "--out", str(tmp_path / "x")]
    line = one_error_line(run("train.py", *data, *small, "--prompt-len", "32", "--max-seq-len", "96"))
    assert "--prompt-len" in line and "at least 64" in line
    line = one_error_line(run("train.py", *data, *small, "--prompt-len", "72", "--max-seq-len", "80"))
    assert "--max-seq-len" in line and "at least 87" in line
    assert not (tmp_path / "x").exists()
    # curriculum checks before it makes the run directory
    line = one_error_line(run("curriculum.py", *data, "--stages", "4,8", "--prompt-len", "32",
                              "--max-seq-len", "96", "--out", str(tmp_path / "c")))
    assert "--prompt-len" in line and not (tmp_path / "c").exists()
    # evaluation of a trained checkpoint on a file with a longer question: the areas are fixed
    long_q = write(tmp_path / "long.jsonl", [("What is " + "1+" * 40 + "1?", "#### 41")])
    out, _ = trained
    line = one_error_line(run("eval_math.py", "--ckpt", str(out / "sft4.pt"), "--test-jsonl", long_q,
                              "--device", "cpu"))
    assert "--prompt-len" in line and "pre-train again" in line
