"""Ŝ: derived schedules cover the block, replay reproduces traces, and `--show` prints."""
import os
import subprocess
import sys

import torch

from model import save_checkpoint
from sample import generate
from data.task import encode_answers
from schedule import derive_schedule, error_table, root_errors, schedule_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_derived_schedule_covers_every_position_once(tiny_model, prompts):
    for B in (4, 8, 16):
        out = generate(tiny_model, prompts, B, "dynamic", 0.3, temperature=1.0,
                       generator=torch.Generator().manual_seed(0))
        S = derive_schedule(out["fwd"], B)
        flat = sorted(p for group in S for p in group)
        assert flat == list(range(B)) and all(S)


def test_replaying_a_deterministic_trace_reproduces_it(tiny_model, prompts):
    """Greedy decoding under a fixed out-of-order schedule; Ŝ derived from that trace is the
    same schedule, and replaying it gives the same tokens and the same step map."""
    S = [[5, 2], [0, 7, 3], [1], [4, 6]]
    first = generate(tiny_model, prompts, 8, "schedule", schedule=S)
    assert derive_schedule(first["fwd"], 8) == [sorted(g) for g in S]
    again = generate(tiny_model, prompts, 8, "schedule", schedule=derive_schedule(first["fwd"], 8))
    assert torch.equal(first["tokens"], again["tokens"]) and torch.equal(first["fwd"], again["fwd"])
    # and the schedule really was followed: position 5 committed before position 0
    full = (first["fwd"][:, :8] >= 0).all(1)
    assert (first["fwd"][full, 5] < first["fwd"][full, 0]).all()


def test_left_to_right_schedule_equals_ltr_rule(tiny_model, prompts):
    S = [[p] for p in range(8)]
    a = generate(tiny_model, prompts, 8, "schedule", schedule=S)
    b = generate(tiny_model, prompts, 8, "ltr")
    for k in ("tokens", "fwd", "nfe", "n_gen"):
        assert torch.equal(a[k], b[k]), k
    assert schedule_stats(a["fwd"], 8)["left_to_right"] == 1.0


def test_show_prints_every_block(tmp_path, tiny_model):
    ckpt = str(tmp_path / "tiny.pt")
    save_checkpoint(ckpt, tiny_model.float(), {"task": {"level": 1, "n_train": 0, "n_test": 8, "seed": 0}})
    tiny_model.double()
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", ckpt, "--block-size", "8", "--show",
                        "--prompt", "3+4", "--rule", "ltr"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("forward")]
    n_blocks = tiny_model.cfg.answer_len // 8
    # ltr: one forward per committed token; the last line shows every block boundary
    assert len(lines) >= 1 and lines[-1].count("|") == n_blocks - 1
    assert all("[" in l for l in lines)  # each forward highlights what it committed (no tty)


def test_root_error_is_the_earliest_wrong_commit_and_its_distance_from_the_frontier():
    """A hand-made B=8 trace of the answer '12+3=15 #### 15': forward 0 commits positions
    0, 1 and (wrongly) 5; forward 1 commits 2-4 with a wrong 3; forward 2 the rest. The root
    error is position 5 (committed first), 5 places right of the leftmost mask before that
    forward: position 0, still masked until that same forward committed it."""
    problems = [{"question": "12+3", "answer": "12+3=15 #### 15"}, {"question": "1+1", "answer": "1+1=2 #### 2"}]
    A, B = 24, 8
    ref, lens = encode_answers([p["answer"] for p in problems], A)
    tokens = ref.clone()
    tokens[0, 5] = ord("7") if ref[0, 5] != ord("7") else ord("8")  # wrong, committed at forward 0
    tokens[0, 3] = ord("-")                                          # wrong, committed later
    fwd = torch.full((2, A), 2)
    fwd[0, [0, 1, 5]] = 0
    fwd[0, 2:5] = 1
    logp = torch.zeros(2, A)
    logp[0, 5] = torch.tensor(0.97).log()
    out = dict(tokens=tokens, fwd=fwd, logp=logp, n_gen=lens)
    found = root_errors(out, problems, [False, True], B)
    assert len(found) == 1  # the right answer is skipped
    (d, p), = found
    assert d == 5 and abs(p - 0.97) < 1e-6
    # committed at the frontier: the same error at forward 0 at position 0 has distance 0
    fwd[0, 5], fwd[0, 0] = 1, 0
    tokens[0, 3] = ref[0, 3]
    tokens[0, 0] = ord("9")
    assert root_errors(out, problems, [False, True], B)[0][0] == 0
    assert error_table([(0, 0.5), (5, 0.995), (9, 0.999)]) == ["3", "1", "0", "1", "1", "0.995", "67 %"]
