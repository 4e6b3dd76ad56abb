"""Grade a checkpoint on the math test split, and read its decoding schedule Ŝ.

    python eval_math.py --ckpt runs/default/sft4.pt --block-size 4
    python eval_math.py --ckpt runs/default/tstar16.pt --block-size 16 --rule static --schedule
    python eval_math.py --ckpt runs/mine/sft4.pt --test-jsonl my/test.jsonl   # your own GSM8K-style data

One row per call: accuracy, tokens per forward (TPF, every forward counted), tokens/s,
with block size, rule, device and seed. `--schedule` adds the Ŝ analysis (DESIGN §9)
from the greedy traces: left-to-right fraction, within-block Kendall τ between position
and commit step, tokens per step, an ASCII grid of commit steps for a few blocks, and the
per-position accuracy/confidence table of a whole block decoded in one forward.

Grading follows GSM8K: the number after the last '####' (fallback: the last number in
the text), exact integer match; an answer that never produced <|eos|> is wrong.
"""
import argparse
import json
import sys
import time

import torch

# Grading is the task's (it defines the '#### N' format); extract_answer is re-exported
# from here so `from eval_math import extract_answer, is_correct` keeps working.
from data.task import (DataError, check_fit, encode_prompts, extract_answer, is_correct,  # noqa: F401
                       load_task, read_jsonl)
from data.tokenizer import decode
from model import CheckpointError, load_checkpoint, pick_device
from sample import RULES, generate, generate_ar
from schedule import schedule_grid, schedule_stats


@torch.no_grad()
def evaluate(model, rows, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
             steps: int = None, batch_size: int = 512, seed: int = 0, schedule=None, distance: int = 0):
    """Greedy decoding of `rows` at `block_size` (0 = AR), commits limited to `distance` of
    the block's leftmost mask (0 = anywhere; sample.near_frontier). Returns a dict with accuracy,
    tpf, tokens/s and the raw decode outputs (for the schedule analysis)."""
    model.eval()
    dev = next(model.parameters()).device
    prompts = encode_prompts([r["question"] for r in rows], model.cfg.prompt_len)
    outs, t0 = [], time.time()
    for i in range(0, len(rows), batch_size):
        p = prompts[i:i + batch_size].to(dev)
        if block_size == 0:
            outs.append(generate_ar(model, p))
        else:
            outs.append(generate(model, p, block_size, rule, threshold, steps, schedule=schedule,
                                 distance=distance))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.time() - t0
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    texts = [decode(t) for t in out["tokens"]]
    correct = [is_correct(t, r["answer"], bool(f)) for t, r, f in zip(texts, rows, out["finished"])]
    n_tok = out["n_gen"].sum().item()
    return dict(block_size=block_size, rule="ar" if block_size == 0 else rule,
                threshold=threshold if rule == "dynamic" else None, distance=distance,
                accuracy=sum(correct) / len(rows), tpf=n_tok / out["nfe"].sum().item(),
                tokens_per_s=n_tok / secs, seconds=secs, n=len(rows), device=dev.type, seed=seed,
                texts=texts, correct=correct, out=out)


def main():
    ap = argparse.ArgumentParser(description="Evaluate a tstar checkpoint on the math test split.")
    ap.add_argument("--ckpt", required=True, help="checkpoint (.pt)")
    ap.add_argument("--block-size", type=int, default=4, help="decode block size (0 = AR decoding)")
    ap.add_argument("--rule", default="dynamic", choices=RULES, help="commit rule")
    ap.add_argument("--threshold", type=float, default=0.9, help="dynamic-rule confidence threshold")
    ap.add_argument("--steps", type=int, default=None, help="steps per block for static/ltr (default: block size)")
    ap.add_argument("--commit-distance", type=int, default=0,
                    help="commit only masks fewer than D places right of the block's leftmost mask (0 = anywhere)")
    ap.add_argument("--test-jsonl", default=None, help="GSM8K-style test file (default: the generated test split)")
    ap.add_argument("--n", type=int, default=None, help="evaluate only the first N problems")
    ap.add_argument("--schedule", action="store_true", help="also print the Ŝ schedule analysis")
    ap.add_argument("--json", action="store_true", help="print the row as JSON")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    a = ap.parse_args()
    try:
        dev = pick_device(a.device)
        model, meta = load_checkpoint(a.ckpt, dev)
        # the split the checkpoint was trained against (generated or the user's JSONL)
        if not a.test_jsonl and not meta.get("task"):
            raise DataError(f"{a.ckpt} does not record its task; give --test-jsonl")
        rows = read_jsonl(a.test_jsonl) if a.test_jsonl else load_task(meta["task"])[1]
        rows = rows[:a.n] if a.n else rows
        check_fit(rows, model.cfg.prompt_len, model.cfg.answer_len, "test data", fixed=True)
        r = evaluate(model, rows, a.block_size, a.rule, a.threshold, a.steps, distance=a.commit_distance)
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    row = {k: v for k, v in r.items() if k not in ("texts", "correct", "out")}
    if a.json:
        print(json.dumps(row))
    else:
        print(f"{a.ckpt}  B={a.block_size} rule={row['rule']}  acc {100 * row['accuracy']:.1f}%  "
              f"TPF {row['tpf']:.2f}  {row['tokens_per_s']:.0f} tok/s  ({row['n']} problems, "
              f"{row['device']}, seed {row['seed']}, {row['seconds']:.1f}s)")
    if a.schedule and a.block_size > 0:
        st = schedule_stats(r["out"]["step"], a.block_size)
        print(f"Ŝ: left-to-right {st['left_to_right']:.2f}  Kendall τ {st['kendall_tau']:.2f}  "
              f"tokens/step {st['tokens_per_step']:.2f}")
        print(schedule_grid(r["out"]["step"], r["out"]["tokens"], a.block_size))


if __name__ == "__main__":
    main()
