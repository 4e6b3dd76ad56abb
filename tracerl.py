"""TraceRL: trajectory-aware RL for a block-diffusion policy (docs/design.md §6-§7).

    python tracerl.py --ckpt runs/default/sft4.pt --block-size 8 --steps 40 --out runs/x/rl8.pt
    python tracerl.py --ckpt runs/default/sft4.pt --block-size 8 --value-model --out runs/x/rl8v.pt
    torchrun --nproc_per_node 2 tracerl.py --ckpt runs/default/sft4.pt --block-size 8 --out runs/x/rl8.pt

At the default --updates 1 the update is a group-normalised policy gradient, −Σ w·A·∇log π:
its one optimiser step is taken at the weights that sampled, so the ratio ρ = π_θ / π_old is
1 on every token, PPO's clip never engages and the k3 KL to π_old and its gradient are 0.
The clip and that KL are written out below because --updates U > 1 (U optimiser steps on the
same rows) is where they act: from the second step on ρ ≠ 1.

One RL step reads top to bottom as: rollouts -> rewards -> advantages -> trace rows -> update
(steps 1-3 are rollouts.py's, 4 is traces.py's; this file is the update's maths and the loop).
  1. rollouts: P prompts x K samples at temperature 1 (--temperature: then the policy is
     the tempered one throughout), dynamic decoding at the stage's block size, with the
     trace (the forward that committed every token) and log-probs recorded;
  2. reward: 1 if the graded answer is right, else 0 (no eos = 0);
  3. advantage: z-score within each prompt's K samples (population std, 0 when std = 0);
     groups whose accuracy is outside --acc-band are dropped for the step;
  4. trace rows: the trace is cut into rounds; in round r every block's r-th (merged) step
     gives the targets, and every position decoded at that step or later is masked, i.e.
     exactly the state the sampler saw (TraceRL's trajectory-aware training);
  5. update: PPO-clip on ρ per target token plus a k3 KL penalty to π_old, summed over a
     response and divided by its length, fp32 log-probs, grad clip, AdamW.

π_old is the sampler's recorded log-prob; tests/ checks it equals the recomputation in
the training layout. With --shrink > 1 the rows are not the sampler's states (a merged
round masks tokens that were visible when its later targets were sampled), so π_old is
recomputed in the training layout once per step. Simplified from the paper: no value model
by default (`--value-model` adds the diffusion value model of value.py: A_t = R − V(s_t)),
a binary reward, no reference model by default (`--ref-kl-beta β` adds a k3 KL to the frozen
weights the stage started from). The research options of round 3 were removed in issue 28
(docs/experiments.md names the commit that last had each). Under torchrun the P prompts are
split across ranks (each prompt's K samples on one rank), the loss is normalised by global
counts and gradients are summed (dist.py).
"""
import argparse
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, fields

import torch

import dist
from data.task import DataError, add_task_args, check_fit, load_task, read_jsonl, task_from_args
from model import CheckpointError, file_sha256, load_checkpoint, pick_device, save_checkpoint
from rollouts import add_rollout_args, group_advantages, rollout  # steps 1-3
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
    """β · k3 KL of the policy to a frozen reference (--ref-kl-beta), per target token, weighted
    like the policy loss. The KL in policy_loss is to π_old, the weights that sampled: at
    --updates 1 it is exactly 0, so nothing there keeps a stage near where it started.
    This term does (TraceRL's and most RL recipes' reference model). It is taken on the RL
    rows, i.e. on states of the rollout block size: at B=16 it pulls toward the reference's
    B=16 behaviour, which for sft4 is the far over-confidence the stage must leave, and it never
    sees a B=4 state, so it is no guard of the B=4 skill by itself (docs/experiments.md E25,
    E26). Returns (loss, mean k3)."""
    kl = k3(new_lp - ref_lp)
    return beta * (weight * kl).sum(), kl.mean() if kl.numel() else kl.new_zeros(())


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
    ref_kl_beta: float     # β of the KL to the stage's starting weights (0 = off)
    shrink: int
    updates: int           # optimiser steps per RL step
    micro_batch: int
    clip_eps: float
    kl_beta: float
    acc_band: tuple
    value_model: bool
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

def rl_step(model, opt, problems, cfg: RLConfig, gen, critic=None, ref=None):
    """rollouts -> rewards -> advantages -> trace rows -> update. `ref`: the frozen
    reference of --ref-kl-beta (None = no reference term). Returns a log dict."""
    t0 = time.time()
    own = dist.rank_generator(gen)  # `gen` itself in one process
    ro = rollout(model, problems, gen, n_prompts=cfg.n_prompts, k=cfg.k, block_size=cfg.block_size,
                 threshold=cfg.threshold, temperature=cfg.temperature, distance=cfg.commit_distance,
                 sample_gen=own)
    log = rl_update(model, opt, ro, cfg, own, critic, ref)
    log.update(secs=time.time() - t0, prompts=cfg.n_prompts)
    return log


