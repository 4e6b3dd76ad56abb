"""TraceRL: trajectory-aware RL for a block-diffusion policy (docs/design.md §6-§7).

    python tracerl.py --ckpt runs/default/sft4.pt --block-size 8 --steps 40 --out runs/x/rl8.pt
    python tracerl.py --ckpt runs/default/sft4.pt --block-size 8 --value-model --out runs/x/rl8v.pt
    torchrun --nproc_per_node 2 tracerl.py --ckpt runs/default/sft4.pt --block-size 8 --out runs/x/rl8.pt

One RL step reads top to bottom as: rollouts -> rewards -> advantages -> trace rows -> update
(steps 1-3 are rollouts.py's, 4 is traces.py's; this file is the update's maths and the loop).
  1. rollouts: P prompts x K samples at temperature 1 (--temperature: then the policy is
     the tempered one throughout), dynamic decoding at the rollout block size, with the
     trace (the forward that committed every token) and log-probs recorded;
  2. reward: 1 if the graded answer is right, else 0 (no eos = 0);
  3. advantage: z-score within each prompt's K samples (population std, 0 when std = 0);
     groups whose accuracy is outside --acc-band are dropped for the step;
  4. trace rows: the trace is cut into rounds; in round r every block's r-th (merged) step
     gives the targets, and every position decoded at that step or later is masked, i.e.
     exactly the state the sampler saw (TraceRL's trajectory-aware training);
  5. update: PPO-clip on ρ = π_θ / π_old per target token plus a k3 KL penalty, summed
     over a response and divided by its length, fp32 log-probs, grad clip, AdamW.

π_old is the sampler's recorded log-prob; tests/ checks it equals the recomputation in
the training layout. Where the rows are not the sampler's states (rollouts at another
block size, the warm-up of a block-size change; or --shrink > 1, whose merged rounds mask
tokens that were visible when later targets were sampled) π_old is recomputed in the
training layout once per step. With the default --updates 1 that one optimiser step is
taken at the sampling weights, so ρ = 1, the clip and the KL do nothing, and the update
is group-normalised policy gradient; --updates > 1 takes several steps on the same rows,
where ρ moves away from 1 and the clip and KL start to act. Simplified from the paper: no
value model by default (`--value-model` adds the diffusion value model of value.py:
A_t = R − V(s_t)), binary reward by default, no reference model by default. Ours, off by
default (docs/experiments.md, round 3): `--reach-spread` and `--threshold-spread` (a group's
samples decode with different commit distances, or θs), `--speed-alpha` (a right answer earns
1 + α·TPF), `--tpf-advantage` (z(reward) + z(TPF) inside a group, after LightningRL, without
its NLL term or batch-level renormalisation) and `--ref-kl` (a k3 KL to the frozen weights
the stage started from). Under torchrun the P prompts are split across ranks (each prompt's K samples
on one rank), the loss is normalised by global counts and gradients are summed (dist.py).
"""
import argparse
import copy
import math
import os
import sys
import time

import torch

import dist
from data.task import DataError, add_task_args, check_fit, load_task, read_jsonl, task_from_args
from model import CheckpointError, file_sha256, load_checkpoint, pick_device, save_checkpoint
from rollouts import add_rollout_args, advantages, merge_rollouts, rollout  # steps 1-3
from train import blew_up, finite
from traces import TraceRows, build_rows, row_logprobs  # the trace -> rows step
from value import Critic, row_values, token_advantages, value_loss


# ----------------------------------------------------------------------------- maths

def k3(delta):
    """Schulman's k3 estimator of KL per sampled token, delta = log π_θ − log π_other:
    exp(−delta) − 1 + delta, >= 0 and 0 only at delta = 0."""
    return torch.exp(-delta) - 1 + delta


def policy_loss(new_lp, old_lp, adv, weight, eps: float = 0.2, beta: float = 0.01):
    """PPO-clip + k3 KL to π_old, per target token. All [T] fp32; weight = 1/L_resp/n_resp.
    Returns (loss, clip fraction, mean k3 KL). The clip fraction counts the tokens whose
    gradient PPO's min actually cuts: A > 0 with ρ > 1 + ε, A < 0 with ρ < 1 − ε."""
    delta = new_lp - old_lp
    ratio = delta.exp()
    pg = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    kl = k3(delta)
    loss = (weight * (-pg + beta * kl)).sum()
    cut = ((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps))
    clipped = cut.float().mean() if ratio.numel() else ratio.new_zeros(())
    return loss, clipped, kl.mean() if kl.numel() else kl.new_zeros(())


