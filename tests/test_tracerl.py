"""TraceRL maths against hand-worked values and rl_step's on-policy invariants (that it learns:
test_tracerl_learning.py)."""
import argparse
import copy
import math

import pytest
import torch

import tracerl
from sample import commit_order
from tracerl import (RLConfig, add_rl_args, group_advantages, k3, policy_loss, rl_step, round_index, row_logprobs,
                     run_tracerl, trace_rows)

BIG = 10 ** 6  # round_index' rank of a never-decoded position


def _bits(s):
    return [c == "1" for c in s.replace(" ", "")]


# ----------------------------------------------------------------------------- trace -> rows

# block size 4: block 0 commits pos 0 at forward 0, pos 2,3 at forward 1, pos 1 at forward 2;
# block 1 commits pos 4,5 at forward 3, pos 7 at forward 4, pos 6 at forward 5; block 2 never decoded
FWD = torch.tensor([0, 2, 1, 1, 3, 3, 5, 4, -1, -1, -1, -1])


def test_round_index_by_hand():
    assert round_index(FWD, 4).tolist() == [0, 2, 1, 1, 0, 0, 2, 1, BIG, BIG, BIG, BIG]
    # shrinkage 2 merges ranks {0,1} -> 0 and {2} -> 1 inside each block
    assert round_index(FWD, 4, shrink=2).tolist() == [0, 1, 0, 0, 0, 0, 1, 0, BIG, BIG, BIG, BIG]
    # forward indices need not be contiguous; ranks are taken inside each block
    assert round_index(torch.tensor([7, 3, 3, 9, 20, 11]), 3).tolist() == [1, 0, 0, 0, 2, 1]
    # a block cut short by eos (trailing -1) and shrink 3 over 8 one-token steps
    assert round_index(torch.tensor([4, 5, -1, -1]), 4).tolist() == [0, 1, BIG, BIG]
    assert round_index(torch.arange(8), 8, shrink=3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_commit_order_matches_a_per_block_reference():
    """sample.commit_order (any leading shape, A not a multiple of B) against
    the plain definition: the index of a position's forward among its block's sorted
    distinct forwards."""
    g = torch.Generator().manual_seed(0)
    fwd = torch.randint(-1, 6, (5, 11), generator=g)
    for B in (1, 3, 4, 11):
        got = commit_order(fwd, B)
        assert got.shape == fwd.shape
        for n in range(5):
            for s in range(0, 11, B):
                blk = fwd[n, s:s + B]
                dec = blk >= 0
                want = torch.full_like(blk, -1)
                want[dec] = torch.searchsorted(torch.unique(blk[dec]), blk[dec])
                assert torch.equal(got[n, s:s + B], want), (B, n, s)
    assert torch.equal(commit_order(FWD, 4), round_index(FWD, 4).masked_fill(FWD < 0, -1))


def test_trace_rows_by_hand():
    rows = trace_rows(FWD, 4)
    want = [  # (noisy mask, targets) per round, blocks separated by spaces
        ("1111 1111 1111", "1000 1100 0000"),
        ("0111 0011 1111", "0011 0001 0000"),
        ("0100 0010 1111", "0100 0010 0000"),
    ]
    assert len(rows) == 3
    for (noisy, tgt), (wn, wt) in zip(rows, want):
        assert noisy.tolist() == _bits(wn) and tgt.tolist() == _bits(wt)


def test_trace_rows_shrink_2_by_hand():
    rows = trace_rows(FWD, 4, shrink=2)
    want = [
        ("1111 1111 1111", "1011 1101 0000"),  # steps 0+1 of block 0, 3+4 of block 1
        ("0100 0010 1111", "0100 0010 0000"),  # forward 2 of block 0, forward 5 of block 1
    ]
    assert len(rows) == 2
    for (noisy, tgt), (wn, wt) in zip(rows, want):
        assert noisy.tolist() == _bits(wn) and tgt.tolist() == _bits(wt)


def test_trace_rows_every_decoded_token_targeted_once_and_empty_trace():
    for shrink in (1, 2, 3):
        rows = trace_rows(FWD, 4, shrink)
        hits = torch.stack([t for _, t in rows]).sum(0)
        assert hits.tolist() == [1] * 8 + [0] * 4
        for noisy, tgt in rows:
            assert not (tgt & ~noisy).any()  # a target is always masked in its own row
    assert trace_rows(torch.full((8,), -1), 4) == []


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_population_std():
    r = torch.tensor([[1., 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    adv, kept = group_advantages(r)
    s3 = 3 ** 0.5  # [1,0,0,0]: mean 1/4, population std sqrt(3)/4
    want = torch.tensor([[s3, -1 / s3, -1 / s3, -1 / s3], [1, -1, 1, -1], [0] * 4, [0] * 4])
    assert torch.allclose(adv, want, atol=1e-6)
    assert kept.tolist() == [True, True, False, False]  # no variance -> no signal
    assert torch.allclose(adv.sum(1), torch.zeros(4), atol=1e-6)


def test_group_advantages_band_filter():
    r = torch.zeros(4, 8)
    r[0, :1] = 1  # 1/8 = 0.125 < 0.2: dropped
    r[1, :2] = 1  # 0.25: kept
    r[2, :6] = 1  # 0.75: kept
    r[3, :7] = 1  # 0.875 > 0.8: dropped
    adv, kept = group_advantages(r, (0.2, 0.8))
    assert kept.tolist() == [False, True, True, False]
    assert (adv[0] == 0).all() and (adv[3] == 0).all()
    assert torch.allclose(adv[1], group_advantages(r)[0][1])
    # the band is inclusive: 1/5 and 4/5 are kept
    r5 = torch.tensor([[1., 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    assert group_advantages(r5, (0.2, 0.8))[1].tolist() == [True, True]


# ----------------------------------------------------------------------------- policy loss

OLD = torch.tensor([-0.5, -1.0, -2.0, -0.1])
ADV = torch.tensor([1.0, -2.0, 0.5, 1.5])
W = torch.tensor([0.1, 0.2, 0.3, 0.4])


def test_policy_loss_on_policy_is_minus_weighted_advantage():
    new = OLD.clone().requires_grad_()
    loss, clip, kl = policy_loss(new, OLD, ADV, W)
    assert loss.item() == -(W * ADV).sum().item()  # exactly: rho = 1, k3 = 0
    assert loss.item() == pytest.approx(-0.45)  # -(0.1 - 0.4 + 0.15 + 0.6)
    assert clip.item() == 0.0 and kl.item() == 0.0
    loss.backward()
    assert torch.allclose(new.grad, -W * ADV)  # the k3 gradient 1 - exp(-delta) is 0 here


def test_policy_loss_clipping_engages():
    # rho = 1.5 on tokens 0,1 and 0.5 on tokens 2,3; eps = 0.2; beta = 0 isolates PPO-clip
    delta = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    new = (OLD + delta).requires_grad_()
    loss, clip, _ = policy_loss(new, OLD, adv, W, eps=0.2, beta=0.0)
    # token 0: A>0, rho>1+eps -> clipped at 1.2, no gradient
    # token 1: A<0, rho>1+eps -> min picks the unclipped -1.5, gradient flows
    # token 2: A<0, rho<1-eps -> clipped at -0.8, no gradient
    # token 3: A>0, rho<1-eps -> min picks the unclipped 0.5, gradient flows
    pg = torch.tensor([1.2, -1.5, -0.8, 0.5])
    assert loss.item() == pytest.approx(-(W * pg).sum().item(), abs=1e-6)
    # every ratio lies outside [0.8, 1.2], but PPO's min cuts the gradient of tokens 0 and 2
    # only: the clip fraction counts those (what the clip does), not |ρ − 1| > ε
    assert clip.item() == 0.5
    loss.backward()
    rho = delta.exp()
    assert torch.allclose(new.grad, torch.stack([torch.tensor(0.), -W[1] * adv[1] * rho[1],
                                                 torch.tensor(0.), -W[3] * adv[3] * rho[3]]))
    # inside the trust region nothing is clipped; of the two outside (ADV = 0.5, 1.5 > 0) the
    # clip cuts only token 2 (ρ 1.5 > 1.2), not token 3 (ρ 0.5, the min keeps it) -> 1 of 4
    d2 = torch.log(torch.tensor([1.1, 0.9, 1.5, 0.5]))
    assert policy_loss(OLD + d2, OLD, ADV, W)[1].item() == 0.25
    # a zero advantage has no gradient to cut, whatever its ratio
    assert policy_loss(OLD + d2, OLD, torch.zeros(4), W)[1].item() == 0.0


def test_k3_by_hand():
    """tracerl.k3 itself: exp(−δ) − 1 + δ, 0 only at δ = 0 and positive on either side."""
    assert k3(torch.zeros(3, dtype=torch.float64)).tolist() == [0.0, 0.0, 0.0]
    d = torch.tensor([1.0, -1.0, math.log(2)], dtype=torch.float64)
    want = [math.exp(-1), math.e - 2, 0.5 - 1 + math.log(2)]  # e^-1; e - 2; 1/2 - 1 + ln 2
    assert k3(d).tolist() == pytest.approx(want, rel=1e-12)
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert (k3(x[x.abs() > 1e-9]) > 0).all()


def test_policy_loss_k3_term():
    delta = torch.tensor([0.3, -0.2, 0.0, 1.0])
    new = (OLD + delta).requires_grad_()
    beta = 0.05
    loss, _, kl = policy_loss(new, OLD, torch.zeros(4), W, beta=beta)
    # k3 at these δ, by hand: e^-0.3 - 0.7, e^0.2 - 1.2, 0, e^-1
    want = torch.tensor([math.exp(-0.3) - 0.7, math.exp(0.2) - 1.2, 0.0, math.exp(-1)])
    assert k3(delta).tolist() == pytest.approx(want.tolist(), abs=1e-6)
    assert loss.item() == pytest.approx(beta * (W * want).sum().item(), rel=1e-5)
    assert kl.item() == pytest.approx(want.mean().item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(new.grad, beta * W * (1 - torch.exp(-delta)))
    # with the clip engaged and beta > 0 only the k3 gradient is left
    new = (OLD + torch.log(torch.tensor(1.5))).requires_grad_()
    policy_loss(new, OLD, torch.ones(4), W, beta=beta)[0].backward()
    assert torch.allclose(new.grad, beta * W * (1 - 1 / 1.5))


def test_policy_loss_empty():
    e = torch.zeros(0)
    loss, clip, kl = policy_loss(e, e, e, e)
    assert loss.item() == 0.0 and clip.item() == 0.0 and kl.item() == 0.0


# ----------------------------------------------------------------------------- one update

def test_positive_advantage_update_raises_row_logprob(tiny_model, prompts, tiny_cfg):
    """One optimiser step on one row: A > 0 raises the targets' log-prob, A < 0 lowers it."""
    torch.manual_seed(0)
    A = tiny_cfg.answer_len
    clean = torch.randint(0, 256, (1, A))
    fwd = torch.arange(A)  # one token per forward, left to right
    noisy, tgt = trace_rows(fwd, 8)[2]  # round 2: position 2 of every block targeted
    noisy, tgt = noisy[None], tgt[None]
    for sign in (+1.0, -1.0):
        m = copy.deepcopy(tiny_model)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        old = row_logprobs(m, prompts[:1], clean, noisy, tgt, 8).detach()
        assert old.shape == (A // 8,)
        new = row_logprobs(m, prompts[:1], clean, noisy, tgt, 8)
        n = new.numel()
        loss, _, _ = policy_loss(new, old, torch.full((n,), sign), torch.full((n,), 1.0 / n))
        loss.backward()
        opt.step()
        after = row_logprobs(m, prompts[:1], clean, noisy, tgt, 8).detach()
        assert (sign * (after - old) > 0).all(), (old, after)


# ----------------------------------------------------------------------------- rl_step

def rl_args(**kw):
    """The RL settings at the flags' defaults (block size 8, one step), `kw` overriding."""
    ap = argparse.ArgumentParser()
    add_rl_args(ap)
    return RLConfig.from_args(ap.parse_args([]), **{"block_size": 8, "steps": 1, **kw})


@pytest.mark.parametrize("shrink,temperature", [(1, 1.0), (2, 1.0), (1, 1.3), (2, 1.3)])
def test_rl_step_first_update_is_on_policy(monkeypatch, tiny_model, level1_rows, shrink, temperature):
    """π_old matches the training-layout recomputation, so the first (single) update sees
    ρ = 1: no clipping and zero KL. With shrinkage (a merged round masks tokens the sampler
    saw committed) this only holds because π_old is recomputed in the training layout: with
    the recorded log-probs, shrink 2 gave clip 0.012 and KL 0.00126 here. At --temperature
    1.3 the update's log-probs are the tempered policy's, as the sampler's are."""
    # An untrained model never earns the real reward; grade on answer length parity
    # instead so groups have variance and rows get built.
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    m = copy.deepcopy(tiny_model)
    a = rl_args(n_prompts=3, k=4, lr=1e-3, micro_batch=7, shrink=shrink, temperature=temperature)
    # the same rollouts rl_step will draw (same generator seed, same weights)
    ro = tracerl.rollout(m, level1_rows, torch.Generator().manual_seed(0), n_prompts=a.n_prompts, k=a.k,
                          block_size=a.block_size, threshold=a.threshold, temperature=temperature)
    adv = group_advantages(ro["reward"])[0].view(-1)
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr)
    before = [p.detach().clone() for p in m.parameters()]
    log = rl_step(m, opt, level1_rows, a, torch.Generator().manual_seed(0))
    n_resp = int((adv != 0).sum())
    assert log["kept"] > 0 and log["n_resp"] == n_resp > 0
    assert log["rows"] > a.micro_batch  # several micro-batches accumulate into one update
    assert log["clip"] == 0.0 and abs(log["kl"]) < 1e-9
    assert any(not torch.equal(p, q) for p, q in zip(before, m.parameters()))
    # rho = 1 and k3 = 0, so the loss is -sum_i adv_i * (tokens targeted / L_i) / n_resp with L_i
    # = every token the sampler decoded (targets include any after the eos): 1/n_resp each.
    n_dec = (ro["fwd"] >= 0).sum(1)
    want = -(adv * n_dec / n_dec.clamp_min(1)).sum().item() / n_resp
    assert log["loss"] == pytest.approx(want, abs=1e-5)


def test_clip_and_kl_act_only_with_several_updates(monkeypatch, tiny_model, level1_rows):
    """--updates 1: the one step is taken at the sampling weights, so ρ = 1 and the logged clip
    fraction and KL are exactly 0 (the update is group-normalised policy gradient). --updates 4
    on the same rollouts: steps 2-4 run at weights the earlier steps moved, so ρ ≠ 1, PPO's
    clip cuts some tokens and the k3 KL to π_old is positive."""
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    logs = {}
    for updates in (1, 4):
        m = copy.deepcopy(tiny_model)
        a = rl_args(n_prompts=3, k=4, lr=3e-2, updates=updates)
        logs[updates] = rl_step(m, torch.optim.AdamW(m.parameters(), lr=a.lr), level1_rows, a,
                                torch.Generator().manual_seed(0))
    assert logs[1]["rows"] == logs[4]["rows"] > 0  # the same rollouts and rows
    assert logs[1]["clip"] == 0.0 and abs(logs[1]["kl"]) < 1e-9
    assert logs[4]["clip"] > 0.0 and logs[4]["kl"] > 1e-4, logs[4]


def test_rl_step_without_signal_changes_nothing(monkeypatch, tiny_model, level1_rows):
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: False)
    m = copy.deepcopy(tiny_model)
    a = rl_args(n_prompts=2, k=2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in m.parameters()]
    log = rl_step(m, opt, level1_rows, a, torch.Generator().manual_seed(0))
    assert (log["reward"], log["kept"], log["n_resp"], log["rows"]) == (0.0, 0, 0, 0)
    assert all(torch.equal(p, q) for p, q in zip(before, m.parameters()))


def test_update_has_no_direction_of_its_own(monkeypatch, tiny_model, level1_rows):
    """The update is linear in the advantages and nothing else in it depends on the reward, so
    with the rewards' link to the responses broken the expected step is exactly 0: summed over
    the K cyclic shifts of the rewards inside every group (each response takes each reward of
    its group once), the gradients cancel. This is why the --shuffle-rewards control's collapse
    (docs/experiments.md E44-E45) is the update's noise and not a drift of the loss: a weight
    that depended on the reward (a positive-only or reward-dependent length term) would fail here."""
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    m = copy.deepcopy(tiny_model)
    a = rl_args(n_prompts=3, k=4, micro_batch=7)
    ro = tracerl.rollout(m, level1_rows, torch.Generator().manual_seed(0), n_prompts=a.n_prompts, k=a.k,
                          block_size=a.block_size, threshold=a.threshold)
    assert group_advantages(ro["reward"])[1].any()  # some group has variance
    opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: the gradients are read, the weights stay
    # the gradient before the clip to norm 1 (the clip rescales each step by its own norm)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda ps, max_norm: torch.stack([p.grad.norm() for p in ps if p.grad is not None]).norm())
    grads = []
    for shift in range(a.k):
        log = rl_step(m, opt, None, a, torch.Generator().manual_seed(0), ro=dict(ro, reward=ro["reward"].roll(shift, 1)))
        assert log["rows"] > 0
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    one = min(g.norm() for g in grads)
    assert one > 1e-3
    assert torch.stack(grads).sum(0).norm() < 1e-4 * one


@pytest.mark.parametrize("updates", [2, 3])
def test_updates_scale_each_chunk_to_the_gradient_of_one_update(monkeypatch, tiny_model, level1_rows, updates):
    """--updates U splits the rows into U chunks, one optimiser step each, and scales each chunk's
    loss by U, so every step has the gradient scale of --updates 1: at lr 0 (every step at the
    sampling weights) the U steps' gradients add up to U times the one step's gradient on all the
    rows. Without the scaling they would add up to once that gradient."""
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    m = copy.deepcopy(tiny_model)
    a = rl_args(n_prompts=3, k=4, micro_batch=5)
    ro = tracerl.rollout(m, level1_rows, torch.Generator().manual_seed(0), n_prompts=a.n_prompts, k=a.k,
                          block_size=a.block_size, threshold=a.threshold)
    steps = []  # the gradient of each optimiser step, read before the clip to norm 1 rescales it

    def read(params, max_norm):
        params = list(params)
        steps.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone())
        return steps[-1].norm()
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", read)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    logs = {}
    for u in (1, updates):
        steps.clear()
        logs[u] = rl_step(m, opt, None, rl_args(n_prompts=3, k=4, micro_batch=5, updates=u),
                          torch.Generator().manual_seed(0), ro=ro)
        assert len(steps) == u
        if u == 1:
            whole = steps[0]
    assert logs[1]["rows"] == logs[updates]["rows"] > 0  # the same rows, split U ways
    assert whole.norm() > 1e-3
    # (the log-probs are float32: equal to ~1e-7 of the gradient's size)
    assert (torch.stack(steps).sum(0) - updates * whole).norm() < 1e-5 * whole.norm()
    assert all(g.norm() > 0.1 * whole.norm() for g in steps)  # no chunk was empty


def test_curve_hook_leaves_the_training_unchanged(monkeypatch, tiny_model, level1_rows):
    """--curve-every's hook (eval_math.curve_recorder) decodes the model between RL steps; the
    stage it watches trains to the same weights, bit for bit, and logs the same steps as the stage
    without it (same seed; only the seconds, secs*, differ)."""
    from eval_math import curve_recorder
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    a = rl_args(n_prompts=3, k=4, lr=1e-2, steps=3, block_size=4)
    runs = []
    for hooked in (False, True):
        m = copy.deepcopy(tiny_model)
        points, on_step = curve_recorder(m, level1_rows, 4, every=1, seed=0) if hooked else ([], None)
        hist = run_tracerl(m, level1_rows, a, name="t", seed=5, on_step=on_step)
        runs.append((m.state_dict(), [{k: v for k, v in h.items() if not k.startswith("secs")} for h in hist], points))
    (plain, hist0, _), (watched, hist1, points) = runs
    assert [p["step"] for p in points] == [0, 1, 2, 3]  # the hook did decode after every step
    assert sum(h["rows"] for h in hist0) > 0  # the steps did train
    assert any(not torch.equal(v, tiny_model.state_dict()[k]) for k, v in plain.items())
    assert plain.keys() == watched.keys() and all(torch.equal(plain[k], watched[k]) for k in plain)
    assert hist0 == hist1


def test_cosine_schedule_reaches_the_optimiser_and_the_hook_sees_every_step(monkeypatch, tiny_model, level1_rows):
    """--lr-schedule cosine: step i of n runs at lr (1 + cos(pi i / n)) / 2, by hand for n = 4, and
    that is the rate AdamW steps with (read from the optimiser inside rl_step, not from the log);
    constant keeps --lr. on_step(i, model) is called after steps 1..n with the trained model."""
    seen = []
    real_step = tracerl.rl_step

    def spy(model, opt, *args, **kw):
        seen.append(opt.param_groups[0]["lr"])
        return real_step(model, opt, *args, **kw)
    monkeypatch.setattr(tracerl, "rl_step", spy)
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    c = (1 + math.cos(math.pi / 4)) / 2
    for schedule, want in (("cosine", [1e-3, 1e-3 * c, 5e-4, 1e-3 * (1 - c)]), ("constant", [1e-3] * 4)):
        seen.clear()
        calls = []
        m = copy.deepcopy(tiny_model)
        a = rl_args(n_prompts=2, k=2, lr=1e-3, steps=4, lr_schedule=schedule)
        assert [tracerl.rl_lr(a, i) for i in range(4)] == pytest.approx(want, rel=1e-12)
        hist = run_tracerl(m, level1_rows, a, seed=0, on_step=lambda i, model: calls.append((i, model)))
        assert seen == pytest.approx(want, rel=1e-12) and [h["lr"] for h in hist] == pytest.approx(want, rel=1e-12)
        assert [i for i, _ in calls] == [1, 2, 3, 4] and all(model is m for _, model in calls)


# ----------------------------------------------------------------------------- --explain

def test_explain_prints_the_terms_of_the_loss_the_update_takes(monkeypatch, capsys, tiny_model, level1_rows):
    """tracerl.explain prints every target token of one sample with its term of the loss; those
    printed terms add up to the printed sum, all terms add up to the printed group loss, and
    that loss is the one rl_step's update takes on the same rollouts (step 5, micro-batched)."""
    import re
    monkeypatch.setattr(tracerl, "is_correct", lambda text, gold, finished: len(text) % 2 == 0)
    a = rl_args(k=4, micro_batch=5, lr=1e-3)
    m = copy.deepcopy(tiny_model)
    res = tracerl.explain(m, level1_rows, a, seed=0)
    text = capsys.readouterr().out
    assert res["sample"] is not None and "4. its trace rows" in text
    printed = [float(x) for x in re.findall(r"term ([+-]\d+\.\d+)", text)]
    s = res["sample"]
    n_targets = int((res["ro"]["fwd"][s] >= 0).sum())
    assert len(printed) == n_targets  # one line per token the sampler committed for this sample
    said = float(re.search(r"terms sum to ([+-]\d+\.\d+)", text).group(1))
    assert sum(printed) == pytest.approx(said, abs=1e-6 * len(printed))  # each printed to 6 places
    assert float(res["terms"].sum()) == pytest.approx(res["loss"], abs=1e-12)
    assert float(re.search(r"trace rows of the group: ([+-]\d+\.\d+)", text).group(1)) == pytest.approx(res["loss"], abs=1e-6)
    # the update's own loss on the same rollouts
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr)
    log = rl_step(m, opt, None, a, torch.Generator().manual_seed(0), ro=res["ro"])
    assert log["rows"] == res["rows"].n_rows and log["loss"] == pytest.approx(res["loss"], abs=1e-7)
    # at the weights that sampled ρ = 1 and k3 = 0, so each term is −w·A: a group's advantages sum
    # to 0 and so does the loss (to rounding), while no term is 0
    rows = res["rows"]
    assert torch.allclose(res["terms"], -rows.weight * rows.adv, atol=1e-6, rtol=0)
    assert res["terms"].abs().min() > 1e-3 and abs(res["loss"]) < 1e-6
