"""TraceRL learns: on a tiny trained model, 20 RL steps raise the true reward, and the inverted
reward (the control) lowers it. Split from test_tracerl.py (the maths and rl_step's invariants)."""
import contextlib
import copy

import pytest
import torch

import tracerl
from data.task import encode_prompts, is_correct, make_splits
from data.tokenizer import decode
from model import GPTConfig
from sample import generate
from test_tracerl import rl_args
from tracerl import run_tracerl
from train import run_ar, run_sft


# ----------------------------------------------------------------------------- learning

@contextlib.contextmanager
def one_thread():
    """The learning tests pin one intra-op thread: the numbers they assert on are then the
    same on any core count, and a busy machine cannot slow them down by oversubscription
    (these models are too small to gain from a second thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def level1_sft():
    """A tiny model after brief AR + block SFT on level 1 (~10 s): it solves about a fifth
    of its training prompts when sampling at temperature 1, so RL has signal.
    Returns (model, pool): pool is 32 distinct training problems RL trains and is scored on."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, max_seq_len=32, prompt_len=8)
    train, test = make_splits(1, 2000, 100, 0)
    with one_thread():
        model, _ = run_ar(cfg, {}, train, test, 300, 3e-3, 32, "cpu", seed=0, log_every=1000)
        model, _ = run_sft(model, {}, train, test, 4, 150, 2e-3, 32, seed=0, log_every=1000)
    pool = list({r["question"]: r for r in train}.values())[:32]
    return model, pool


def expected_reward(model, pool, k=8):
    """Mean true reward of k temperature-1 samples per pool prompt, fixed sampling seed."""
    prompts = encode_prompts([r["question"] for r in pool], model.cfg.prompt_len).repeat_interleave(k, 0)
    out = generate(model, prompts, 4, "dynamic", 0.9, temperature=1.0,
                   generator=torch.Generator().manual_seed(99))
    return sum(is_correct(decode(t), pool[i // k]["answer"], bool(f))
               for i, (t, f) in enumerate(zip(out["tokens"], out["finished"]))) / len(prompts)


def _rl(model, pool, seed=0):
    a = rl_args(block_size=4, steps=20, lr=3e-4, n_prompts=8, k=8)
    return run_tracerl(model, pool, a, name="test-rl", seed=seed)


def test_tracerl_raises_reward(level1_sft):
    base, pool = level1_sft
    m = copy.deepcopy(base)
    with one_thread():
        r0 = expected_reward(m, pool)
        hist = _rl(m, pool)
        r1 = expected_reward(m, pool)
    assert 0.05 < r0 < 0.6  # the base has signal to learn from and room to improve
    # --updates 1: every update is taken at the sampling weights, so ρ = 1 and nothing is clipped
    assert len(hist) == 20 and all(h["clip"] == 0.0 and abs(h["kl"]) < 1e-6 for h in hist)
    assert r1 > r0 + 0.05, (r0, r1)


def test_tracerl_with_inverted_reward_lowers_true_reward(monkeypatch, level1_sft):
    """The control: rewarding wrong answers must drive the true reward down, so the rise
    above comes from the reward, not from merely training on the model's own samples."""
    base, pool = level1_sft
    m = copy.deepcopy(base)
    with one_thread():
        r0 = expected_reward(m, pool)
        monkeypatch.setattr(tracerl, "is_correct", lambda *x: not is_correct(*x))
        _rl(m, pool)
        monkeypatch.undo()
        r1 = expected_reward(m, pool)
    assert r1 < r0 - 0.05, (r0, r1)