def reference_penalty(new_lp, ref_lp, weight, beta: float):
    """β · k3 KL of the policy to a frozen reference (--ref-kl), per target token, weighted
    like the policy loss. The KL in policy_loss is to π_old, the weights that sampled: at
    --updates 1 it is exactly 0, so nothing there keeps a stage near where it started.
    This term does (TraceRL's and most RL recipes' reference model). It is taken on the RL
    rows, i.e. on states of the rollout block size: at B=16 it pulls toward the reference's
    B=16 behaviour, which for sft4 is the far over-confidence the stage must leave, and it never
    sees a B=4 state, so it is no guard of the B=4 skill by itself (docs/experiments.md E25,
    E26). Returns (loss, mean k3)."""
    kl = k3(new_lp - ref_lp)
    return beta * (weight * kl).sum(), kl.mean() if kl.numel() else kl.new_zeros(())


# ----------------------------------------------------------------------------- one RL step

def rl_step(model, opt, problems, a, gen, critic=None, ref=None):
    """rollouts -> rewards -> advantages -> trace rows -> update. `ref`: the frozen
    reference of --ref-kl (None = no reference term). Returns a log dict."""
    t0 = time.time()
    own = dist.rank_generator(gen)  # `gen` itself in one process
    draw = lambda: rollout(model, problems, a.n_prompts, a.k, a.rollout_block_size, a.threshold, gen, own,
                           a.commit_distance, a.reach_spread, a.speed_alpha, a.temperature, a.threshold_spread,
                           a.hint_samples)
    ro, draws = draw(), 1
    # Dynamic sampling (DAPO's): a group whose K samples all agree has no advantage, and with
    # bimodal per-prompt accuracy most groups do, so a step may learn from ~5 prompts. Draw
    # P more prompts until --min-groups groups carry signal (at most --max-draws draws). The
    # count is global, so every rank draws as often as the others.
    while draws < a.max_draws and a.min_groups and \
            dist.all_reduce_sum(float(advantages(ro, a)[1].sum())) \
            < a.min_groups:
        ro, draws = merge_rollouts(ro, draw()), draws + 1
    log = rl_update(model, opt, ro, a, own, critic, ref)
    log.update(secs=time.time() - t0, prompts=draws * a.n_prompts)
    return log


def pick_responses(ro, adv, a, critic=None):
    """Indices of the responses that get trace rows."""
    if critic is None:
        # A response with a zero advantage adds only KL terms to the loss. At the first
        # optimiser step (all of --updates 1) ρ = 1 and the reference is where the stage
        # started, so their gradient is 0 or small; its rows are not built at all. With
        # --updates > 1 or --ref-kl that drops the KL pull these responses would add: a
        # simplification that saves most of the rows.
        return (adv != 0).nonzero().squeeze(1).tolist()
    # With a critic, A_t = R − V(s_t) is non-zero even where the whole group agrees:
    # every response of a group inside --acc-band is used.
    acc = ro["correct"].mean(1)
    in_band = (acc >= a.acc_band[0]) & (acc <= a.acc_band[1])
    return in_band.repeat_interleave(a.k).nonzero().squeeze(1).tolist()


