"""The mask window (model.hide_far_masks) and the commit distance (sample.near_frontier):
a no-op where they must be, active where they must be, and exact everywhere. (near_frontier
by hand: test_rl_options.py.)"""
import dataclasses

import pytest
import torch

from data.tokenizer import MASK_ID
from model import GPT, hide_far_masks, training_layout
from sample import generate


def test_hide_far_masks_by_hand():
    mask = torch.ones(4, 4, dtype=torch.bool)
    pos = torch.arange(4)
    tok = torch.tensor([[MASK_ID, 7, MASK_ID, MASK_ID]])
    got = hide_far_masks(mask, pos, pos, tok, 1)[0, 0]
    # key 0 (mask) is seen from 0 and 1 only; key 1 (a token) from everywhere;
    # key 2 (mask) from 1..3; key 3 (mask) from 2..3
    want = torch.tensor([[1, 1, 0, 0],
                         [1, 1, 1, 0],
                         [0, 1, 1, 1],
                         [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, want)
    assert hide_far_masks(mask, pos, pos, tok, -1) is mask  # off


def _twin(model, window):
    twin = GPT(dataclasses.replace(model.cfg, mask_window=window)).double().eval()
    twin.load_state_dict(model.state_dict())
    return twin


def _layout_logits(model, B, seed=0):
    cfg = model.cfg
    P, A = cfg.prompt_len, cfg.answer_len
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 200, (3, A), generator=g)
    noisy = clean.masked_fill(torch.rand(3, A, generator=g) < 0.7, MASK_ID)
    idx = torch.cat([torch.randint(0, 200, (3, P), generator=g), clean, noisy], 1)
    pos, mask = training_layout(P, A, B)
    return model(idx, pos=pos, mask=mask)[0]


def test_window_is_a_no_op_for_the_base_block(tiny_model):
    """window = B-1 hides nothing at B (nor with random offsets), so the B=4 base is
    trained exactly as without the window."""
    off = _twin(tiny_model, -1)
    assert torch.equal(_layout_logits(tiny_model, 4), _layout_logits(off, 4))
    assert tiny_model.cfg.mask_window == 3


@pytest.mark.parametrize("B", [8, 16])
def test_window_acts_at_bigger_blocks(tiny_model, B):
    off = _twin(tiny_model, -1)
    assert not torch.allclose(_layout_logits(tiny_model, B), _layout_logits(off, B))


@pytest.mark.parametrize("distance", [1, 3, 6])
def test_commit_distance_invariant(tiny_model, prompts, distance):
    """Every token is committed fewer than `distance` places right of the leftmost mask of
    its block at the moment it is committed; every position is still filled."""
    B = 16
    g = torch.Generator().manual_seed(0)
    out = generate(tiny_model, prompts, B, "dynamic", 0.5, temperature=1.0, generator=g, distance=distance)
    A = out["tokens"].shape[1]
    for fwd, n in zip(out["fwd"], out["n_gen"]):
        assert (fwd[:n] >= 0).all()  # everything up to the eos was decoded
        for s in range(0, A, B):
            blk = fwd[s:s + B]
            for t in blk[blk >= 0].unique():
                frontier = int(((blk < 0) | (blk >= t)).nonzero().min())  # leftmost still masked
                where = (blk == t).nonzero().squeeze(1)
                assert (where < frontier + distance).all()


@pytest.mark.parametrize("window,distance", [(3, 0), (3, 4), (-1, 4), (1, 0)])
def test_recorded_logprobs_equal_rows_with_window_and_distance(tiny_model, prompts, window, distance):
    """TraceRL's exactness with the window's per-row masks: every token's recorded log-prob
    equals its recomputation in its trace row (the training layout), at B=16."""
    from tracerl import row_logprobs, trace_rows
    model, B = _twin(tiny_model, window), 16
    out = generate(model, prompts[:4], B, "dynamic", 0.3, temperature=1.0,
                   generator=torch.Generator().manual_seed(0), distance=distance)
    n_checked = 0
    for i in range(4):
        for noisy, tgt in trace_rows(out["fwd"][i], B):
            lp = row_logprobs(model, prompts[i:i + 1], out["tokens"][i:i + 1], noisy[None], tgt[None], B)
            assert torch.allclose(lp, out["logp"][i][tgt], atol=1e-6)
            n_checked += int(tgt.sum())
    assert n_checked > 40