def pick_responses(ro, adv, band, k: int, critic=None):
    """Indices of the responses that get trace rows."""
    if critic is None:
        # A response with a zero advantage adds only KL terms to the loss. At the first
        # optimiser step (all of --updates 1) ρ = 1 and the reference is where the stage
        # started, so their gradient is 0 or small; its rows are not built at all. With
        # --updates > 1 or --ref-kl-beta that drops the KL pull these responses would add: a
        # simplification that saves most of the rows.
        return (adv != 0).nonzero().squeeze(1).tolist()
    # With a critic, A_t = R − V(s_t) is non-zero even where the whole group agrees:
    # every response of a group inside --acc-band is used.
    acc = ro["reward"].mean(1)
    in_band = (acc >= band[0]) & (acc <= band[1])
    return in_band.repeat_interleave(k).nonzero().squeeze(1).tolist()


def sum_over_ranks(sums: dict) -> dict:
    """{name: float} summed over the ranks, in one all-reduce (float64)."""
    total = dist.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64))
    return dict(zip(sums, total.tolist()))


def rl_update(model, opt, ro, cfg: RLConfig, gen, critic=None, ref=None):
    """Advantages -> trace rows -> PPO-clip update, for this rank's rollouts `ro`. Every
    count that normalises the loss is global (summed over ranks), so the summed gradients
    equal one process's on all the rollouts (with --updates 1; tests/test_ddp.py).
    At --updates 1 ρ = 1, so this is plain group-normalised policy gradient (module docstring)."""
    dev = next(model.parameters()).device
    adv, kept = group_advantages(ro["reward"], cfg.acc_band)
    adv = adv.view(-1)
    resp = pick_responses(ro, adv, cfg.acc_band, cfg.k, critic)
    g = sum_over_ranks(dict(right=float(ro["reward"].sum()), answers=ro["reward"].numel(),
                            kept=float(kept.sum()), resp=len(resp), n_gen=float(ro["n_gen"].sum()),
                            nfe=float(ro["nfe"].sum())))
    n_resp = int(g["resp"])  # over all ranks: the loss is the mean over every rank's responses
    # the group advantage, or the return R (the critic's value is subtracted below)
    rows = build_rows(ro, resp, adv if critic is None else ro["reward"].view(-1), n_resp, cfg.block_size,
                      cfg.shrink, dev)
    n_rows = len(rows) if rows is not None else 0
    log = dict(reward=g["right"] / g["answers"], kept=int(g["kept"]), n_resp=n_resp,
               rows=int(dist.all_reduce_sum(n_rows)), tpf=g["n_gen"] / g["nfe"], loss=0.0, clip=0.0, kl=0.0,
               ref_kl=0.0)
    if critic is not None:
        log["vloss"] = 0.0
    if log["rows"] == 0:  # no rank has a row: no update anywhere
        return log
    v_old = ret = None
    if n_rows:
        with torch.no_grad():
            if cfg.shrink > 1:
                # The rows are not the sampler's states: a merged round masks tokens that
                # were already committed when its later targets were sampled, so the
                # recorded log-probs are not π_old of these rows. π_old is then the same
                # weights in the rows' own states, which keeps the first update on-policy.
                rows.old = over_rows(row_logprobs, model, rows, cfg.block_size, cfg.micro_batch,
                                     temperature=cfg.temperature)
            if critic is not None:  # V_old of every target's state; A_t = R − V_old
                critic.model.eval()
                v_old = over_rows(row_values, critic.model, rows, cfg.block_size, cfg.micro_batch)
                ret, rows.adv = rows.adv, token_advantages(rows.adv, v_old)
            if ref is not None:  # the frozen reference's log-prob of every target, in its row's state
                rows.ref = over_rows(row_logprobs, ref, rows, cfg.block_size, cfg.micro_batch,
                                     temperature=cfg.temperature)
    tot = sum_over_ranks(optimise(model, opt, rows, cfg, gen, dev, critic, v_old, ret))
    # clip and the KLs are per target token (over every rank's tokens)
    n_tok = max(tot["tokens"], 1.0)
    log.update(loss=tot["loss"], clip=tot["clipped"] / n_tok, kl=tot["k3"] / n_tok, ref_kl=tot["ref_k3"] / n_tok)
    if critic is not None:
        log["vloss"] = tot["vloss"]
    return log