def rl_update(model, opt, ro, a, gen, critic=None, ref=None):
    """Advantages -> trace rows -> PPO-clip update, for this rank's rollouts `ro`. Every
    count that normalises the loss is global (summed over ranks), so the summed gradients
    equal one process's on all the rollouts (with --updates 1; tests/test_ddp.py).

    With the default --updates 1 there is one optimiser step per RL step, taken at the
    weights that sampled, so ρ = π_θ / π_old = 1 throughout: the clip never engages and
    the k3 KL and its gradient are 0. The default is therefore plain group-normalised
    policy gradient, −Σ w·A·∇log π. --updates U > 1 splits the rows into U chunks, one
    optimiser step each; from the second step on ρ ≠ 1, and PPO's clip and the KL
    penalty keep the later steps near the policy that sampled."""
    dev = next(model.parameters()).device
    adv, kept = advantages(ro, a)
    adv = adv.view(-1)
    resp = pick_responses(ro, adv, a, critic)
    # "reward" in the log is the share of right answers (the speed term, if any, is not in it),
    # so reward curves and --target-reward read the same with or without --speed-alpha
    g = dist.all_reduce_sum(torch.tensor([ro["correct"].sum(), ro["correct"].numel(), kept.sum(), len(resp),
                                          ro["n_gen"].sum(), ro["nfe"].sum()], dtype=torch.float64))
    n_resp = int(g[3])  # over all ranks: the loss is the mean over every rank's responses
    # the group advantage, or the return R (the critic's value is subtracted below)
    rows = build_rows(ro, resp, adv if critic is None else ro["reward"].view(-1), n_resp, a, dev)
    n_rows = len(rows) if rows is not None else 0
    log = dict(reward=(g[0] / g[1]).item(), kept=int(g[2]), n_resp=n_resp,
               rows=int(dist.all_reduce_sum(n_rows)), tpf=(g[4] / g[5]).item(), loss=0.0, clip=0.0, kl=0.0,
               ref_kl=0.0)
    if critic is not None:
        log["vloss"] = 0.0
    if log["rows"] == 0:  # no rank has a row: no update anywhere
        return log
    v_old = ret = None
    if n_rows:
        with torch.no_grad():
            if a.rollout_block_size != a.block_size or a.shrink > 1:
                # The rows are not the sampler's states, so its recorded log-probs are not
                # π_old of these rows: with rollouts at another block size (the warm-up) the
                # layout differs, and with shrinkage a merged round masks tokens that were
                # already committed when its later targets were sampled. π_old is then the
                # same weights in the rows' own states, which keeps the first update on-policy.
                rows.old = over_rows(row_logprobs, model, rows, a, temperature=a.temperature)
            if critic is not None:  # V_old of every target's state; A_t = R − V_old
                critic.model.eval()
                v_old = over_rows(row_values, critic.model, rows, a)
                ret, rows.adv = rows.adv, token_advantages(rows.adv, v_old)
            if ref is not None:  # the frozen reference's log-prob of every target, in its row's state
                rows.ref = over_rows(row_logprobs, ref, rows, a, temperature=a.temperature)
    tot = optimise(model, opt, rows, a, gen, dev, critic, v_old, ret)
    tot = dist.all_reduce_sum(tot)
    # clip and the KLs are per target token (over every rank's tokens)
    n_tok = tot[4].clamp_min(1)
    log.update(loss=tot[0].item(), clip=(tot[1] / n_tok).item(), kl=(tot[2] / n_tok).item(),
               ref_kl=(tot[5] / n_tok).item())
    if critic is not None:
        log["vloss"] = tot[3].item()
    return log


def over_rows(fn, net, rows: TraceRows, a, **kw):
    """fn (row_logprobs or row_values) of net on every row, micro-batch by micro-batch:
    one value per target token, flat in row-major order. kw: fn's extra arguments."""
    return torch.cat([fn(net, *rows.layout(slice(j, j + a.micro_batch)), a.block_size, **kw)
                      for j in range(0, len(rows), a.micro_batch)])


def optimise(model, opt, rows, a, gen, dev, critic=None, v_old=None, ret=None):
    """a.updates optimiser steps over this rank's trace rows (None: none here), shuffled and
    split into equal chunks, micro-batches accumulating into each step. With a critic the
    value model (V_old, returns ret) takes a step alongside; with rows.ref the reference
    penalty (--ref-kl) joins the loss. Returns this rank's [loss, clipped tokens, k3 sum,
    value loss, target tokens, reference k3 sum] (float64) for the caller to all-reduce."""
    n_rows = len(rows) if rows is not None else 0
    model.train()
    if critic is not None:
        critic.model.train()
    perm = torch.randperm(n_rows, generator=gen, device=dev).cpu()
    tot = torch.zeros(6, dtype=torch.float64)
    # Every rank takes a.updates optimiser steps (some chunks may be empty on some ranks),
    # so the ranks' all-reduces and steps line up.
    for chunk in torch.tensor_split(perm, a.updates):
        opt.zero_grad(set_to_none=True)
        if critic is not None:
            critic.opt.zero_grad(set_to_none=True)
        for j in range(0, len(chunk), a.micro_batch):
            mb = chunk[j:j + a.micro_batch]
            tok = rows.tokens(mb).to(dev)
            layout = rows.layout(mb.to(dev))
            # All rows' weights sum to 1 (a mean over responses) and a chunk holds ~1/updates
            # of the rows: scaling by `updates` gives every optimiser step a full-size loss,
            # the gradient scale of --updates 1.
            w = rows.weight[tok] * a.updates
            new = row_logprobs(model, *layout, a.block_size, a.temperature)
            loss, clip, kl = policy_loss(new, rows.old[tok], rows.adv[tok], w, a.clip_eps, a.kl_beta)
            ref_kl = torch.zeros(())
            if rows.ref is not None:
                ref_loss, ref_kl = reference_penalty(new, rows.ref[tok], w, a.ref_kl)
                loss = loss + ref_loss
            loss.backward()
            n = len(tok)
            tot += torch.tensor([loss.item() / a.updates, clip.item() * n, kl.item() * n, 0.0, n,
                                 ref_kl.item() * n], dtype=torch.float64)
            if critic is not None:
                v = row_values(critic.model, *layout, a.block_size)
                vl = value_loss(v, v_old[tok], ret[tok], w, critic.clip)
                vl.backward()
                tot[3] += vl.item() / a.updates
        dist.all_reduce_grads(model)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        # A non-finite loss on any rank stops every rank (deciding alone would leave the
        # others waiting in the next all-reduce).
        if dist.all_reduce_sum(float(not math.isfinite(tot[0]))) or not torch.isfinite(norm):
            raise FloatingPointError(f"the loss is {tot[0].item()}, gradient norm {norm.item()}")
        opt.step()
        if critic is not None:
            dist.all_reduce_grads(critic.model)
            torch.nn.utils.clip_grad_norm_(critic.model.parameters(), 1.0)
            critic.opt.step()
    model.eval()
    if critic is not None:
        critic.model.eval()
    return tot


