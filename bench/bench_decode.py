"""Decoding speed, and training-side throughput, measured side by side in one run.

    python bench/bench_decode.py --ckpt runs/tstar/sft4.pt --device cpu
    python bench/bench_decode.py --ckpt runs/tstar/tstar16.pt --device cuda
    python bench/bench_decode.py --device cpu            # no --ckpt: random weights (says so)
    python bench/bench_decode.py --device cpu --tiny --block-sizes 4 --batches 2 --no-compile \\
        --reps 1 --train-batch 4 --rl-prompts 2 --rl-k 2     # smoke run (tests/test_bench.py)

Decoding table, one row per (path, block size, rule, batch):
  * AR: plain AR decoding with a KV cache (sample.generate_ar), the baseline;
  * eager: the readable block sampler (sample.generate);
  * compiled: the static-shape sampler, torch.compile'd (sample.generate_fast); with
    --fast-eager also its uncompiled twin, which separates "static shapes" from "compiled".
Columns: tok/s = generated tokens (up to and including eos) / wall time; TPF = those tokens
/ the forwards each row took part in (the fused KV-commit forward counted, docs/design.md §5);
fwd = batch forwards per call; ms/fwd = wall time / batch forwards; vs AR = tok/s over the
AR row's at the same batch; floor = the least time such a forward could take on paper:
weight bytes / memory bandwidth and matmul FLOPs / peak, from --mem-bw-gbs and
--peak-tflops, which are assumed figures (defaults: an H100 SXM on CUDA, a rough 2-core
AVX-512 machine on CPU), not measurements. The FLOP floor counts every row of the batch
and the mean query tokens of a forward (the fused first step of a block carries the
pending tokens too); `generate` drops finished rows, so its real work is a little less.

Training-side table: tokens/s of one AR pre-training step (train.ar_loss) and one block-SFT
step (train.sft_loss), forward + backward + AdamW, tokens = positions in the forward; and
sequences/s of a TraceRL rollout (tracerl.rollout, which decodes with sample.decode_blocks:
the compiled sampler on CUDA, the eager one on CPU; --rl-fast adds the same decode
through sample.generate_fast).

Timing: each path is warmed up by untimed calls at each batch: one, or for the compiled
sampler on CUDA two at each block size (new shapes: the first call compiles them and runs
each new graph once unrecorded; block 0's first step, a shape that comes once a call, is
recorded as a CUDA graph only in the second). The paths of one configuration are timed in
turns, and each keeps its fastest of up to --reps calls (the usual defence against other
processes). Batch 1 decodes --seqs prompts one after another, so it is not one prompt's
luck. On a shared machine only ratios from one run mean anything. On CUDA every timed
call ends with torch.cuda.synchronize().
CPU threads default to 1: ops this small gain little from a second intra-op thread, and
when other processes share the cores, OpenMP's hand-offs stall (on the 2-core machine this
was written on, under load, 2 threads made batch-1 AR decoding ~100x slower and the whole
run 7 minutes instead of 40 s). On an idle machine try --threads 0 for large batches.
The first run on a machine also compiles (CPU: gcc, a minute or more on 2 cores; the
inductor cache in /tmp makes later runs start in seconds). Where torch.compile cannot
build (no C compiler: sample.compile_unavailable), one line on stderr says so and the
compiled rows are left out.
"""
import argparse
import copy
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.task import encode_prompts, make_splits, task_tensors  # noqa: E402
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, pick_device  # noqa: E402
import sample  # noqa: E402
from sample import compile_unavailable, generate_fast  # noqa: E402
from sample import generate, generate_ar  # noqa: E402

# Assumed hardware figures for the floors (override with flags): H100 SXM HBM3 and its
# dense FP32 (non-tensor-core: the sampler runs the weights in fp32); a 2-core AVX-512 CPU
# at ~2.5 GHz (2 FMA units x 16 fp32 lanes x 2 flops) and a share of one DRAM channel.
DEFAULTS = {"cuda": dict(mem_bw_gbs=3350.0, peak_tflops=67.0),
            "cpu": dict(mem_bw_gbs=20.0, peak_tflops=0.3)}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev):
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t0, out


def warm_calls(name, dev):
    """Untimed calls a path needs before it runs at full speed: one (it compiles, fills
    caches), two for the compiled sampler on CUDA (see the docstring: CUDA-graph recording)."""
    return 2 if name.startswith("compiled") and dev.type == "cuda" else 1


