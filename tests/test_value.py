"""The diffusion value model (value.py, tracerl.py --value-model) against hand-built states."""
import argparse
import copy

import pytest
import torch

from data.tokenizer import MASK_ID
from model import training_layout
from sample import generate
from tracerl import RLConfig, add_rl_args, row_logprobs, rl_step, trace_rows
from value import Critic, ValueModel, row_values, token_advantages, value_loss

# block size 4, as in test_tracerl: block 0 commits pos 0, then 2+3, then 1; block 1
# commits 4+5, then 7, then 6; everything after pos 7 is never decoded.
B = 4
HEAD = [0, 2, 1, 1, 3, 3, 5, 4]
RANK = [0, 2, 1, 1, 0, 0, 2, 1]  # each decoded token's round (its step's rank in its block)
ORDER = [0, 4, 5, 2, 3, 7, 1, 6]  # flat target order: round by round, left to right


def random_critic(model):
    """A value model whose head is not zero, so values differ from state to state."""
    vm = ValueModel(model)
    torch.manual_seed(1)
    with torch.no_grad():
        vm.head.weight.normal_(0, 0.1)
        vm.head.bias.fill_(0.3)
    return vm.eval()


def test_advantage_is_reward_minus_value_of_the_state_the_token_was_decoded_from(tiny_model, prompts):
    P, A = tiny_model.cfg.prompt_len, tiny_model.cfg.answer_len
    fwd = torch.tensor(HEAD + [-1] * (A - len(HEAD)))
    torch.manual_seed(0)
    clean = torch.randint(0, 256, (A,))
    vm = random_critic(tiny_model)
    reward = 1.0
    rows = trace_rows(fwd, B)
    noisy = torch.stack([n for n, _ in rows])
    tgt = torch.stack([t for _, t in rows])
    pr, cl = prompts[:1].expand(len(rows), -1), clean.expand(len(rows), -1)
    v = row_values(vm, pr, cl, noisy, tgt, B)
    adv = token_advantages(torch.full_like(v, reward), v)
    # By hand: token j was decoded from the state where every position of round >= RANK[j]
    # (and every never-decoded one) is still masked; V is read at j in that noisy copy.
    pos, mask = training_layout(P, A, B)
    want_v = []
    for j in ORDER:
        masked = torch.tensor([RANK[i] >= RANK[j] if i < len(RANK) else True for i in range(A)])
        idx = torch.cat([prompts[0], clean, clean.masked_fill(masked, MASK_ID)])[None]
        want_v.append(vm(idx, pos, mask)[0, P + A + j])
    want_v = torch.stack(want_v)
    assert adv.shape == (len(HEAD),)
    assert torch.allclose(adv, reward - want_v, rtol=0, atol=1e-12)
    # Not vacuous: the same position reads a different value in another state (position 1,
    # decoded in round 2, read in the fully masked round-0 state instead).
    full = torch.cat([prompts[0], clean, torch.full((A,), MASK_ID)])[None]
    assert abs(vm(full, pos, mask)[0, P + A + 1] - want_v[ORDER.index(1)]) > 1e-3


def test_value_loss_clipping_by_hand():
    old = torch.tensor([0.5, 0.5, 0.5, 0.5])
    new = torch.tensor([0.9, 0.1, 0.55, 0.9]).requires_grad_()
    ret = torch.tensor([1.0, 1.0, 0.0, 0.0])
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    loss = value_loss(new, old, ret, w, clip=0.2)
    # token 0: V moved 0.4 towards R: clipped V 0.7 has the larger error -> (0.7-1)^2, no grad
    # token 1: V moved away from R: unclipped (0.1-1)^2 is larger, grad flows
    # token 2: inside the clip range: (0.55-0)^2
    # token 3: moved 0.4 away from R = 0: unclipped (0.9)^2 is larger than clipped (0.7)^2
    want = 0.5 * (0.1 * 0.3 ** 2 + 0.2 * 0.9 ** 2 + 0.3 * 0.55 ** 2 + 0.4 * 0.9 ** 2)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert torch.allclose(new.grad, torch.tensor([0.0, 0.2 * (0.1 - 1), 0.3 * 0.55, 0.4 * 0.9]))