def run_tracerl(model, problems, a, name="rl", seed=0, ref=None):
    """A TraceRL stage: up to a.steps RL steps, stopping early once the mean rollout
    reward of the last 5 steps reaches a.target_reward (0 = never), or once the stage's trace
    rows reach a.max_rows (absent or 0 = never; --max-rows). With --ref-kl > 0 the
    reference is `ref`, or, by default, a frozen copy of the weights the stage starts from.
    Returns history."""
    dev = next(model.parameters()).device
    dist.broadcast_params(model)
    if a.ref_kl > 0:
        ref = frozen(ref if ref is not None else model)
    else:
        ref = None
    gen = torch.Generator(device=dev).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    critic = Critic(model, a.value_lr, a.value_clip) if getattr(a, "value_model", False) else None
    hist = []
    for i in range(a.steps):
        try:
            log = rl_step(model, opt, problems, a, gen, critic, ref)
            if not finite(model):
                raise FloatingPointError("the weights are no longer finite after the update")
        except FloatingPointError as e:  # from the update, or the sampler's next logits
            raise blew_up(f"{name} step {i + 1}", str(e), "--lr", a.lr) from None
        hist.append(log)
        vloss = f" | vloss {log['vloss']:.4f}" if critic is not None else ""
        vloss += f" | ref-kl {log['ref_kl']:.5f}" if ref is not None else ""
        print(f"{name} step {i + 1:3d}/{a.steps} | reward {log['reward']:.3f} | kept {log['kept']:2d}/"
              f"{log['prompts']} | resp {log['n_resp']:3d} | rows {log['rows']:4d} | TPF {log['tpf']:.2f} | "
              f"loss {log['loss']:+.4f} | clip {log['clip']:.3f} | kl {log['kl']:.5f}{vloss} | "
              f"{log['secs']:.1f}s", flush=True)
        recent = [h["reward"] for h in hist[-5:]]  # global rewards: every rank stops together
        if a.target_reward > 0 and len(recent) == 5 and sum(recent) / 5 >= a.target_reward:
            print(f"{name}: mean reward of the last 5 steps {sum(recent) / 5:.3f} >= target "
                  f"{a.target_reward}; stage done")
            break
        rows = sum(h["rows"] for h in hist)  # global rows: every rank stops together
        if getattr(a, "max_rows", 0) > 0 and rows >= a.max_rows:
            print(f"{name}: {rows} trace rows >= the budget of {a.max_rows}; stage done")
            break
    return hist


