"""The block-parallel sampler (and plain AR decoding, the speed baseline).

    python sample.py --ckpt runs/default/sft4.pt --block-size 4 --prompt "23+4*6-9"
    python sample.py --ckpt runs/default/tstar16.pt --block-size 16 --rule dynamic --threshold 0.9
    python sample.py --ckpt runs/default/tstar16.pt --block-size 16 --fast   # compiled, static shapes

Block by block, left to right (DESIGN §6). A block starts fully masked; each denoising
step is one forward of the block against the KV cache; a token is sampled at every
masked position and some are committed:
  * static:  the k most confident, k = ceil(block / steps);
  * ltr:     the k leftmost still-masked positions (plain left-to-right);
  * dynamic: every position whose sampled token has probability >= threshold, or the
             single most confident one if none does (Fast-dLLM / SDAR's rule).
The finished block is written to the cache by the *next* block's first step (one fused
forward), so every forward counted in tokens-per-forward (TPF) also denoises; the
prompt prefill is fused into the first block's first step the same way.

For every generated token we record the sequence's forward index at which it was
committed (the trace, TraceRL's step map) and its log-probability under the sampling
policy. A sequence stops as soon as it has committed <|eos|> with no mask before it;
TPF = tokens up to and including that eos / forwards the sequence took part in.
Simplified from the paper's stack: no remasking, lockstep batches (a forward runs while
any row of the batch still has masks; rows that are done do not count it).

Two implementations, same outputs for the same seed (tests/test_fast_sample.py):
`generate` is the one to read (eager, drops finished rows, builds each step's mask);
`generate_fast` keeps every shape static (fixed batch, full-length preallocated cache,
masks precomputed per block) and runs each step as one torch.compile'd function, a
CUDA graph on GPU. bench/bench_decode.py measures both against `generate_ar`.
"""
import argparse
import functools
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from data.task import DataError, encode_prompts
from data.tokenizer import EOS_ID, MASK_ID, decode
from model import CheckpointError, KVCache, attention_mask, load_checkpoint, pick_device

RULES = ("dynamic", "static", "ltr", "schedule")


def _rule_args(rule, threshold, k):
    """(threshold, k, by_index) under which `_commit` applies `rule`. static and ltr are
    the dynamic rule with a bar nobody clears (threshold = inf), so every row takes its
    k best; written this way, one compiled graph serves all three rules."""
    if rule == "dynamic":
        return threshold, 1, False  # fall back to the single most confident
    return math.inf, k, rule == "ltr"


def _commit(conf, cand, need, threshold, k: int, by_index: bool):
    """Which candidates to commit this step. conf [n, Tb] fp32, cand [n, Tb] bool. Every
    candidate with conf >= threshold; in a row where none is, its k most confident
    candidates (by_index: its k leftmost). Rows with need = False commit nothing."""
    commit = cand & (conf >= threshold)
    # ltr scores positions by -index so topk picks the leftmost masked ones
    score = conf if not by_index else -torch.arange(cand.shape[1], device=cand.device,
                                                    dtype=conf.dtype).expand_as(conf)
    top = score.masked_fill(~cand, -math.inf).topk(min(k, cand.shape[1]), dim=1).indices
    pick = torch.zeros_like(cand).scatter_(1, top, True) & cand & ~commit.any(1, keepdim=True)
    return (commit | pick) & need[:, None]


def _choose(rule, conf, cand, need, threshold, k):
    return _commit(conf, cand, need, *_rule_args(rule, threshold, k))


