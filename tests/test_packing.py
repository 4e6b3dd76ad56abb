"""TraceRL's packed trace rows (tracerl.pack_response): one sequence per response that holds
all its rounds gives every target token the log-prob, and the loss the gradient, that its own
trace row (tracerl.trace_rows + row_logprobs, the definition) gives."""
import copy
import dataclasses

import pytest
import torch

from data.tokenizer import MASK_ID
from sample import generate
from tracerl import build_rows, pack_response, packed_logprobs, policy_loss, row_logprobs, trace_rows

# block size 4: block 0 commits pos 0 at forward 0, pos 2,3 at forward 1, pos 1 at forward 2;
# block 1 commits pos 4,5 at forward 3, pos 7 at forward 4, pos 6 at forward 5; block 2 never decoded
FWD = torch.tensor([0, 2, 1, 1, 3, 3, 5, 4, -1, -1, -1, -1])


def test_pack_response_by_hand():
    prompt, clean = torch.tensor([7, 8]), torch.arange(10, 22)
    [p] = pack_response(prompt, clean, FWD, 4)
    # prompt (2) + clean block 0, the only one a copy sees (4) + block 0 at rounds 0,1,2 and block 1
    # at rounds 0,1,2 (6 x 4); the never-decoded block 2 and the clean block 1 feed no target
    assert len(p["tokens"]) == 2 + 4 + 24 and p["rounds"] == 3
    assert p["tokens"][:6].tolist() == [7, 8, 10, 11, 12, 13]
    copies = p["tokens"][6:].view(6, 4)
    M = MASK_ID
    assert copies.tolist() == [[M, M, M, M], [10, M, M, M], [10, M, 12, 13],
                               [M, M, M, M], [14, 15, M, M], [14, 15, M, 17]]
    assert p["label"][6:].view(6, 4).tolist() == [list(range(10, 14))] * 3 + [list(range(14, 18))] * 3
    assert p["copy"][6:].view(6, 4)[:, 0].tolist() == [0, 1, 2, 0, 1, 2]
    assert p["block"][6:].view(6, 4)[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert p["pos"][6:10].tolist() == [2, 3, 4, 5] and p["pos"][18:22].tolist() == [6, 7, 8, 9]
    # targets block by block, round by round: every decoded position exactly once
    assert p["answer_pos"].tolist() == [0, 2, 3, 1, 4, 5, 7, 6]
    # shrink 2 merges a block's steps 0+1: block 0's rounds are 0, 1 (pos 1 alone in round 1)
    [p2] = pack_response(prompt, clean, FWD, 4, shrink=2)
    assert p2["rounds"] == 2 and sorted(p2["answer_pos"].tolist()) == list(range(8))
    # a short max_len spreads the copies over sequences of 2 copies, each with the clean blocks
    # its copies need (none for block 0's), the response's row count on the first only
    split = pack_response(prompt, clean, FWD, 4, max_len=2 + 8 + 8)
    assert [len(q["tokens"]) for q in split] == [2 + 8, 2 + 4 + 8, 2 + 4 + 8]
    assert [q["rounds"] for q in split] == [3, 0, 0]
    assert torch.cat([q["answer_pos"] for q in split]).tolist() == p["answer_pos"].tolist()
    assert pack_response(prompt, clean, torch.full((12,), -1), 4) == []


def _rollouts(model, prompts, B, seed=0):
    out = generate(model, prompts, B, "dynamic", 0.3, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    return dict(out, prompts=prompts)


@pytest.mark.parametrize("B,shrink,window,max_len", [(4, 1, 3, 128), (8, 1, 3, 128), (16, 1, 3, 128), (8, 2, 3, 128),
                                                    (16, 1, -1, 128), (4, 1, 3, 30), (16, 1, 3, 40)])
def test_packed_logprobs_equal_every_trace_row(tiny_model, prompts, B, shrink, window, max_len):
    """Each target's log-prob in the packed sequence equals the one in its own trace row, for
    every response of a batch (micro-batched with padding), with and without the mask window;
    at shrink 1 both equal the sampler's recorded log-probs (pi_old)."""
    model = copy.deepcopy(tiny_model)
    model.cfg = dataclasses.replace(model.cfg, mask_window=window)
    ro = _rollouts(model, prompts, B)
    resp = list(range(prompts.shape[0]))
    rows = build_rows(ro, resp, torch.ones(len(resp)), len(resp), B, shrink, "cpu", max_len)
    if max_len < 128:  # short sequences: responses spread over several
        assert len(rows) > len(resp)
    mbs = [torch.arange(0, len(rows), 2), torch.arange(1, len(rows), 2)]  # two micro-batches, padded
    packed = torch.cat([packed_logprobs(model, rows, mb, "cpu") for mb in mbs])
    order = torch.cat([rows.tokens(mb) for mb in mbs])
    want = torch.empty_like(packed)
    n_rows = 0
    # where every (response, round, position) sits in the flat packed order
    where = {(i, r, q): int(rows.offsets[k]) + j for k, (i, p) in enumerate(zip(rows.response, rows.packs))
             for j, (r, q) in enumerate(zip(p["copy"][p["target"]].tolist(), p["answer_pos"].tolist()))}
    for i in resp:
        for r, (noisy, tgt) in enumerate(trace_rows(ro["fwd"][i], B, shrink)):
            lp = row_logprobs(model, prompts[i:i + 1], ro["tokens"][i:i + 1], noisy[None], tgt[None], B)
            for q, l in zip(tgt.nonzero().squeeze(1).tolist(), lp.tolist()):
                want[(order == where[(i, r, q)]).nonzero().item()] = l
            n_rows += 1
    assert rows.n_rows == n_rows > len(resp)
    assert torch.allclose(packed, want, atol=1e-6, rtol=0)  # fp32 log-prob maths (sample.policy_logprobs)
    if shrink == 1:
        assert torch.allclose(packed, rows.old[order], atol=1e-6, rtol=0)


def test_packed_loss_has_the_row_layout_gradient(tiny_model, prompts):
    """The update's loss on the packs and on the unpacked trace rows: the same value and the
    same gradient on every weight (advantages of both signs)."""
    B = 8
    model = copy.deepcopy(tiny_model)
    ro = _rollouts(model, prompts, B, seed=1)
    resp = list(range(prompts.shape[0]))
    adv = torch.linspace(-1.5, 1.5, len(resp))
    rows = build_rows(ro, resp, adv, len(resp), B, 1, "cpu")
    every = torch.arange(len(rows))
    new = packed_logprobs(model, rows, every, "cpu")
    loss = policy_loss(new, rows.old, rows.adv, rows.weight)[0]
    g_packed = torch.autograd.grad(loss, list(model.parameters()))
    terms = []
    for i in resp:
        w = 1.0 / (float((ro["fwd"][i] >= 0).sum()) * len(resp))
        for noisy, tgt in trace_rows(ro["fwd"][i], B):
            lp = row_logprobs(model, prompts[i:i + 1], ro["tokens"][i:i + 1], noisy[None], tgt[None], B)
            old = ro["logp"][i][tgt]
            terms.append(policy_loss(lp, old, torch.full_like(lp, float(adv[i])), torch.full_like(lp, w))[0])
    loss_rows = torch.stack(terms).sum()
    g_rows = torch.autograd.grad(loss_rows, list(model.parameters()))
    assert loss.item() == pytest.approx(loss_rows.item(), abs=1e-7)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(g_packed, g_rows))
    assert max(a.abs().max() for a in g_packed) > 1e-3  # a real gradient


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_packed_logprobs_on_cuda_equal_the_cpu_ones_cuda(tiny_model, prompts, no_tf32):
    """The packed rows on the GPU (per-row masks and positions through SDPA's CUDA kernels) give
    the CPU's log-probs, fp32 and TF32 off (TF32 alone would move them by ~1e-3). Eager on both
    (sample.generate, no torch.compile), so it needs no C compiler."""
    model = copy.deepcopy(tiny_model).float()
    ro = _rollouts(model, prompts, 8)
    resp = list(range(prompts.shape[0]))
    rows = build_rows(ro, resp, torch.ones(len(resp)), len(resp), 8, 1, "cpu")
    every = torch.arange(len(rows))
    cpu = packed_logprobs(model, rows, every, "cpu")
    gpu = packed_logprobs(model.cuda(), rows, every, "cuda")
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4, rtol=0)
