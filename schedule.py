"""The decoding schedule Ŝ: measure it, extract it as a fixed schedule, replay it.

    python schedule.py --ckpt runs/tstar/tstar16.pt --block-size 16            # derive + save Ŝ
    python schedule.py --run runs/tstar --block-size 16                         # the replay table
    python schedule.py --errors runs/tstar/sft4.pt runs/tstar/tstar16.pt --block-size 16   # root errors

The paper's second claim is that T* "may converge to an alternative decoding schedule Ŝ
that achieves comparable performance". Three views of that schedule (docs/design.md §9):
  * statistics of the traces: the share of steps that commit exactly the leftmost
    still-masked positions, Kendall τ between in-block position and commit step
    (1.0 = strictly left to right), tokens per step;
  * a picture: for a few blocks, the step at which each position was committed;
  * Ŝ as an object: for each step of a block, the set of in-block positions committed at
    that step, derived from the greedy traces on the test split (positions ranked by their
    mean commit step, cut into the model's typical number of steps with its typical number
    of tokens per step). Saved as JSON next to the checkpoint and replayed by the sampler's
    `schedule` rule: at step j commit exactly Ŝ[j], the tokens still chosen by the model.
The root-error table (`--errors`) says where wrong answers go wrong: how far
right of the filled-in frontier their first wrong commit stood, and how sure the model was.
The replay table asks whether the schedule alone carries the gain, or the weights that
learned it: T* with its own dynamic rule, T* replaying Ŝ, the SFT and no-RL models
replaying the same Ŝ, and each with plain left-to-right decoding in as many steps.
Ours, not the paper's: how Ŝ is extracted. It is one schedule shared by every block and
every problem (from mean steps), since only a fixed schedule can be replayed on its own.
"""
import argparse
import json
import os
import sys

import torch
from tqdm import tqdm

from data.task import DataError, encode_answers, load_task
from data.tokenizer import decode
# Imports go one way: Ŝ builds on evaluation (the replay is an evaluation with a fixed
# schedule), and eval_math never imports this file (tests/test_imports.py checks it).
from eval_math import evaluate
from model import CheckpointError, load_checkpoint, pick_device
from sample import commit_order

# ----------------------------------------------------------------------------- Ŝ analysis

def _kendall_tau(x, y):
    """Kendall's τ-b between two 1-D sequences (ties allowed); None if undefined."""
    # τ-b, not τ-a: the dynamic rule commits several positions at one step, and those
    # ties in the step must not count as order either way. O(n²) is fine for n ≤ B.
    n, conc, disc, tx, ty = len(x), 0, 0, 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / denom if denom else None


def schedule_stats(fwd: torch.Tensor, block_size: int):
    """Ŝ statistics from a trace [N, A] (sample.generate's fwd; -1 = not decoded).

    left_to_right: share of denoising steps whose committed set is exactly the leftmost
    still-masked positions of the block; kendall_tau: mean over blocks with >= 2 decoded
    positions of τ(position, commit step), 1.0 = strictly left to right; tokens_per_step:
    mean committed tokens per denoising step."""
    # Per block, walk its distinct commit steps in order and ask whether each one took
    # exactly the leftmost positions still masked: that is what a left-to-right decoder
    # would do, whatever the number of tokens per step.
    ltr_steps = n_steps = 0
    taus, per_step = [], []
    N, A = fwd.shape
    for n in range(N):
        for s in range(0, A, block_size):
            blk = fwd[n, s:s + block_size].tolist()
            idx = [i for i, v in enumerate(blk) if v >= 0]
            if not idx:
                continue
            remaining = sorted(idx)
            for v in sorted(set(blk[i] for i in idx)):
                committed = [i for i in idx if blk[i] == v]
                n_steps += 1
                per_step.append(len(committed))
                ltr_steps += committed == remaining[:len(committed)]
                remaining = [i for i in remaining if blk[i] != v]
            if len(idx) >= 2:
                t = _kendall_tau(idx, [blk[i] for i in idx])
                if t is not None:
                    taus.append(t)
    return dict(left_to_right=ltr_steps / max(n_steps, 1),
                kendall_tau=sum(taus) / len(taus) if taus else float("nan"),
                tokens_per_step=sum(per_step) / max(len(per_step), 1))


