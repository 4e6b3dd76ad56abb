"""TraceRL's rollouts, their rewards and the group advantages: steps 1-3 of an RL step
(tracerl.py does the rest).

    from rollouts import group_advantages, rollout
    ro = rollout(model, train_rows, torch.Generator().manual_seed(0), n_prompts=32, k=8,
                 block_size=8, threshold=0.9)       # what tracerl.rl_step draws
    adv, kept = group_advantages(ro["reward"])      # [P, K] advantages, [P] kept groups
    python bench/bench_decode.py --device cpu       # times it ("TraceRL rollout")

A rollout picks P prompts, samples K responses to each at temperature 1 (--temperature) with dynamic
decoding at the stage's block size (sample.generate, which records the trace: the forward
that committed every token, and its log-prob), and grades them with the task's own
grading (data.task.is_correct): reward 1 if the answer is right, else 0 (no eos = 0).
group_advantages z-scores the rewards inside each prompt's group; tracerl.py turns them into
trace rows (traces.py) and an update.

Simplified from the paper: a binary reward, no reward model. The research options of round 3
(spreads of commit distance and θ within a group, a speed reward, a TPF advantage, hints
for all-wrong groups) were removed in issue 28; docs/experiments.md names the commit that
last had each. Under torchrun each rank samples its own share of the prompts, whole groups
only, so no reward ever needs gathering (dist.py).
"""
import argparse

import torch

import dist
from data.task import encode_prompts, is_correct
from data.tokenizer import decode
from sample import generate


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


def add_rollout_args(ap):
    """The rollout flags (steps 1-3), shared by tracerl.py and curriculum.py."""
    ap.add_argument("--temperature", type=positive_temperature, default=1.0,
                    help="rollout sampling temperature; the update's log-probs are of the same tempered "
                         "policy, so π_old = the sampler's (IGPO and DiffuCoder sample at 1.2)")
    ap.add_argument("--commit-distance", type=int, default=0,
                    help="rollouts commit only masks fewer than D places right of the block's leftmost "
                         "mask (0 = anywhere; sample.near_frontier)")


@torch.no_grad()
def rollout(model, problems, gen, *, n_prompts: int, k: int, block_size: int, threshold: float,
            temperature: float = 1.0, distance: int = 0, sample_gen=None):
    """Pick P = n_prompts prompts from `problems` with the shared `gen` (every rank picks the
    same ones), sample K = k responses for this rank's share with `sample_gen` (default: gen),
    decoding dynamically at `block_size` and θ = `threshold` within commit `distance`, and
    grade them. DDP: the P prompts are split across ranks, prompt p on rank p % world, each
    with all its K samples, so a group's mean and std (its advantage) are computed on the
    rank that sampled it and no rewards need gathering.

    The reward is 1 for a right answer, 0 otherwise. temperature (--temperature) tempers the
    sampling distribution, whose log-probs the sampler records and the update recomputes
    (traces.row_logprobs at the same temperature). Returns a dict of CPU tensors: the
    sampler's outputs (tokens, fwd, logp, n_gen, nfe, finished; [N = G * K, ...]) plus
    prompts [N, prompt_len] and reward [G, K] for this rank's G groups."""
    dev = next(model.parameters()).device
    pick = torch.randint(len(problems), (n_prompts,), generator=gen, device=dev).tolist()
    group = [problems[i] for i in pick[dist.rank()::dist.world()]]
    prompts = encode_prompts([p["question"] for p in group], model.cfg.prompt_len)
    prompts = prompts.repeat_interleave(k, 0).to(dev)
    model.eval()
    out = generate(model, prompts, block_size, "dynamic", threshold, temperature=temperature,
                   generator=sample_gen or gen, distance=distance)
    reward = torch.tensor([float(is_correct(decode(t), group[i // k]["answer"], bool(f)))
                           for i, (t, f) in enumerate(zip(out["tokens"], out["finished"]))])
    return dict(out, prompts=prompts.cpu(), reward=reward.view(len(group), k))


def group_advantages(rewards: torch.Tensor, band=(0.0, 1.0)):
    """rewards [P, K] (0/1) -> (advantages [P, K], kept [P]). Population-std z-score inside
    each group; a group is kept iff its accuracy (mean reward) lies in [lo, hi] (--acc-band)
    and it has any variance. Dropped groups get advantage 0."""
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, unbiased=False, keepdim=True)
    kept = (mean.squeeze(1) >= band[0]) & (mean.squeeze(1) <= band[1]) & (std.squeeze(1) > 0)
    adv = (rewards - mean) / std.clamp_min(1e-8)
    return adv * kept[:, None], kept