def over_rows(fn, net, rows: TraceRows, block_size: int, micro_batch: int, **kw):
    """fn (row_logprobs or row_values) of net on every row, micro-batch by micro-batch:
    one value per target token, flat in row-major order. kw: fn's extra arguments."""
    return torch.cat([fn(net, *rows.layout(slice(j, j + micro_batch)), block_size, **kw)
                      for j in range(0, len(rows), micro_batch)])


def optimise(model, opt, rows, cfg: RLConfig, gen, dev, critic=None, v_old=None, ret=None):
    """cfg.updates optimiser steps over this rank's trace rows (None: none here), shuffled
    and split into equal chunks, micro-batches accumulating into each step. With a critic
    the value model (V_old, returns ret) takes a step alongside; with rows.ref the reference
    penalty (--ref-kl-beta) joins the loss. Returns this rank's sums (loss, clipped tokens, k3,
    value loss, target tokens, reference k3) for the caller to add up over ranks."""
    n_rows = len(rows) if rows is not None else 0
    model.train()
    if critic is not None:
        critic.model.train()
    perm = torch.randperm(n_rows, generator=gen, device=dev).cpu()
    tot = dict(loss=0.0, clipped=0.0, k3=0.0, vloss=0.0, tokens=0.0, ref_k3=0.0)
    # Every rank takes cfg.updates optimiser steps (some chunks may be empty on some ranks),
    # so the ranks' all-reduces and steps line up.
    for chunk in torch.tensor_split(perm, cfg.updates):
        opt.zero_grad(set_to_none=True)
        if critic is not None:
            critic.opt.zero_grad(set_to_none=True)
        for j in range(0, len(chunk), cfg.micro_batch):
            mb = chunk[j:j + cfg.micro_batch]
            tok = rows.tokens(mb).to(dev)
            layout = rows.layout(mb.to(dev))
            # All rows' weights sum to 1 (a mean over responses) and a chunk holds ~1/updates
            # of the rows: scaling by `updates` gives every optimiser step a full-size loss,
            # the gradient scale of --updates 1.
            w = rows.weight[tok] * cfg.updates
            new = row_logprobs(model, *layout, cfg.block_size, cfg.temperature)
            loss, clip, kl = policy_loss(new, rows.old[tok], rows.adv[tok], w, cfg.clip_eps, cfg.kl_beta)
            ref_kl = 0.0
            if rows.ref is not None:
                ref_loss, ref_kl = reference_penalty(new, rows.ref[tok], w, cfg.ref_kl_beta)
                loss, ref_kl = loss + ref_loss, ref_kl.item()
            loss.backward()
            n = len(tok)
            tot["loss"] += loss.item() / cfg.updates
            tot["clipped"] += clip.item() * n
            tot["k3"] += kl.item() * n
            tot["tokens"] += n
            tot["ref_k3"] += ref_kl * n
            if critic is not None:
                v = row_values(critic.model, *layout, cfg.block_size)
                vl = value_loss(v, v_old[tok], ret[tok], w, critic.clip)
                vl.backward()
                tot["vloss"] += vl.item() / cfg.updates
        dist.all_reduce_grads(model)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        # A non-finite loss on any rank stops every rank (deciding alone would leave the
        # others waiting in the next all-reduce).
        if dist.all_reduce_sum(float(not math.isfinite(tot["loss"]))) or not torch.isfinite(norm):
            raise FloatingPointError(f"the loss is {tot['loss']}, gradient norm {norm.item()}")
        opt.step()
        if critic is not None:
            dist.all_reduce_grads(critic.model)
            torch.nn.utils.clip_grad_norm_(critic.model.parameters(), 1.0)
            critic.opt.step()
    model.eval()
    if critic is not None:
        critic.model.eval()
    return tot


def rl_optimizer(model, lr: float):
    """A TraceRL stage's optimiser: AdamW, no weight decay, fresh for every stage."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)


def lr_at(cfg: RLConfig, step: int) -> float:
    """The learning rate of RL step `step` (0-based). Cosine decays over the step cap, to 0 at
    its end. Why a decay (E46): one update is ~98 % noise (E45, grad_snr.py) and AdamW moves each
    weight by about the learning rate whatever that share, so the noise is a random walk of size
    ~ sqrt(sum lr^2) while what the reward teaches grows like sum lr. From the same peak, cosine
    keeps half the drift and 61 % of the walk, and its late steps, where a walk has had longest
    to wander, are small."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    return cfg.lr


