"""TraceRL's trace -> rows step (docs/design.md §6): a response's trace (the forward that
committed each token) cut into training rows that reproduce, in the [prompt | clean | noisy]
training layout, exactly the states the sampler decoded from.

    python -m pytest -q tests/test_tracerl.py tests/test_sample.py   # rows by hand; π_old == recomputation

Round r of a response masks every position its block committed at its r-th step or later
and targets the positions committed at the r-th step, in all blocks at once, so a response
gives as many rows as its most-stepped block took (merged) steps: B / shrink at most (one
token per step), far fewer under dynamic decoding, which commits several tokens a step
(TraceRL's shrinkage merges neighbouring steps into one action). tracerl.py builds these rows for every response with an advantage
and runs the update on them; the value model (value.py) reads the same rows.
"""
from dataclasses import dataclass

import torch

from model import training_input
from sample import commit_order, policy_logprobs


def round_index(fwd: torch.Tensor, block_size: int, shrink: int = 1) -> torch.Tensor:
    """Per-position round index of one response's trace fwd [A] (-1 = never decoded ->
    a large number, so no round ever targets or unmasks it). The round is the within-block
    commit order (sample.commit_order); shrinkage merges every `shrink` neighbouring steps of
    a block into one action."""
    rounds = commit_order(fwd, block_size)
    return torch.where(rounds >= 0, rounds // shrink, 10 ** 6)


def trace_rows(fwd: torch.Tensor, block_size: int, shrink: int = 1):
    """The rounds of one response's trace fwd [A]: a list of (noisy_mask [A], target [A])
    bool pairs. Round r masks every position with round >= r (and every never-decoded one)
    and targets the positions with round == r, in all blocks at once."""
    rounds = round_index(fwd, block_size, shrink)
    decoded = fwd >= 0
    n_rounds = int(rounds[decoded].max()) + 1 if decoded.any() else 0
    return [(rounds >= r, rounds == r) for r in range(n_rounds)]


def row_logprobs(model, prompts, clean, noisy_mask, target, block_size: int, temperature: float = 1.0):
    """fp32 log-probs of the target tokens of a batch of rows in the training layout, under
    the policy tempered by `temperature` (the rollouts' --temperature: the distribution the
    sampler drew from, so π_old equals the sampler's recorded log-probs).
    prompts [R, P], clean [R, A] (final response), noisy_mask/target [R, A] bool.
    Returns a flat [T] tensor in row-major order of target positions."""
    P, A = prompts.shape[1], clean.shape[1]
    idx, pos, mask = training_input(prompts, clean, noisy_mask, block_size)
    logits, _ = model(idx, pos=pos, mask=mask)
    lp = policy_logprobs(logits[:, P + A:], temperature).gather(-1, clean[..., None]).squeeze(-1)
    return lp[target]


@dataclass
class TraceRows:
    """This rank's trace rows of one RL step, stacked. Row i is one round of one response:
    its prompt, the final response (clean), which positions its noisy copy masks, and
    which of those are its targets. The per-token tensors are flat over every row's
    targets in row-major order (as row_logprobs returns them); row i's tokens are
    old[offsets[i]:offsets[i + 1]]."""
    prompt: torch.Tensor   # [R, P]
    clean: torch.Tensor    # [R, A] the sampled response
    noisy: torch.Tensor    # [R, A] bool: masked in this row's noisy copy
    target: torch.Tensor   # [R, A] bool: the tokens this row trains
    old: torch.Tensor      # [T] π_old log-prob of every target token
    adv: torch.Tensor      # [T] its advantage (with a critic: built as the return R, then R − V_old)
    weight: torch.Tensor   # [T] 1 / (L_resp * n_resp): a response's weights sum to 1 / n_resp
    offsets: torch.Tensor  # [R + 1] (CPU)
    ref: torch.Tensor = None  # [T] the frozen reference's log-prob (--ref-kl-beta), set by rl_update

    def __len__(self):
        return self.prompt.shape[0]

    def layout(self, idx):
        """(prompt, clean, noisy, target) of rows idx: row_logprobs' and row_values' inputs."""
        return self.prompt[idx], self.clean[idx], self.noisy[idx], self.target[idx]

    def tokens(self, idx):
        """Indices into the flat per-token tensors of rows idx, in row-major order."""
        return torch.cat([torch.arange(self.offsets[r], self.offsets[r + 1]) for r in idx.tolist()])


def build_rows(ro, resp, per_response, n_resp: int, block_size: int, shrink: int, dev):
    """Cut the traces of responses `resp` (decoded at `block_size`) into trace rows
    (trace_rows, merging every `shrink` steps), with the sampler's recorded log-probs as
    π_old and per_response[i] (advantage or return) on every target token of response i.
    n_resp is the global response count that normalises the loss. None if there is no row."""
    rows = []  # (prompt, clean, noisy, target, old, adv, weight) per row
    for i in resp:
        # 1/L_resp with L_resp = every token the sampler committed for this response
        # (tokens committed after the first eos are actions too), so a response's
        # weights sum to 1 / n_resp.
        w = 1.0 / (float((ro["fwd"][i] >= 0).sum()) * n_resp)
        for noisy, tgt in trace_rows(ro["fwd"][i], block_size, shrink):
            n_t = int(tgt.sum())
            rows.append((ro["prompts"][i], ro["tokens"][i], noisy, tgt, ro["logp"][i][tgt],
                         torch.full((n_t,), float(per_response[i])), torch.full((n_t,), w)))
    if not rows:
        return None
    cols = list(zip(*rows))
    prompt, clean, noisy, target = (torch.stack(c).to(dev) for c in cols[:4])
    old, adv, weight = (torch.cat(c).to(dev) for c in cols[4:])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), target.sum(1).cpu().cumsum(0)])
    return TraceRows(prompt, clean, noisy, target, old, adv, weight, offsets)
