"""TraceRL: trajectory-aware RL for a block-diffusion policy, one step read top to bottom.

    python tracerl.py --ckpt runs/tstar/sft4.pt --block-size 8 --steps 40 --out runs/x/rl8.pt
    python tracerl.py --ckpt runs/tstar/sft4.pt --block-size 4 --explain   # one step, printed and explained
    torchrun --nproc_per_node 2 tracerl.py --ckpt runs/tstar/sft4.pt --block-size 8 --out runs/x/rl8.pt

`rl_step` is one RL step; read it first. It runs five things in order, each a function of
this file:
  1. rollouts (`rollout`): P prompts x K samples at temperature 1, dynamic decoding at the
     stage's block size (sample.generate), which records the trace (the forward that
     committed every token) and every committed token's log-prob;
  2. rewards (`rollout` too): 1 if the graded answer is right, else 0 (no eos = 0);
  3. advantages (`group_advantages`): the z-score of the reward inside each prompt's group of
     K (population std; groups with no variance, or outside --acc-band, get 0);
  4. trace rows (`build_rows`, `trace_rows`): in round r every block's r-th denoising step
     gives the targets, and every position decoded at that step or later is masked: exactly
     the state the sampler decoded them from (TraceRL's trajectory-aware training);
  5. update (`policy_loss`): PPO-clip on rho = pi_theta / pi_old per target token plus a k3 KL
     to pi_old, weighted 1 / (L_resp * n_resp), fp32 log-probs, grad clip 1.0, AdamW.
pi_old is the sampler's recorded log-prob; tests/ check it equals the recomputation in the
training layout (`row_logprobs`). At the default --updates 1 the one optimiser step is taken
at the weights that sampled, so rho = 1 on every token: the clip never engages, the KL and its
gradient are 0, and the update is a group-normalised policy gradient, -sum w * A * grad log pi.
The clip and KL are written out because --updates U > 1 is where they act.

Off by default, each one marked "[option]" where it enters rl_step, so the default path reads
without them: --value-model (value.py: A_t = R - V(s_t)), --ref-kl-beta (a k3 KL to the
weights the stage started from), --shrink (merge neighbouring steps of a trace into one
action), --updates > 1. `python tracerl.py --explain` prints one step on one prompt's group,
from the K samples to every target token's share of the loss (`explain`).

Simplified from the paper: a binary reward, no reward model, no value model by default. The
loss weight is ours: every response counts equally (docs/design.md §7), where TraceRL's code
weighs every token equally. Under torchrun (dist.py) the P prompts are split across ranks
(each prompt's K samples on one rank, so no reward is gathered), the loss is normalised by
global counts and gradients are summed.
"""
import argparse
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, fields

import torch
from torch.nn.utils.rnn import pad_sequence

import dist
from data.task import DataError, add_task_args, check_fit, encode_prompts, is_correct, load_task, read_jsonl, \
    task_from_args
from data.tokenizer import decode
from data.tokenizer import MASK_ID, PAD_ID
from model import CheckpointError, attention_mask, file_sha256, load_checkpoint, pick_device, save_checkpoint, \
    training_input
import sample
from sample import commit_order, compile_seconds, decode_blocks, policy_logprobs, show_decoding
from train import blew_up, finite, release_memory
from value import Critic, token_advantages, value_loss


# ----------------------------------------------------------------------------- settings

@dataclass
class RLConfig:
    """What a TraceRL stage runs with: the flags of add_rl_args plus the stage's block
    size, step cap and trace-row budget. Build it with RLConfig.from_args."""
    block_size: int        # training and rollout block size
    steps: int             # RL steps (a cap, with max_rows)
    n_prompts: int         # P prompts per step
    k: int                 # K samples per prompt
    lr: float
    threshold: float       # θ of the rollouts' dynamic decoding
    temperature: float
    commit_distance: int
    ref_kl_beta: float     # [option] β of the KL to the stage's starting weights (0 = off)
    shrink: int            # [option] merge every s neighbouring trace steps (1 = off)
    updates: int           # optimiser steps per RL step (1 = the default)
    micro_batch: int
    clip_eps: float
    kl_beta: float
    acc_band: tuple
    value_model: bool      # [option] the diffusion value model (value.py)
    value_lr: float
    value_clip: float
    max_rows: int = 0      # end the stage once its trace rows reach this (0 = never)
    lr_schedule: str = "constant"  # or "cosine": lr * (1 + cos(pi t / steps)) / 2 over the step cap

    @classmethod
    def from_args(cls, a, **set_fields):
        """The fields from an argparse Namespace `a` (add_rl_args' flags), `set_fields`
        overriding or adding them (block_size, steps, max_rows where `a` has none)."""
        have = {f.name: getattr(a, f.name) for f in fields(cls) if hasattr(a, f.name)}
        return cls(**{**have, **set_fields})


# ----------------------------------------------------------------------------- one RL step

