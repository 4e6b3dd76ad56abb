"""The block-parallel sampler: eager to read, compiled to run (and plain AR decoding, the baseline).

    python sample.py --ckpt runs/tstar/sft4.pt --block-size 4 --prompt "23+4*6-9"
    python sample.py --ckpt runs/tstar/tstar16.pt --block-size 16 --show   # watch one answer fill in
    python sample.py --ckpt runs/tstar/tstar16.pt --block-size 16 --fast   # the compiled sampler, same output

Block by block, left to right (docs/design.md §5). A block starts fully masked; each denoising
step is one forward of the block against the KV cache; a token is sampled at every
masked position and some are committed:
  * static:  the k most confident, k = ceil(block / steps);
  * ltr:     the k leftmost still-masked positions (plain left-to-right);
  * dynamic: every position whose sampled token has probability >= threshold, or the
             single most confident one if none does (Fast-dLLM / SDAR's rule);
  * schedule: a fixed schedule Ŝ replayed (schedule.py).
`commit_rule` is the one definition of the first three, which both implementations use. With
a commit distance D (`near_frontier`, ours) only masks fewer than D places right of the
block's leftmost mask are candidates.
The finished block is written to the cache by the *next* block's first step (one fused
forward), so every forward counted in tokens-per-forward (TPF) also denoises; the
prompt prefill is fused into the first block's first step the same way.

For every generated token we record the sequence's forward index at which it was
committed (`fwd`, the trace: TraceRL's "step map") and its log-probability under the sampling
policy. A sequence stops as soon as it has committed <|eos|> with no mask before it;
TPF = tokens up to and including that eos / forwards the sequence took part in.
Simplified from the paper's stack: no remasking, lockstep batches (the batch moves to the
next block together; inside a block a step runs only the rows that still have masks there,
and only those count it). Sampling draws one uniform per position (inverse CDF).

Two implementations of one sampler, same outputs for the same seed (tests/test_fast_sample.py):
`generate` is the one to read (eager, runs only the rows a step needs, builds each step's mask);
`generate_fast` keeps every shape static (fixed batch, full-length preallocated cache, masks
precomputed per block) and runs each step as one torch.compile'd function, a CUDA graph on
GPU. bench/bench_decode.py measures both against `generate_ar`.
"""
import argparse
import functools
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from data.task import DataError, encode_prompts
from data.tokenizer import EOS_ID, MASK_ID, decode
from model import CheckpointError, KVCache, cached_step_layout, load_checkpoint, pick_device

RULES = ("dynamic", "static", "ltr", "schedule")


def policy_logprobs(logits, temperature):
    """fp32 log-probs over the vocabulary of the policy at `temperature`: the distribution a
    sampler draws from and records (greedy, temperature 0, records the plain softmax), and the
    one tracerl.packed_logprobs recomputes for TraceRL, so π_old equals the recomputation.
    (The compiled step passes the temperature as a tensor, already 1 where greedy.)"""
    if not isinstance(temperature, torch.Tensor):
        temperature = temperature or 1.0
    return F.log_softmax(logits.float() / temperature, dim=-1)


def draw_uniforms(shape, generator, device):
    """The random numbers one sampling step consumes: one float64 uniform per position (the
    inverse-CDF draw of `sample_tokens`). Both samplers draw them through here, for every row of
    the block's batch, so the same seed gives the same stream whichever rows still decode."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def sample_tokens(lp_all, u):
    """One token per position from the distribution exp(lp_all) [..., V], by inverse CDF: the
    first token whose cumulative probability exceeds u [...] (scaled by the total, so a sum a
    rounding short of 1 neither runs off the end nor lands on a token of probability 0, such as
    <|mask|>). The sum is float64, where u * total < total always holds. One uniform per position,
    where torch.multinomial draws V exponentials: those were a fifth of a rollout's time."""
    cdf = lp_all.exp().double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp(max=lp_all.shape[-1] - 1)  # NaN logits search past the end: stay a token


def non_finite(logits):
    """0-dim bool: are any logits NaN or +inf? Weights blown up by an update give nonsense tokens
    otherwise; -inf is fine (GPT.head's <|mask|> and <|pad|> logits). Both samplers check it and
    raise NON_FINITE."""
    return (torch.isnan(logits) | torch.isposinf(logits)).any()


NON_FINITE = "the model's logits are not finite"


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