@torch.no_grad()
def generate(model, prompts, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
             steps: int = None, temperature: float = 0.0, generator: torch.Generator = None,
             schedule=None):
    """Decode the answer area for a batch of left-padded prompts [N, P].

    rule "schedule" replays a fixed schedule Ŝ (schedule.py): a list whose j-th entry holds
    the in-block positions to commit at a block's j-th step, whatever the confidences.

    Returns a dict of CPU tensors: tokens [N, A] (eos where never decoded), step [N, A] (the
    sequence's forward index that committed each token, -1 if never decoded), logp [N, A]
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
    tokens = torch.full((N, A), MASK_ID, dtype=torch.long, device=dev)
    step = torch.full((N, A), -1, dtype=torch.long, device=dev)
    logp = torch.zeros(N, A, dtype=torch.float32, device=dev)
    nfe = torch.zeros(N, dtype=torch.long, device=dev)
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    cache = KVCache(cfg, N, dev)
    rows = torch.arange(N, device=dev)              # global indices of the rows in the cache
    pending, pending_bid = prompts, -1
    for b, start in enumerate(range(0, A, block_size)):
        end = min(start + block_size, A)
        blk = tokens[rows, start:end]
        j = 0  # step within the block (the batch moves through a block in lockstep)
        while True:
            masked = blk == MASK_ID
            need = masked.any(1) & ~done[rows]
            if not need.any():
                break
            logits = model.decode_step(cache, pending, pending_bid, blk, b).float()
            pending = pending[:, :0]
            if temperature > 0:
                lp_all = F.log_softmax(logits / temperature, dim=-1)
                tok = torch.multinomial(lp_all.exp().view(-1, lp_all.shape[-1]), 1,
                                        generator=generator).view(blk.shape)
            else:
                lp_all = F.log_softmax(logits, dim=-1)
                tok = lp_all.argmax(-1)
            lp = lp_all.gather(-1, tok[..., None]).squeeze(-1)
            if rule == "schedule":  # Ŝ[j]'s positions; past its end, whatever is left
                named = torch.zeros(blk.shape[1], dtype=torch.bool, device=dev)
                named[[p for p in schedule[j] if p < blk.shape[1]] if j < len(schedule) else slice(None)] = True
                commit = masked & named & need[:, None]
            else:
                commit = _choose(rule, lp.exp(), masked, need, threshold, k_static)
            j += 1
            blk = torch.where(commit, tok, blk)
            step[rows, start:end] = torch.where(commit, nfe[rows, None], step[rows, start:end])
            logp[rows, start:end] = torch.where(commit, lp, logp[rows, start:end])
            nfe[rows] += need.long()
            # Done: an eos is committed and nothing before it is still masked.
            is_eos = blk == EOS_ID
            first_eos = torch.where(is_eos.any(1), is_eos.long().argmax(1), blk.shape[1])
            before = torch.arange(blk.shape[1], device=dev)[None, :] < first_eos[:, None]
            done[rows] |= is_eos.any(1) & ~((blk == MASK_ID) & before).any(1)
        tokens[rows, start:end] = blk
        keep = ~done[rows]
        if not keep.any():
            break
        if not keep.all():  # drop finished rows from the cache: no work is spent on them
            cache.keep(keep.nonzero().squeeze(1))
            rows, blk = rows[keep], blk[keep]
        pending, pending_bid = blk, b
    # Positions never decoded (after a row stopped) read as eos, with step -1. Tokens that
    # were committed after the first eos stay as they were: they are part of the state the
    # sampler saw, which TraceRL's rows must reproduce exactly.
    tokens = tokens.masked_fill(step < 0, EOS_ID)
    is_eos = tokens == EOS_ID
    has_eos = is_eos.any(1)
    n_gen = torch.where(has_eos, is_eos.long().argmax(1) + 1, A)
    out = dict(tokens=tokens, step=step, logp=logp, n_gen=n_gen, nfe=nfe, finished=has_eos)
    return {k: v.cpu() for k, v in out.items()}


# ----------------------------------------------------------------------------- fast path

@functools.lru_cache(maxsize=64)
def _block_layouts(P: int, A: int, S: int, block_size: int, device: str):
    """Everything position-related of a decode, built once, before the loop.

    The fast path attends to the whole preallocated KV cache (max_seq_len slots) and
    hides the slots not written yet with the mask, so every forward of a kind has one
    static shape and no mask is built inside the loop. Per block: (start, end, first,
    later), where first is the block's first step, fused with the cache write of the
    pending tokens (the prompt for block 0, else the previous block, now clean), and
    later is every later step (the block alone). Each is (cache slots the pending tokens
    go to, pos [T], mask [T, S + T]): the first S mask columns are the cache slots, the
    last T the step's own tokens, pending then block."""
    slot = torch.arange(S, device=device)
    out = []
    for b, start in enumerate(range(0, A, block_size)):
        end = min(start + block_size, A)
        p0, pending_bid = (0, -1) if b == 0 else (P + start - block_size, b - 1)
        steps = []
        for L in (p0, P + start):  # cache length at the first step, then at later steps
            Tp, Tb = P + start - L, end - start
            pos = torch.arange(L, P + end, device=device)
            q_bid = torch.tensor([pending_bid] * Tp + [b] * Tb, device=device)
            q_noisy = torch.arange(Tp + Tb, device=device) >= Tp
            own = attention_mask(q_bid, q_noisy, pos, q_bid, q_noisy, pos)
            cached = (slot < L).expand(Tp + Tb, S)  # the prompt and finished blocks: all visible
            steps.append((slice(L, L + Tp), pos, torch.cat([cached, own], 1)))
        out.append((start, end, *steps))
    return out


