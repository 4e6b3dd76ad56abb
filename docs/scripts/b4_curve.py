"""The B=4 RL curve (issue 27's probe): TraceRL at one block size from a checkpoint, with greedy and
mean@3 accuracy on held-out problems printed every --every steps.

    python docs/scripts/b4_curve.py --ckpt runs/def/seed0/sft4.pt --lr 2e-4 --steps 75
    python docs/scripts/b4_curve.py --ckpt runs/def/seed0/sft4.pt --lr 2e-4 --shuffle-rewards   # control
    python docs/scripts/b4_curve.py --ckpt runs/def/seed0/sft4.pt --lr 2e-4 --ref-kl-beta 0.1   # + KL to the base
    python docs/scripts/b4_curve.py --ckpt runs/def/seed0/sft4.pt --lr 1e-4 --steps 150 --n 300 --token-mean
    python docs/scripts/b4_curve.py --ckpt runs/tstar/sft4.pt --steps 150 --n 300 --n-prompts 64 --lr 1e-4 \
        --lr-schedule cosine --seed 1 --eval-seed 0   # the default run's stage 4, step for step

The loop is tracerl.run_tracerl itself, with an evaluation on the first --n test problems every
--every steps (eval_math.curve_recorder: dynamic θ 0.9, greedy and the mean of 3 decodes at T=1). With
`--seed S+1 --eval-seed S` and the stage's flags it is curriculum --seed S's first stage (E46
checks that the two agree). Before E46 it repeated the loop, and E45's curves came from that copy.
--shuffle-rewards is a control, not a method: inside every group the K rewards are permuted at random
before the advantages, so each step keeps the same groups, the same number of rewarded
responses and the same size of update, but loses the link to which response was right. If a run
collapses as fast with shuffled rewards as with real ones, the collapse comes from the update's
noise (the optimiser), not from what the reward teaches. --token-mean is a probe of the loss weight
(DAPO's and Dr. GRPO's token-level mean: every target token of the step weighs 1/T, instead of
tracerl's 1/(L_resp n_resp)); it lost (E45), so it lives here and not in tracerl.py. Single process
only.
"""
import argparse

import torch

from probe import shuffle_rewards  # first: it puts the repo on sys.path (and holds the control)
import tracerl
from data.task import load_task
from eval_math import curve_recorder
from model import load_checkpoint
from tracerl import RLConfig, add_rl_args, run_tracerl

ap = argparse.ArgumentParser(description="TraceRL at one block size, with the accuracy curve")
ap.add_argument("--ckpt", required=True, help="starting checkpoint")
ap.add_argument("--block-size", type=int, default=4, help="RL and evaluation block size")
ap.add_argument("--steps", type=int, default=75, help="RL steps")
ap.add_argument("--every", type=int, default=25, help="evaluate every this many steps")
ap.add_argument("--n", type=int, default=100, help="test problems per evaluation")
ap.add_argument("--seed", type=int, default=0, help="rollout seed (curriculum --seed S's first stage uses S + 1)")
ap.add_argument("--eval-seed", type=int, default=0, help="seed of the mean@3 decodes (curriculum --seed S uses S)")
ap.add_argument("--shuffle-rewards", action="store_true", help="the control: rewards permuted inside each group")
ap.add_argument("--token-mean", action="store_true",
                help="a probe: every target token weighs 1/T (T = the step's target tokens) instead of 1/(L_resp n_resp)")
add_rl_args(ap)
a = ap.parse_args()
model, meta = load_checkpoint(a.ckpt)
train_set, test_set = load_task(meta["task"])
test_set = test_set[:a.n]
cfg = RLConfig.from_args(a, block_size=a.block_size, steps=a.steps)
if a.shuffle_rewards:
    shuffle_rewards(a.seed + 7)

if a.token_mean:  # DAPO / Dr. GRPO's token-level mean: long and short responses weigh their tokens alike
    real_rows = tracerl.build_rows

    def token_rows(*args, **kw):
        rows = real_rows(*args, **kw)
        if rows is not None:
            rows.weight = torch.full_like(rows.weight, 1.0 / len(rows.weight))
        return rows
    tracerl.build_rows = token_rows


_, on_step = curve_recorder(model, test_set, a.block_size, a.every, a.eval_seed)  # prints step 0 now
run_tracerl(model, train_set, cfg, name=f"rl{a.block_size}", seed=a.seed, on_step=on_step)
