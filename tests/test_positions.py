"""eval_math --positions: every block predicted in one forward from the true context."""
import torch

from data.task import task_tensors
from data.tokenizer import MASK_ID
from eval_math import block_positions, position_table
from model import KVCache


def test_position_table_shape_and_ranges(tiny_model, level1_rows):
    for B in (4, 8, 16):
        correct, conf, valid = block_positions(tiny_model, level1_rows, B)
        table = position_table(correct, conf, valid, B)
        assert [t["position"] for t in table] == list(range(B))
        assert sum(t["n"] for t in table) == int(valid.sum())  # every scored position once
        for t in table:
            if t["n"]:
                assert 0.0 <= t["accuracy"] <= 1.0 and 0.0 < t["confidence"] <= 1.0
        # the answer proper is scored, its eos fill is not
        lengths = task_tensors(level1_rows, tiny_model.cfg.prompt_len, tiny_model.cfg.answer_len)[2]
        assert valid.sum(1).tolist() == lengths.tolist()


def test_one_block_matches_the_cached_sampler_by_hand(tiny_model, level1_rows):
    """Block 1 of problem 0 at B=8: the KV-cached path the sampler uses, fed the prompt and
    the gold block 0, then an all-mask block 1, gives the same greedy tokens and confidences."""
    B, m = 8, tiny_model
    prompts, answers, lengths = task_tensors(level1_rows[:1], m.cfg.prompt_len, m.cfg.answer_len)
    correct, conf, valid = block_positions(m, level1_rows[:1], B)
    cache = KVCache(m.cfg, 1, "cpu", dtype=torch.float64)
    masks = torch.full((1, B), MASK_ID)
    with torch.no_grad():
        m.decode_step(cache, prompts, -1, masks, 0)                       # prompt into the cache
        logits = m.decode_step(cache, answers[:, :B], 0, masks, 1)       # true block 0, block 1 masked
    prob = torch.softmax(logits.float(), -1)[0]
    assert torch.allclose(conf[0, B:2 * B], prob.max(-1).values, atol=1e-5)
    assert torch.equal(correct[0, B:2 * B], prob.argmax(-1) == answers[0, B:2 * B])
    # and the table's numbers for that single problem are these, position by position
    table = position_table(correct, conf, valid, B)
    sel = valid[0].view(-1, B)  # [blocks, B]
    for j in range(B):
        hits = correct[0].view(-1, B)[:, j][sel[:, j]]
        assert table[j]["n"] == int(sel[:, j].sum())
        if table[j]["n"]:
            assert table[j]["accuracy"] == hits.float().mean().item()
