"""The RL options kept beside the default path: the commit distance, the frozen-reference KL,
the sampling temperature, the direct baseline's row budget, and the stops and checks that go
with them. (The round-3 research options and their tests were removed in issue 28.)"""
import argparse
import copy
from types import SimpleNamespace
import json
import subprocess
import sys

import pytest
import torch

import tracerl
from model import GPT, GPTConfig
from sample import generate, near_frontier
from tracerl import run_tracerl, with_reference
from train import finite, run_ar, window_for
from test_tracerl import rl_args
from test_curriculum import ROOT, one_error_line


# ----------------------------------------------------------------------------- the commit distance

def test_near_frontier_by_hand():
    masked = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert near_frontier(masked, 2).int().tolist() == [[0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0] * 6]
    assert near_frontier(masked, 4).int().tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 0, 1, 0, 0], [0] * 6]
    assert torch.equal(near_frontier(masked, 0), masked)  # 0: anywhere in the block
    # a committed token inside the window is skipped, not counted out of it; an all-masked row
    m = torch.tensor([[0, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert near_frontier(m, 3).int().tolist() == [[0, 1, 0, 1, 0, 0], [1, 1, 1, 0, 0, 0]]


def test_generate_at_distance_1_commits_left_to_right(tiny_model, prompts):
    """D = 1 leaves one candidate, the leftmost mask: one token per forward, in position
    order, whatever the rule would commit otherwise; without a distance the same static
    rule commits B / steps = 4 at once."""
    near = generate(tiny_model, prompts, 8, "static", steps=2, distance=1)
    for fwd in near["fwd"]:
        dec = fwd[fwd >= 0]
        assert len(set(dec.tolist())) == len(dec)  # one token per forward
        assert (dec[1:] > dec[:-1]).all()  # and in position order
    wide = generate(tiny_model, prompts, 8, "static", steps=2)
    assert min(torch.unique(f[f >= 0], return_counts=True)[1].max() for f in wide["fwd"]) == 4


# ----------------------------------------------------------------------------- the reference KL

def test_reference_penalty_value_and_gradient():
    """The loss plus beta * sum(w * k3) against the reference; without one, the loss unchanged."""
    assert with_reference(torch.tensor(1.5), None, SimpleNamespace(ref=None), None, None, 0.1)[0].item() == 1.5
    ref = torch.tensor([-0.5, -1.0, -2.0])
    delta = torch.tensor([0.3, -0.2, 0.0])
    w = torch.tensor([0.2, 0.3, 0.5])
    new = (ref + delta).requires_grad_()
    rows = SimpleNamespace(ref=ref)
    loss, kl = with_reference(torch.tensor(1.5), new, rows, torch.arange(3), w, 0.1)
    k3 = torch.exp(-delta) - 1 + delta
    assert loss.item() == pytest.approx(1.5 + 0.1 * (w * k3).sum().item(), rel=1e-6)
    assert kl.item() == pytest.approx(k3.mean().item(), rel=1e-6)
    loss.backward()
    assert torch.allclose(new.grad, 0.1 * w * (1 - torch.exp(-delta)))


def test_reference_kl_starts_at_zero_and_grows_after_a_step(monkeypatch, tiny_model, level1_rows):
    """--ref-kl-beta: the reference is the stage's starting weights, so the first update is
    on-policy (clip 0, KL to π_old 0) with a zero reference term; once the weights have moved
    the reference term is non-zero, and the frozen copy itself never changes."""
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    m = copy.deepcopy(tiny_model)
    start = [p.detach().clone() for p in m.parameters()]
    seen = []
    real = tracerl.rl_step
    monkeypatch.setattr(tracerl, "rl_step", lambda *args: seen.append(args[-1]) or real(*args))
    a = rl_args(n_prompts=3, k=4, lr=1e-2, steps=3, ref_kl_beta=0.1)
    hist = run_tracerl(m, level1_rows, a, name="t")
    assert hist[0]["clip"] == 0.0 and abs(hist[0]["kl"]) < 1e-9 and abs(hist[0]["ref_kl"]) < 1e-9
    assert max(h["ref_kl"] for h in hist[1:]) > 1e-6
    ref = seen[0]
    assert ref is not None and all(r is ref for r in seen)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), start))
    assert not any(p.requires_grad for p in ref.parameters())
    # off by default: no reference is made at all
    seen.clear()
    run_tracerl(copy.deepcopy(tiny_model), level1_rows, rl_args(n_prompts=3, k=4, steps=1), name="t")
    assert seen == [None]


# ----------------------------------------------------------------------------- stops and checks

