"""TraceRL's rollouts and their rewards: steps 1-2 of an RL step (tracerl.py does the rest).

    from rollouts import rollout
    ro = rollout(model, train_rows, n_prompts=32, k=8, block_size=8, threshold=0.9,
                 gen=torch.Generator().manual_seed(0))    # what tracerl.rl_step draws
    python bench/bench_decode.py --device cpu             # times it ("TraceRL rollout")

A rollout picks P prompts, samples K responses to each at temperature 1 (--temperature) with dynamic
decoding at the rollout block size (sample.generate, which records the trace: the forward
that committed every token, and its log-prob), and grades them with the task's own
grading (data.task.is_correct): reward 1 if the answer is right, else 0 (no eos = 0).
tracerl.py turns these dicts into advantages, trace rows (traces.py) and an update.

Simplified from the paper: a binary reward, no reward model. Ours, off by default
(docs/experiments.md, round 3): `--reach-spread` (a group's samples decode with different
commit distances, sample_distances) and `--speed-alpha` (a right answer earns 1 + α·TPF of
its own decode). Under torchrun each rank samples its own share of the prompts, whole
groups only, so no reward ever needs gathering (dist.py).
"""
import argparse

import torch

import dist
from data.task import encode_prompts, is_correct
from data.tokenizer import decode
from sample import generate


def parse_spread(text: str):
    """'4,4,8,0' -> [4, 4, 8, 0]; '' -> None (no spread); one-line error otherwise."""
    try:
        spread = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--reach-spread must be comma-separated integers, got {text!r}")
    if any(d < 0 for d in spread):
        raise argparse.ArgumentTypeError(f"--reach-spread distances must be >= 0, got {text!r}")
    return spread or None


def positive_temperature(text: str) -> float:
    """--temperature: a float > 0 (0 would be greedy: no two samples of a group differ, and
    the tempered log-probs divide by it); one-line error otherwise."""
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperature must be a number, got {text!r}") from None
    if not t > 0:
        raise argparse.ArgumentTypeError(f"--temperature must be > 0, got {text!r}")
    return t


def sample_distances(n_groups: int, k: int, distance: int = 0, spread=None):
    """Commit distance of every rollout sample [n_groups * k]: with a spread (--reach-spread,
    ours), sample j of each group decodes with spread[j % len(spread)], so within one prompt
    some samples may commit far from the frontier and some stay near it, and the group's
    advantage says which was right; without one, every sample uses `distance`."""
    per_sample = [spread[j % len(spread)] for j in range(k)] if spread else [distance] * k
    return torch.tensor(per_sample, dtype=torch.long).repeat(n_groups)


@torch.no_grad()
def rollout(model, problems, n_prompts, k, block_size, threshold, gen, sample_gen=None, distance=0,
            spread=None, speed_alpha: float = 0.0, temperature: float = 1.0):
    """Pick P prompts from `problems` with the shared `gen` (every rank picks the same
    ones), sample K responses for this rank's share with `sample_gen` (default: gen), grade
    them. DDP: the P prompts are split across ranks, prompt p on rank p % world, each with
    all its K samples, so a group's mean and std (its advantage) are computed on the rank
    that sampled it and no rewards need gathering.

    The reward is 1 for a right answer, 0 otherwise; with speed_alpha > 0 a right answer
    earns 1 + speed_alpha * TPF of its own decode (ours, after DiRL's and LightningRL's speed
    rewards), so among right answers the faster ones carry the advantage. temperature
    (--temperature) tempers the sampling distribution, whose log-probs the sampler records
    and the update recomputes (traces.row_logprobs at the same temperature). Returns a dict of
    tensors: the sampler's outputs plus prompts, reward [G, K], correct [G, K], distance [N]."""
    dev = next(model.parameters()).device
    pick = torch.randint(len(problems), (n_prompts,), generator=gen, device=dev).tolist()
    group = [problems[i] for i in pick[dist.rank()::dist.world()]]
    prompts = encode_prompts([p["question"] for p in group], model.cfg.prompt_len)
    prompts = prompts.repeat_interleave(k, 0).to(dev)
    reach = sample_distances(len(group), k, distance, spread)
    model.eval()
    out = generate(model, prompts, block_size, "dynamic", threshold, temperature=temperature,
                   generator=sample_gen or gen, distance=reach if spread else distance)
    texts = [decode(t) for t in out["tokens"]]
    correct = torch.tensor([float(is_correct(t, group[i // k]["answer"], bool(f)))
                            for i, (t, f) in enumerate(zip(texts, out["finished"]))])
    tpf = out["n_gen"].float() / out["nfe"].clamp_min(1).float()  # this sample's own TPF
    reward = correct * (1 + speed_alpha * tpf)
    return dict(out, prompts=prompts.cpu(), reward=reward.view(len(group), k),
                correct=correct.view(len(group), k), distance=reach, texts=texts)


def merge_rollouts(first: dict, second: dict) -> dict:
    """Two rollout dicts as one: every tensor (and the texts) concatenated along the batch
    (dynamic sampling's extra draws, tracerl.rl_step)."""
    return {key: first[key] + second[key] if isinstance(first[key], list) else torch.cat([first[key], second[key]])
            for key in first}