def rl_step(model, opt, problems, cfg: RLConfig, gen, critic=None, ref=None, ro=None):
    """One TraceRL step: rollouts -> rewards -> advantages -> trace rows -> loss -> optimiser step.
    `gen` picks the prompts (the same on every rank); `ro`: rollouts to use instead of drawing
    new ones (tests). [option] critic: the value model (--value-model); ref: the frozen
    reference (--ref-kl-beta). [ddp] marks what makes several ranks one process: every count
    that normalises the loss is global, so the summed gradients equal one process's on all
    the rollouts (tests/test_ddp.py). Returns the step's log (`step_log`)."""
    dev, clock = next(model.parameters()).device, Laps()
    own = dist.rank_generator(gen)  # [ddp] this rank's sampling stream; `gen` itself in one process

    # 1-2. rollouts and rewards: P prompts x K samples, with their traces, log-probs and rewards
    if ro is None:
        ro = rollout(model, problems, gen, n_prompts=cfg.n_prompts, k=cfg.k, block_size=cfg.block_size,
                     threshold=cfg.threshold, temperature=cfg.temperature, distance=cfg.commit_distance,
                     sample_gen=own)
    clock.lap("rollout")

    # 3. advantages: the z-score of the reward inside each prompt's group of K. A response with
    #    advantage 0 would add only KL terms, whose gradient is 0 at --updates 1: it gets no rows.
    adv, kept = group_advantages(ro["reward"], cfg.acc_band)
    adv = adv.view(-1)
    resp = (adv != 0).nonzero().squeeze(1).tolist()
    if critic is not None:  # [option] --value-model: A_t = R − V(s_t) (option_inputs); the rows carry R
        resp, adv = critic_responses(ro["reward"], cfg.acc_band), ro["reward"].view(-1)
    n_resp = int(dist.all_reduce_sum(len(resp)))  # [ddp] the loss is a mean over every rank's responses

    # 4. trace rows: each round of each response in the state the sampler decoded it from, packed
    #    into a few sequences per response
    rows = build_rows(ro, resp, adv, n_resp, cfg.block_size, cfg.shrink, dev)
    v_old, ret = option_inputs(model, rows, cfg, critic, ref)  # [option] nothing to do by default
    clock.lap("rows")

    # 5. loss and update: PPO-clip + k3 KL per target token, micro-batches accumulating into one step
    model.train()
    sums = torch.zeros(5, dtype=torch.float64, device=dev)  # loss, clipped, k3, reference k3, tokens
    chunks = update_chunks(rows, cfg.updates, own)  # at the default --updates 1: one chunk, every pack
    for chunk in chunks:
        opt.zero_grad(set_to_none=True)
        for mb in micro_batches(rows, chunk, cfg.micro_batch):
            tok = rows.tokens(mb).to(dev)  # the flat indices of these packs' target tokens
            new = packed_logprobs(model, rows, mb, dev, cfg.temperature)
            w = rows.weight[tok] * cfg.updates  # a chunk holds 1/updates of the rows: one step's scale
            loss, clip, kl = policy_loss(new, rows.old[tok], rows.adv[tok], w, cfg.clip_eps, cfg.kl_beta)
            loss, ref_kl = with_reference(loss, new, rows, tok, w, cfg.ref_kl_beta)  # [option] --ref-kl-beta
            loss.backward()
            n = len(tok)
            sums += torch.stack([loss.detach() / cfg.updates, clip * n, kl.detach() * n, ref_kl.detach() * n,
                                 torch.tensor(float(n), device=dev)]).double()
        dist.all_reduce_grads(model)  # [ddp]
        clip_and_step(model, opt, sums[0])
    model.eval()
    vloss = critic_update(critic, rows, chunks, cfg, v_old, ret, dev) if critic is not None else None  # [option]
    clock.lap("update")
    return step_log(ro, kept, n_resp, rows, sums, clock, cfg, vloss)


class Laps:
    """rl_step's stopwatch: lap(name) keeps the seconds since the last lap (or the start) as
    secs_{name}, leaving out what the compiled sampler spent compiling meanwhile (the phase
    table's compile line, secs_compile)."""

    def __init__(self):
        self.t, self.c, self.secs = time.time(), compile_seconds(), dict(secs_compile=0.0)

    def lap(self, name):
        t, c = time.time(), compile_seconds()
        self.secs[f"secs_{name}"] = t - self.t - (c - self.c)
        self.secs["secs_compile"] += c - self.c
        self.t, self.c = t, c


def clip_and_step(model, opt, loss_sum):
    """Clip the gradient norm to 1 and take the optimiser step. A non-finite loss on any rank
    stops every rank alike (deciding alone would leave the others waiting in the next
    all-reduce); so does a non-finite gradient norm, which the all-reduce already shares."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    loss = float(loss_sum)
    if dist.all_reduce_sum(float(not math.isfinite(loss))) or not torch.isfinite(norm):
        raise FloatingPointError(f"the loss is {loss}, gradient norm {norm.item()}")
    opt.step()


def update_chunks(rows, updates: int, gen):
    """The packs in a random order, split into `updates` chunks, one optimiser step each. The
    order is a permutation of as many numbers as there are trace rows (or packs, if more),
    restricted to the packs: a uniform order of the packs that draws from `gen` what one per
    trace row would, so the next rollouts depend on the rows, not on how they are packed."""
    n_rows, n_packs = (rows.n_rows, len(rows)) if rows is not None else (0, 0)
    perm = torch.randperm(max(n_rows, n_packs), generator=gen, device=gen.device).cpu()
    return torch.tensor_split(perm[perm < n_packs], updates)


def step_log(ro, kept, n_resp, rows, sums, clock, cfg: RLConfig, vloss=None):
    """The numbers of one step's log line, over every rank (one all-reduce): reward, groups kept,
    responses and trace rows trained on, the rollouts' TPF, and per target token the loss's
    clip fraction and k3 KLs; then the step's seconds, phase by phase."""
    g = sum_over_ranks(dict(right=float(ro["reward"].sum()), answers=ro["reward"].numel(), kept=float(kept.sum()),
                            rows=rows.n_rows if rows is not None else 0, n_gen=float(ro["n_gen"].sum()),
                            nfe=float(ro["nfe"].sum()), **dict(zip(("loss", "clipped", "k3", "ref_k3", "tokens"),
                                                                   sums.tolist())),
                            **({} if vloss is None else dict(vloss=vloss))))
    n_tok = max(g["tokens"], 1.0)  # clip and the KLs are per target token, over every rank's tokens
    log = dict(reward=g["right"] / g["answers"], kept=int(g["kept"]), n_resp=n_resp, rows=int(g["rows"]),
               tpf=g["n_gen"] / g["nfe"], loss=g["loss"], clip=g["clipped"] / n_tok, kl=g["k3"] / n_tok,
               ref_kl=g["ref_k3"] / n_tok)
    if vloss is not None:
        log["vloss"] = g["vloss"]
    secs = clock.secs
    return dict(log, secs=sum(secs[f"secs_{p}"] for p in ("rollout", "rows", "update")), prompts=cfg.n_prompts,
                **{k: secs[k] for k in ("secs_rollout", "secs_rows", "secs_update", "secs_compile")})