def _cached_forward(model, idx, pos, mask, cache_k, cache_v):
    """A forward of idx [N, T] at positions pos against the full, static-size cache.
    Returns logits [N, T, V] and the new keys/values [n_layer, N, H, T, hd]. It writes
    nothing (the caller copies the pending part into the cache): a compiled function
    that mutates no input is the simple case for CUDA graphs."""
    x = model.wte(idx) + model.wpe(pos)
    ks, vs = [], []
    for i, blk in enumerate(model.blocks):
        x, k, v = blk(x, mask, cache_k[i], cache_v[i])
        ks.append(k)
        vs.append(v)
    return model.head(x), torch.stack(ks), torch.stack(vs)


def _denoise_step(model, pending, blk, pos, mask, cache_k, cache_v, stp, lpb, nfe, done, q,
                  threshold, k: int, by_index: bool, temperature: float):
    """One step of `generate`'s inner loop for the whole fixed batch, as a pure function of
    tensors, so torch.compile traces forward + sampling + commit rule as one graph.
    pending [N, Tp] (Tp = 0 after a block's first step); blk/stp/lpb [N, Tb] are the
    block's tokens, commit steps and log-probs. Finished rows ride along: they never
    `need` a step, so they commit nothing and count no forward.
    q [N, Tb, V] are Exp(1) draws: argmax(p / q) is exactly how torch.multinomial draws
    one sample, so with the same draws the tokens equal `generate`'s (without
    multinomial's host sync, which checks its input)."""
    Tp, Tb = pending.shape[1], blk.shape[1]
    logits, k_new, v_new = _cached_forward(model, torch.cat([pending, blk], 1), pos, mask,
                                           cache_k, cache_v)
    logits = logits[:, Tp:].float()
    masked = blk == MASK_ID
    need = masked.any(1) & ~done
    if temperature > 0:
        lp_all = F.log_softmax(logits / temperature, dim=-1)
        tok = (lp_all.exp() / q).argmax(-1)
    else:
        lp_all = F.log_softmax(logits, dim=-1)
        tok = lp_all.argmax(-1)
    lp = lp_all.gather(-1, tok[..., None]).squeeze(-1)
    commit = _commit(lp.exp(), masked, need, threshold, k, by_index)
    blk = torch.where(commit, tok, blk)
    stp = torch.where(commit, nfe[:, None], stp)
    lpb = torch.where(commit, lp, lpb)
    nfe = nfe + need.long()
    is_eos = blk == EOS_ID
    first_eos = torch.where(is_eos.any(1), is_eos.long().argmax(1), Tb)
    before = torch.arange(Tb, device=blk.device)[None, :] < first_eos[:, None]
    done = done | (is_eos.any(1) & ~((blk == MASK_ID) & before).any(1))
    more = ((blk == MASK_ID).any(1) & ~done).any()  # does any row need another step?
    return blk, stp, lpb, nfe, done, more, k_new[:, :, :, :Tp], v_new[:, :, :, :Tp]


_COMPILED = {}


def compiled_step(device_type: str):
    """torch.compile'd `_denoise_step`, one per device type.
    CUDA: mode 'reduce-overhead' records each static shape (the first step of block 0,
    P + B wide; of later blocks, 2B; every other step, B) as a CUDA graph, so a step is
    one graph launch instead of ~150 kernel launches. CPU: default inductor, with
    dynamic shapes so that one set of C++ kernels serves every block size and batch
    (each static-shape graph would cost a gcc compile of its own)."""
    if device_type not in _COMPILED:
        cuda = device_type == "cuda"
        # one graph per (shape, temperature > 0) on CUDA: more than dynamo's default of 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        if not cuda:
            # Dynamic shapes without "duck sizing": otherwise two sizes that happen to be
            # equal (prompt area = block size = 16, say) get one symbol, and the next block
            # size that breaks the equality costs another compile.
            import torch.fx.experimental._config as fx_config
            fx_config.use_duck_shape = False
        _COMPILED[device_type] = torch.compile(
            _denoise_step, dynamic=not cuda, mode="reduce-overhead" if cuda else None,
            # CPU: a C++ wrapper calls the kernels, not Python: ~10 % less per step
            options=None if cuda else {"cpp_wrapper": True})
    return _COMPILED[device_type]