def frozen(model):
    """A copy of `model` that never trains: the reference of --ref-kl."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def check_rl_args(a):
    """The RL flag combinations that cannot work, as a ValueError (one line for the CLIs)."""
    if a.tpf_advantage and a.value_model:
        raise ValueError("--tpf-advantage is a group advantage; --value-model replaces it (choose one)")
    if not 0 <= a.hint_samples <= a.k:
        raise ValueError(f"--hint-samples must be between 0 and --k {a.k}, got {a.hint_samples}")


def add_rl_args(ap):
    """RL flags, shared with curriculum.py."""
    ap.add_argument("--n-prompts", type=int, default=32, help="prompts per RL step (split across torchrun ranks)")
    ap.add_argument("--k", type=int, default=8, help="samples per prompt (group size)")
    ap.add_argument("--lr", type=float, default=3e-5, help="RL learning rate (higher ones cost B=4 accuracy: docs/experiments.md E4, E6)")
    ap.add_argument("--threshold", type=float, default=0.9, help="dynamic-decoding θ for rollouts")
    add_rollout_args(ap)  # steps 1-3's flags (rollouts.py)
    ap.add_argument("--ref-kl", type=float, default=0.0,
                    help="β of a k3 KL to a frozen reference, the weights the stage starts from "
                         "(curriculum --ref-to picks); 0 = off")
    ap.add_argument("--min-groups", type=int, default=0,
                    help="dynamic sampling: draw --n-prompts more prompts until this many groups have "
                         "reward variance (0 = one draw per step)")
    ap.add_argument("--max-draws", type=int, default=4, help="at most this many draws per RL step (--min-groups)")
    ap.add_argument("--shrink", type=int, default=1, help="merge every s neighbouring trace steps")
    ap.add_argument("--updates", type=int, default=1, help="optimiser steps per RL step (rows split)")
    ap.add_argument("--micro-batch", type=int, default=256, help="rows per forward (grad accumulation)")
    ap.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip ε")
    ap.add_argument("--kl-beta", type=float, default=0.01, help="k3 KL coefficient β")
    ap.add_argument("--acc-band", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.0, 1.0),
                    help="keep groups whose accuracy is in [lo,hi], e.g. 0.2,0.8")
    ap.add_argument("--target-reward", type=float, default=0.0,
                    help="end the stage once the 5-step mean reward reaches this (0 = run all steps)")
    ap.add_argument("--value-model", action="store_true",
                    help="advantage R - V(state) from a diffusion value model instead of the group z-score (value.py)")
    ap.add_argument("--value-lr", type=float, default=1e-3,
                    help="value model learning rate (a tenth of it left V near 0 for a whole short stage)")
    ap.add_argument("--value-clip", type=float, default=0.2, help="value loss clip (PPO value clipping)")


def main():
    ap = argparse.ArgumentParser(description="TraceRL on a block-diffusion checkpoint.")
    ap.add_argument("--ckpt", required=True, help="starting checkpoint (.pt)")
    ap.add_argument("--out", required=True, help="where to write the trained checkpoint (.pt)")
    ap.add_argument("--block-size", type=int, default=8, help="training block size")
    ap.add_argument("--rollout-block-size", type=int, default=None, help="rollout block size (default: --block-size)")
    ap.add_argument("--steps", type=int, default=40, help="RL steps (a cap with --target-reward)")
    ap.add_argument("--max-rows", type=int, default=0,
                    help="end the run once its trace rows (the update's work) reach this many, a cap like --steps (0 = off; "
                         "curriculum --direct-budget rows sets it for direct)")
    ap.add_argument("--seed", type=int, default=0, help="rollout seed")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    add_rl_args(ap)
    add_task_args(ap)
    a = ap.parse_args()
    a.rollout_block_size = a.rollout_block_size or a.block_size
    try:
        check_rl_args(a)
    except ValueError as e:
        ap.error(str(e))
    try:
        dev = dist.init(pick_device(a.device))  # joins the process group under torchrun only
        if a.n_prompts < dist.world():
            raise DataError(f"--n-prompts {a.n_prompts} is smaller than the {dist.world()} processes")
        model, meta = load_checkpoint(a.ckpt, dev)
        # RL needs only training prompts: --train-jsonl alone, else the checkpoint's own task
        train_rows = read_jsonl(a.train_jsonl) if a.train_jsonl else load_task(meta.get("task") or task_from_args(a))[0]
        check_fit(train_rows, model.cfg.prompt_len, model.cfg.answer_len, "training data", fixed=True)
        hist = run_tracerl(model, train_rows, a, name=f"rl{a.block_size}", seed=a.seed)
        if dist.is_main():
            # parent_sha256: this file's parent is --ckpt (the inherited meta holds --ckpt's own
            # parent's digest), so a run folder that holds both resumes without rebuilding it
            save_checkpoint(a.out, model, dict(meta, stage="rl", block_size=a.block_size, rl_history=hist,
                                               parent=os.path.abspath(a.ckpt), parent_sha256=file_sha256(a.ckpt)))
            print(f"saved {a.out}")
        dist.barrier()
    except (CheckpointError, DataError, FloatingPointError) as e:
        sys.exit(f"error: {e}" if dist.is_main() else 1)  # every rank fails alike; rank 0 says why
    dist.close()


if __name__ == "__main__":
    main()