# ----------------------------------------------------------------------------- steps 1-2: rollouts, rewards

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


@torch.no_grad()
def rollout(model, problems, gen, *, n_prompts: int, k: int, block_size: int, threshold: float,
            temperature: float = 1.0, distance: int = 0, sample_gen=None):
    """Pick P = n_prompts problems with the shared `gen` (every rank picks the same ones),
    sample K = k responses for this rank's share with `sample_gen` (default: gen), decoding
    dynamically at `block_size` and θ = `threshold` within commit `distance`, and grade them
    with the task's own grading (data.task.is_correct): reward 1 for a right answer, 0
    otherwise, no eos = 0. DDP: prompt p goes to rank p % world with all its K samples, so a
    group's mean and std (its advantage) are computed on the rank that sampled it.

    temperature tempers the sampling distribution, whose log-probs the sampler records and
    the update recomputes (row_logprobs at the same temperature). Returns a dict of CPU
    tensors: the sampler's outputs (tokens, fwd, logp, n_gen, nfe, finished; [N = G * K, ...])
    plus prompts [N, prompt_len] and reward [G, K] for this rank's G groups."""
    dev = next(model.parameters()).device
    pick = torch.randint(len(problems), (n_prompts,), generator=gen, device=dev).tolist()
    group = [problems[i] for i in pick[dist.rank()::dist.world()]]
    prompts = encode_prompts([p["question"] for p in group], model.cfg.prompt_len)
    prompts = prompts.repeat_interleave(k, 0).to(dev)
    model.eval()
    out = decode_blocks(model, prompts, block_size, "dynamic", threshold, temperature=temperature,
                   generator=sample_gen or gen, distance=distance)
    reward = torch.tensor([float(is_correct(decode(t), group[i // k]["answer"], bool(f)))
                           for i, (t, f) in enumerate(zip(out["tokens"], out["finished"]))])
    return dict(out, prompts=prompts.cpu(), reward=reward.view(len(group), k))


# ----------------------------------------------------------------------------- step 3: advantages

def group_advantages(rewards: torch.Tensor, band=(0.0, 1.0)):
    """rewards [P, K] (0/1) -> (advantages [P, K], kept [P]). Population-std z-score inside
    each group; a group is kept iff its accuracy (mean reward) lies in [lo, hi] (--acc-band)
    and it has any variance. Dropped groups get advantage 0."""
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, unbiased=False, keepdim=True)
    kept = (mean.squeeze(1) >= band[0]) & (mean.squeeze(1) <= band[1]) & (std.squeeze(1) > 0)
    adv = (rewards - mean) / std.clamp_min(1e-8)
    return adv * kept[:, None], kept


def sum_over_ranks(sums: dict) -> dict:
    """{name: float} summed over the ranks, in one all-reduce (float64)."""
    total = dist.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64))
    return dict(zip(sums, total.tolist()))


# ----------------------------------------------------------------------------- step 4: trace rows

