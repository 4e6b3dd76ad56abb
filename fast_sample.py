"""The compiled, static-shape block sampler: `sample.generate` made fast.

    python fast_sample.py --ckpt runs/tstar/tstar8.pt --block-size 8   # sample.py's flags
    python bench/bench_decode.py --device cpu        # eager vs compiled vs AR, side by side

Same outputs as `sample.generate` for the same inputs and seed (tests/test_fast_sample.py):
the readable sampler stays in sample.py for learning and for TraceRL; this file holds the
version a deployment would run. It keeps the batch fixed (finished rows stay and commit
nothing), preallocates the KV cache to max_seq_len and attends it in full (masks built once
per block hide the slots not yet written), and runs each denoising step as one call of
`_denoise_step` (forward + sampling + commit rule), `torch.compile`d: CUDA graphs
("reduce-overhead") on CUDA, inductor with a C++ wrapper on CPU. The forward itself is
the model's one transformer, `GPT.hidden`, the same as the eager sampler's and training's.
Simplified from a serving engine: one fixed batch per call (no continuous batching, no
paged cache), and the `schedule` rule is left to `sample.generate`.
"""
import functools
import math

import torch

from data.tokenizer import EOS_ID, MASK_ID
from model import cached_step_layout
from sample import RULES, block_done, commit_rule, decode_state, near_frontier, outputs, policy_logprobs, rule_args
from sample import main as sample_main

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


def _denoise_step(model, pending, blk, pos, mask, cache_k, cache_v, fwd, logp, nfe, done, q,
                  threshold, k: int, by_index: bool, temperature: float, distance: int = 0):
    """One step of `generate`'s inner loop for the whole fixed batch, as a pure function of
    tensors, so torch.compile traces forward + sampling + commit rule as one graph.
    pending [N, Tp] (Tp = 0 after a block's first step); blk/fwd/logp [N, Tb] are the
    block's tokens, trace (the forward index that committed each) and log-probs.
    Finished rows ride along: they never `need` a step, so they commit nothing and count
    no forward. The forward attends to the full, static-size cache and writes nothing:
    it returns the pending tokens' keys/values for the caller to copy into the cache (a
    compiled function that mutates no input is the simple case for CUDA graphs).
    q [N, Tb, V] are Exp(1) draws: argmax(p / q) is exactly how torch.multinomial draws
    one sample, so with the same draws the tokens equal `generate`'s (without
    multinomial's host sync, which checks its input)."""
    Tp = pending.shape[1]
    x, keys, values = model.hidden(torch.cat([pending, blk], 1), pos, mask, cache_k, cache_v)
    logits = model.head(x)[:, Tp:].float()
    masked = blk == MASK_ID
    need = masked.any(1) & ~done
    lp_all = policy_logprobs(logits, temperature)
    tok = (lp_all.exp() / q).argmax(-1) if temperature > 0 else lp_all.argmax(-1)
    lp = lp_all.gather(-1, tok[..., None]).squeeze(-1)
    commit = commit_rule(lp.exp(), near_frontier(masked, distance), threshold, k, by_index) & need[:, None]
    blk = torch.where(commit, tok, blk)
    fwd = torch.where(commit, nfe[:, None], fwd)
    logp = torch.where(commit, lp, logp)
    nfe = nfe + need.long()
    done = done | block_done(blk)
    more = ((blk == MASK_ID).any(1) & ~done).any()  # does any row need another step?
    return (blk, fwd, logp, nfe, done, more,
            torch.stack(keys)[:, :, :, :Tp], torch.stack(values)[:, :, :, :Tp])


_COMPILED = {}


def compiled_step(device_type: str):
    """torch.compile'd `_denoise_step`, one per device type.
    CUDA: mode 'reduce-overhead' records each static shape (the first step of block 0,
    P + B wide; of later blocks, 2B; every other step, B) as a CUDA graph, so a step is
    one graph launch instead of one kernel launch per op (at this model size the
    launches, not the arithmetic, are most of a step). CPU: default inductor, with
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
            # CPU: a C++ wrapper calls the kernels, not Python, which saves the interpreter's
            # per-kernel overhead on every step (bench/bench_decode.py measures it)
            options=None if cuda else {"cpp_wrapper": True})
    return _COMPILED[device_type]


@torch.no_grad()
def generate_fast(model, prompts, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
                  steps: int = None, temperature: float = 0.0, generator: torch.Generator = None,
                  compile: bool = True, stats: dict = None, distance: int = 0):
    """`generate` with static shapes, for speed: same arguments, same output dict (equal
    tokens, traces, n_gen, nfe, finished; log-probs to fp tolerance) for the same seed.

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
    thr, k, by_index = rule_args(rule, threshold, k_static)
    thr = torch.tensor(thr, device=dev)  # a tensor, so a new threshold is not a new graph
    step_fn = compiled_step(dev.type) if compile else _denoise_step
    cudagraphs = compile and dev.type == "cuda"
    tokens, fwd, logp, nfe, done, cache = decode_state(cfg, N, dev)
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
        blk_fwd = torch.full((N, Tb), -1, dtype=torch.long, device=dev)
        blk_logp = torch.zeros(N, Tb, dtype=torch.float32, device=dev)
        for i in range(n_steps):
            slots, pos, mask = first if i == 0 else later
            q = None
            if temperature > 0:
                q = torch.empty(len(alive), Tb, V, device=dev).exponential_(generator=generator)
                if len(alive) < N:
                    q = torch.ones(N, Tb, V, device=dev).index_copy_(0, alive, q)
            if cudagraphs:  # we clone what we keep of the last replay: its buffers may be reused
                torch.compiler.cudagraph_mark_step_begin()
            blk, blk_fwd, blk_logp, nfe, done, more, new_keys, new_values = step_fn(
                model, pending, blk, pos, mask, cache.k, cache.v, blk_fwd, blk_logp, nfe, done, q,
                thr, k, by_index, temperature, distance)
            n_fwd += 1
            if i == 0:  # the pending tokens are clean: their keys/values go to the cache
                cache.k[:, :, :, slots], cache.v[:, :, :, slots] = new_keys, new_values
                pending = no_pending
            if cudagraphs:
                blk, blk_fwd, blk_logp, nfe, done = (t.clone() for t in (blk, blk_fwd, blk_logp, nfe, done))
            if ask_every_step:
                n_sync += 1
                if not more:
                    break
        tokens[:, start:end], fwd[:, start:end], logp[:, start:end] = blk, blk_fwd, blk_logp
        pending = blk
    if stats is not None:
        stats.update(forwards=n_fwd, syncs=n_sync)
    # From here on exactly as in `generate`.
    tokens = tokens.masked_fill(fwd < 0, EOS_ID)
    return outputs(tokens, fwd, logp, nfe)


if __name__ == "__main__":
    # sample.py's command line (--rule, --show, ...) with this sampler in place of generate
    sample_main(generate_fast, "Decode prompts with a tstar checkpoint through the compiled sampler.")