def _rl_args(k):
    ap = argparse.ArgumentParser()
    add_rl_args(ap)
    return RLConfig.from_args(ap.parse_args(["--k", str(k), "--value-model"]), block_size=8, steps=1)


def test_rl_step_with_critic_uses_reward_minus_value(tiny_model, prompts):
    """On the first update ρ = 1, so the policy loss is −Σ w (R − V_old) over every
    response (with a critic, groups that all agree are used too); the logged value loss
    is Σ w ½ (V_old − R)², and further updates on the same rollouts lower it."""
    k = 4
    m = copy.deepcopy(tiny_model)
    pr = prompts[:3].repeat_interleave(k, 0)
    ro = generate(m, pr, 8, "dynamic", 0.9, temperature=1.0, generator=torch.Generator().manual_seed(0))
    reward = torch.tensor([[1., 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    ro = dict(ro, prompts=pr, reward=reward, correct=reward)  # binary: correct = reward
    a = _rl_args(k)
    critic = Critic(m, lr=1e-2)
    critic.model = random_critic(m)
    critic.opt = torch.optim.AdamW(critic.model.parameters(), lr=1e-3)
    # the expected numbers, from the rows this rollout gives
    want_loss = want_v = 0.0
    for i in range(3 * k):
        rows = trace_rows(ro["fwd"][i], 8)
        noisy = torch.stack([n for n, _ in rows])
        tgt = torch.stack([t for _, t in rows])
        v = row_values(critic.model, ro["prompts"][i:i + 1].expand(len(rows), -1),
                       ro["tokens"][i:i + 1].expand(len(rows), -1), noisy, tgt, 8).detach()
        w = 1.0 / (int((ro["fwd"][i] >= 0).sum()) * 3 * k)
        R = float(ro["reward"].view(-1)[i])
        want_loss -= (w * (R - v)).sum().item()
        want_v += (w * 0.5 * (v - R) ** 2).sum().item()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    log = rl_step(m, opt, None, a, torch.Generator().manual_seed(0), critic, ro=ro)
    assert log["n_resp"] == 3 * k and log["clip"] == 0.0 and log["kl"] < 1e-9
    assert log["loss"] == pytest.approx(want_loss, abs=1e-6)
    assert log["vloss"] == pytest.approx(want_v, rel=1e-6)  # weights are fp32
    vl = [log["vloss"]] + [rl_step(m, opt, None, a, torch.Generator().manual_seed(0), critic, ro=ro)["vloss"]
                           for _ in range(3)]
    assert vl[-1] < 0.5 * vl[0], vl


def test_critic_starts_at_zero_so_first_advantage_is_the_reward(tiny_model, prompts):
    vm = Critic(tiny_model, lr=1e-3).model
    A = tiny_model.cfg.answer_len
    noisy = torch.ones(1, A, dtype=torch.bool)
    tgt = torch.zeros(1, A, dtype=torch.bool)
    tgt[0, :4] = True
    clean = torch.randint(0, 256, (1, A))
    v = row_values(vm, prompts[:1], clean, noisy, tgt, B)
    assert torch.equal(v, torch.zeros(4, dtype=v.dtype))
    assert v.dtype == torch.float64  # the tiny model is float64: values keep its precision
    # the policy's own log-probs are unchanged by building a critic from it (a deep copy)
    lp = row_logprobs(tiny_model, prompts[:1], clean, noisy, tgt, B)
    with torch.no_grad():
        for p in vm.parameters():
            p.add_(1.0)
    assert torch.equal(lp, row_logprobs(tiny_model, prompts[:1], clean, noisy, tgt, B))