def commit_rule(conf, cand, threshold, k: int, by_index):
    """The commit rule, the one definition both samplers use: of the candidates cand [n, Tb],
    every one whose sampled token's probability conf [n, Tb] is >= threshold; in a row where
    none is, its k most confident candidates (by_index: its k leftmost). With `rule_args` it
    is each of the rules in the module docstring. threshold and by_index may be 0-dim tensors:
    then one compiled graph serves every rule and θ (generate_fast)."""
    commit = cand & (conf >= threshold)
    # ltr scores positions by -index, so top_k picks the leftmost candidates
    left = -torch.arange(cand.shape[1], device=cand.device, dtype=conf.dtype).expand_as(conf)
    score = torch.where(torch.as_tensor(by_index, device=cand.device), left, conf)
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
    (tracerl.round_index) and the schedule analysis (schedule.py) share. A row's forward
    indices are global (they keep counting across blocks), so the order is counted per block:
    a block's r-th step is the r-th smallest forward index among its positions."""
    *lead, A = fwd.shape
    # [..., blocks, B], the answer's end padded with -1 (never decoded) to whole blocks
    blocks = F.pad(fwd, (0, (-A) % block_size), value=-1).view(*lead, -1, block_size)
    never = torch.iinfo(fwd.dtype).max
    left = blocks.masked_fill(blocks < 0, never)  # the forwards not ranked yet
    order = torch.full_like(blocks, -1, dtype=torch.long)
    r = 0
    while True:  # at most block_size times: every block's earliest forward not ranked yet is step r
        earliest = left.min(-1, keepdim=True).values
        now = (left == earliest) & (left < never)
        if not now.any():
            break
        order[now] = r
        left = left.masked_fill(now, never)
        r += 1
    return order.view(*lead, -1)[..., :A]


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


