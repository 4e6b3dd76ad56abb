"""The diffusion value model: TraceRL's optional critic (docs/design.md §7, `tracerl.py --value-model`).

    python tracerl.py --ckpt runs/tstar/sft4.pt --block-size 8 --steps 40 --value-model --out runs/x/rl8v.pt
    python -m pytest -q tests/test_value.py

A copy of the policy's backbone with a linear head that gives one value per position.
A value belongs to a state, and in TraceRL a token's state is the trace row in which it
is a target: the noisy copy where it (and every token decoded at its step or later) is
still masked. So V(s_t) is read at the token's own position of the noisy copy in that
row, in the same training layout and the same flat target order as the policy's
log-probs (tracerl.row_logprobs).

With γ = λ = 1 and a single reward at the end of the response, every state's return is
the response's reward R, and GAE reduces to A_t = R − V(s_t): the critic replaces the
group z-score with a per-token baseline, so groups where all K samples agree still carry
signal. The value is trained with PPO's clipped value loss against R, weighted per token
exactly like the policy loss (1 / L_resp / n_resp).

Ours, not the paper's: the critic starts each RL stage as a fresh copy of that stage's
starting policy with a zero head (so V = 0 at first and A_t = R), and it is not saved
in checkpoints; a resumed stage starts its critic again.
"""
import copy

import torch
import torch.nn as nn

import dist
from model import GPT, training_input


class ValueModel(nn.Module):
    """Backbone (a deep copy, trained separately from the policy) + a linear value head."""

    def __init__(self, policy: GPT):
        super().__init__()
        self.body = copy.deepcopy(policy)
        p = next(policy.parameters())
        self.head = nn.Linear(policy.cfg.n_embd, 1, device=p.device, dtype=p.dtype)
        nn.init.zeros_(self.head.weight)  # V = 0 at the start: A_t = R until it learns
        nn.init.zeros_(self.head.bias)

    def forward(self, idx, pos, mask):
        """Values [N, T] in fp32 or wider: the body's transformer and final norm (as the
        policy's forward, mask window included), then the value head instead of the LM head."""
        x, _, _ = self.body.hidden(idx, pos, mask)
        v = self.head(self.body.ln_f(x)).squeeze(-1)
        return v.to(torch.promote_types(v.dtype, torch.float32))


def row_values(vm, prompts, clean, noisy_mask, target, block_size: int):
    """V(state each target token was decoded from), for a batch of trace rows: read at the
    target's position in the noisy copy of the row where it is a target. Same arguments
    and flat [T] row-major order as tracerl.row_logprobs."""
    P, A = prompts.shape[1], clean.shape[1]
    return vm(*training_input(prompts, clean, noisy_mask, block_size))[:, P + A:][target]


def token_advantages(returns, values):
    """γ = λ = 1 with a terminal reward: GAE's advantage is the return minus the value,
    A_t = R − V(s_t). returns and values are flat per target token."""
    return returns - values


def value_loss(new_v, old_v, returns, weight, clip: float = 0.2):
    """PPO's clipped value loss, per token: 0.5 max((V − R)², (V_clip − R)²) with
    V_clip = V_old + clamp(V − V_old, −clip, clip), so one step cannot move a value far
    from where the rollout left it. Weighted sum (weights as the policy loss)."""
    v_clip = old_v + (new_v - old_v).clamp(-clip, clip)
    return (weight * 0.5 * torch.maximum((new_v - returns) ** 2, (v_clip - returns) ** 2)).sum()


class Critic:
    """The value model and its optimiser, kept for the length of one RL stage."""

    def __init__(self, policy: GPT, lr: float, clip: float = 0.2):
        self.model = ValueModel(policy)
        dist.broadcast_params(self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.clip = clip