def schedule_grid(fwd: torch.Tensor, tokens: torch.Tensor, block_size: int, n_blocks: int = 4):
    """ASCII picture: for a few blocks, the within-block step at which each position
    was committed (0 = first step; '.' = not decoded), under the decoded text."""
    # Ranks, not raw trace values: `fwd` holds the sequence's global forward index, which
    # also counts the forwards of earlier blocks, so only the order within a block reads.
    lines = []
    steps = commit_order(fwd[:n_blocks, :block_size], block_size)
    for n in range(steps.shape[0]):
        marks = "".join("." if r < 0 else "0123456789abcdefghijklmnopqrstuvwxyz"[min(r, 35)]
                        for r in steps[n].tolist())
        text = decode(tokens[n, :block_size]).ljust(block_size)[:block_size].replace("\n", " ")
        lines.append(f"  {text!s}  |  {marks}")
    return "\n".join(lines)


def derive_schedule(fwd: torch.Tensor, block_size: int):
    """Ŝ from a trace [N, A]: a list of steps, each a sorted list of in-block positions;
    every position 0..block_size-1 appears exactly once."""
    # Ŝ must be one fixed schedule for every problem, while each trace has its own. So
    # average: a position's mean commit step orders the positions, and the mean number
    # of tokens committed at the j-th step sets how many the j-th step of Ŝ takes.
    steps, counts = [], []
    N, A = fwd.shape
    all_steps = commit_order(fwd, block_size)
    for n in range(N):
        for s in range(0, A - block_size + 1, block_size):
            r = all_steps[n, s:s + block_size]
            if (r < 0).any():  # only whole blocks: a block cut by eos has no late steps
                continue
            steps.append(r.float())
            counts.append(torch.bincount(r, minlength=block_size)[:block_size].float())
    if not steps:
        return [[p] for p in range(block_size)]  # nothing to learn from: left to right
    mean_step = torch.stack(steps).mean(0)
    per_step = torch.stack(counts).mean(0)  # mean tokens committed at the j-th step
    # the typical number of steps a block took; the cuts below turn mean sizes into
    # whole positions and always end at the block's end, so every position is covered
    n_steps = max(1, round(float((torch.stack(counts) > 0).sum(1).float().mean())))
    sizes = per_step[:n_steps] * block_size / per_step[:n_steps].sum()
    cuts = sorted(set(min(block_size, max(1, round(float(c)))) for c in sizes.cumsum(0)))
    cuts[-1] = block_size
    order = sorted(range(block_size), key=lambda p: (float(mean_step[p]), p))
    bounds = [0] + cuts
    return [sorted(order[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]


def schedule_picture(schedule, block_size: int) -> str:
    """One line per step: '#' = committed at this step, '+' = already committed."""
    done, lines = set(), []
    for j, group in enumerate(schedule):
        row = "".join("#" if p in group else "+" if p in done else "_" for p in range(block_size))
        lines.append(f"  step {j:2d}  {row}")
        done |= set(group)
    return "\n".join(lines)


def heatmap(fwd: torch.Tensor, block_size: int, path: str, title: str, n_problems: int = 40):
    """PNG of within-block commit steps (problem x answer position); skipped without
    matplotlib. Returns the path written, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    # NaN where nothing was decoded (after eos): imshow leaves those cells blank
    steps = commit_order(fwd[:n_problems], block_size)
    grid = steps.float().masked_fill(steps < 0, float("nan"))
    fig, ax = plt.subplots(figsize=(8, 4))
    im = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    for s in range(block_size, fwd.shape[1], block_size):
        ax.axvline(s - 0.5, color="white", lw=0.8)
    ax.set_xlabel("answer position (white lines: block boundaries)")
    ax.set_ylabel("test problem")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="commit step within the block")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def steps_per_block(fwd: torch.Tensor, block_size: int) -> float:
    """Mean number of denoising steps a block took (blocks with any decoded token)."""
    steps = commit_order(fwd, block_size)
    steps = torch.nn.functional.pad(steps, (0, (-steps.shape[1]) % block_size), value=-1)
    n_steps = steps.view(steps.shape[0], -1, block_size).max(-1).values + 1  # 0 = not decoded
    return float(n_steps[n_steps > 0].float().mean()) if (n_steps > 0).any() else 0.0


def root_errors(out, problems, correct, block_size: int):
    """Where wrong answers go wrong (`--errors`): for each wrong answer, its root error is
    the earliest-committed token that differs from the reference answer at its position
    (the leftmost of that forward's wrong tokens); returns one (distance, confidence) per
    wrong answer, where distance is how many places the root error stood right of the
    block's leftmost <|mask|> just before the forward that committed it (0 = at the
    frontier) and confidence the sampler's probability of it. Positions are compared with
    the reference as written: a wrong answer differs from it somewhere, but if the model
    wrote a valid step the reference words otherwise, the root error found can sit before
    the real mistake (the task's answers follow one operation order, which makes this rare;
    not measured)."""
    A = out["tokens"].shape[1]
    ref, _ = encode_answers([p["answer"] for p in problems], A)
    found = []
    for n in range(len(problems)):
        if correct[n]:
            continue
        fwd, tok = out["fwd"][n], out["tokens"][n]
        L = int(out["n_gen"][n])
        wrong = [i for i in range(L) if fwd[i] >= 0 and tok[i] != ref[n, i]]
        if not wrong:  # a cut-off answer that matched as far as it went: no committed root error
            continue
        i = min(wrong, key=lambda j: (int(fwd[j]), j))
        s = i - i % block_size
        blk = fwd[s:s + block_size]
        # masked just before that forward: committed by it or later, or never committed
        frontier = s + int(((blk >= fwd[i]) | (blk < 0)).nonzero()[0])
        found.append((i - frontier, float(out["logp"][n, i].exp())))
    return found


def error_table(found, bands=((0, 0), (1, 3), (4, 7), (8, None))):
    """One markdown row's cells for root_errors' output: count per distance band, median
    confidence, and the share above 0.99."""
    cells = [str(len(found))]
    for lo, hi in bands:
        cells.append(str(sum(lo <= d and (hi is None or d <= hi) for d, _ in found)))
    conf = sorted(c for _, c in found)
    cells.append(f"{conf[len(conf) // 2]:.3f}" if conf else "-")
    cells.append(f"{100 * sum(c > 0.99 for c in conf) / max(len(conf), 1):.0f} %")
    return cells


def schedule_path(ckpt: str, block_size: int) -> str:
    """Where Ŝ of `ckpt` at `block_size` is saved: beside the checkpoint, one file per B."""
    return ckpt[:-3] + f".schedule{block_size}.json" if ckpt.endswith(".pt") else ckpt + ".json"


def replay_table(run_dir: str, block_size: int, test_problems, threshold: float = 0.9, device="cpu"):
    """Lines (name, rule, accuracy, TPF, steps/block) for the replay comparison at one B.

    Ŝ comes from T*'s own greedy traces on the test split; every model then replays that
    same Ŝ, and also decodes left to right in as many steps. If T*'s gain were in its
    schedule, the SFT model replaying Ŝ would gain too; if Ŝ beat plain left-to-right at
    the same step count, the order itself would matter."""
    names = sorted(f[:-3] for f in os.listdir(run_dir) if f.endswith(".pt"))
    sft = next(n for n in names if n.startswith("sft"))
    tstar, norl = f"tstar{block_size}", f"norl{block_size}"
    models = {n: load_checkpoint(os.path.join(run_dir, n + ".pt"), device)[0]
              for n in (tstar, sft, norl) if n in names}
    own = evaluate(models[tstar], test_problems, block_size, "dynamic", threshold)
    S = derive_schedule(own["out"]["fwd"], block_size)
    runs = [(tstar, f"dynamic θ={threshold}", own)]
    # two decodes of the whole test split per model, silent until done: show progress
    for n, m in tqdm(models.items(), desc=f"Ŝ replay B={block_size}", unit="model", disable=None):
        runs.append((n, "replay Ŝ", evaluate(m, test_problems, block_size, "schedule", schedule=S)))
        runs.append((n, f"ltr, {len(S)} steps", evaluate(m, test_problems, block_size, "ltr", steps=len(S))))
    return S, [(n, rule, r["accuracy"], r["tpf"], steps_per_block(r["out"]["fwd"], block_size))
               for n, rule, r in runs]


def main():
    ap = argparse.ArgumentParser(description="Derive, picture and replay the decoding schedule Ŝ.")
    ap.add_argument("--ckpt", default=None, help="derive Ŝ from this checkpoint's greedy traces")
    ap.add_argument("--run", default=None, help="a curriculum run directory: print the replay table")
    ap.add_argument("--errors", nargs="+", default=None, metavar="CKPT",
                    help="checkpoints: where their wrong answers go wrong at --block-size (root error's "
                         "distance from the frontier and confidence), one table row each")
    ap.add_argument("--block-size", type=int, default=16, help="decode block size")
    ap.add_argument("--threshold", type=float, default=0.9, help="dynamic-rule θ for the traces")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    a = ap.parse_args()
    try:
        dev = pick_device(a.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if not (a.ckpt or a.run or a.errors):
        sys.exit("error: give --ckpt (derive Ŝ), --run (replay table) or --errors (root errors)")
    try:
        if a.errors:
            loaded = [(ck, *load_checkpoint(ck, dev)) for ck in a.errors]  # a bad path fails before any output
            print(f"Root errors of the wrong answers at B={a.block_size}, dynamic θ {a.threshold} (greedy, "
                  "test split): distance of the earliest-committed wrong token from the block's leftmost "
                  "mask at its forward, and its probability")
            print("\n| checkpoint | accuracy / TPF | wrong | at frontier | 1-3 | 4-7 | >= 8 | median p | p > 0.99 |")
            print("|---|---|---|---|---|---|---|---|---|")
            for ck, model, meta in loaded:
                problems = load_task(meta["task"])[1]
                r = evaluate(model, problems, a.block_size, "dynamic", a.threshold)
                cells = error_table(root_errors(r["out"], problems, r["correct"], a.block_size))
                print(f"| {ck} | {100 * r['accuracy']:.1f} / {r['tpf']:.2f} | " + " | ".join(cells) + " |")
        if a.ckpt:
            model, meta = load_checkpoint(a.ckpt, dev)
            test_problems = load_task(meta["task"])[1]
            r = evaluate(model, test_problems, a.block_size, "dynamic", a.threshold)
            S = derive_schedule(r["out"]["fwd"], a.block_size)
            path = schedule_path(a.ckpt, a.block_size)
            with open(path, "w") as f:
                json.dump({"block_size": a.block_size, "threshold": a.threshold, "schedule": S,
                           **schedule_stats(r["out"]["fwd"], a.block_size)}, f, indent=1)
            print(f"Ŝ of {a.ckpt} at B={a.block_size} ({len(S)} steps; accuracy {100 * r['accuracy']:.1f}%, "
                  f"TPF {r['tpf']:.2f}) -> {path}")
            print(schedule_picture(S, a.block_size))
            st = schedule_stats(r["out"]["fwd"], a.block_size)
            print(f"traces: left-to-right {st['left_to_right']:.2f}  Kendall τ {st['kendall_tau']:.2f}  "
                  f"tokens/step {st['tokens_per_step']:.2f}")
            print(schedule_grid(r["out"]["fwd"], r["out"]["tokens"], a.block_size))
            png = heatmap(r["out"]["fwd"], a.block_size, a.ckpt[:-3] + f".heat{a.block_size}.png",
                          f"{os.path.basename(a.ckpt)} at B={a.block_size}")
            print(f"heat map: {png}" if png else "heat map skipped (no matplotlib)")
        if a.run:
            # T*'s checkpoint names the task, hence the test split; the whole run shares it
            _, meta = load_checkpoint(os.path.join(a.run, f"tstar{a.block_size}.pt"), dev)
            S, table = replay_table(a.run, a.block_size, load_task(meta["task"])[1], a.threshold, dev)
            print(f"Ŝ of tstar{a.block_size} ({len(S)} steps per block):")
            print(schedule_picture(S, a.block_size))
            print(f"\n| checkpoint | decoding at B={a.block_size} | accuracy | TPF | steps/block |")
            print("|---|---|---|---|---|")
            for n, rule, acc, tpf, spb in table:
                print(f"| {n} | {rule} | {100 * acc:.1f} % | {tpf:.2f} | {spb:.2f} |")
    # StopIteration: replay_table's next() found no sft checkpoint in the run folder
    except (CheckpointError, DataError, StopIteration) as e:
        sys.exit(f"error: {e or 'the run directory has no sft checkpoint'}")


if __name__ == "__main__":
    main()