def decode_state(cfg, N: int, dev, cache=None):
    """The buffers a block decode fills in, for N rows (`generate` and `generate_fast`):
    tokens [N, A] (all <|mask|>), fwd [N, A] (-1: not committed yet), logp [N, A] fp32,
    nfe [N], done [N] (False) and the KV cache (a new one unless given)."""
    A = cfg.answer_len
    return (torch.full((N, A), MASK_ID, dtype=torch.long, device=dev),
            torch.full((N, A), -1, dtype=torch.long, device=dev),
            torch.zeros(N, A, dtype=torch.float32, device=dev),
            torch.zeros(N, dtype=torch.long, device=dev),
            torch.zeros(N, dtype=torch.bool, device=dev),
            KVCache(cfg, N, dev) if cache is None else cache)


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
            # The random numbers are drawn for every row in the block's batch, needed or not, so
            # the stream depends only on which rows entered the block (generate_fast's too).
            u = draw_uniforms(blk.shape, generator, dev) if temperature > 0 else None
            # Only the rows that still need a step run the forward: a row that has filled its
            # block (or finished) waits for the others. The first step always runs every row,
            # and writes the pending tokens to the cache for all of them.
            every = bool(need.all())
            rows = slice(None) if every else need.nonzero().squeeze(1)
            at = alive[rows]  # their batch indices
            logits = model.decode_step(cache, pending[rows], pending_bid, blk[rows], b,
                                       None if every else rows).float()
            if non_finite(logits):  # weights blown up by an update: say so, not nonsense tokens
                raise FloatingPointError(NON_FINITE)
            pending = pending[:, :0]
            lp_all = policy_logprobs(logits, temperature)
            tok = sample_tokens(lp_all, u[rows]) if temperature > 0 else lp_all.argmax(-1)
            lp = lp_all.gather(-1, tok[..., None]).squeeze(-1)
            # The commit rule. cand: the masked positions it may commit (all of them, or
            # those within the commit distance); conf: each sampled token's probability.
            cand, conf = near_frontier(masked[rows], distance), lp.exp()
            if rule == "schedule":  # Ŝ[j]'s positions; past its end, whatever is left
                named = torch.zeros(blk.shape[1], dtype=torch.bool, device=dev)
                named[[p for p in schedule[j] if p < blk.shape[1]] if j < len(schedule) else slice(None)] = True
                commit = masked[rows] & named
            else:  # dynamic: all above θ, else the most confident; static: the k most confident;
                # ltr: the k leftmost (k = k_static)
                commit = commit_rule(conf, cand, *rule_args(rule, threshold, k_static))
            j += 1
            blk[rows] = torch.where(commit, tok, blk[rows])
            fwd[at, start:end] = torch.where(commit, nfe[at, None], fwd[at, start:end])
            logp[at, start:end] = torch.where(commit, lp, logp[at, start:end])
            nfe[at] += 1
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
        tok = (sample_tokens(lp_all, draw_uniforms(N, generator, dev))
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


# ----------------------------------------------------------------------------- the compiled sampler
# `generate` made fast: the same outputs for the same seed (tests/test_fast_sample.py), with a fixed
# batch, a full-length preallocated cache, masks precomputed per block, and each denoising step one
# torch.compile'd call (a CUDA graph on GPU). Simplified from a serving engine: one fixed batch per
# call (no continuous batching, no paged cache); the `schedule` rule is left to `generate`.
#
# The compile budget: one graph serves every batch size, block width and cache length (dynamic
# shapes), and every knob that changes between the decodes of one run is a tensor (θ, the rule's
# by-index flag, the temperature, greedy or sampled), so a ladder compiles two graphs: a block's
# first step (fused with the cache write of the pending tokens) and its later steps (no pending
# tokens, a size the compiler specialises). A batch of 1 is padded to 2 for the same reason, and an
# evaluation's ragged last batch to its full size (pad_to). tests/test_compiled_path.py counts them.

@functools.lru_cache(maxsize=64)
def _block_layouts(P: int, A: int, S: int, block_size: int, device: str):
    """Everything position-related of a decode, built once, before the loop.

    The fast path attends to the whole preallocated KV cache (S = max_seq_len slots) and
    hides the slots not written yet with the mask, so every forward of a kind has one
    static shape and no mask is built inside the loop. Per block: (start, end, first,
    later), where first is the block's first step, fused with the cache write of the
    pending tokens (the prompt for block 0, else the previous block, now clean), and
    later is every later step (the block alone). Each is (cache slots the pending tokens
    go to, pos [T], mask [T, S + T]), from model.cached_step_layout. (The mask window,
    which depends on which tokens are still masked, is applied per step by GPT.hidden.)"""
    out = []
    for b, start in enumerate(range(0, A, block_size)):
        end = min(start + block_size, A)
        p0, pending_bid = (0, -1) if b == 0 else (P + start - block_size, b - 1)
        steps = []
        for L in (p0, P + start):  # cache length at the first step, then at later steps
            pos, mask = cached_step_layout(L, P + start - L, pending_bid, end - start, b, S, device)
            steps.append((slice(L, P + start), pos, mask))
        out.append((start, end, *steps))
    return out


def _denoise_step(model, pending, blk, pos, mask, cache_k, cache_v, fwd, logp, nfe, done, u,
                  threshold, by_index, temperature, sampled, k: int, distance: int):
    """One step of `generate`'s inner loop for the whole fixed batch, as a pure function of
    tensors, so torch.compile traces forward + sampling + commit rule as one graph.
    pending [N, Tp] (Tp = 0 after a block's first step); blk/fwd/logp [N, Tb] are the
    block's tokens, trace (the forward index that committed each) and log-probs.
    Finished rows ride along: they never `need` a step, so they commit nothing and count
    no forward. The forward attends to the full, static-size cache and writes nothing:
    it returns the pending tokens' keys/values for the caller to copy into the cache (a
    compiled function that mutates no input is the simple case for CUDA graphs).
    u [N, Tb] are `generate`'s uniforms (draw_uniforms; zeros when greedy), so with the same
    draws the tokens equal its own: every row computes, but the rows `generate` leaves out commit
    nothing here. threshold, by_index, temperature (1 when greedy) and sampled are 0-dim tensors,
    k and distance ints (one value per run). Also returns flags = [more, bad]: does any row need
    another step, and were any logits non-finite (the caller raises `generate`'s error; until
    then the clamp in sample_tokens keeps every index inside the vocabulary)."""
    Tp = pending.shape[1]
    x, keys, values = model.hidden(torch.cat([pending, blk], 1), pos, mask, cache_k, cache_v)
    logits = model.head(x)[:, Tp:].float()
    bad = non_finite(logits)
    masked = blk == MASK_ID
    need = masked.any(1) & ~done
    lp_all = policy_logprobs(logits, temperature)
    tok = torch.where(sampled, sample_tokens(lp_all, u), lp_all.argmax(-1))
    lp = lp_all.gather(-1, tok[..., None]).squeeze(-1)
    commit = commit_rule(lp.exp(), near_frontier(masked, distance), threshold, k, by_index) & need[:, None]
    blk = torch.where(commit, tok, blk)
    fwd = torch.where(commit, nfe[:, None], fwd)
    logp = torch.where(commit, lp, logp)
    nfe = nfe + need.long()
    done = done | block_done(blk)
    more = ((blk == MASK_ID).any(1) & ~done).any()
    return (blk, fwd, logp, nfe, done, torch.stack([more, bad]),
            torch.stack(keys)[:, :, :, :Tp], torch.stack(values)[:, :, :, :Tp])


_COMPILED = {}


def compiled_step(device_type: str):
    """torch.compile'd `_denoise_step`, one per device type, with dynamic shapes (see the top of
    this section) and without "duck sizing", which would give two sizes that happen to be equal
    (prompt area = block size = 16, say) one symbol, so the next block size that breaks the
    equality would cost another compile. CUDA: mode 'reduce-overhead' replays each shape as a CUDA
    graph, one launch instead of one per op (at this model size the launches, not the arithmetic,
    are most of a step). CPU: a C++ wrapper calls the kernels, not Python (bench/bench_decode.py).
    A run that needs more graphs than the recompile limit fails loudly (decode_blocks then decodes
    eagerly, in one line) instead of dynamo's silent eager fallback."""
    if device_type not in _COMPILED:
        import torch.fx.experimental._config as fx_config
        fx_config.use_duck_shape = False
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8)
        if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
            torch._dynamo.config.fail_on_recompile_limit_hit = True
        cuda = device_type == "cuda"
        _COMPILED[device_type] = torch.compile(
            _denoise_step, dynamic=True, mode="reduce-overhead" if cuda else None,
            options=None if cuda else {"cpp_wrapper": True})
    return _COMPILED[device_type]


