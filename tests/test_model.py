"""Masks against hand-written expectations; cached logits == uncached logits."""
import torch

from data.tokenizer import MASK_ID
from model import KVCache, answer_block_ids, attention_mask, cached_step_layout, training_layout


def block_causal_layout(prompt_len: int, answer_len: int, block_size: int, device="cpu"):
    """(pos, mask) for inference without a cache: prompt causal, answer block-causal (the
    uncached reference the cached decoder is checked against)."""
    ab = answer_block_ids(answer_len, block_size, 0, device)
    bid = torch.cat([torch.full((prompt_len,), -1, device=device), ab])
    noisy_copy = torch.zeros(prompt_len + answer_len, dtype=torch.bool, device=device)
    pos = torch.arange(prompt_len + answer_len, device=device)
    return pos, attention_mask(bid, noisy_copy, pos, bid, noisy_copy, pos)


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


def test_cached_step_mask_by_hand():
    # P=2 prompt cached (L=2), pending clean block 0 (2 tokens), noisy block 1 (2 tokens),
    # against 4 cache slots (slots 2, 3 not written yet): columns [s0 s1 s2 s3 | c0 c1 n0 n1]
    pos, mask = cached_step_layout(2, 2, 0, 2, 1, 4)
    assert pos.tolist() == [2, 3, 4, 5]
    want = _grid([
        "1100 1100",  # c0: the cached prompt + its whole own clean block
        "1100 1100",  # c1
        "1100 1111",  # n0: the cached prompt, clean block 0, its own noisy block
        "1100 1111",  # n1
    ])
    assert torch.equal(mask, want)
    # the first step of block 0: the prompt itself is pending (causal), nothing cached
    _, mask = cached_step_layout(0, 2, -1, 2, 0, 0)
    assert torch.equal(mask, _grid(["10 00", "11 00", "11 11", "11 11"]))


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


def test_ar_cached_logits_equal_uncached(tiny_model, prompts, tiny_cfg):
    """decode_ar (prefill, then one token at a time) gives the causal forward's logits."""
    torch.manual_seed(2)
    seq = torch.cat([prompts, torch.randint(0, 256, (prompts.shape[0], 6))], 1)
    cache = KVCache(tiny_cfg, seq.shape[0], "cpu", torch.float64)
    P = tiny_cfg.prompt_len
    cached = [tiny_model.decode_ar(cache, seq[:, :P])]
    cached += [tiny_model.decode_ar(cache, seq[:, i:i + 1]) for i in range(P, seq.shape[1])]
    assert cache.len == seq.shape[1]
    full, _ = tiny_model(seq)
    assert torch.allclose(torch.cat(cached, 1), full, atol=1e-10)


def test_mask_and_pad_are_never_predicted(tiny_model):
    logits, _ = tiny_model(torch.randint(0, 256, (2, 6)))
    assert torch.isinf(logits[..., MASK_ID]).all() and torch.isinf(logits[..., MASK_ID + 1]).all()