def test_a_blown_up_update_stops_rl_and_sft_in_one_line(monkeypatch, level1_rows):
    """lr 1e8 (as a user tried): step 1 is finite, its update leaves finite but huge weights,
    and step 2's rollout meets non-finite logits. It stops there with the step and the flag
    named; an update that overflows the weights themselves stops at once."""
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=40, prompt_len=8)
    m = GPT(cfg)  # float32, as trained
    with pytest.raises(FloatingPointError, match=r"^t step 2: the model's logits are not finite; .*lower --lr "
                                                 r"\(now 1e\+08\)$"):
        run_tracerl(m, level1_rows, rl_args(n_prompts=3, k=4, lr=1e8, steps=3), name="t")
    # an update that makes the weights themselves nan (here: nan gradients behind a finite
    # norm) stops right after its optimiser step, in RL and in the supervised loop
    def nan_grads(params, max_norm):
        for p in params:
            p.grad.fill_(float("nan"))
        return torch.tensor(1.0)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_grads)
    with pytest.raises(FloatingPointError, match=r"^t step 1: the weights are no longer finite"):
        run_tracerl(GPT(cfg), level1_rows, rl_args(n_prompts=3, k=4, steps=3), name="t")
    with pytest.raises(FloatingPointError, match=r"^ar step 1: the weights are no longer finite.*--ar-lr"):
        run_ar(cfg, {}, level1_rows * 8, level1_rows, 3, 1e-3, 8, "cpu")
    monkeypatch.undo()
    assert finite(GPT(cfg))


def test_cli_huge_lr_fails_in_one_line(tmp_path):
    """As a user would: a learning rate that blows the weights up ends in one line, not a
    traceback from deep inside the sampler."""
    p = subprocess.run([sys.executable, "train.py", "--stage", "ar", "--out", str(tmp_path), "--n-layer", "1",
                        "--n-embd", "32", "--n-head", "2", "--max-seq-len", "32", "--prompt-len", "8",
                        "--level", "1", "--n-train", "64", "--n-test", "8", "--ar-steps", "3",
                        "--batch-size", "8", "--ar-lr", "1e8", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = one_error_line(p)
    assert line.startswith("error: ar step ") and "--ar-lr (now 1e+08)" in line
    assert not (tmp_path / "ar.pt").exists()


def test_mask_window_follows_the_first_stage():
    assert window_for(4, None) == 3 and window_for(8, None) == 7
    assert window_for(8, -1) == -1 and window_for(8, 9) == 9  # off, or wider: the base is unchanged
    with pytest.raises(ValueError, match="--mask-window 3 would hide masks"):
        window_for(8, 3)


def test_cli_mask_window_below_the_first_block_fails_in_one_line(tmp_path):
    from test_curriculum import curriculum
    line = one_error_line(curriculum("--stages", "8,16", "--mask-window", "3", "--out", str(tmp_path / "w")))
    assert "--mask-window 3" in line
    assert not (tmp_path / "w").exists()


def test_curriculum_runs_with_every_option(tmp_path):
    """The kept options as a user turns them on: the reference term and the value loss are
    logged, every evaluation decodes at the commit distance, and the run finishes with its
    table. (The value model trains on every response of a group in the band, so T* builds
    rows even where this barely trained model gets every answer wrong.)"""
    from test_curriculum import TINY, _rows, curriculum
    p = curriculum(*TINY, "--ref-kl-beta", "0.05", "--value-model", "--temperature", "1.3", "--commit-distance", "3",
                   "--direct-budget", "rows", "--sweep-thresholds", "", "--out", str(tmp_path / "opt"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert {r["distance"] for r in _rows(str(tmp_path / "opt"))[0].values()} == {3}
    assert all("| vloss " in line and "| ref-kl " in line for line in p.stdout.splitlines()
               if line.startswith("tstar8 step"))
    assert (tmp_path / "opt" / "results.md").exists()
    # --direct-budget rows: direct stops at the first step where its trace rows reach T*'s
    hist = lambda n: json.load(open(tmp_path / "opt" / f"{n}.pt.json"))["rl_history"]
    budget = sum(h["rows"] for n in ("tstar4", "tstar8") for h in hist(n))
    rows = [h["rows"] for h in hist("direct8")]
    assert budget > 0 and sum(rows) >= budget > sum(rows[:-1])
    assert f"direct8: {sum(rows)} trace rows >= the budget of {budget}; stage done" in p.stdout


def test_temperature_flag_takes_positive_numbers_only(tmp_path):
    """--temperature 0 would be greedy (no variance in a group) and divides the tempered
    log-probs by zero: argparse refuses it, before any run folder exists."""
    from tracerl import positive_temperature
    assert positive_temperature("1.2") == 1.2
    for bad in ("0", "-1", "warm", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_temperature(bad)
    p = subprocess.run([sys.executable, "curriculum.py", "--temperature", "0", "--out", str(tmp_path / "t")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].endswith("--temperature must be > 0, got '0'")
    assert not (tmp_path / "t").exists()