_caches = {}              # (model shape, batch, device) -> the compiled decodes' KV cache
_warm = set()             # the shapes (with weights and cache) the compiled step has run at
_compile_seconds = [0.0]  # this process's seconds of compiling and recording graphs


def compile_seconds() -> float:
    """Seconds this process has spent compiling the sampler's step (and recording its CUDA
    graphs). They are kept out of every decode's own time: a caller that times a decode
    subtracts what this grew by, and reports it as the phase table's compile line."""
    return _compile_seconds[0]


def static_cache(cfg, N: int, dev):
    """The KV cache of the compiled decodes of N rows: one per (model shape, batch, device), reused
    by every decode and marked a static address, so a CUDA graph reads it in place instead of
    copying it into the graph at every step (about a GB at the gpu preset's rollouts). Zeroed per
    decode: the slots not written yet are masked, and must hold no stale non-finite value."""
    key = (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.max_seq_len, N, str(dev))
    if key not in _caches:
        _caches[key] = cache = KVCache(cfg, N, dev)
        torch._dynamo.mark_static_address(cache.k)
        torch._dynamo.mark_static_address(cache.v)
    cache = _caches[key]
    cache.k.zero_()
    cache.v.zero_()
    cache.len = 0
    return cache


def _warm_up(step_fn, args, cudagraphs: bool):
    """At a shape (weights, cache) the compiled step has not run at, run it once untimed (twice
    with CUDA graphs: a warm-up run, then the recording), so compiling happens here and is timed
    as compile, not inside a decode. The step is a pure function: its outputs are dropped."""
    model, pending, blk, cache_k = args[0], args[1], args[2], args[5]
    key = (next(model.parameters()).data_ptr(), cache_k.data_ptr(), *blk.shape, pending.shape[1], *args[-2:])
    if key in _warm:
        return
    _warm.add(key)
    sync = torch.cuda.synchronize if cudagraphs else (lambda: None)
    sync()
    t = time.time()
    for _ in range(2 if cudagraphs else 1):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        step_fn(*args)
    sync()
    _compile_seconds[0] += time.time() - t


