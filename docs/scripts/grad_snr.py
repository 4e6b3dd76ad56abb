"""How much of one TraceRL step's gradient is signal (issue 27's diagnosis).

    python docs/scripts/grad_snr.py --ckpt runs/def/seed0/sft4.pt --batches 6
    python docs/scripts/grad_snr.py --ckpt runs/def/seed0/sft4.pt --batches 6 --shuffle-rewards

At fixed weights it draws --batches independent rollout batches (P prompts x K samples each, the
stage's defaults) and takes each one's policy-gradient g_i with tracerl's own update code (its
optimiser step at lr 0). The gradients are read after tracerl's clip to norm 1, which only rescales
a gradient: the cosines below do not depend on it, the printed norms do. With g_i = mu + noise_i,
the mean cosine of two different batches' gradients estimates |mu|^2 / E|g|^2: the share of a step's
squared norm that points the same way in every batch. ~0 means a step is almost all noise.
--shuffle-rewards permutes the rewards inside each group (the control of b4_curve.py): its cosine
should be ~0 by construction.
"""
import argparse

import torch

from probe import shuffle_rewards  # first: it puts the repo on sys.path (and holds the control)
from data.task import load_task
from model import load_checkpoint
from tracerl import RLConfig, add_rl_args, rl_step

ap = argparse.ArgumentParser(description="share of signal in a TraceRL step's gradient")
ap.add_argument("--ckpt", required=True, help="checkpoint")
ap.add_argument("--block-size", type=int, default=4, help="rollout and training block size")
ap.add_argument("--batches", type=int, default=6, help="independent rollout batches")
ap.add_argument("--seed", type=int, default=0, help="rollout seed of the first batch")
ap.add_argument("--shuffle-rewards", action="store_true", help="rewards permuted inside each group")
add_rl_args(ap)
a = ap.parse_args()
model, meta = load_checkpoint(a.ckpt)
train_set, _ = load_task(meta["task"])
cfg = RLConfig.from_args(a, block_size=a.block_size, steps=1)
if a.shuffle_rewards:
    shuffle_rewards(a.seed + 7)

opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the update's gradients are read, the weights stay
grads = []
for b in range(a.batches):
    log = rl_step(model, opt, train_set, cfg, torch.Generator().manual_seed(a.seed + 1000 * b))
    grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone())
    print(f"batch {b} | reward {log['reward']:.3f} | kept {log['kept']:2d} | |g| {grads[-1].norm():.4f}", flush=True)
G = torch.stack(grads)
unit = G / G.norm(dim=1, keepdim=True)
cos = unit @ unit.T
pairs = cos[~torch.eye(len(G), dtype=torch.bool)]
mean_g = G.mean(0)
print(f"cosine of two batches' gradients: mean {pairs.mean():.3f} (min {pairs.min():.3f}, max {pairs.max():.3f}) | "
      f"|mean of {len(G)}| / mean |g| = {mean_g.norm() / G.norm(dim=1).mean():.3f}")
