"""Grade a checkpoint on the math test split, and read its decoding schedule Ŝ.

    python eval_math.py --ckpt runs/default/sft4.pt --block-size 4
    python eval_math.py --ckpt runs/default/tstar16.pt --block-size 16 --rule static --schedule
    python eval_math.py --ckpt runs/mine/sft4.pt --test-jsonl my/test.jsonl   # your own GSM8K-style data
    python eval_math.py --ckpt runs/default/sft4.pt --block-size 8 --positions  # per-position table

One row per call: accuracy, tokens per forward (TPF, every forward counted), tokens/s,
with block size, rule, device and seed. `--schedule` adds the Ŝ analysis (docs/design.md
§9) from the greedy traces: left-to-right fraction, within-block Kendall τ between position
and commit step, tokens per step, an ASCII grid of commit steps for a few blocks.
`--positions` adds the per-position table of a whole block predicted in one forward from
the true context (`block_positions`): where a model trained at a small block breaks at a
bigger one, and how confident it is there (mask dilution, docs/design.md §3).

Grading follows GSM8K: the number after the last '####' (fallback: the last number in
the text), exact integer match; an answer that never produced <|eos|> is wrong.
"""
import argparse
import json
import re
import sys
import time

import torch
import torch.nn.functional as F

from data.task import DataError, check_fit, encode_prompts, load_task, read_jsonl, task_tensors
from data.tokenizer import MASK_ID, decode
from model import CheckpointError, load_checkpoint, pick_device, training_layout
from sample import RULES, generate, generate_ar
from schedule import schedule_grid, schedule_stats

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str):
    """The final answer as a string of digits (commas removed), or None."""
    if "####" in text:
        m = _NUM.search(text.rsplit("####", 1)[1])
        if m:
            return m.group().replace(",", "")
    nums = _NUM.findall(text)
    return nums[-1].replace(",", "") if nums else None


def is_correct(response: str, gold_answer: str, finished: bool = True) -> bool:
    if not finished:
        return False
    got, want = extract_answer(response), extract_answer(gold_answer)
    if got is None or want is None:
        return False
    try:
        return float(got) == float(want)
    except ValueError:
        return False


@torch.no_grad()
def evaluate(model, problems, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
             steps: int = None, batch_size: int = 512, seed: int = 0, schedule=None, distance: int = 0):
    """Greedy decoding of `problems` at `block_size` (0 = AR), commits limited to `distance` of
    the block's leftmost mask (0 = anywhere; sample.near_frontier). Returns a dict with accuracy,
    tpf, tokens/s and the raw decode outputs (for the schedule analysis)."""
    model.eval()
    dev = next(model.parameters()).device
    prompts = encode_prompts([p["question"] for p in problems], model.cfg.prompt_len)
    outs, t0 = [], time.time()
    for i in range(0, len(problems), batch_size):
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
    correct = [is_correct(t, r["answer"], bool(f)) for t, r, f in zip(texts, problems, out["finished"])]
    n_tok = out["n_gen"].sum().item()
    return dict(block_size=block_size, rule="ar" if block_size == 0 else rule,
                threshold=threshold if rule == "dynamic" else None, distance=distance,
                accuracy=sum(correct) / len(problems), tpf=n_tok / out["nfe"].sum().item(),
                tokens_per_s=n_tok / secs, seconds=secs, n=len(problems), device=dev.type, seed=seed,
                texts=texts, correct=correct, out=out)


@torch.no_grad()
def block_positions(model, problems, block_size: int, batch_size: int = 256):
    """Every answer block predicted in one forward from the true context: each block fully
    masked, the gold previous blocks visible (the training layout [prompt | gold answer |
    all masks]: noisy block k sees the prompt and clean blocks < k). This is the state of a
    block's first denoising step when everything before it was decoded right.
    Returns (correct, conf, valid), each [N, A]: greedy prediction == gold token, the
    probability of the greedy prediction, and whether the position counts (the gold
    answer up to and including its eos; the eos fill after it is not scored)."""
    model.eval()
    dev = next(model.parameters()).device
    P, A = model.cfg.prompt_len, model.cfg.answer_len
    prompts, answers, lengths = task_tensors(problems, P, A)
    pos, mask = training_layout(P, A, block_size, 0, str(dev))
    correct, conf = [], []
    for i in range(0, len(problems), batch_size):
        gold = answers[i:i + batch_size].to(dev)
        idx = torch.cat([prompts[i:i + batch_size].to(dev), gold, torch.full_like(gold, MASK_ID)], 1)
        logits, _ = model(idx, pos=pos, mask=mask)
        prob = F.softmax(logits[:, P + A:].float(), dim=-1)
        c, pred = prob.max(-1)
        correct.append((pred == gold).cpu())
        conf.append(c.cpu())
    valid = torch.arange(A)[None, :] < lengths[:, None]
    return torch.cat(correct), torch.cat(conf), valid


