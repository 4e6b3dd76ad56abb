"""The RL options of the effect research (ours): the rollout spreads of commit distances and
of θ, the speed term, the z(reward) + z(TPF) advantage, the frozen-reference KL, and the stops
and checks that go with them."""
import argparse
import copy
import json
import subprocess
import sys

import pytest
import torch

import rollouts
import tracerl
from curriculum import grown_spread
from model import GPT, GPTConfig
from sample import generate, near_frontier
from rollouts import advantages, group_advantages, parse_spread, parse_thresholds, per_sample, sample_distances
from tracerl import reference_penalty, rl_step, run_tracerl
from train import finite, run_ar, window_for
from test_tracerl import rl_args
from test_curriculum import ROOT, one_error_line


# ----------------------------------------------------------------------------- the spread

def test_sample_distances_cycle_over_each_group():
    assert sample_distances(2, 4, 0, [4, 8, 0]).tolist() == [4, 8, 0, 4, 4, 8, 0, 4]
    assert sample_distances(2, 3, 6).tolist() == [6] * 6  # no spread: every sample at --commit-distance
    assert parse_spread("4, 4,8,0") == [4, 4, 8, 0] and parse_spread("") is None
    for bad in ("4,x", "-1,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_spread(bad)


def test_grown_spread_grows_with_the_stage():
    assert grown_spread(4, 4, 8) is None  # the first block: every sample anywhere
    assert grown_spread(4, 8, 8) == [4, 5, 5, 6, 6, 7, 7, 0]
    assert grown_spread(4, 16, 8) == [4, 6, 7, 9, 11, 13, 14, 0]
    assert grown_spread(4, 16, 2) == [4, 0]


def test_near_frontier_per_row_distances():
    masked = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    got = near_frontier(masked, torch.tensor([2, 0, 3]))
    assert got.int().tolist() == [[0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    assert torch.equal(near_frontier(masked, 2)[0], got[0])  # an int is the same rule for every row


def test_generate_honours_each_rows_distance(tiny_model, prompts):
    """A batch decoding with per-row distances gives, row by row, what that row gives alone
    with its distance as an int; D = 1 commits one token per forward, left to right."""
    d = torch.tensor([1, 0, 3, 1, 0, 3, 2, 0])[:len(prompts)]
    both = generate(tiny_model, prompts, 8, "static", steps=2, distance=d)
    for i in range(len(prompts)):
        alone = generate(tiny_model, prompts[i:i + 1], 8, "static", steps=2, distance=int(d[i]))
        for key in ("tokens", "fwd", "logp", "nfe"):
            assert torch.equal(both[key][i], alone[key][0]), (i, key)
    for i in (d == 1).nonzero().squeeze(1).tolist():
        fwd = both["fwd"][i]
        dec = fwd[fwd >= 0]
        assert len(set(dec.tolist())) == len(dec)  # one token per forward
        assert (dec[1:] > dec[:-1]).all()  # and in position order
    wide = both["fwd"][(d == 0).nonzero().squeeze(1)]
    counts = [torch.unique(f[f >= 0], return_counts=True)[1].max() for f in wide]
    assert min(counts) == 4  # the unlimited rows commit B / steps = 4 at once


def test_rollout_assigns_the_spread_and_stays_on_policy(monkeypatch, tiny_model, level1_rows):
    monkeypatch.setattr(rollouts, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    m = copy.deepcopy(tiny_model)
    ro = rollouts.rollout(m, level1_rows, 3, 4, 8, 0.9, torch.Generator().manual_seed(0), spread=[1, 0])
    assert ro["distance"].tolist() == [1, 0, 1, 0] * 3
    for i in range(0, 12, 2):  # every D = 1 sample committed one token per forward
        f = ro["fwd"][i][ro["fwd"][i] >= 0]
        assert len(set(f.tolist())) == len(f)
    # the first update on spread rollouts is on-policy: the recorded log-probs are π_old
    a = rl_args(n_prompts=3, k=4, lr=1e-3, reach_spread=[1, 0, 3, 0])
    log = rl_step(m, torch.optim.AdamW(m.parameters(), lr=a.lr), level1_rows, a, torch.Generator().manual_seed(0))
    assert log["rows"] > 0 and log["clip"] == 0.0 and abs(log["kl"]) < 1e-9


# ----------------------------------------------------------------------------- the θ spread

def test_threshold_spread_parses_and_cycles_independently_of_the_distances():
    assert parse_thresholds("0.7, 0.9,1") == [0.7, 0.9, 1.0] and parse_thresholds("") is None
    for bad in ("0.7,x", "0,0.9", "1.2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_thresholds(bad)
    theta = per_sample(2, 4, 0.9, [0.5, 1.0], torch.float32)
    assert theta.tolist() == [0.5, 1.0] * 4 and theta.dtype == torch.float32
    assert per_sample(1, 3, 0.9, None, torch.float32).tolist() == pytest.approx([0.9] * 3)


def test_generate_honours_each_rows_threshold(tiny_model, prompts):
    """A batch decoding with per-row θ gives, row by row, what that row gives alone with its
    θ as a float; θ = 1 commits one token per forward, θ = 0.001 more than one somewhere."""
    theta = torch.tensor([1.0, 1e-3, 0.5, 1.0, 1e-3, 0.5, 0.9, 1e-3])[:len(prompts)]
    both = generate(tiny_model, prompts, 8, "dynamic", theta)
    for i in range(len(prompts)):
        alone = generate(tiny_model, prompts[i:i + 1], 8, "dynamic", float(theta[i]))
        for key in ("tokens", "fwd", "logp", "nfe"):
            assert torch.equal(both[key][i], alone[key][0]), (i, key)
    for i in (theta == 1.0).nonzero().squeeze(1).tolist():
        fwd = both["fwd"][i][both["fwd"][i] >= 0]
        assert len(set(fwd.tolist())) == len(fwd)  # one token per forward
    low = [both["fwd"][i] for i in (theta == 1e-3).nonzero().squeeze(1).tolist()]
    assert max(torch.unique(f[f >= 0], return_counts=True)[1].max() for f in low) > 1


def test_rollout_assigns_the_threshold_spread_and_stays_on_policy(monkeypatch, tiny_model, level1_rows):
    monkeypatch.setattr(rollouts, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    m = copy.deepcopy(tiny_model)
    ro = rollouts.rollout(m, level1_rows, 3, 4, 8, 0.9, torch.Generator().manual_seed(0),
                          threshold_spread=[1.0, 1e-3])
    assert ro["threshold"].tolist() == pytest.approx([1.0, 1e-3] * 6)
    for i in range(0, 12, 2):  # every θ = 1 sample committed one token per forward
        f = ro["fwd"][i][ro["fwd"][i] >= 0]
        assert len(set(f.tolist())) == len(f)
    per_forward = [torch.unique(f[f >= 0], return_counts=True)[1].max() for f in ro["fwd"][1::2]]
    assert max(per_forward) > 1  # and the θ = 0.001 ones, several somewhere
    a = rl_args(n_prompts=3, k=4, lr=1e-3, threshold_spread=[1.0, 0.3, 0.9, 0.6], reach_spread=[2, 0])
    log = rl_step(m, torch.optim.AdamW(m.parameters(), lr=a.lr), level1_rows, a, torch.Generator().manual_seed(0))
    assert log["rows"] > 0 and log["clip"] == 0.0 and abs(log["kl"]) < 1e-9


# ----------------------------------------------------------------------------- the speed term

def test_speed_reward_is_its_formula_on_a_hand_made_rollout(monkeypatch, tiny_model, level1_rows):
    """Three samples with hand-set n_gen / nfe: right ones earn 1 + α·TPF, wrong ones 0."""
    n_gen, nfe = torch.tensor([6, 8, 9]), torch.tensor([3, 2, 9])
    fake = dict(tokens=torch.zeros(3, 4, dtype=torch.long), fwd=torch.zeros(3, 4, dtype=torch.long),
                logp=torch.zeros(3, 4), n_gen=n_gen, nfe=nfe, finished=torch.ones(3, dtype=torch.bool))
    monkeypatch.setattr(rollouts, "generate", lambda *a, **kw: fake)
    right = iter([True, False, True])
    monkeypatch.setattr(rollouts, "is_correct", lambda *a: next(right))
    ro = rollouts.rollout(tiny_model, level1_rows, 1, 3, 8, 0.9, torch.Generator().manual_seed(0),
                          speed_alpha=0.25)
    assert ro["reward"].tolist() == [[1 + 0.25 * 2.0, 0.0, 1 + 0.25 * 1.0]]
    assert ro["correct"].tolist() == [[1.0, 0.0, 1.0]]


def test_speed_term_keeps_all_right_groups_and_bands_on_correctness():
    reward = torch.tensor([[1.5, 1.25, 1.5, 1.75], [1.5, 1.5, 1.5, 1.5], [1.5, 0, 0, 0]])
    correct = (reward > 0).float()
    adv, kept = group_advantages(reward, (0.0, 1.0), correct)
    assert kept.tolist() == [True, False, True]  # all right but faster/slower: signal; all equal: none
    assert adv[0].argmax() == 3 and adv[0].argmin() == 1  # the fastest right answer is pushed up most
    # the band reads the share right (1.0 here), not the mean reward (1.5)
    assert group_advantages(reward, (0.0, 0.8), correct)[1].tolist() == [False, False, True]


def test_tpf_advantage_is_its_formula_on_hand_made_groups():
    """z(reward) + z(TPF) inside each group: an all-right group that differs in speed is kept
    with the TPF term alone, a mixed group gets both terms, an all-wrong group is dropped
    however its speed varies, and a TPF range under 0.01 adds nothing."""
    reward = torch.tensor([[1., 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    tpf = torch.tensor([[2., 3, 4, 5], [2, 4, 2, 2], [1, 2, 3, 4], [3, 3, 3, 3.005], [2, 2, 2, 2]])
    adv, kept = group_advantages(reward, (0.0, 1.0), reward, tpf)
    assert kept.tolist() == [True, True, False, False, True]
    z = lambda x: (x - x.mean()) / x.std(unbiased=False)
    assert torch.allclose(adv[0], z(tpf[0]))
    assert torch.allclose(adv[1], z(reward[1]) + z(tpf[1]))
    assert torch.allclose(adv[4], z(reward[4]))  # equal speeds: the correctness term alone
    assert (adv[2] == 0).all() and (adv[3] == 0).all()
    assert group_advantages(reward, (0.0, 0.9), reward, tpf)[1].tolist() == [False, True, False, False, True]


def test_tpf_advantage_learns_from_all_right_groups_on_policy(monkeypatch, tiny_model, level1_rows):
    """With every answer right the plain group advantage keeps no group (no rows, no update);
    --tpf-advantage keeps those whose speeds differ, and its first update is on-policy."""
    monkeypatch.setattr(rollouts, "is_correct", lambda *args: True)
    a = rl_args(n_prompts=3, k=4, lr=1e-3)
    m = copy.deepcopy(tiny_model)
    ro = rollouts.rollout(m, level1_rows, 3, 4, 8, 0.5, torch.Generator().manual_seed(0))
    assert advantages(ro, a)[1].sum() == 0
    a.tpf_advantage = True
    assert advantages(ro, a)[1].sum() > 0
    for tpf_advantage, has_rows in ((False, False), (True, True)):
        a = rl_args(n_prompts=3, k=4, lr=1e-3, threshold=0.5, tpf_advantage=tpf_advantage)
        m = copy.deepcopy(tiny_model)
        log = rl_step(m, torch.optim.AdamW(m.parameters(), lr=a.lr), level1_rows, a,
                      torch.Generator().manual_seed(0))
        assert (log["rows"] > 0) == has_rows and log["reward"] == 1.0
        assert log["clip"] == 0.0 and abs(log["kl"]) < 1e-9
        assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), tiny_model.parameters())) == has_rows


def test_cli_refuses_tpf_advantage_with_a_value_model_and_a_bad_theta_spread(tmp_path):
    from test_curriculum import curriculum
    line = one_error_line(curriculum("--tpf-advantage", "--value-model", "--out", str(tmp_path / "v")))
    assert "--tpf-advantage" in line and "--value-model" in line
    p = curriculum("--threshold-spread", "0.9,1.5", "--out", str(tmp_path / "s"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].endswith("--threshold-spread values must be in (0, 1], got '0.9,1.5'")
    assert not (tmp_path / "v").exists() and not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- the reference KL

def test_reference_penalty_value_and_gradient():
    ref = torch.tensor([-0.5, -1.0, -2.0])
    delta = torch.tensor([0.3, -0.2, 0.0])
    w = torch.tensor([0.2, 0.3, 0.5])
    new = (ref + delta).requires_grad_()
    loss, kl = reference_penalty(new, ref, w, 0.1)
    k3 = torch.exp(-delta) - 1 + delta
    assert loss.item() == pytest.approx(0.1 * (w * k3).sum().item(), rel=1e-6)
    assert kl.item() == pytest.approx(k3.mean().item(), rel=1e-6)
    loss.backward()
    assert torch.allclose(new.grad, 0.1 * w * (1 - torch.exp(-delta)))


def test_reference_kl_starts_at_zero_and_grows_after_a_step(monkeypatch, tiny_model, level1_rows):
    """--ref-kl: the reference is the stage's starting weights, so the first update is
    on-policy (clip 0, KL to π_old 0) with a zero reference term; once the weights have moved
    the reference term is non-zero, and the frozen copy itself never changes."""
    monkeypatch.setattr(rollouts, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    m = copy.deepcopy(tiny_model)
    start = [p.detach().clone() for p in m.parameters()]
    seen = []
    real = tracerl.rl_step
    monkeypatch.setattr(tracerl, "rl_step", lambda *args: seen.append(args[-1]) or real(*args))
    a = rl_args(n_prompts=3, k=4, lr=1e-2, steps=3, ref_kl=0.1)
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
    monkeypatch.setattr(rollouts, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
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
    """The options as a user turns them on: each stage prints its grown spread, the
    reference term is logged, and the run finishes with its table."""
    from test_curriculum import TINY, curriculum
    p = curriculum(*TINY, "--grow-spread", "--ref-kl", "0.05", "--ref-to", "base", "--speed-alpha", "0.1",
                   "--temperature", "1.3", "--threshold-spread", "0.8,1", "--tpf-advantage",
                   "--direct-budget", "rows", "--sweep-thresholds", "", "--out", str(tmp_path / "opt"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tstar8: rollout commit distances per group [4, 0] (0 = anywhere)" in p.stdout
    assert "direct8: rollout commit distances per group [4, 0] (0 = anywhere)" in p.stdout
    assert "tstar4: rollout commit distances" not in p.stdout  # the first block: anywhere, no spread
    assert all("| ref-kl " in line for line in p.stdout.splitlines() if line.startswith("tstar8 step"))
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
    from rollouts import positive_temperature
    assert positive_temperature("1.2") == 1.2
    for bad in ("0", "-1", "warm", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_temperature(bad)
    p = subprocess.run([sys.executable, "curriculum.py", "--temperature", "0", "--out", str(tmp_path / "t")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].endswith("--temperature must be > 0, got '0'")
    assert not (tmp_path / "t").exists()

