"""DDP equals one process: two gloo ranks on CPU against a single process on the same
global batch, for AR and block-SFT steps, for one TraceRL update on fixed rollouts
(with and without the value model), and for eval_math.evaluate_all, whose decodes are
dealt out across the ranks and gathered.

    python -m pytest -q tests/test_ddp.py
    python tests/test_ddp.py OUT      # the worker; the test starts two with torchrun's env

The worker runs under RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, the environment torchrun
sets, so it goes through dist.init exactly as `torchrun --nproc_per_node 2` would.
"""
import argparse
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dist  # noqa: E402
from data.task import encode_prompts, make_splits, task_tensors  # noqa: E402
from eval_math import EvalPlan, evaluate_all  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from sample import generate  # noqa: E402
from tracerl import RLConfig, add_rl_args, rl_step  # noqa: E402
from train import ar_loss, sft_loss, train_loop  # noqa: E402
from value import Critic  # noqa: E402

CFG = GPTConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=32, prompt_len=8)
K = 4
# Group 1 is all correct: no z-score advantage, so without the value model rank 1 (which
# holds prompt 1 alone) has no rows and must still join the all-reduce and the step.
REWARD = torch.tensor([[1., 0, 0, 1], [1, 1, 1, 1], [0, 1, 0, 0]])


def fresh_model():
    """float64, so the comparison sees the all-reduce and the global normalisation, not
    fp32 rounding (which AdamW, being scale-free, blows up on coordinates whose true
    gradient is 0, e.g. the attention key bias: ~4e-6 at lr 1e-2 in fp32)."""
    torch.manual_seed(0)
    return GPT(CFG).double()


def supervised(kind):
    """Two steps of train_loop (batch 7: the ranks hold 4 and 3 rows) -> state dict."""
    model = fresh_model()
    train, test = make_splits(1, 64, 8, 0)
    data = list(task_tensors(train, CFG.prompt_len, CFG.answer_len))
    held = list(task_tensors(test, CFG.prompt_len, CFG.answer_len))
    if kind == "ar":
        fn = lambda m, b, g, host, part: ar_loss(m, *b, part)
    else:
        data, held = data[:2], held[:2]
        fn = lambda m, b, g, host, part: sft_loss(m, *b, 4, g, True, part, host)
    train_loop(model, fn, 2, 1e-2, 7, data, held, seed=0, warmup=1, log_every=1000)
    return {k: v.clone() for k, v in model.state_dict().items()}


def make_rollouts():
    """Fixed rollouts of the fresh model: 3 prompts x K samples, rewards set by hand."""
    rows = make_splits(1, 0, 3, 0)[1]
    prompts = encode_prompts([r["question"] for r in rows], CFG.prompt_len).repeat_interleave(K, 0)
    out = generate(fresh_model(), prompts, 8, "dynamic", 0.9, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    return dict(out, prompts=prompts, reward=REWARD, correct=REWARD)  # binary: correct = reward


def shard(ro):
    """This rank's share, as tracerl.rollout() deals it: prompt p (all K samples) on rank p % world."""
    groups = list(range(dist.rank(), ro["reward"].shape[0], dist.world()))
    resp = torch.tensor([p * K + j for p in groups for j in range(K)], dtype=torch.long)
    return {k: (v[groups] if k in ("reward", "correct") else v[resp]) for k, v in ro.items()}


def rl(ro, value):
    """One rl_step on given rollouts (micro-batches of 5 rows) -> policy (and value model) state dicts."""
    ap = argparse.ArgumentParser()
    add_rl_args(ap)
    a = RLConfig.from_args(ap.parse_args(["--k", str(K), "--micro-batch", "5"]), block_size=8, steps=1)
    model = fresh_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    critic = Critic(model, 1e-2) if value else None
    log = rl_step(model, opt, None, a, torch.Generator().manual_seed(0), critic, ro=shard(ro))
    out = {k: v.clone() for k, v in model.state_dict().items()}
    if value:
        out.update({"value." + k: v.clone() for k, v in critic.model.state_dict().items()})
    return out, log


class FakeRun:
    """What evaluate_all reads of curriculum.Run (.out, .digest, .load): two checkpoints,
    fresh tiny models of different seeds, whose files exist only for their digests."""
    names = ("m0", "m1")

    def __init__(self, out):
        self.out = out
        os.makedirs(out, exist_ok=True)
        for name in self.names:
            open(self.path(name), "w").close()

    def path(self, name):
        return os.path.join(self.out, name + ".pt")

    def digest(self, name):
        return name  # stands in for the file's sha256: fixed per checkpoint

    def load(self, name):
        torch.manual_seed(self.names.index(name))
        return GPT(CFG), {"block_size": 4}


def evaluations(out):
    """evaluate_all over both checkpoints at B = 4 and 8 (dynamic at two θ, static, ltr, and
    the mean of 2 sampled decodes at T=1: 10 decodes per checkpoint, 5 per rank under two) ->
    its rows, without the clock's fields (tokens/s differ between runs) and the checkpoint's digest."""
    plan = EvalPlan(threshold=0.9, sweep=(0.5,), samples=2, temperature=1.0)
    rows = evaluate_all(FakeRun(out), FakeRun.names, [4, 8], make_splits(1, 0, 6, 0)[1], plan, 0,
                        distance=0,
                        row_stats=lambda fwd, B: {"last_forward": int(fwd.max())})
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "seconds", "stamp")} for r in rows]