@torch.no_grad()
def generate_fast(model, prompts, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
                  steps: int = None, temperature: float = 0.0, generator: torch.Generator = None,
                  compile: bool = True, stats: dict = None, distance: int = 0, pad_to: int = 0):
    """`generate` with a fixed batch, for speed: same arguments, same output dict (equal tokens,
    traces, n_gen, nfe, finished; log-probs to fp tolerance) for the same seed.

    What differs inside: the batch never shrinks (finished rows stay and are ignored),
    the KV cache is preallocated to max_seq_len and attended in full (masks precomputed
    per block hide the slots not yet written), and each step is one call of
    `_denoise_step` (forward + sampling + commit rule), compiled unless compile=False.
    pad_to: decode at least this many rows (padding rows, done from the start, draw no random
    numbers and are dropped from the output), so an evaluation's last batch has its full shape.
    Host syncs: one per block (is any row left? which?), plus one per step where it changes what
    happens: for the dynamic rule, whose step count depends on the confidences, and for every
    sampled decode, which must stop where `generate` stops to draw as many random numbers.
    Greedy static and ltr know their step count and run it out (the extra steps, once every row
    is done, commit nothing). stats, if given, receives the number of batch forwards and syncs."""
    if rule not in RULES or rule == "schedule":
        raise ValueError(f"generate_fast runs {RULES[:3]}, not {rule!r} (use generate)")
    cfg, dev = model.cfg, prompts.device
    n, A = prompts.shape[0], cfg.answer_len
    N = max(n, pad_to, 2)  # a batch of 1 would be a compiled shape of its own
    if N > n:
        prompts = torch.cat([prompts, prompts[:1].expand(N - n, -1)])
    k_static = math.ceil(block_size / (steps or block_size))
    thr, k, by_index = rule_args(rule, threshold, k_static)
    # tensors, so that a new θ, rule or temperature is not a new graph
    knobs = (torch.tensor(thr, device=dev), torch.tensor(by_index, device=dev),
             torch.tensor(temperature or 1.0, device=dev), torch.tensor(temperature > 0, device=dev))
    step_fn = compiled_step(dev.type) if compile else _denoise_step
    cudagraphs = compile and dev.type == "cuda"
    tokens, fwd, logp, nfe, done, cache = decode_state(cfg, N, dev, static_cache(cfg, N, dev) if compile else None)
    done[n:] = True
    # Fresh tensors, never views: the compiled step's guards check an input's strides (and a
    # view's base), so a view where a fresh tensor was before would be a new graph.
    prompts, no_pending = prompts.clone(), prompts.new_empty((N, 0))
    ask_every_step = rule == "dynamic" or temperature > 0
    n_fwd = n_sync = 0
    bad = torch.zeros((), dtype=torch.bool, device=dev)  # non-finite logits in a step not asked about
    pending = prompts
    layouts = _block_layouts(cfg.prompt_len, A, cfg.max_seq_len, block_size, str(dev))
    for start, end, first, later in layouts:
        Tb = end - start
        # `generate` drops finished rows here and draws, at every step, one uniform per
        # position of the rest; we draw exactly that many and scatter them to the alive rows.
        alive = (~done).nonzero().squeeze(1)
        n_sync += 1
        if len(alive) == 0:
            break
        # static/ltr: every row that needs a step commits min(k, masked) in it, so the
        # step count is known; dynamic: after each step, ask whether any row has masks.
        n_steps = Tb if rule == "dynamic" else math.ceil(Tb / min(k, Tb))
        blk = torch.full((N, Tb), MASK_ID, dtype=torch.long, device=dev)
        blk_fwd = torch.full((N, Tb), -1, dtype=torch.long, device=dev)
        blk_logp = torch.zeros(N, Tb, dtype=torch.float32, device=dev)
        u = torch.zeros(N, Tb, dtype=torch.float64, device=dev)
        for i in range(n_steps):
            slots, pos, mask = first if i == 0 else later
            if temperature > 0:
                u = draw_uniforms((len(alive), Tb), generator, dev)
                if len(alive) < N:
                    u = torch.zeros(N, Tb, dtype=u.dtype, device=dev).index_copy_(0, alive, u)
            args = (model, pending, blk, pos, mask, cache.k, cache.v, blk_fwd, blk_logp, nfe, done, u,
                    *knobs, k, distance)
            if compile:
                _warm_up(step_fn, args, cudagraphs)
            if cudagraphs:  # we clone what we keep of the last replay: its buffers may be reused
                torch.compiler.cudagraph_mark_step_begin()
            blk, blk_fwd, blk_logp, nfe, done, flags, new_keys, new_values = step_fn(*args)
            n_fwd += 1
            if i == 0:  # the pending tokens are clean: their keys/values go to the cache
                cache.k[:, :, :, slots], cache.v[:, :, :, slots] = new_keys, new_values
                pending = no_pending
            if cudagraphs:
                blk, blk_fwd, blk_logp, nfe, done = (t.clone() for t in (blk, blk_fwd, blk_logp, nfe, done))
            if ask_every_step:
                n_sync += 1
                more, bad_now = flags.tolist()
                if bad_now:
                    raise FloatingPointError(NON_FINITE)
                if not more:
                    break
            else:
                bad = bad | flags[1]
        tokens[:, start:end], fwd[:, start:end], logp[:, start:end] = blk, blk_fwd, blk_logp
        pending = blk.clone()
    if not ask_every_step:
        n_sync += 1
        if bool(bad):
            raise FloatingPointError(NON_FINITE)
    if stats is not None:
        stats.update(forwards=n_fwd, syncs=n_sync)
    # From here on exactly as in `generate`, for the n rows asked for.
    tokens = tokens.masked_fill(fwd < 0, EOS_ID)
    return outputs(tokens[:n], fwd[:n], logp[:n], nfe[:n])


