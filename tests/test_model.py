"""Masks against hand-written expectations; cached logits == uncached logits."""
import torch

from data.tokenizer import MASK_ID
from model import KVCache, block_causal_layout, training_layout


def _grid(rows):
    return torch.tensor([[c == "1" for c in r.replace(" ", "")] for r in rows])


def test_training_layout_mask_by_hand():
    # P=2 prompt, A=4 answer, B=2: [p0 p1 | c0 c1 c2 c3 | n0 n1 n2 n3]
    pos, mask = training_layout(2, 4, 2)
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5]
    want = _grid([
        "10 0000 0000",  # p0: causal prompt
        "11 0000 0000",  # p1
        "11 1100 0000",  # c0: prompt + own clean block
        "11 1100 0000",  # c1
        "11 1111 0000",  # c2: prompt + clean blocks <= 1
        "11 1111 0000",  # c3
        "11 0000 1100",  # n0: prompt + own noisy block, no clean block 0
        "11 0000 1100",  # n1
        "11 1100 0011",  # n2: prompt + clean block 0 + own noisy block
        "11 1100 0011",  # n3
    ])
    assert torch.equal(mask, want)


def test_shifted_training_layout_by_hand():
    # shift 1: answer block ids (i + 1) // 2 = [0, 1, 1, 2]: a first block of one token
    _, mask = training_layout(1, 4, 2, shift=1)
    want = _grid([
        "1 0000 0000",
        "1 1000 0000",
        "1 1110 0000",
        "1 1110 0000",
        "1 1111 0000",
        "1 0000 1000",
        "1 1000 0110",
        "1 1000 0110",
        "1 1110 0001",
    ])
    assert torch.equal(mask, want)


def test_block_causal_mask_by_hand():
    _, mask = block_causal_layout(2, 4, 2)
    want = _grid(["10 0000", "11 0000", "11 1100", "11 1100", "11 1111", "11 1111"])
    assert torch.equal(mask, want)


def test_default_forward_is_causal(tiny_model):
    # Changing a later token must not change earlier logits under the AR mask.
    x = torch.randint(0, 256, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 256
    a, _ = tiny_model(x)
    b, _ = tiny_model(y)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-12)
    assert not torch.allclose(a[0, 8], b[0, 8])


def test_cached_equals_uncached(tiny_model, prompts, tiny_cfg):
    """Block-by-block cached decoding gives the logits of the full uncached forward
    (block-causal) and of the noisy copy in the training layout."""
    torch.manual_seed(1)
    P, A, B = tiny_cfg.prompt_len, tiny_cfg.answer_len, 8
    N = prompts.shape[0]
    clean = torch.randint(0, 256, (N, A))
    noisy = clean.masked_fill(torch.rand(N, A) < 0.5, MASK_ID)
    cache = KVCache(tiny_cfg, N, "cpu", torch.float64)
    pending, pbid = prompts, -1
    cached = []
    for b in range(A // B):
        cached.append(tiny_model.decode_step(cache, pending, pbid, noisy[:, b * B:(b + 1) * B], b))
        # a second step inside the block sees the same cache (no pending tokens)
        again = tiny_model.decode_step(cache, pending[:, :0], b, noisy[:, b * B:(b + 1) * B], b)
        assert torch.allclose(again, cached[-1], atol=1e-10)
        pending, pbid = clean[:, b * B:(b + 1) * B], b
    cached = torch.cat(cached, 1)
    assert cache.len == P + A - B
    # training layout: all blocks at once
    pos, mask = training_layout(P, A, B)
    full, _ = tiny_model(torch.cat([prompts, clean, noisy], 1), pos=pos, mask=mask)
    assert torch.allclose(cached, full[:, P + A:], atol=1e-10)
    # block-causal full forward, block by block (the current block noisy, earlier clean)
    pos, mask = block_causal_layout(P, A, B)
    for b in range(A // B):
        seq = torch.cat([prompts, clean[:, :b * B], noisy[:, b * B:(b + 1) * B], clean[:, (b + 1) * B:]], 1)
        ref, _ = tiny_model(seq, pos=pos, mask=mask)
        assert torch.allclose(cached[:, b * B:(b + 1) * B], ref[:, P + b * B:P + (b + 1) * B], atol=1e-10)
    # and the test can fail: the wrong block size gives different logits
    pos, mask = training_layout(P, A, 4)
    wrong, _ = tiny_model(torch.cat([prompts, clean, noisy], 1), pos=pos, mask=mask)
    assert not torch.allclose(cached, wrong[:, P + A:], atol=1e-6)


def test_mask_and_pad_are_never_predicted(tiny_model):
    logits, _ = tiny_model(torch.randint(0, 256, (2, 6)))
    assert torch.isinf(logits[..., MASK_ID]).all() and torch.isinf(logits[..., MASK_ID + 1]).all()