def run_all(ro, out):
    results = {"ar": supervised("ar"), "sft": supervised("sft")}
    results["rl"], results["rl_log"] = rl(ro, False)
    results["rl_value"], results["rl_value_log"] = rl(ro, True)
    results["eval"] = evaluations(os.path.join(out, "eval_run"))
    return results


# ----------------------------------------------------------------------------- the test

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_ranks_equal_one_process(tmp_path):
    ro = make_rollouts()
    torch.save(ro, tmp_path / "rollouts.pt")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(tmp_path)], cwd=ROOT,
                              env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference, meanwhile, in this process: same thread count
    try:
        want = run_all(ro, str(tmp_path / "single"))
    finally:
        torch.set_num_threads(n)
    for p in procs:
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("DDP workers timed out")
        assert p.returncode == 0, err[-3000:]
    got = torch.load(tmp_path / "ddp.pt")
    init = fresh_model().state_dict()
    for kind in ("ar", "sft", "rl", "rl_value"):
        diff = max((got[kind][k] - want[kind][k]).abs().max().item() for k in want[kind])
        moved = max((want[kind][k] - init[k]).abs().max().item() for k in init)
        print(f"{kind}: max |w_ddp - w_single| = {diff:.2e} (weights moved up to {moved:.2e})")
        assert moved > 1e-3, kind  # the step did something, so equality means something
        assert diff < 1e-6, (kind, diff)
    # the logged, globally reduced numbers agree too
    for log in ("rl_log", "rl_value_log"):
        for k in ("reward", "kept", "n_resp", "rows", "tpf", "loss", "kl", "vloss"):
            if k in want[log]:
                assert got[log][k] == pytest.approx(want[log][k], rel=1e-5, abs=1e-7), (log, k)
    assert want["rl_log"]["n_resp"] == 8 and want["rl_value_log"]["n_resp"] == 12
    # the evaluation: every decode done once, gathered back in job order, on both sides;
    # rank 0's eval.json holds all 20 (each rank decoded half of them)
    assert len(want["eval"]) == 20 and got["eval"] == want["eval"]
    assert len({(r["method"], r["decode_block"], r["rule"], r["threshold"]) for r in want["eval"]}) == 20
    with open(tmp_path / "ddp" / "eval_run" / "eval.json") as f:
        assert len(json.load(f)) == 20


if __name__ == "__main__":  # a worker: rank RANK of WORLD_SIZE
    torch.set_num_threads(1)
    out = sys.argv[1]
    dist.init("cpu")
    assert dist.world() == 2
    results = run_all(torch.load(os.path.join(out, "rollouts.pt")), os.path.join(out, "ddp"))
    if dist.is_main():
        torch.save(results, os.path.join(out, "ddp.pt"))
    dist.barrier()
    dist.close()
