"""The block-parallel sampler (and plain AR decoding, the speed baseline).

    python sample.py --ckpt runs/default/sft4.pt --block-size 4 --prompt "23+4*6-9"
    python sample.py --ckpt runs/default/tstar16.pt --block-size 16 --rule dynamic --threshold 0.9
    python fast_sample.py --ckpt runs/default/tstar16.pt --block-size 16   # compiled, static shapes, same flags

Block by block, left to right (docs/design.md §5). A block starts fully masked; each denoising
step is one forward of the block against the KV cache; a token is sampled at every
masked position and some are committed:
  * static:  the k most confident, k = ceil(block / steps);
  * ltr:     the k leftmost still-masked positions (plain left-to-right);
  * dynamic: every position whose sampled token has probability >= threshold, or the
             single most confident one if none does (Fast-dLLM / SDAR's rule);
  * schedule: a fixed schedule Ŝ replayed (schedule.py).
`commit_rule` is the one definition of the first three, which both samplers use. With a
commit distance D (`near_frontier`, ours) only masks fewer than D places right of the
block's leftmost mask are candidates.
The finished block is written to the cache by the *next* block's first step (one fused
forward), so every forward counted in tokens-per-forward (TPF) also denoises; the
prompt prefill is fused into the first block's first step the same way.

For every generated token we record the sequence's forward index at which it was
committed (`fwd`, the trace: TraceRL's "step map") and its log-probability under the sampling
policy. A sequence stops as soon as it has committed <|eos|> with no mask before it;
TPF = tokens up to and including that eos / forwards the sequence took part in.
Simplified from the paper's stack: no remasking, lockstep batches (a forward runs while
any row of the batch still has masks; rows that are done do not count it).

Two implementations, same outputs for the same seed (tests/test_fast_sample.py):
`generate` is the one to read (eager, drops finished rows, builds each step's mask);
`fast_sample.generate_fast` keeps every shape static (fixed batch, full-length
preallocated cache, masks precomputed per block) and runs each step as one
torch.compile'd function, a CUDA graph on GPU. bench/bench_decode.py measures both against `generate_ar`.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from data.task import DataError, encode_prompts
from data.tokenizer import EOS_ID, MASK_ID, decode
from model import CheckpointError, KVCache, load_checkpoint, pick_device

RULES = ("dynamic", "static", "ltr", "schedule")


def policy_logprobs(logits, temperature: float):
    """fp32 log-probs over the vocabulary of the policy at `temperature`: the distribution a
    sampler draws from and records (greedy, temperature 0, records the plain softmax), and the
    one traces.row_logprobs recomputes for TraceRL, so π_old equals the recomputation."""
    return F.log_softmax(logits.float() / (temperature or 1.0), dim=-1)


def top_k(score, cand, k: int):
    """Bool [n, Tb]: the k highest-scoring candidates of each row (fewer if it has fewer)."""
    top = score.masked_fill(~cand, -math.inf).topk(min(k, cand.shape[1]), dim=1).indices
    return torch.zeros_like(cand).scatter_(1, top, True) & cand


def rule_args(rule: str, threshold: float, k: int):
    """(threshold, k, by_index) under which `commit_rule` applies `rule`: dynamic is itself
    with a fallback of 1; static and ltr are the dynamic rule with a bar nobody clears
    (threshold = inf), so every row falls back to its k best (ltr: its k leftmost)."""
    if rule == "dynamic":
        return threshold, 1, False
    return math.inf, k, rule == "ltr"


def commit_rule(conf, cand, threshold, k: int, by_index: bool):
    """The commit rule, the one definition both samplers use: of the candidates cand [n, Tb],
    every one whose sampled token's probability conf [n, Tb] is >= threshold; in a row where
    none is, its k most confident candidates (by_index: its k leftmost). With `rule_args` it
    is each of the rules in the module docstring; as one function of tensor values one
    compiled graph serves all of them (fast_sample.py), and a new θ is not a new graph."""
    commit = cand & (conf >= threshold)
    # ltr scores positions by -index, so top_k picks the leftmost candidates
    score = conf if not by_index else -torch.arange(cand.shape[1], device=cand.device,
                                                    dtype=conf.dtype).expand_as(conf)
    return commit | (top_k(score, cand, k) & ~commit.any(1, keepdim=True))


def near_frontier(masked, distance: int):
    """Commit distance (ours): of the masked positions [n, Tb], the candidates fewer than
    `distance` places right of the row's leftmost mask (0 = every masked position). With
    distance = 4 a B=16 block is decoded like a sliding B=4 block; raising it lets the
    model commit further ahead of the filled-in frontier, where a small-block model is
    confidently wrong (docs/design.md §5). Log-probs are unaffected: it only narrows
    which sampled tokens may be committed."""
    if distance <= 0:
        return masked
    idx = torch.arange(masked.shape[1], device=masked.device)
    # leftmost mask; a row with no mask gets 0, harmless: it has no candidate anyway
    first = masked.long().argmax(1)
    return masked & (idx[None, :] < (first + distance)[:, None])


def commit_order(fwd, block_size: int):
    """Within-block commit order of every position of a trace fwd [..., A]: 0 for the tokens
    the block's first denoising step committed, 1 for its second, and so on; -1 where
    never decoded. The one definition of "the r-th step of a block" that TraceRL's rounds
    (traces.round_index) and the schedule analysis (schedule.py) share. A row's forward
    indices are global (they keep counting across blocks), so the order is counted per block."""
    *lead, A = fwd.shape
    f = F.pad(fwd, (0, (-A) % block_size), value=-1).view(*lead, -1, block_size)
    dec = f >= 0
    i = torch.arange(block_size, device=fwd.device)
    # count each distinct forward index once: at its leftmost position in the block
    seen_left = ((f[..., :, None] == f[..., None, :]) & (i[None, :] < i[:, None])).any(-1)
    first = dec & ~seen_left
    # order = how many distinct earlier forwards committed something in this block
    order = ((f[..., None, :] < f[..., :, None]) & first[..., None, :]).sum(-1)
    return torch.where(dec, order, -1).view(*lead, -1)[..., :A]


def outputs(tokens, fwd, logp, nfe):
    """The output dict every sampler returns, on the CPU. One definition of n_gen for all of
    them (tokens up to and including the first eos, A if none), so their TPFs compare.
    fwd=None means AR decoding: token i came from forward i."""
    is_eos = tokens == EOS_ID
    has_eos = is_eos.any(1)
    n_gen = torch.where(has_eos, is_eos.long().argmax(1) + 1, tokens.shape[1])
    if fwd is None:
        idx = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        fwd = torch.where(idx < n_gen[:, None], idx, -1)
    out = dict(tokens=tokens, fwd=fwd, logp=logp, n_gen=n_gen, nfe=nfe, finished=has_eos)
    return {k: v.cpu() for k, v in out.items()}


def decode_state(cfg, N: int, dev):
    """The buffers a block decode fills in, for N rows (`generate` and fast_sample's
    `generate_fast`): tokens [N, A] (all <|mask|>), fwd [N, A] (-1: not committed yet),
    logp [N, A] fp32, nfe [N], done [N] (False) and the KV cache."""
    A = cfg.answer_len
    return (torch.full((N, A), MASK_ID, dtype=torch.long, device=dev),
            torch.full((N, A), -1, dtype=torch.long, device=dev),
            torch.zeros(N, A, dtype=torch.float32, device=dev),
            torch.zeros(N, dtype=torch.long, device=dev),
            torch.zeros(N, dtype=torch.bool, device=dev),
            KVCache(cfg, N, dev))


def block_done(blk):
    """[n] bool: has the row finished in this block [n, Tb]? An eos is committed and
    nothing before it is still masked (tokens after it may be: they are never decoded)."""
    is_eos = blk == EOS_ID
    first_eos = torch.where(is_eos.any(1), is_eos.long().argmax(1), blk.shape[1])
    before = torch.arange(blk.shape[1], device=blk.device)[None, :] < first_eos[:, None]
    return is_eos.any(1) & ~((blk == MASK_ID) & before).any(1)


@torch.no_grad()
def generate(model, prompts, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
             steps: int = None, temperature: float = 0.0, generator: torch.Generator = None,
             schedule=None, distance: int = 0):
    """Decode the answer area for a batch of left-padded prompts [N, P].

    distance > 0 limits commits to masks fewer than `distance` places right of the block's
    leftmost mask (`near_frontier`); 0 = anywhere in the block.

    rule "schedule" replays a fixed schedule Ŝ (schedule.py): a list whose j-th entry holds
    the in-block positions to commit at a block's j-th step, whatever the confidences.

    Returns a dict of CPU tensors: tokens [N, A] (eos where never decoded), fwd [N, A] (the
    trace: the sequence's forward index that committed each token, -1 if never decoded), logp [N, A]
    (fp32 log-prob of the committed token under the sampling policy), n_gen [N] (tokens up
    to and including the first eos, A if none), nfe [N] (forwards each row took part in),
    finished [N] (an eos was produced)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    if (rule == "schedule") != (schedule is not None):
        raise ValueError("rule 'schedule' and a schedule go together")
    cfg, dev = model.cfg, prompts.device
    N, A = prompts.shape[0], cfg.answer_len
    k_static = math.ceil(block_size / (steps or block_size))
    tokens, fwd, logp, nfe, done, cache = decode_state(cfg, N, dev)
    alive = torch.arange(N, device=dev)  # batch indices of the sequences still decoding (in the cache)
    pending, pending_bid = prompts, -1
    for b, start in enumerate(range(0, A, block_size)):
        end = min(start + block_size, A)
        blk = tokens[alive, start:end]
        j = 0  # denoising step within the block (the batch moves through a block in lockstep)
        while True:
            masked = blk == MASK_ID
            need = masked.any(1) & ~done[alive]
            if not need.any():
                break
            logits = model.decode_step(cache, pending, pending_bid, blk, b).float()
            # weights blown up by an update: say so, not a multinomial error (-inf is fine:
            # GPT.head's <|mask|> and <|pad|> logits)
            if (torch.isnan(logits) | torch.isposinf(logits)).any():
                raise FloatingPointError("the model's logits are not finite")
            pending = pending[:, :0]
            lp_all = policy_logprobs(logits, temperature)
            if temperature > 0:
                tok = torch.multinomial(lp_all.exp().view(-1, lp_all.shape[-1]), 1,
                                        generator=generator).view(blk.shape)
            else:
                tok = lp_all.argmax(-1)
            lp = lp_all.gather(-1, tok[..., None]).squeeze(-1)
            # The commit rule. cand: the masked positions it may commit (all of them, or
            # those within the commit distance); conf: each sampled token's probability.
            cand, conf = near_frontier(masked, distance), lp.exp()
            if rule == "schedule":  # Ŝ[j]'s positions; past its end, whatever is left
                named = torch.zeros(blk.shape[1], dtype=torch.bool, device=dev)
                named[[p for p in schedule[j] if p < blk.shape[1]] if j < len(schedule) else slice(None)] = True
                commit = masked & named
            else:  # dynamic: all above θ, else the most confident; static: the k most confident;
                # ltr: the k leftmost (k = k_static)
                commit = commit_rule(conf, cand, *rule_args(rule, threshold, k_static))
            commit &= need[:, None]  # sequences that are done commit nothing
            j += 1
            blk = torch.where(commit, tok, blk)
            fwd[alive, start:end] = torch.where(commit, nfe[alive, None], fwd[alive, start:end])
            logp[alive, start:end] = torch.where(commit, lp, logp[alive, start:end])
            nfe[alive] += need.long()
            done[alive] |= block_done(blk)
        tokens[alive, start:end] = blk
        keep = ~done[alive]
        if not keep.any():
            break
        if not keep.all():  # drop finished sequences from the cache: no work is spent on them
            cache.keep(keep.nonzero().squeeze(1))
            alive, blk = alive[keep], blk[keep]
        pending, pending_bid = blk, b
    # Positions never decoded (after a row stopped) read as eos, with fwd -1. Tokens that
    # were committed after the first eos stay as they were: they are part of the state the
    # sampler saw, which TraceRL's trace rows must reproduce exactly.
    return outputs(tokens.masked_fill(fwd == -1, EOS_ID), fwd, logp, nfe)


@torch.no_grad()
def generate_ar(model, prompts, temperature: float = 0.0, generator: torch.Generator = None):
    """Plain AR decoding with a KV cache, one token per forward (the speed baseline, and
    the way to decode the AR checkpoint). Same output dict as `generate`."""
    cfg, dev = model.cfg, prompts.device
    N, A = prompts.shape[0], cfg.answer_len
    tokens = torch.full((N, A), EOS_ID, dtype=torch.long, device=dev)
    logp = torch.zeros(N, A, dtype=torch.float32, device=dev)
    nfe = torch.zeros(N, dtype=torch.long, device=dev)
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    cache = KVCache(cfg, N, dev)
    logits = model.decode_ar(cache, prompts)[:, -1]
    for i in range(A):
        lp_all = policy_logprobs(logits, temperature)
        tok = (torch.multinomial(lp_all.exp(), 1, generator=generator).squeeze(1)
               if temperature > 0 else lp_all.argmax(-1))
        tok = tok.masked_fill(done, EOS_ID)
        tokens[:, i] = tok
        logp[:, i] = lp_all.gather(-1, tok[:, None]).squeeze(1)
        nfe += (~done).long()
        done |= tok == EOS_ID
        if done.all() or i == A - 1:
            break
        logits = model.decode_ar(cache, tok[:, None])[:, -1]
    return outputs(tokens, None, logp, nfe)


def show_decoding(tokens, fwd, block_size: int, color: bool = True) -> str:
    """Replay one answer's trace as text, one line per forward: '_' still masked, the
    tokens committed by that forward highlighted (reverse video on a terminal, [x]
    otherwise). Rebuilt from the trace, which records exactly what each forward did."""
    lines = []
    for s in range(int(fwd.max()) + 1):
        if not (fwd == s).any():
            continue
        cells = []
        for i, (t, st) in enumerate(zip(tokens.tolist(), fwd.tolist())):
            if i and i % block_size == 0:
                cells.append("|")
            ch = "_" if st < 0 or st > s else ("⏎" if t >= 256 else decode([t]) or "?")
            if st == s:
                ch = f"\x1b[7m{ch}\x1b[0m" if color else f"[{ch}]"
            cells.append(ch)
        lines.append(f"  forward {s:2d}  " + "".join(cells))
    return "\n".join(lines)


def main(sampler=generate, description="Decode prompts with a tstar checkpoint."):
    """The command line. fast_sample.py runs it with its compiled sampler: sample.py cannot
    import fast_sample, which builds on this file (imports go one way)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--ckpt", required=True, help="checkpoint (.pt) written by train.py/tracerl.py")
    ap.add_argument("--prompt", action="append", default=None,
                    help="a question (repeatable); default: three test-style examples")
    ap.add_argument("--block-size", type=int, default=4, help="diffusion block size (0 = AR decoding)")
    ap.add_argument("--rule", default="dynamic", choices=RULES, help="commit rule")
    ap.add_argument("--threshold", type=float, default=0.9, help="confidence threshold (dynamic rule)")
    ap.add_argument("--steps-per-block", type=int, default=None, help="denoising steps per block (static/ltr rules)")
    ap.add_argument("--commit-distance", type=int, default=0,
                    help="commit only masks fewer than D places right of the block's leftmost mask (0 = anywhere)")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--schedule", default=None,
                    help="Ŝ JSON from schedule.py to replay (implies --rule schedule)")
    ap.add_argument("--show", action="store_true",
                    help="print the first problem's answer filling in, forward by forward")
    a = ap.parse_args()
    schedule = None
    try:
        dev = pick_device(a.device)
        model, _ = load_checkpoint(a.ckpt, dev)
        model.eval()
        qs = a.prompt or ["23+4*6-9", "7*8-15", "12+19-4"]
        prompts = encode_prompts(qs, model.cfg.prompt_len).to(dev)
        if a.schedule:
            with open(a.schedule) as f:
                schedule, a.rule = json.load(f)["schedule"], "schedule"
    except (CheckpointError, DataError, OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    g = torch.Generator(device=dev).manual_seed(a.seed)
    t0 = time.time()
    if a.block_size == 0:
        out = generate_ar(model, prompts, a.temperature, g)
    else:
        extra = {"schedule": schedule} if schedule else {}
        extra["distance"] = a.commit_distance
        out = sampler(model, prompts, a.block_size, a.rule, a.threshold, a.steps_per_block, a.temperature, g, **extra)
    dt = time.time() - t0
    if a.show:
        print(f"{qs[0]}  (B={a.block_size}, rule {a.rule}; | = block boundary)")
        print(show_decoding(out["tokens"][0], out["fwd"][0], a.block_size or 1, sys.stdout.isatty()))
    for q, ids in zip(qs, out["tokens"]):
        print(f"{q} -> {decode(ids)}")
    print(f"TPF {out['n_gen'].sum().item() / out['nfe'].sum().item():.2f}  ({dt:.2f}s)")


if __name__ == "__main__":
    main()
