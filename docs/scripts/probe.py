"""What the RL probes (b4_curve.py, grad_snr.py) share: the repo on the import path, and the
shuffled-rewards control. Not a script.

shuffle_rewards(seed) makes tracerl permute the K rewards inside every group at random before the
advantages: each step keeps the same groups, the same number of rewarded responses and the same
size of update, and loses only the link between a response and its reward.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tracerl  # noqa: E402


def shuffle_rewards(seed: int):
    """From now on, tracerl's group advantages are those of the rewards permuted inside each group."""
    gen = torch.Generator().manual_seed(seed)
    real = tracerl.group_advantages

    def shuffled(rewards, band=(0.0, 1.0)):
        perm = torch.stack([torch.randperm(rewards.shape[1], generator=gen) for _ in rewards])
        return real(rewards.gather(1, perm), band)
    tracerl.group_advantages = shuffled
