"""The paper's starting regime: the mean@N metric (eval_math --samples/--temperature) and the
base's SFT block mix (train.py --sft-block-mix), on tiny CPU configs."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from eval_math import evaluate
from model import load_checkpoint, save_checkpoint
from train import draw_block, parse_block_mix, run_sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _strip(r):
    return {k: v for k, v in r.items() if k not in ("out", "seconds", "tokens_per_s")}


def test_at_temperature_0_every_sample_is_the_greedy_decode(tiny_model, level1_rows):
    greedy = evaluate(tiny_model, level1_rows, 8, "dynamic", 0.5)
    three = evaluate(tiny_model, level1_rows, 8, "dynamic", 0.5, samples=3)
    n = len(level1_rows)
    assert three["texts"] == greedy["texts"] * 3
    assert three["accuracy"] == three["acc_min"] == three["acc_max"] == greedy["accuracy"]
    assert three["tpf"] == pytest.approx(greedy["tpf"])
    assert three["out"]["tokens"].shape[0] == 3 * n


def test_sampled_decodes_are_seeded(tiny_model, level1_rows):
    run = lambda seed: evaluate(tiny_model, level1_rows, 8, "dynamic", 0.5, seed=seed, temperature=1.0,
                                samples=3)
    a, b, c = run(0), run(0), run(7)
    assert _strip(a) == {**_strip(b)}  # same seed, same numbers and texts
    assert torch.equal(a["out"]["tokens"], b["out"]["tokens"])
    assert a["texts"] != c["texts"]  # another seed draws other samples
    n = len(level1_rows)
    # the three samples are three different draws (seed, seed + 1, seed + 2), and sample i of
    # seed 0 is sample i - 1 of seed 1: each sample has its own generator
    assert len({tuple(a["texts"][i * n:(i + 1) * n]) for i in range(3)}) == 3
    shifted = run(1)
    assert shifted["texts"][:2 * n] == a["texts"][n:]
    accs = [sum(a["correct"][i * n:(i + 1) * n]) / n for i in range(3)]
    assert a["accuracy"] == pytest.approx(sum(accs) / 3)
    assert (a["acc_min"], a["acc_max"]) == (min(accs), max(accs))


@pytest.mark.parametrize("text,want", [("4", [(4, 1.0)]), ("4:0.8,8:0.15,16:0.05", [(4, 0.8), (8, 0.15), (16, 0.05)])])
def test_parse_block_mix(text, want):
    assert parse_block_mix(text, 24) == want


@pytest.mark.parametrize("text,why", [("4:0.8,8:0.1", "add up to 1"), ("4:x", "must look like"),
                                      ("4:0.5,4:0.5", "distinct"), ("4:0.5,32:0.5", "larger than"),
                                      ("0:1", "positive")])
def test_parse_block_mix_rejects(text, why):
    with pytest.raises(ValueError, match=why):
        parse_block_mix(text, 24)


def test_drawn_block_sizes_follow_the_mix_for_a_seed():
    mix = [(4, 0.8), (8, 0.15), (16, 0.05)]
    draw = lambda seed: [draw_block(mix, g) for g in [torch.Generator().manual_seed(seed)] for _ in range(4000)]
    a, b = draw(0), draw(0)
    assert a == b  # a seed fixes the sequence of block sizes
    assert a != draw(1)
    for B, p in mix:
        assert abs(a.count(B) / len(a) - p) < 0.02
    # a single-entry mix draws nothing: the random stream is untouched
    g = torch.Generator().manual_seed(5)
    assert draw_block([(4, 1.0)], g) == 4
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(5).get_state())


def test_a_pure_mix_is_the_plain_block_sft_exactly(tiny_cfg, level1_rows):
    """--sft-block-mix 4 (or 4:1) trains the very weights the plain B=4 SFT trains."""
    torch.manual_seed(0)
    from model import GPT
    base = GPT(tiny_cfg)
    rows = level1_rows * 4
    task = dict(level=1)
    plain, _ = run_sft(copy.deepcopy(base), task, rows, level1_rows, 4, 6, 1e-3, 8, seed=3, log_every=100)
    pure, meta = run_sft(copy.deepcopy(base), task, rows, level1_rows, 4, 6, 1e-3, 8, seed=3, log_every=100,
                         block_mix=[(4, 1.0)])
    mixed, _ = run_sft(copy.deepcopy(base), task, rows, level1_rows, 4, 6, 1e-3, 8, seed=3, log_every=100,
                       block_mix=[(4, 0.5), (8, 0.5)])
    for p, q in zip(plain.parameters(), pure.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), mixed.parameters()))
    assert meta["block_mix"] == [[4, 1.0]]


def test_stage_sft_takes_its_window_from_the_block_size(tmp_path, tiny_cfg):
    """train.py --stage sft --block-size 8 from an AR checkpoint made for B=4 (window 3) gives a
    B=8 base with window 7: it sees every mask of its own block."""
    torch.manual_seed(0)
    from model import GPT
    cfg = copy.deepcopy(tiny_cfg)
    cfg.mask_window = 3
    save_checkpoint(str(tmp_path / "ar.pt"), GPT(cfg), dict(stage="ar", task=dict(level=1)))
    cmd = [sys.executable, "train.py", "--stage", "sft", "--block-size", "8", "--init", str(tmp_path / "ar.pt"),
           "--out", str(tmp_path), "--sft-steps", "2", "--batch-size", "4", "--level", "1",
           "--n-train", "64", "--n-test", "16", "--log-every", "100"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr
    model, _ = load_checkpoint(str(tmp_path / "sft8.pt"))
    assert model.cfg.mask_window == 7
    bad = subprocess.run(cmd[:-2] + ["--sft-block-mix", "8:0.5,4:0.4"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "add up to 1" in bad.stderr


def test_tail_mix_spreads_the_tail_over_the_ladder():
    from train import tail_mix
    assert tail_mix([4, 8, 16], 0.0) is None and tail_mix([4], 0.3) is None
    mix = tail_mix([4, 8, 16], 0.2)
    assert [B for B, _ in mix] == [4, 8, 16]
    assert [p for _, p in mix] == pytest.approx([0.8, 0.15, 0.05])
    assert tail_mix([4, 8], 0.2) == [(4, pytest.approx(0.8)), (8, pytest.approx(0.2))]
    assert sum(p for _, p in tail_mix([4, 8, 16, 32], 0.4)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="--sft-tail"):
        tail_mix([4, 8], 1.0)