def round_index(fwd: torch.Tensor, block_size: int, shrink: int = 1) -> torch.Tensor:
    """Per-position round of one response's trace fwd [A]: the within-block commit order
    (sample.commit_order: 0 for what a block's first denoising step committed, 1 for its
    second, ...), every `shrink` neighbouring steps merged into one action; never decoded
    (-1) -> a large number, so no round ever targets or unmasks it."""
    rounds = commit_order(fwd, block_size)
    return torch.where(rounds >= 0, rounds // shrink, 10 ** 6)


def trace_rows(fwd: torch.Tensor, block_size: int, shrink: int = 1):
    """The rounds of one response's trace fwd [A]: a list of (noisy_mask [A], target [A])
    bool pairs. Round r masks every position with round >= r (and every never-decoded one)
    and targets the positions with round == r, in all blocks at once, so a response gives
    as many rows as its most-stepped block took (merged) steps."""
    rounds = round_index(fwd, block_size, shrink)
    decoded = fwd >= 0
    n_rounds = int(rounds[decoded].max()) + 1 if decoded.any() else 0
    return [(rounds >= r, rounds == r) for r in range(n_rounds)]


def row_logprobs(model, prompts, clean, noisy_mask, target, block_size: int, temperature: float = 1.0):
    """fp32 log-probs of the target tokens of a batch of trace rows in the training layout
    (model.training_input), under the policy tempered by `temperature` (the rollouts'
    --temperature: the distribution the sampler drew from, so pi_old equals the sampler's
    recorded log-probs). prompts [R, P], clean [R, A] (final response), noisy_mask/target
    [R, A] bool. Returns a flat [T] tensor in row-major order of target positions."""
    P, A = prompts.shape[1], clean.shape[1]
    idx, pos, mask = training_input(prompts, clean, noisy_mask, block_size)
    logits, _ = model(idx, pos=pos, mask=mask)
    lp = policy_logprobs(logits[:, P + A:], temperature).gather(-1, clean[..., None]).squeeze(-1)
    return lp[target]


def pack_response(prompt, clean, fwd, block_size: int, shrink: int = 1, max_len: int = 128):
    """All trace rows of one response packed into few training sequences (ours; docs/design.md
    §6): [prompt | clean blocks | noisy copies of blocks], one noisy copy of block b for every
    round r with targets in b: block b as round r saw it (every position of round >= r
    masked), its targets the positions of round r. That is block b's part of the trace row
    of round r (`trace_rows`, the definition), and the copies below are exactly those parts.

    The rows of a response share their prompt and clean copy, and a noisy block sees only
    the prompt, the clean blocks before it and itself (model.attention_mask), so the noisy
    copies of every round can sit side by side, each seeing only itself (its `copy` id).
    Copies of a block at rounds without a target in it, clean blocks after the last one a
    copy needs and never-decoded blocks feed no target and are left out. Every target token
    keeps exactly the context it has in its trace row, so its log-prob is the same number
    from far fewer tokens (tests check it against row_logprobs). Attention costs the square
    of a sequence's length, so the copies are spread over as many sequences as keep each
    within about `max_len` tokens (at least one copy each).

    Returns a list of dicts of [T] tensors: tokens, label (the clean token each position
    predicts), pos, block (-1: prompt), noisy, copy (a noisy copy's round), target; answer_pos
    [n_targets] (where each target sits in the answer); rounds (the response's number of
    trace rows, on its first sequence; 0 on the others)."""
    P, A, B = prompt.shape[0], clean.shape[0], block_size
    rounds = round_index(fwd, B, shrink)  # [A]; never decoded: a large number
    decoded = fwd >= 0
    copies = []  # (block b, round r, b's answer positions), block by block, round by round
    for b in range(math.ceil(A / B)):
        at = torch.arange(b * B, min(b * B + B, A))  # a last block may be cut short by the answer's end
        for r in rounds[at][decoded[at]].unique().tolist():
            copies.append((b, r, at))
    if not copies:
        return []
    end = min((copies[-1][0] + 1) * B, A)  # the answer up to its last decoded block
    per_seq = max(1, (max_len - P - end) // B)
    packs = []
    for j in range(0, len(copies), per_seq):
        part = copies[j:j + per_seq]
        need = min(part[-1][0] * B, A)  # the clean blocks before the last copy's block
        at = torch.cat([a for _, _, a in part])  # every noisy token's answer position,
        cb = torch.cat([torch.full_like(a, b) for b, _, a in part])  # its block
        cr = torch.cat([torch.full_like(a, r) for _, r, a in part])  # and its copy's round
        n = len(at)
        # each copy as its round saw it (round >= r masked), its targets the positions of round r
        pack = dict(
            tokens=torch.cat([prompt, clean[:need], clean[at].masked_fill(rounds[at] >= cr, MASK_ID)]),
            label=torch.cat([prompt, clean[:need], clean[at]]),
            pos=torch.cat([torch.arange(P), P + torch.arange(need), P + at]),
            block=torch.cat([torch.full((P,), -1), torch.arange(need) // B, cb]),
            noisy=torch.cat([torch.zeros(P + need, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]),
            copy=torch.cat([torch.zeros(P + need, dtype=torch.long), cr]),
            target=torch.cat([torch.zeros(P + need, dtype=torch.bool), rounds[at] == cr]))
        pack["answer_pos"] = pack["pos"][pack["target"]] - P
        pack["rounds"] = max(r for _, r, _ in copies) + 1 if j == 0 else 0
        packs.append(pack)
    return packs


@dataclass
class TraceRows:
    """This rank's trace rows of one RL step, packed into a few sequences per response
    (pack_response). The per-token tensors are flat over every target token in packed
    order (as packed_logprobs returns them); pack i's tokens are old[offsets[i]:offsets[i + 1]]."""
    packs: list            # pack_response's dicts, every response's
    response: list         # which response (index into the rollouts) each pack is
    old: torch.Tensor      # [T] pi_old log-prob of every target token (the sampler's)
    adv: torch.Tensor      # [T] its advantage (with a critic: built as the return R, then R − V_old)
    weight: torch.Tensor   # [T] 1 / (L_resp * n_resp): a response's weights sum to 1 / n_resp
    offsets: torch.Tensor  # [n + 1] (CPU)
    ref: torch.Tensor = None  # [option] [T] the frozen reference's log-prob (--ref-kl-beta)

    def __len__(self):
        return len(self.packs)

    @property
    def n_rows(self) -> int:
        """How many trace rows the packs hold (what the log and --max-rows count)."""
        return sum(p["rounds"] for p in self.packs)

    def tokens(self, idx):
        """Indices into the flat per-token tensors of packs idx, in order."""
        return torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in idx.tolist()])

    def batch(self, idx, dev):
        """(tokens, pos, mask, label, target) of packs idx, padded to the longest of them: the
        model's input. A pad position is seen by no one and sees only itself."""
        packs = [self.packs[i] for i in idx.tolist()]
        n = torch.tensor([len(p["tokens"]) for p in packs])
        T = int(n.max())
        pad = lambda k, v: pad_sequence([p[k] for p in packs], batch_first=True, padding_value=v).to(dev)
        block, noisy, copy_id, pos = pad("block", -1), pad("noisy", False), pad("copy", 0), pad("pos", 0)
        valid = (torch.arange(T)[None, :] < n[:, None]).to(dev)
        mask = attention_mask(block, noisy, pos, block, noisy, pos, copy_id, copy_id) & valid[:, None, :]
        mask |= torch.eye(T, dtype=torch.bool, device=dev)
        return pad("tokens", PAD_ID), pos, mask, pad("label", 0), pad("target", False)


def build_rows(ro, resp, per_response, n_resp: int, block_size: int, shrink: int, dev, max_len: int = 128):
    """Pack the trace rows of responses `resp` (decoded at `block_size`, every `shrink` steps
    merged), with the sampler's recorded log-probs as pi_old and per_response[i] (advantage
    or return) on every target token of response i. n_resp is the global response count
    that normalises the loss. None if there is no row.

    The weight is ours (docs/design.md §7): 1 / (L_resp * n_resp) per token, so every response
    counts once whatever its length; TraceRL's code divides by a fixed length instead."""
    packs, used, old, adv, weight = [], [], [], [], []
    for i in resp:
        # L_resp = every token the sampler committed for this response (tokens committed
        # after the first eos are actions too), so a response's weights sum to 1 / n_resp.
        w = 1.0 / (float((ro["fwd"][i] >= 0).sum()) * n_resp)
        for p in pack_response(ro["prompts"][i], ro["tokens"][i], ro["fwd"][i], block_size, shrink, max_len):
            n_t = len(p["answer_pos"])
            packs.append(p)
            used.append(i)
            old.append(ro["logp"][i][p["answer_pos"]])
            adv.append(torch.full((n_t,), float(per_response[i])))
            weight.append(torch.full((n_t,), w))
    if not packs:
        return None
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor([len(o) for o in old]).cumsum(0)])
    return TraceRows(packs, used, torch.cat(old).to(dev), torch.cat(adv).to(dev), torch.cat(weight).to(dev), offsets)


def packed_logprobs(model, rows: TraceRows, idx, dev, temperature: float = 1.0):
    """fp32 log-probs of the target tokens of packs idx under the policy tempered by
    `temperature`, flat in packed order: the numbers row_logprobs gives in each trace row's
    own layout, at the temperature the sampler drew from (so pi_old equals them)."""
    tokens, pos, mask, label, target = rows.batch(idx, dev)
    x, _, _ = model.hidden(tokens, pos, mask)
    logits = model.head(x[target])  # the LM head on the targets alone: no other output is read
    return policy_logprobs(logits, temperature).gather(-1, label[target][:, None]).squeeze(-1)


def packed_values(vm, rows: TraceRows, idx, dev):
    """[option] --value-model: V(state each target was decoded from), flat in packed order:
    the value model read at the target's position in its own noisy copy."""
    tokens, pos, mask, _, target = rows.batch(idx, dev)
    return vm(tokens, pos, mask)[target]


# ----------------------------------------------------------------------------- step 5: the loss

def k3(delta):
    """Schulman's k3 estimator of KL per sampled token, delta = log pi_theta − log pi_other:
    exp(−delta) − 1 + delta, >= 0 and 0 only at delta = 0."""
    return torch.exp(-delta) - 1 + delta


def token_losses(new_lp, old_lp, adv, weight, eps: float = 0.2, beta: float = 0.01):
    """Each target token's term of the loss (they sum to policy_loss's loss), and the ratio
    rho: weight * (−min(rho A, clip(rho, 1 − eps, 1 + eps) A) + beta k3). All [T] fp32."""
    delta = new_lp - old_lp
    ratio = delta.exp()
    pg = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    kl = k3(delta)
    return weight * (-pg + beta * kl), ratio, kl


def policy_loss(new_lp, old_lp, adv, weight, eps: float = 0.2, beta: float = 0.01):
    """PPO-clip + k3 KL to pi_old, per target token. All [T] fp32; weight = 1/L_resp/n_resp.
    Returns (loss, clip fraction, mean k3 KL). The clip fraction counts the tokens whose
    gradient PPO's min actually cuts: A > 0 with rho > 1 + eps, A < 0 with rho < 1 − eps."""
    per_token, ratio, kl = token_losses(new_lp, old_lp, adv, weight, eps, beta)
    loss = per_token.sum()
    cut = ((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps))
    clipped = cut.float().mean() if ratio.numel() else ratio.new_zeros(())
    return loss, clipped, kl.mean() if kl.numel() else kl.new_zeros(())


# ----------------------------------------------------------------------------- [options], off by default

def with_reference(loss, new_lp, rows: TraceRows, tok, weight, beta: float):
    """[option] --ref-kl-beta: the loss plus β · k3 KL of the policy to a frozen reference on the
    target tokens tok, weighted like the policy loss; (loss, mean k3), the loss unchanged without
    a reference. The KL in policy_loss is to pi_old, the weights that sampled: at --updates 1 it
    is exactly 0, so nothing there keeps a stage near where it started. This term does. It is
    taken on the RL rows, states of the rollout block size, so it never sees a B=4 state: no
    guard of the B=4 skill by itself (docs/design.md §7)."""
    if rows.ref is None:
        return loss, torch.zeros((), device=loss.device)
    kl = k3(new_lp - rows.ref[tok])
    return loss + beta * (weight * kl).sum(), kl.mean() if kl.numel() else kl.new_zeros(())


def critic_responses(rewards, band):
    """[option] --value-model: the responses that get rows. A_t = R − V(s_t) is non-zero even
    where a whole group agrees, so every response of a group inside --acc-band is used."""
    acc = rewards.mean(1)
    in_band = (acc >= band[0]) & (acc <= band[1])
    return in_band.repeat_interleave(rewards.shape[1]).nonzero().squeeze(1).tolist()


def micro_batches(rows: TraceRows, chunk, size: int):
    """The packs of `chunk` in micro-batches of `size`, packs of similar length together (less
    padding; the order of the packs inside one optimiser step changes no gradient)."""
    if len(chunk) == 0:
        return []
    chunk = chunk[torch.tensor([len(rows.packs[i]["tokens"]) for i in chunk.tolist()]).argsort(stable=True)]
    return [chunk[j:j + size] for j in range(0, len(chunk), size)]


def over_packs(fn, net, rows: TraceRows, micro_batch: int, dev, **kw):
    """fn (packed_logprobs or packed_values) of net on every pack, micro-batch by micro-batch:
    one value per target token, flat in packed order. kw: fn's extra arguments."""
    every = torch.arange(len(rows))
    return torch.cat([fn(net, rows, every[j:j + micro_batch], dev, **kw) for j in range(0, len(rows), micro_batch)])


@torch.no_grad()
def option_inputs(model, rows: TraceRows, cfg: RLConfig, critic=None, ref=None):
    """[option] What the off-default options need before the update, set on `rows`:
    --shrink > 1: pi_old recomputed in the rows' own states (a merged round masks tokens that
    were committed when its later targets were sampled, so the recorded log-probs are not
    pi_old of these rows; recomputing keeps the first update on-policy); --value-model:
    V_old of every target's state and A_t = R − V_old; --ref-kl-beta: the reference's
    log-probs. Returns (V_old, returns R), None without a critic."""
    v_old = ret = None
    if rows is None:  # no rows on this rank
        return v_old, ret
    dev = rows.old.device
    if cfg.shrink > 1:
        rows.old = over_packs(packed_logprobs, model, rows, cfg.micro_batch, dev, temperature=cfg.temperature)
    if critic is not None:
        critic.model.eval()
        v_old = over_packs(packed_values, critic.model, rows, cfg.micro_batch, dev)
        ret, rows.adv = rows.adv, token_advantages(rows.adv, v_old)
    if ref is not None:
        rows.ref = over_packs(packed_logprobs, ref, rows, cfg.micro_batch, dev, temperature=cfg.temperature)
    return v_old, ret


def critic_update(critic, rows: TraceRows, chunks, cfg: RLConfig, v_old, ret, dev) -> float:
    """[option] --value-model: the value model's optimiser steps, on the same chunks and
    micro-batches as the policy's, PPO's clipped value loss against the return R (value.py).
    Returns this rank's summed value loss."""
    critic.model.train()
    vloss = 0.0
    for chunk in chunks:
        critic.opt.zero_grad(set_to_none=True)
        for mb in micro_batches(rows, chunk, cfg.micro_batch):
            tok = rows.tokens(mb).to(dev)
            v = packed_values(critic.model, rows, mb, dev)
            vl = value_loss(v, v_old[tok], ret[tok], rows.weight[tok] * cfg.updates, critic.clip)
            vl.backward()
            vloss += vl.item() / cfg.updates
        dist.all_reduce_grads(critic.model)
        torch.nn.utils.clip_grad_norm_(critic.model.parameters(), 1.0)
        critic.opt.step()
    critic.model.eval()
    return vloss


def frozen(model):
    """[option] A copy of `model` that never trains: the reference of --ref-kl-beta."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ----------------------------------------------------------------------------- the loop

def rl_optimizer(model, lr: float):
    """A TraceRL stage's optimiser: AdamW, no weight decay, fresh for every stage."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)


def rl_lr(cfg: RLConfig, step: int) -> float:
    """The learning rate of RL step `step` (0-based): constant, or a cosine from cfg.lr to 0 at the
    step cap. Why a decay (docs/design.md §7): one step's gradient is mostly noise, and AdamW moves
    each weight by about the learning rate whatever that share, so the noise is a random walk; a
    cosine keeps the late steps, where the walk has had longest to grow, small."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    return cfg.lr


def run_tracerl(model, problems, cfg: RLConfig, name="rl", seed=0, on_step=None, eta=None):
    """A TraceRL stage: up to cfg.steps RL steps, stopping early once the stage's trace
    rows reach cfg.max_rows (0 = never; --max-rows). on_step(i, model), if given, is called
    after each step i = 1, 2, ... (curriculum --curve-every); eta(i, hist), if given, returns
    text for the end of step i's log line (curriculum: the run's remaining time). Returns the
    history, one log dict per step."""
    dev = next(model.parameters()).device
    dist.broadcast_params(model)
    ref = frozen(model) if cfg.ref_kl_beta > 0 else None  # [option]
    gen = torch.Generator(device=dev).manual_seed(seed)
    opt = rl_optimizer(model, cfg.lr)
    critic = Critic(model, cfg.value_lr, cfg.value_clip) if cfg.value_model else None  # [option]
    hist = []
    for i in range(cfg.steps):
        lr = rl_lr(cfg, i)
        for group in opt.param_groups:
            group["lr"] = lr
        try:
            log = rl_step(model, opt, problems, cfg, gen, critic, ref)
            if not finite(model):
                raise FloatingPointError("the weights are no longer finite after the update")
        except FloatingPointError as e:  # from the update, or the sampler's next logits
            raise blew_up(f"{name} step {i + 1}", str(e), "--lr", cfg.lr) from None
        log["lr"] = lr
        hist.append(log)
        release_memory()  # freed rollouts and rows back to the OS: else the resident memory only grows
        extra = f" | vloss {log['vloss']:.4f}" if critic is not None else ""
        extra += f" | ref-kl {log['ref_kl']:.5f}" if ref is not None else ""
        print(f"{name} step {i + 1:3d}/{cfg.steps} | reward {log['reward']:.3f} | kept {log['kept']:2d}/"
              f"{log['prompts']} | resp {log['n_resp']:3d} | rows {log['rows']:4d} | TPF {log['tpf']:.2f} | "
              f"loss {log['loss']:+.4f} | clip {log['clip']:.3f} | kl {log['kl']:.5f}{extra} | lr {log['lr']:.1e} | "
              f"{log['secs']:.1f}s" + (eta(i + 1, hist) if eta is not None else ""), flush=True)
        if on_step is not None:
            on_step(i + 1, model)
        rows = sum(h["rows"] for h in hist)  # global rows: every rank stops together
        if cfg.max_rows > 0 and rows >= cfg.max_rows:
            print(f"{name}: {rows} trace rows >= the budget of {cfg.max_rows}; stage done")
            break
    return hist


# ----------------------------------------------------------------------------- --explain

def explain(model, problems, cfg: RLConfig, seed: int = 0, tries: int = 20, color: bool = False):
    """One RL step on one prompt's group, printed for a learner (`python tracerl.py --explain`):
    steps 1-3 (the K samples with their rewards and advantages), then for one sample its
    trace on its text, the trace rows built from it (step 4) and every target token's term
    of the loss (step 5). Draws up to `tries` prompts until a group has reward variance (else
    nothing would be trained). Takes no optimiser step. Returns the numbers it printed:
    terms (every target token's term, all rows), loss (the update's policy_loss on those rows,
    recomputed as rl_step does), and the rollouts (ro), chosen sample, rows."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    for _ in range(tries):  # steps 1-3 on one prompt
        ro = rollout(model, problems, gen, n_prompts=1, k=cfg.k, block_size=cfg.block_size,
                     threshold=cfg.threshold, temperature=cfg.temperature, distance=cfg.commit_distance)
        adv, kept = group_advantages(ro["reward"], cfg.acc_band)
        if kept.any():
            break
    adv = adv.view(-1)
    question = decode([t for t in ro["prompts"][0].tolist() if t < 256])
    print(f"One TraceRL step on one prompt's group: B={cfg.block_size}, K={cfg.k}, dynamic θ {cfg.threshold:g}, "
          f"temperature {cfg.temperature:g}\nquestion: {question.strip()}\n")
    print("1-3. the K samples (rollout), their rewards and group advantages (group_advantages):")
    for i, t in enumerate(ro["tokens"]):
        text = decode(t[:int(ro["n_gen"][i])]).replace("<|eos|>", "⏎")
        print(f"  sample {i}  reward {int(ro['reward'].view(-1)[i])}  advantage {float(adv[i]):+.2f}  "
              f"forwards {int(ro['nfe'][i]):2d}  {text}")
    resp = (adv != 0).nonzero().squeeze(1).tolist()
    if not resp:
        print("\nEvery sample got the same reward: no advantage, no trace rows, nothing to train on this "
              "prompt (try another --seed).")
        return dict(terms=torch.zeros(0), loss=0.0, ro=ro, sample=None, rows=None)
    rows = build_rows(ro, resp, adv, len(resp), cfg.block_size, cfg.shrink, dev)
    with torch.no_grad():  # step 5's numbers at the weights that sampled (rho ~ 1)
        new = over_packs(packed_logprobs, model, rows, cfg.micro_batch, dev, temperature=cfg.temperature)
        terms, ratio, _ = token_losses(new, rows.old, rows.adv, rows.weight, cfg.clip_eps, cfg.kl_beta)
        loss = policy_loss(new, rows.old, rows.adv, rows.weight, cfg.clip_eps, cfg.kl_beta)[0].item()
    s = max(resp, key=lambda i: (float(adv[i]), -i))  # a right answer, if any
    tokens, fwd = ro["tokens"][s], ro["fwd"][s]
    print(f"\n{len(resp)} samples have an advantage and get trace rows. Sample {s}'s trace "
          f"(sample.generate; [x] = committed by that forward, _ = still masked, | = block boundary):")
    print(show_decoding(tokens, fwd, cfg.block_size, color))
    rounds = round_index(fwd, cfg.block_size, cfg.shrink)
    print("\n4. its trace rows (trace_rows): round r masks what each block committed at its r-th step or "
          "later (_) and targets the r-th step's tokens ([x]), in every block at once:")
    print(show_decoding(tokens, torch.where(rounds < 10 ** 6, rounds, -1), cfg.block_size, color, label="round"))
    print(f"\n5. its target tokens (policy_loss): log-prob under the sampler (pi_old), weight w = 1/(L_resp n_resp) "
          f"with L_resp = {int((fwd >= 0).sum())}, n_resp = {len(resp)}; term = w (−rho A + β k3), rho = "
          f"pi_theta/pi_old = 1 here:")
    mine = [i for i, r in enumerate(rows.response) if r == s]  # the sample's packs
    listed = sorted((r, p, j) for i in mine for r, p, j in zip(  # its targets, round by round
        rows.packs[i]["copy"][rows.packs[i]["target"]].tolist(), rows.packs[i]["answer_pos"].tolist(),
        range(int(rows.offsets[i]), int(rows.offsets[i + 1]))))
    for r, p, j in listed:
        ch = decode([int(tokens[p])]) if int(tokens[p]) < 256 else "⏎"
        print(f"  round {r}  position {p:2d}  {ch!r:6}  log-prob {float(rows.old[j]):+.4f}  "
              f"w {float(rows.weight[j]):.5f}  A {float(rows.adv[j]):+.2f}  term {float(terms[j]):+.6f}")
    print(f"  sample {s}'s terms sum to {sum(float(terms[j]) for _, _, j in listed):+.6f} (−A/n_resp: a "
          f"response counts once, whatever its length)")
    n_rounds, n_tok = rows.packs[mine[0]]["rounds"], sum(len(rows.packs[i]["tokens"]) for i in mine)
    print(f"\nThe update packs a response's trace rows into few sequences (pack_response): this one's {n_rounds} "
          f"rows take {n_tok} tokens in {len(mine)} sequence(s), not {n_rounds} x {len(ro['prompts'][s]) + 2 * len(tokens)}.")
    print(f"The loss over all {rows.n_rows} trace rows of the group: {loss:+.6f}. At rho = 1 it is −mean(A) over "
          f"the responses, 0 up to rounding, since advantages sum to 0 in a group; its gradient, "
          f"−Σ w A ∇log pi, is not: it raises the log-probs of the right samples' tokens and lowers the wrong ones'.")
    return dict(terms=terms, loss=loss, ro=ro, sample=s, rows=rows)