# ----------------------------------------------------------------------------- which one runs

# Where the compiled sampler is used by `decode_blocks` (rollouts, evaluation, the curve). On CUDA a
# step is one CUDA-graph launch instead of one per op. On CPU the eager sampler is faster at
# the batches the main job decodes (300-512 rows: it drops finished rows, the compiled one
# keeps its static batch; bench/bench_decode.py, docs/design.md §5), so it stays eager there.
COMPILED_ON = {"cuda"}
COMPILE = True   # --no-compile sets it False: eager everywhere
_broken = []     # the reason torch.compile failed, once it has


@functools.lru_cache(maxsize=None)
def compile_unavailable(device_type: str):
    """Why torch.compile cannot build here, in one line, or None if it can be tried. Inductor
    writes C++ (CPU) or Triton kernels whose launcher is C (CUDA): both need a C compiler and
    Python's headers. Checked up front, so a caller that needs the compiled sampler can skip it
    with one line instead of failing deep inside its first compile; once per process, since
    decode_blocks asks before every decode."""
    import shutil
    import sysconfig
    names = ("c++", "g++", "clang++") if device_type == "cpu" else ("cc", "gcc", "clang")
    if device_type == "cpu" and os.environ.get("CXX"):
        names = (os.environ["CXX"],) + names
    if not any(shutil.which(n) for n in names):
        return f"no C{'++' if device_type == 'cpu' else ''} compiler on PATH ({', '.join(names)}): torch.compile cannot build"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python.h (Python's development headers): torch.compile cannot build"
    return None


def decode_blocks(model, prompts, block_size: int, rule: str = "dynamic", threshold: float = 0.9, steps: int = None,
                  temperature: float = 0.0, generator: torch.Generator = None, distance: int = 0, pad_to: int = 0):
    """The block sampler every caller decodes through: `generate_fast` (compiled) where it pays
    (COMPILED_ON), else `generate`; the same tokens either way. pad_to: an evaluation's full batch
    size, so its ragged last batch is padded to the compiled shape (generate_fast). If torch.compile
    cannot build (no C compiler, no Python headers, an unsupported GPU, past the recompile limit),
    one line says so and every later decode is eager; the random stream is rewound, so the first
    decode is the eager one's."""
    if COMPILE and not _broken and prompts.device.type in COMPILED_ON and rule != "schedule":
        why = compile_unavailable(prompts.device.type)
        state = generator.get_state() if generator is not None else None
        try:
            if why is None:
                return generate_fast(model, prompts, block_size, rule, threshold, steps, temperature, generator,
                                     distance=distance, pad_to=pad_to)
        except FloatingPointError:  # the model's own failure, not the compiler's: generate's error
            raise
        except Exception as e:  # a compile failure surfaces on the first call, as any exception type
            why = f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200] + ")"
        _broken.append(why)
        print(f"{why}; decoding eagerly from here on (--no-compile skips it)", file=sys.stderr, flush=True)
        if state is not None:
            generator.set_state(state)
    return generate(model, prompts, block_size, rule, threshold, steps, temperature, generator, distance=distance)


def show_decoding(tokens, fwd, block_size: int, color: bool = True, label: str = "forward") -> str:
    """Replay one answer's trace as text, one line per forward: '_' still masked, the
    tokens committed by that forward highlighted (reverse video on a terminal, [x]
    otherwise). Rebuilt from the trace, which records exactly what each forward did.
    (tracerl.explain passes each token's round instead of its forward: the trace rows.)"""
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
        lines.append(f"  {label} {s:2d}  " + "".join(cells))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="Decode prompts with a tstar checkpoint.")
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
    ap.add_argument("--fast", action="store_true",
                    help="decode with the compiled static-shape sampler (generate_fast; same output)")
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
        if a.fast and schedule:
            sys.exit("error: --fast does not replay a schedule (drop --fast)")
        sampler = generate_fast if a.fast else generate
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