def position_table(correct, conf, valid, block_size: int):
    """block_positions' tensors -> one row per in-block position p (0..B-1): accuracy and
    mean confidence over every scored answer position at offset p of its block, and n."""
    p = torch.arange(correct.shape[1]) % block_size
    table = []
    for j in range(block_size):
        sel = valid & (p == j)[None, :]
        n = int(sel.sum())
        table.append(dict(position=j, n=n, accuracy=float(correct[sel].float().mean()) if n else float("nan"),
                          confidence=float(conf[sel].mean()) if n else float("nan")))
    return table


def main():
    ap = argparse.ArgumentParser(description="Evaluate a tstar checkpoint on the math test split.")
    ap.add_argument("--ckpt", required=True, help="checkpoint (.pt)")
    ap.add_argument("--block-size", type=int, default=4, help="decode block size (0 = AR decoding)")
    ap.add_argument("--rule", default="dynamic", choices=RULES, help="commit rule")
    ap.add_argument("--threshold", type=float, default=0.9, help="dynamic-rule confidence threshold")
    ap.add_argument("--steps", type=int, default=None, help="steps per block for static/ltr (default: block size)")
    ap.add_argument("--commit-distance", type=int, default=0,
                    help="commit only masks fewer than D places right of the block's leftmost mask (0 = anywhere)")
    ap.add_argument("--mask-window", type=int, default=None,
                    help="decode with this mask window instead of the checkpoint's (-1 = none; a diagnostic)")
    ap.add_argument("--test-jsonl", default=None, help="GSM8K-style test file (default: the generated test split)")
    ap.add_argument("--n", type=int, default=None, help="evaluate only the first N problems")
    ap.add_argument("--schedule", action="store_true", help="also print the Ŝ schedule analysis")
    ap.add_argument("--positions", action="store_true",
                    help="also print accuracy and confidence per in-block position, every block "
                         "predicted in one forward from the true context")
    ap.add_argument("--json", action="store_true", help="print the row as JSON")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    a = ap.parse_args()
    try:
        dev = pick_device(a.device)
        model, meta = load_checkpoint(a.ckpt, dev)
        if a.mask_window is not None:  # the attention rule is read from cfg at every forward
            model.cfg.mask_window = a.mask_window
        # the split the checkpoint was trained against (generated or the user's JSONL)
        if not a.test_jsonl and not meta.get("task"):
            raise DataError(f"{a.ckpt} does not record its task; give --test-jsonl")
        problems = read_jsonl(a.test_jsonl) if a.test_jsonl else load_task(meta["task"])[1]
        problems = problems[:a.n] if a.n else problems
        check_fit(problems, model.cfg.prompt_len, model.cfg.answer_len, "test data", fixed=True)
        r = evaluate(model, problems, a.block_size, a.rule, a.threshold, a.steps, distance=a.commit_distance)
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    row = {k: v for k, v in r.items() if k not in ("texts", "correct", "out")}
    if a.json:
        print(json.dumps(row))
    else:
        print(f"{a.ckpt}  B={a.block_size} rule={row['rule']} D={a.commit_distance} "
              f"W={model.cfg.mask_window}  acc {100 * row['accuracy']:.1f}%  "
              f"TPF {row['tpf']:.2f}  {row['tokens_per_s']:.0f} tok/s  ({row['n']} problems, "
              f"{row['device']}, seed {row['seed']}, {row['seconds']:.1f}s)")
    if a.schedule and a.block_size > 0:
        st = schedule_stats(r["out"]["fwd"], a.block_size)
        print(f"Ŝ: left-to-right {st['left_to_right']:.2f}  Kendall τ {st['kendall_tau']:.2f}  "
              f"tokens/step {st['tokens_per_step']:.2f}")
        print(schedule_grid(r["out"]["fwd"], r["out"]["tokens"], a.block_size))
    if a.positions and a.block_size > 0:
        table = position_table(*block_positions(model, problems, a.block_size), a.block_size)
        print(f"one forward per block from the true context, B={a.block_size}:")
        for label, key, fmt in (("position", "position", "5d"), ("accuracy", "accuracy", "5.2f"),
                                ("confidence", "confidence", "5.2f"), ("n", "n", "5d")):
            print(f"  {label:<10} " + " ".join(format(t[key], fmt) for t in table))


if __name__ == "__main__":
    main()