# ----------------------------------------------------------------------------- command line

def add_rl_args(ap):
    """RL flags, shared with curriculum.py. The [option] flags (off by default) are listed in
    their own group."""
    g = ap.add_argument_group("TraceRL")
    g.add_argument("--n-prompts", type=int, default=32, help="prompts per RL step (split across torchrun ranks)")
    g.add_argument("--k", type=int, default=8, help="samples per prompt (group size)")
    g.add_argument("--lr", type=float, default=3e-5, help="RL learning rate (AdamW)")
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="RL learning rate over the steps: constant, or cosine from --lr to 0 at the step cap (rl_lr)")
    g.add_argument("--threshold", type=float, default=0.9, help="dynamic-decoding θ of the rollouts")
    g.add_argument("--temperature", type=positive_temperature, default=1.0,
                   help="rollout sampling temperature; the update's log-probs are of the same tempered policy")
    # 16 on CPU: the update's activations for 64 packs of up to 128 tokens set a run's peak memory,
    # and 16 is no slower there (docs/experiments.md, the update's micro-batch); the gpu preset takes 64
    g.add_argument("--micro-batch", type=int, default=16,
                   help="packed trace-row sequences per forward (gradients accumulate into one step)")
    o = ap.add_argument_group("TraceRL options, off by default")
    o.add_argument("--commit-distance", type=int, default=0,
                   help="rollouts commit only masks fewer than D places right of the block's leftmost mask "
                        "(0 = anywhere; sample.near_frontier)")
    o.add_argument("--ref-kl-beta", type=float, default=0.0,
                   help="β of a k3 KL to a frozen reference, the weights the stage starts from; 0 = off")
    o.add_argument("--shrink", type=int, default=1, help="merge every s neighbouring trace steps into one action")
    o.add_argument("--updates", type=int, default=1,
                   help="optimiser steps per RL step (rows split); at 1 the PPO ratio is 1, so the clip and KL are inert")
    o.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip ε (acts only with --updates > 1)")
    o.add_argument("--kl-beta", type=float, default=0.01, help="k3 KL-to-π_old β (acts only with --updates > 1)")
    o.add_argument("--acc-band", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.0, 1.0),
                   help="keep groups whose accuracy is in [lo,hi], e.g. 0.2,0.8")
    o.add_argument("--value-model", action="store_true",
                   help="advantage R - V(state) from a diffusion value model instead of the group z-score (value.py)")
    o.add_argument("--value-lr", type=float, default=1e-3, help="value model learning rate")
    o.add_argument("--value-clip", type=float, default=0.2, help="value loss clip (PPO value clipping)")