def race(fns, dev, a, warm=None):
    """Time fns in turns: rounds until --min-time has passed (at least one, at most
    --reps), after warm[i] untimed warm-up calls of fns[i] (default one each). Returns,
    per fn, its fastest time and its output."""
    outs = [None] * len(fns)
    for i, (fn, n) in enumerate(zip(fns, warm or [1] * len(fns))):
        for _ in range(n):
            outs[i] = fn()
    sync(dev)
    best = [float("inf")] * len(fns)
    t0 = time.perf_counter()
    for r in range(a.reps):
        if r and time.perf_counter() - t0 > a.min_time:
            break
        for i, fn in enumerate(fns):
            t, outs[i] = timed(fn, dev)
            best[i] = min(best[i], t)
    return list(zip(best, outs))


def batches_of(decode, prompts, N, n_seqs):
    """A call that decodes n_seqs prompts (at least one batch) N at a time, so batch 1 is
    measured over several prompts, not one; returns the outputs concatenated."""
    chunks = [prompts[i:i + N] for i in range(0, max(n_seqs, N), N)]
    return lambda: cat_outputs([decode(c) for c in chunks])


def cat_outputs(outs):
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def block_forwards(trace, P, block_size, N):
    """block_forwards_1 summed over the batches of N rows that trace [n, A] came from."""
    fwd = tok = 0
    for i in range(0, trace.shape[0], N):
        f, t = block_forwards_1(trace[i:i + N], P, block_size)
        fwd, tok = fwd + f, tok + t
    return fwd, tok


def block_forwards_1(trace, P, block_size):
    """(batch forwards, query tokens over all of them) of a lockstep block decode, read
    off the trace: inside a block a row commits at least once per forward it takes, so
    it took (last - first forward index + 1) forwards there, and the batch ran the most of any row.
    The first forward of block b also carries the pending tokens (prompt or block b-1)."""
    A = trace.shape[1]
    fwd = tok = 0
    for b, s in enumerate(range(0, A, block_size)):
        blk = trace[:, s:s + block_size]
        rows = (blk >= 0).any(1)
        if not rows.any():
            break
        lo = blk.masked_fill(blk < 0, 10 ** 9).min(1).values
        n = int((blk.max(1).values - lo + 1)[rows].max())
        fwd += n
        tok += (P if b == 0 else block_size) + n * blk.shape[1]
    return fwd, tok


def floors(model, rows, tokens_per_fwd, a):
    """(memory floor, FLOP floor) of one forward, in ms."""
    cfg = model.cfg
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # matmuls: 2 flops per weight per token (tied head counted once, embeddings are
    # lookups); attention: q.k and p.v over at most max_seq_len keys per layer
    flops = rows * tokens_per_fwd * (2 * model.num_params() + 4 * cfg.n_layer * cfg.n_embd * cfg.max_seq_len)
    return weight_bytes / (a.mem_bw_gbs * 1e9) * 1e3, flops / (a.peak_tflops * 1e12) * 1e3