@torch.no_grad()
def generate_fast(model, prompts, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
                  steps: int = None, temperature: float = 0.0, generator: torch.Generator = None,
                  compile: bool = True, stats: dict = None):
    """`generate` with static shapes, for speed: same arguments, same output dict (equal
    tokens, steps, n_gen, nfe, finished; log-probs to fp tolerance) for the same seed.

    What differs inside: the batch never shrinks (finished rows stay and are ignored),
    the KV cache is preallocated to max_seq_len and attended in full (masks precomputed
    per block hide the slots not yet written), and each step is one call of
    `_denoise_step` (forward + sampling + commit rule), compiled unless compile=False.
    Host syncs: one per block (is any row left? which?), plus one per step for the
    dynamic rule, whose step count depends on the confidences (static and ltr, whose
    step count is known, skip it on CUDA). stats, if given, receives the number of
    batch forwards and host syncs."""
    if rule not in RULES or rule == "schedule":
        raise ValueError(f"generate_fast runs {RULES[:3]}, not {rule!r} (use generate)")
    cfg, dev = model.cfg, prompts.device
    N, A, V = prompts.shape[0], cfg.answer_len, cfg.vocab_size
    k_static = math.ceil(block_size / (steps or block_size))
    thr, k, by_index = _rule_args(rule, threshold, k_static)
    thr = torch.tensor(thr, device=dev)  # a tensor, so a new threshold is not a new graph
    step_fn = compiled_step(dev.type) if compile else _denoise_step
    cudagraphs = compile and dev.type == "cuda"
    tokens = torch.full((N, A), MASK_ID, dtype=torch.long, device=dev)
    step = torch.full((N, A), -1, dtype=torch.long, device=dev)
    logp = torch.zeros(N, A, dtype=torch.float32, device=dev)
    nfe = torch.zeros(N, dtype=torch.long, device=dev)
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    cache = KVCache(cfg, N, dev)
    no_pending = prompts[:, :0]
    # Asking "does any row need another step?" is a host sync. The dynamic rule needs the
    # answer (its step count depends on the confidences); static/ltr know their step
    # count, so on CUDA they do not ask and run it out (the extra steps, once every row
    # is done, commit nothing). On CPU asking costs nothing and saves those steps.
    ask_every_step = rule == "dynamic" or dev.type != "cuda"
    n_fwd = n_sync = 0
    pending = prompts
    layouts = _block_layouts(cfg.prompt_len, A, cfg.max_seq_len, block_size, str(dev))
    for start, end, first, later in layouts:
        Tb = end - start
        # `generate` drops finished rows here and samples for the rest with one
        # multinomial over [rows * Tb, V]; the RNG stream advances by the size of a draw,
        # so we draw exactly that many and scatter them to the alive rows.
        alive = (~done).nonzero().squeeze(1)
        n_sync += 1
        if len(alive) == 0:
            break
        # static/ltr: every row that needs a step commits min(k, masked) in it, so the
        # step count is known; dynamic: after each step, ask whether any row has masks.
        n_steps = Tb if rule == "dynamic" else math.ceil(Tb / min(k, Tb))
        blk = torch.full((N, Tb), MASK_ID, dtype=torch.long, device=dev)
        stp = torch.full((N, Tb), -1, dtype=torch.long, device=dev)
        lpb = torch.zeros(N, Tb, dtype=torch.float32, device=dev)
        for i in range(n_steps):
            slots, pos, mask = first if i == 0 else later
            q = None
            if temperature > 0:
                q = torch.empty(len(alive), Tb, V, device=dev).exponential_(generator=generator)
                if len(alive) < N:
                    q = torch.ones(N, Tb, V, device=dev).index_copy_(0, alive, q)
            if cudagraphs:  # we clone what we keep of the last replay: its buffers may be reused
                torch.compiler.cudagraph_mark_step_begin()
            blk, stp, lpb, nfe, done, more, k_new, v_new = step_fn(
                model, pending, blk, pos, mask, cache.k, cache.v, stp, lpb, nfe, done, q,
                thr, k, by_index, temperature)
            n_fwd += 1
            if i == 0:  # the pending tokens are clean: their keys/values go to the cache
                cache.k[:, :, :, slots], cache.v[:, :, :, slots] = k_new, v_new
                pending = no_pending
            if cudagraphs:
                blk, stp, lpb, nfe, done = (t.clone() for t in (blk, stp, lpb, nfe, done))
            if ask_every_step:
                n_sync += 1
                if not more:
                    break
        tokens[:, start:end], step[:, start:end], logp[:, start:end] = blk, stp, lpb
        pending = blk
    if stats is not None:
        stats.update(forwards=n_fwd, syncs=n_sync)
    # From here on exactly as in `generate`.
    tokens = tokens.masked_fill(step < 0, EOS_ID)
    is_eos = tokens == EOS_ID
    has_eos = is_eos.any(1)
    n_gen = torch.where(has_eos, is_eos.long().argmax(1) + 1, A)
    out = dict(tokens=tokens, step=step, logp=logp, n_gen=n_gen, nfe=nfe, finished=has_eos)
    return {k: v.cpu() for k, v in out.items()}


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
    logits = model.decode_step(cache, prompts, -1)[:, -1]
    for i in range(A):
        logits = logits.float()
        lp_all = F.log_softmax(logits / (temperature or 1.0), dim=-1)
        tok = (torch.multinomial(lp_all.exp(), 1, generator=generator).squeeze(1)
               if temperature > 0 else lp_all.argmax(-1))
        tok = tok.masked_fill(done, EOS_ID)
        tokens[:, i] = tok
        logp[:, i] = lp_all.gather(-1, tok[:, None]).squeeze(1)
        nfe += (~done).long()
        done |= tok == EOS_ID
        if done.all() or i == A - 1:
            break
        logits = model.decode_step(cache, tok[:, None], cfg.prompt_len + i)[:, -1]
    is_eos = tokens == EOS_ID
    has_eos = is_eos.any(1)
    n_gen = torch.where(has_eos, is_eos.long().argmax(1) + 1, A)
    step = torch.where(torch.arange(A, device=dev)[None, :] < n_gen[:, None],
                       torch.arange(A, device=dev)[None, :], -1)
    out = dict(tokens=tokens, step=step, logp=logp, n_gen=n_gen, nfe=nfe, finished=has_eos)
    return {k: v.cpu() for k, v in out.items()}