def run_tracerl(model, problems, cfg: RLConfig, name="rl", seed=0, on_step=None):
    """A TraceRL stage: up to cfg.steps RL steps, stopping early once the stage's trace
    rows reach cfg.max_rows (0 = never; --max-rows). With --ref-kl-beta > 0 the reference is a
    frozen copy of the weights the stage starts from. on_step(i, model), if given, is called
    after each step i = 1, 2, ... (the accuracy curves of curriculum --curve-every and
    b4_curve.py). Returns history."""
    dev = next(model.parameters()).device
    dist.broadcast_params(model)
    ref = frozen(model) if cfg.ref_kl_beta > 0 else None
    gen = torch.Generator(device=dev).manual_seed(seed)
    opt = rl_optimizer(model, cfg.lr)
    critic = Critic(model, cfg.value_lr, cfg.value_clip) if cfg.value_model else None
    hist = []
    for i in range(cfg.steps):
        lr = lr_at(cfg, i)
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
        vloss = f" | vloss {log['vloss']:.4f}" if critic is not None else ""
        vloss += f" | ref-kl {log['ref_kl']:.5f}" if ref is not None else ""
        print(f"{name} step {i + 1:3d}/{cfg.steps} | reward {log['reward']:.3f} | kept {log['kept']:2d}/"
              f"{log['prompts']} | resp {log['n_resp']:3d} | rows {log['rows']:4d} | TPF {log['tpf']:.2f} | "
              f"loss {log['loss']:+.4f} | clip {log['clip']:.3f} | kl {log['kl']:.5f}{vloss} | lr {log['lr']:.1e} | "
              f"{log['secs']:.1f}s", flush=True)
        if on_step is not None:
            on_step(i + 1, model)
        rows = sum(h["rows"] for h in hist)  # global rows: every rank stops together
        if cfg.max_rows > 0 and rows >= cfg.max_rows:
            print(f"{name}: {rows} trace rows >= the budget of {cfg.max_rows}; stage done")
            break
    return hist


def frozen(model):
    """A copy of `model` that never trains: the reference of --ref-kl-beta."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def add_rl_args(ap):
    """RL flags, shared with curriculum.py."""
    ap.add_argument("--n-prompts", type=int, default=32, help="prompts per RL step (split across torchrun ranks)")
    ap.add_argument("--k", type=int, default=8, help="samples per prompt (group size)")
    ap.add_argument("--lr", type=float, default=3e-5, help="RL learning rate (higher ones cost B=4 accuracy: docs/experiments.md E4, E6)")
    ap.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                    help="RL learning rate over the steps: constant, or cosine from --lr to 0 at the step cap (lr_at)")
    ap.add_argument("--threshold", type=float, default=0.9, help="dynamic-decoding θ for rollouts")
    add_rollout_args(ap)  # steps 1-3's flags (rollouts.py)
    ap.add_argument("--ref-kl-beta", type=float, default=0.0,
                    help="β of a k3 KL to a frozen reference, the weights the stage starts from; 0 = off")
    ap.add_argument("--shrink", type=int, default=1, help="merge every s neighbouring trace steps")
    ap.add_argument("--updates", type=int, default=1,
                    help="optimiser steps per RL step (rows split); at 1 the PPO ratio is 1, so the clip and KL are inert")
    ap.add_argument("--micro-batch", type=int, default=256, help="rows per forward (grad accumulation)")
    ap.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip ε (acts only with --updates > 1)")
    ap.add_argument("--kl-beta", type=float, default=0.01, help="k3 KL-to-π_old coefficient β (acts only with --updates > 1)")
    ap.add_argument("--acc-band", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.0, 1.0),
                    help="keep groups whose accuracy is in [lo,hi], e.g. 0.2,0.8")
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
    ap.add_argument("--steps", type=int, default=40, help="RL steps")
    ap.add_argument("--max-rows", type=int, default=0,
                    help="end the run once its trace rows (the update's work) reach this many, a cap like --steps (0 = off; "
                         "curriculum --direct-budget rows sets it for direct)")
    ap.add_argument("--seed", type=int, default=0, help="rollout seed")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    add_rl_args(ap)
    add_task_args(ap)
    a = ap.parse_args()
    try:
        dev = dist.init(pick_device(a.device))  # joins the process group under torchrun only
        if a.n_prompts < dist.world():
            raise DataError(f"--n-prompts {a.n_prompts} is smaller than the {dist.world()} processes")
        model, meta = load_checkpoint(a.ckpt, dev)
        # RL needs only training prompts: --train-jsonl alone, else the checkpoint's own task
        train_rows = read_jsonl(a.train_jsonl) if a.train_jsonl else load_task(meta.get("task") or task_from_args(a))[0]
        check_fit(train_rows, model.cfg.prompt_len, model.cfg.answer_len, "training data", fixed=True)
        hist = run_tracerl(model, train_rows, RLConfig.from_args(a), name=f"rl{a.block_size}", seed=a.seed)
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