def decode_table(model, prompts, a, dev, label):
    P = model.cfg.prompt_len
    table = []
    for N in a.batches:
        def call(decode):  # every call decodes the same prompts, N at a time
            return batches_of(decode, prompts, N, a.seqs)
        (t_ar, o_ar), = race([call(lambda p: generate_ar(model, p))], dev, a)
        warmed = set()
        ar_tps = o_ar["n_gen"].sum().item() / t_ar
        # AR: one lockstep forward per token of the longest row in each batch
        F = sum(int(o_ar["nfe"][i:i + N].max()) for i in range(0, len(o_ar["nfe"]), N))
        n_batches = -(-len(o_ar["nfe"]) // N)
        table.append(row(model, label, "AR", "-", "-", N, t_ar, o_ar, F, (n_batches * P + F - n_batches) / F,
                         ar_tps, a))
        for B in a.block_sizes:
            for rule in a.rules:
                paths = [("eager", call(lambda p: generate(model, p, B, rule, a.threshold)))]
                if a.fast_eager:
                    paths.append(("fast eager", call(lambda p: generate_fast(model, p, B, rule, a.threshold,
                                                                             compile=False))))
                if a.compile:
                    paths.append(("compiled", call(lambda p: generate_fast(model, p, B, rule, a.threshold))))
                # Warm up what has not run at this batch yet. On CUDA every block size is
                # new shapes for the compiled sampler (graphs to compile and record); on
                # CPU its graphs have dynamic shapes, compiled once for all block sizes.
                keys = [(name, B if name == "compiled" and dev.type == "cuda" else None)
                        for name, _ in paths]
                results = race([f for _, f in paths], dev, a,
                               [0 if k in warmed else warm_calls(k[0], dev) for k in keys])
                warmed.update(keys)
                for (name, _), (t, o) in zip(paths, results):
                    fwd, tok = block_forwards(o["fwd"], P, B, N)
                    table.append(row(model, label, name, B, rule, N, t, o, fwd, tok / fwd, ar_tps, a))
                print(f"  measured B={B} {rule} batch {N}", file=sys.stderr, flush=True)
    return table


def row(model, label, path, B, rule, N, secs, out, fwd, tokens_per_fwd, ar_tps, a):
    n_tok = out["n_gen"].sum().item()
    tps = n_tok / secs
    mem, flop = floors(model, N, tokens_per_fwd, a)
    return [label, path, str(B), rule, str(N), f"{tps:,.0f}", f"{n_tok / out['nfe'].sum().item():.2f}",
            str(fwd), f"{secs / fwd * 1e3:.3f}", f"{tps / ar_tps:.2f}x", f"{mem:.3g} / {flop:.3g}"]


def train_table(model, rows, a, dev, label):
    """Tokens/s of one AR and one block-SFT optimiser step; rollout sequences/s."""
    import tracerl
    from train import ar_loss, host_twin, sft_loss
    cfg = model.cfg
    P, A = cfg.prompt_len, cfg.answer_len
    prompts, answers, lens = (x[:a.train_batch].to(dev) for x in task_tensors(rows, P, A))
    N = prompts.shape[0]
    m = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=dev.type == "cuda")
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    host = host_twin(gen, 0)  # the grid shift drawn on the host, as train_loop draws it
    B = a.rl_block_size

    def step(loss_fn):
        with autocast:
            loss = loss_fn()
        if isinstance(loss, tuple):  # (sum, count), the DDP-friendly form: make it the mean
            loss = loss[0] / loss[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    sft = lambda: sft_loss(m, prompts, answers, B, gen, host=host)
    (t_ar, _), (t_sft, _) = race([lambda: step(lambda: ar_loss(m, prompts, answers, lens)),
                                  lambda: step(sft)], dev, a)
    table = [[label, "AR pre-train step", "-", str(N), f"{N * (P + A - 1) / t_ar:,.0f} tok/s",
              f"{N / t_ar:,.1f} seq/s", f"{t_ar * 1e3:.1f}"],
             [label, "block-SFT step", str(B), str(N), f"{N * (P + 2 * A) / t_sft:,.0f} tok/s",
              f"{N / t_sft:,.1f} seq/s", f"{t_sft * 1e3:.1f}"]]
    # Rollouts as TraceRL runs them (P prompts x K samples, temperature 1, dynamic rule),
    # and the same decode through the fast sampler.
    model.eval()
    n_seq = a.rl_prompts * a.rl_k
    rl_gen = torch.Generator(device=dev)
    rl_prompts = encode_prompts([r["question"] for r in rows[:a.rl_prompts]], P)
    rl_prompts = rl_prompts.repeat_interleave(a.rl_k, 0).to(dev)
    fns = [lambda: tracerl.rollout(model, rows, rl_gen.manual_seed(0), n_prompts=a.rl_prompts, k=a.rl_k,
                                          block_size=B, threshold=a.threshold)]
    names = ["TraceRL rollout (decode_blocks)"]
    warm = [warm_calls("compiled" if sample.COMPILE and dev.type in sample.COMPILED_ON else "eager", dev)]
    if a.compile and a.rl_fast:
        fns.append(lambda: generate_fast(model, rl_prompts, B, "dynamic", a.threshold, temperature=1.0,
                                         generator=rl_gen.manual_seed(0)))
        names.append("rollout decode (generate_fast, compiled)")
        warm.append(warm_calls("compiled", dev))
    for name, (t, _) in zip(names, race(fns, dev, a, warm)):
        table.append([label, name, str(B), str(n_seq), "-", f"{n_seq / t:,.1f} seq/s", f"{t * 1e3:.1f}"])
    return table


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main():
    ap = argparse.ArgumentParser(description="Decoding and training throughput, side by side.")
    ap.add_argument("--ckpt", default=None, help="checkpoint to measure (default: random weights, said so)")
    ap.add_argument("--tiny", action="store_true", help="with no --ckpt: a 1-layer, 32-wide random model")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU intra-op threads (0 = torch's default); 1 by default, see the docstring")
    ap.add_argument("--block-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16],
                    help="block sizes to decode at, e.g. 4,8,16")
    ap.add_argument("--rules", type=lambda s: s.split(","), default=["static", "dynamic"],
                    help="commit rules, e.g. static,dynamic")
    ap.add_argument("--threshold", type=float, default=0.9, help="dynamic-rule confidence threshold")
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64],
                    help="decode batch sizes, e.g. 1,64")
    ap.add_argument("--seqs", type=int, default=8,
                    help="prompts decoded per timed call (batch 1: this many calls of one prompt)")
    ap.add_argument("--reps", type=int, default=3,
                    help="at most this many timed calls per row (the fastest is kept)")
    ap.add_argument("--min-time", type=float, default=0.3,
                    help="time rounds until about this many seconds per row (at least one)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="include the compiled sampler (generate_fast)")
    ap.add_argument("--fast-eager", action="store_true", help="also time generate_fast uncompiled")
    ap.add_argument("--mem-bw-gbs", type=float, default=None,
                    help="assumed memory bandwidth for the floor, GB/s (default: H100 3350 / CPU 20)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="assumed fp32 peak for the floor, TFLOP/s (default: H100 67 / CPU 0.3)")
    ap.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure training steps and rollouts")
    ap.add_argument("--train-batch", type=int, default=64, help="sequences per AR / SFT step")
    ap.add_argument("--rl-prompts", type=int, default=16, help="prompts per rollout")
    ap.add_argument("--rl-k", type=int, default=8, help="samples per prompt in a rollout")
    ap.add_argument("--rl-block-size", type=int, default=8, help="block size of the SFT step and rollouts")
    ap.add_argument("--rl-fast", action="store_true",
                    help="also time the rollout's decode through generate_fast (compiles 2 more graphs)")
    ap.add_argument("--level", type=int, default=None,
                    help="task level of the prompts (default: the checkpoint's, else 2)")
    a = ap.parse_args()

    t_start = time.time()
    try:
        dev = torch.device(pick_device(a.device))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if a.threads and dev.type == "cpu":
        torch.set_num_threads(a.threads)
    for k, v in DEFAULTS["cuda" if dev.type == "cuda" else "cpu"].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    why = compile_unavailable(dev.type) if a.compile else None
    if why:
        print(f"bench_decode: {why}; the compiled sampler's rows are left out", file=sys.stderr, flush=True)
        a.compile = False
        sample.COMPILE = False  # the rollouts' decode_blocks too, instead of its own failed try
    if a.ckpt:
        try:
            model, meta = load_checkpoint(a.ckpt, dev)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
        what = a.ckpt
    else:
        torch.manual_seed(0)
        cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32) if a.tiny else GPTConfig()
        model, meta = GPT(cfg).to(dev), {}
        what = "RANDOM WEIGHTS (no --ckpt): speeds are real, TPF and stopping are not representative"
    model.eval()
    level = a.level or (meta.get("task") or {}).get("level", 2)
    n_rows = max(a.batches + [a.seqs, a.train_batch, a.rl_prompts])
    rows = make_splits(level, 0, n_rows, 0)[1]
    prompts = encode_prompts([r["question"] for r in rows], model.cfg.prompt_len).to(dev)

    if dev.type == "cuda":
        label = torch.cuda.get_device_name(dev).replace("NVIDIA ", "")
    else:
        label = f"cpu {torch.get_num_threads()}t"
    print(f"# bench_decode: {what}")
    print(f"model {model.num_params() / 1e6:.2f}M params, {model.cfg}; device {label} "
          f"({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}")
    print(f"floors assume {a.mem_bw_gbs:g} GB/s and {a.peak_tflops:g} TFLOP/s (flags, not measured); "
          f"best of <= {a.reps} timed calls after one warm-up; batch 1 = {a.seqs} prompts one by one; "
          f"ratios are side by side in this run\n", flush=True)

    table = decode_table(model, prompts, a, dev, label)
    print(markdown(["device", "path", "B", "rule", "batch", "tok/s", "TPF", "fwd", "ms/fwd", "vs AR",
                    "floor ms (mem / FLOP)"], table))
    if a.train:
        print()
        print(markdown(["device", "what", "B", "batch", "tokens/s", "sequences/s", "ms"],
                       train_table(model, rows, a, dev, label)))
    print(f"\n({time.time() - t_start:.0f}s)")


if __name__ == "__main__":
    main()