def main():
    ap = argparse.ArgumentParser(description="TraceRL on a block-diffusion checkpoint.")
    ap.add_argument("--ckpt", required=True, help="starting checkpoint (.pt)")
    ap.add_argument("--out", default=None, help="where to write the trained checkpoint (.pt); needed unless --explain")
    ap.add_argument("--explain", action="store_true",
                    help="print one RL step on one prompt's group, from the samples to each token's share of "
                         "the loss, and exit (trains nothing)")
    ap.add_argument("--block-size", type=int, default=8, help="training and rollout block size")
    ap.add_argument("--steps", type=int, default=40, help="RL steps")
    ap.add_argument("--max-rows", type=int, default=0,
                    help="end the run once its trace rows reach this many, a cap like --steps (0 = off)")
    ap.add_argument("--seed", type=int, default=0, help="rollout seed (which prompts, which samples)")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--no-compile", action="store_true", help="decode rollouts eagerly on GPU too (sample.decode_blocks)")
    add_rl_args(ap)
    add_task_args(ap)
    a = ap.parse_args()
    sample.COMPILE = not a.no_compile
    if not a.explain and not a.out:
        sys.exit("error: --out is required (where to write the trained checkpoint), unless --explain")
    try:
        dev = pick_device(a.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        dev = dist.init(dev)  # joins the process group under torchrun only
        if a.n_prompts < dist.world():
            raise DataError(f"--n-prompts {a.n_prompts} is smaller than the {dist.world()} processes")
        model, meta = load_checkpoint(a.ckpt, dev)
        # RL needs only training problems: --train-jsonl alone, else the checkpoint's own task
        train_set = read_jsonl(a.train_jsonl) if a.train_jsonl else load_task(meta.get("task") or task_from_args(a))[0]
        check_fit(train_set, model.cfg.prompt_len, model.cfg.answer_len, "training data", fixed=True)
        if a.explain:
            explain(model, train_set, RLConfig.from_args(a), seed=a.seed, color=sys.stdout.isatty())
            return
        hist = run_tracerl(model, train_set, RLConfig.from_args(a), name=f"rl{a.block_size}", seed=a.seed)
        if dist.is_main():
            # parent_sha256: this file's parent is --ckpt, so a run folder that holds both resumes
            # without rebuilding it
            save_checkpoint(a.out, model, dict({k: meta[k] for k in ("task", "seed") if k in meta}, stage="rl",
                                               block_size=a.block_size, rl_history=hist, parent=os.path.abspath(a.ckpt),
                                               parent_sha256=file_sha256(a.ckpt)))
            print(f"saved {a.out}")
        dist.barrier()
    except (CheckpointError, DataError, FloatingPointError) as e:
        dist.fail(f"error: {e}")  # every rank fails alike; rank 0 says why
    dist.close()


if __name__ == "__main__":
    main()
