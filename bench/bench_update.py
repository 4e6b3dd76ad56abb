"""The TraceRL update's speed: trace rows one per round, against the same rows packed one
response per sequence (tracerl.pack_response), side by side in one run.

    python bench/bench_update.py --ckpt runs/tstar/sft4.pt --block-sizes 4,16
    python bench/bench_update.py --tiny --block-sizes 4 --responses 8 --reps 1   # smoke run (tests/)

For each block size: rollouts of --prompts x --k samples (dynamic θ 0.9, temperature 1, seed 0),
then --responses of them (the first ones, advantage +1 or -1 alternately, as an RL step's kept
responses would have) cut into trace rows; one forward + backward of the update's loss on all of
them (a) in the trace-row layout, one [prompt | clean | noisy] row per round (tracerl.row_logprobs,
--row-micro-batch rows per forward), and (b) packed (tracerl.packed_logprobs, --micro-batch
responses per forward). Prints tokens through the model, seconds (fastest of --reps), the ratio,
and the largest difference of the two gradients (the same maths: only fp rounding may differ).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.task import encode_prompts, make_splits  # noqa: E402
from model import GPT, CheckpointError, GPTConfig, load_checkpoint  # noqa: E402
from sample import generate  # noqa: E402
from tracerl import build_rows, packed_logprobs, policy_loss, row_logprobs, trace_rows  # noqa: E402


def grads(model, loss):
    return torch.autograd.grad(loss, [p for p in model.parameters()])


def row_update(model, ro, resp, adv, B, mb):
    """The update's loss and gradient, one trace row per round. Returns (grads, tokens)."""
    rows = []
    for k, i in enumerate(resp):
        w = 1.0 / (float((ro["fwd"][i] >= 0).sum()) * len(resp))
        for noisy, tgt in trace_rows(ro["fwd"][i], B):
            rows.append((i, noisy, tgt, float(adv[k]), w))
    g_sum, tokens = None, 0
    for j in range(0, len(rows), mb):
        part = rows[j:j + mb]
        idx = torch.tensor([r[0] for r in part])
        noisy, tgt = torch.stack([r[1] for r in part]), torch.stack([r[2] for r in part])
        lp = row_logprobs(model, ro["prompts"][idx], ro["tokens"][idx], noisy, tgt, B)
        n = tgt.sum(1)
        a = torch.repeat_interleave(torch.tensor([r[3] for r in part]), n)
        w = torch.repeat_interleave(torch.tensor([r[4] for r in part]), n)
        old = torch.cat([ro["logp"][r[0]][r[2]] for r in part])
        g = grads(model, policy_loss(lp, old, a, w)[0])
        g_sum = g if g_sum is None else [x + y for x, y in zip(g_sum, g)]
        tokens += len(part) * (ro["prompts"].shape[1] + 2 * ro["tokens"].shape[1])
    return g_sum, tokens, len(rows)


def packed_update(model, ro, resp, adv, B, mb, max_len):
    """The same loss and gradient on the packed rows. Returns (grads, tokens)."""
    rows = build_rows(ro, resp, torch.zeros(max(resp) + 1).index_copy_(0, torch.tensor(resp), adv), len(resp), B, 1,
                      "cpu", max_len)
    g_sum, tokens = None, 0
    order = torch.arange(len(rows))
    for j in range(0, len(rows), mb):
        part = order[j:j + mb]
        tok = rows.tokens(part)
        g = grads(model, policy_loss(packed_logprobs(model, rows, part, "cpu"), rows.old[tok], rows.adv[tok],
                                     rows.weight[tok])[0])
        g_sum = g if g_sum is None else [x + y for x, y in zip(g_sum, g)]
        tokens += len(part) * max(len(rows.packs[i]["tokens"]) for i in part.tolist())  # padded
    return g_sum, tokens


def best_of(reps, fn):
    t, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def main():
    ap = argparse.ArgumentParser(description="TraceRL update: trace-row layout vs packed, side by side.")
    ap.add_argument("--ckpt", default=None, help="checkpoint (.pt); default: random weights of the default size")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (smoke test)")
    ap.add_argument("--block-sizes", default="4,16", help="comma-separated block sizes")
    ap.add_argument("--prompts", type=int, default=32, help="prompts of the rollout")
    ap.add_argument("--k", type=int, default=8, help="samples per prompt")
    ap.add_argument("--responses", type=int, default=128, help="responses that get trace rows")
    ap.add_argument("--row-micro-batch", type=int, default=256, help="trace rows per forward, row layout")
    ap.add_argument("--micro-batch", type=int, default=64, help="responses per forward, packed")
    ap.add_argument("--max-len", default="128", help="comma-separated pack lengths to try (tracerl.pack_response)")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (fastest kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        if a.ckpt:
            model, _ = load_checkpoint(a.ckpt)
            what = a.ckpt
        else:
            torch.manual_seed(0)
            cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=40, prompt_len=8) if a.tiny else GPTConfig()
            model, what = GPT(cfg), "RANDOM WEIGHTS" + (" (tiny)" if a.tiny else "")
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    model.eval()
    problems = make_splits(1 if a.tiny else 2, 0, a.prompts, 0)[1]
    print(f"{what}: {torch.get_num_threads()} threads, {a.prompts} x {a.k} rollouts, {a.responses} responses with rows\n")
    print("| B | max len | trace rows | row layout: tokens / s | packed: tokens / s | packed speed-up | max grad diff |")
    print("|---|---|---|---|---|---|---|")
    for B in (int(x) for x in a.block_sizes.split(",")):
        prompts = encode_prompts([p["question"] for p in problems], model.cfg.prompt_len).repeat_interleave(a.k, 0)
        out = generate(model, prompts, B, "dynamic", 0.9, temperature=1.0, generator=torch.Generator().manual_seed(0))
        ro = dict(out, prompts=prompts)
        resp = list(range(min(a.responses, prompts.shape[0])))
        adv = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in resp])
        t_row, (g_row, tok_row, n_rows) = best_of(a.reps, lambda: row_update(model, ro, resp, adv, B, a.row_micro_batch))
        for L in (int(x) for x in a.max_len.split(",")):
            t_pack, (g_pack, tok_pack) = best_of(a.reps, lambda: packed_update(model, ro, resp, adv, B, a.micro_batch, L))
            diff = max(float((x - y).abs().max()) for x, y in zip(g_row, g_pack))
            print(f"| {B} | {L} | {n_rows} | {tok_row} / {t_row:.2f} | {tok_pack} / {t_pack:.2f} | {t_row / t_pack:.2f}x | "
                  f"{diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