def show_decoding(tokens, step, block_size: int, color: bool = True) -> str:
    """Replay one answer's trace as text, one line per forward: '_' still masked, the
    tokens committed by that forward highlighted (reverse video on a terminal, [x]
    otherwise). Rebuilt from the step map, which records exactly what each forward did."""
    lines = []
    for s in range(int(step.max()) + 1):
        if not (step == s).any():
            continue
        cells = []
        for i, (t, st) in enumerate(zip(tokens.tolist(), step.tolist())):
            if i and i % block_size == 0:
                cells.append("|")
            ch = "_" if st < 0 or st > s else ("⏎" if t >= 256 else decode([t]) or "?")
            if st == s:
                ch = f"\x1b[7m{ch}\x1b[0m" if color else f"[{ch}]"
            cells.append(ch)
        lines.append(f"  forward {s:2d}  " + "".join(cells))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="Decode prompts with a tstar checkpoint.")
    ap.add_argument("--ckpt", required=True, help="checkpoint (.pt) written by train.py/tracerl.py")
    ap.add_argument("--prompt", action="append", default=None,
                    help="a question (repeatable); default: three test-style examples")
    ap.add_argument("--block-size", type=int, default=4, help="diffusion block size (0 = AR decoding)")
    ap.add_argument("--rule", default="dynamic", choices=RULES, help="commit rule")
    ap.add_argument("--threshold", type=float, default=0.9, help="confidence threshold (dynamic rule)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per block (static/ltr rules)")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--fast", action="store_true",
                    help="use the compiled static-shape sampler (generate_fast)")
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
        sampler = generate_fast if a.fast else generate
        extra = {"schedule": schedule} if schedule else {}
        out = sampler(model, prompts, a.block_size, a.rule, a.threshold, a.steps, a.temperature, g, **extra)
    dt = time.time() - t0
    if a.show:
        print(f"{qs[0]}  (B={a.block_size}, rule {a.rule}; | = block boundary)")
        print(show_decoding(out["tokens"][0], out["step"][0], a.block_size or 1, sys.stdout.isatty()))
    for q, ids in zip(qs, out["tokens"]):
        print(f"{q} -> {decode(ids)}")
    print(f"TPF {out['n_gen'].sum().item() / out['nfe'].sum().item():.2f}  ({dt:.2f}s)")


if __name__ == "__main__":
    main()
