"""Grade a checkpoint on the math test split: accuracy and tokens per forward.

    python eval_math.py --ckpt runs/tstar/sft4.pt --block-size 4
    python eval_math.py --ckpt runs/tstar/sft4.pt --block-size 16 --samples 3 --temperature 1   # mean@3
    python eval_math.py --ckpt runs/tstar/tstar16.pt --block-size 16 --rule static
    python eval_math.py --ckpt runs/tstar/tstar8.pt --block-size 4,8,16 --sweep   # the frontier
    python eval_math.py --ckpt runs/mine/sft4.pt --test-jsonl my/test.jsonl   # your own GSM8K-style data
    python eval_math.py --ckpt runs/tstar/sft4.pt --block-size 8 --positions  # per-position table

One row per call: accuracy, tokens per forward (TPF, every forward counted), tokens/s,
with block size, rule, θ, commit distance, device and seed. `--sweep` decodes the
checkpoint at every block size given, with the dynamic rule at several θ plus static and
ltr, prints one row each and draws the accuracy-vs-TPF frontier (plots.py) next to the
checkpoint: the curve, not one point of it, is what compares two checkpoints.
`--positions` adds the per-position table of a whole block predicted in one forward from
the true context (`block_positions`): where a model trained at a small block breaks at a
bigger one, and how confident it is there (mask dilution, docs/design.md §3).

Decoding is greedy (temperature 0) unless --temperature is given: then --samples decodes per
problem, each from its own seed, and the row's accuracy is their mean (the field's metric is
`--samples 3 --temperature 1`, dynamic θ 0.9; greedy rows are a property of the weights
alone). Grading is the task's (data/task.py: the number after the last '####', exact
match; an answer that never produced <|eos|> is wrong). The Ŝ analysis of
the traces (order statistics, grids, replay) is schedule.py's, which builds on this file.

`evaluate_all` is curriculum.py's evaluation: every checkpoint of a run at every block
size, every decode of `eval_jobs` (the main table's, greedy and mean@3, and the frontier
sweep's), cached in the run's eval.json by the checkpoint's sha256 and dealt out across
torchrun ranks. The commit
distance and the Ŝ statistics per row come in as arguments from curriculum.py,
since schedule.py imports this file.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import dist
# Grading is the task's (it defines the '#### N' format)
from data.task import DataError, check_fit, encode_prompts, is_correct, load_task, read_jsonl, task_tensors
from data.tokenizer import decode
from model import CheckpointError, load_checkpoint, pick_device, training_input, write_json
from train import release_memory
import sample
from sample import RULES, compile_seconds, decode_blocks, generate, generate_ar
import plots

# The frontier sweep's thresholds: from bold (0.5 commits nearly anything a step proposes)
# to careful (0.99 commits little but the sure tokens); 0.9 is the default rule's. Four
# keep the sweep affordable on a CPU: each is one more decode of the test split per
# checkpoint and block size.
SWEEP_THRESHOLDS = (0.5, 0.7, 0.9, 0.99)
EVAL_BATCH = 512  # problems decoded at once (a test split of 300 is one batch)


def sweep_jobs(thresholds=SWEEP_THRESHOLDS):
    """(rule, θ) of every decode in a frontier sweep at one block size: dynamic at each θ,
    then static and ltr one token per step (θ None: they do not read confidences), the
    TPF ≈ 1 floor that shows what parallel commits cost."""
    return [("dynamic", float(t)) for t in sorted(set(thresholds))] + [("static", None), ("ltr", None)]


def parse_list(text: str, kind=float, what="--sweep-thresholds"):
    """'0.5,0.7' -> [0.5, 0.7] (kind=int: '4,8' -> [4, 8]); one-line ValueError otherwise. The one
    comma-list parser of the flags (--stages, --seeds, --block-size, --sweep-thresholds)."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ValueError(f"{what} must be comma-separated {noun}, got {text!r}") from None


@torch.no_grad()
def evaluate(model, problems, block_size: int, rule: str = "dynamic", threshold: float = 0.9,
             steps: int = None, batch_size: int = None, seed: int = 0, schedule=None, distance: int = 0,
             temperature: float = 0.0, samples: int = 1):
    """Decode `problems` at `block_size` (0 = AR) `samples` times at `temperature` (0 = greedy),
    commits limited to `distance` of the block's leftmost mask (0 = anywhere; sample.near_frontier).
    Sample i draws from its own generator seeded seed + i, so a row is reproducible; at
    temperature 0 every sample is the greedy decode. Returns a dict with the mean accuracy over
    the samples (and their min and max), TPF over every decode, tokens/s, and the raw decode
    outputs of all samples concatenated (for the schedule analysis).

    mean@3 at T=1 is the field's metric (dLLM-RL scores 3 responses per problem with dynamic
    θ 0.9 at temperature 1; T*'s "Pass@3" is most likely their mean): greedy alone flatters
    a model whose sampled decodes go wrong."""
    model.eval()  # no dropout: a decode is then a function of the weights (and the sample's seed)
    dev = next(model.parameters()).device
    batch_size = min(batch_size or EVAL_BATCH, len(problems))  # the last batch is padded to it (compiled)
    prompts = encode_prompts([p["question"] for p in problems], model.cfg.prompt_len)
    outs, accs, t0, c0 = [], [], time.time(), compile_seconds()
    texts, correct = [], []
    for i in range(samples):
        gen = torch.Generator(device=dev).manual_seed(seed + i) if temperature > 0 else None
        part = []
        for j in range(0, len(problems), batch_size):
            p = prompts[j:j + batch_size].to(dev)
            if block_size == 0:
                part.append(generate_ar(model, p, temperature, gen))
            else:
                if schedule is not None:  # Ŝ replay: the eager sampler's rule alone
                    part.append(generate(model, p, block_size, rule, threshold, steps, temperature, gen,
                                         schedule=schedule, distance=distance))
                else:
                    part.append(decode_blocks(model, p, block_size, rule, threshold, steps, temperature, gen, distance,
                                              pad_to=batch_size))
        out = {k: torch.cat([o[k] for o in part]) for k in part[0]}
        # Graded as text, like GSM8K: the grader reads the task's '#### N' format, which is the
        # same for generated and user JSONL data. Not finished = no <|eos|> in the answer area:
        # cut off, so wrong whatever it says.
        t = [decode(x) for x in out["tokens"]]
        c = [is_correct(x, r["answer"], bool(f)) for x, r, f in zip(t, problems, out["finished"])]
        outs.append(out)
        texts += t
        correct += c
        accs.append(sum(c) / len(problems))
    if dev.type == "cuda":  # kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize()
    compile_secs = compile_seconds() - c0  # the compiled sampler's first decode at a shape: not decoding
    secs = time.time() - t0 - compile_secs
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    # TPF over every decode: every forward counts, the fused cache writes included
    # (sample.py), so TPF below 1 means the rule spent forwards on writing, not committing.
    # θ is None for rules that do not read it, so no row seems to depend on it.
    n_tok = out["n_gen"].sum().item()
    return dict(block_size=block_size, rule="ar" if block_size == 0 else rule,
                threshold=threshold if rule == "dynamic" else None, distance=distance,
                temperature=temperature, samples=samples,
                accuracy=sum(accs) / samples, acc_min=min(accs), acc_max=max(accs),
                tpf=n_tok / out["nfe"].sum().item(),
                tokens_per_s=n_tok / secs, seconds=secs, compile_seconds=compile_secs, n=len(problems),
                device=dev.type, seed=seed,
                texts=texts, correct=correct, out=out)


def curve_point(model, problems, block_size: int, step: int, threshold: float = 0.9, samples: int = 3,
                seed: int = 0):
    """One point of an RL stage's accuracy curve (curriculum --curve-every, b4_curve.py): greedy and
    mean@`samples` at T=1, dynamic θ, on `problems`. Prints one fixed-format line; returns the point."""
    g = evaluate(model, problems, block_size, "dynamic", threshold)
    m = evaluate(model, problems, block_size, "dynamic", threshold, seed=seed, temperature=1.0, samples=samples)
    pt = dict(step=step, block_size=block_size, n=len(problems), greedy=100 * g["accuracy"],
              mean=100 * m["accuracy"], tpf=g["tpf"])
    print(f"curve step {step:3d} | B={block_size} greedy {pt['greedy']:5.1f} | mean@{samples} {pt['mean']:5.1f} | "
          f"TPF {pt['tpf']:.2f}", flush=True)
    return pt


def curve_recorder(model, problems, block_size: int, every: int, seed: int = 0):
    """An RL stage's curve: its step-0 point now, and run_tracerl's on_step hook, which adds a point
    every `every` steps. Returns (points, on_step); `points` grows as the stage trains."""
    points = [curve_point(model, problems, block_size, 0, seed=seed)]

    def on_step(i, m):
        if i % every == 0:
            points.append(curve_point(m, problems, block_size, i, seed=seed))
    return points, on_step


@dataclass(frozen=True)
class EvalPlan:
    """What curriculum.py decodes for every checkpoint at every block size (its --eval-* and
    --sweep-thresholds flags): the main table's dynamic θ, the θ of the greedy frontier sweep
    (empty: the main table only), and the sampled mean@N (samples 0 = greedy only)."""
    threshold: float = 0.9
    sweep: tuple = SWEEP_THRESHOLDS
    samples: int = 3
    temperature: float = 1.0

    @classmethod
    def from_args(cls, a):
        return cls(a.eval_threshold, tuple(parse_list(a.sweep_thresholds)), a.eval_samples, a.eval_temperature)


def eval_jobs(plan: EvalPlan):
    """(rule, θ) of the decodes of every checkpoint at every block size: the main table's
    (dynamic at plan.threshold, static and, unless plan.samples is 0, "sampled": dynamic at
    plan.threshold and plan.temperature, the mean over plan.samples decodes, the field's mean@3)
    and, unless plan.sweep is empty, the greedy frontier sweep around them (dynamic at every
    θ, static and ltr)."""
    # the main table's θ joins the sweep, so the main table's dynamic row is one of the
    # sweep's decodes (same cache key), never decoded twice
    if plan.sweep:
        jobs = sweep_jobs(list(plan.sweep) + [plan.threshold])
    else:
        jobs = [("dynamic", plan.threshold), ("static", None)]
    return jobs + ([("sampled", plan.threshold)] if plan.samples > 0 else [])


def cache_key(name, B, rule, t, distance, temperature=0.0, samples=1):
    """The eval.json key of one decode: checkpoint, block size, rule, θ (None for rules that
    ignore it), commit distance, and for sampled decodes their temperature and count."""
    return f"{name}|{B}|{rule}|{t}|{distance}" + (f"|T{temperature:g}x{samples}" if rule == "sampled" else "")


def evaluate_all(run, names, stages, test_set, plan: EvalPlan, seed, distance: int, row_stats):
    """Every checkpoint of curriculum.py's run at every block size, every decode of
    eval_jobs; cached in eval.json by the checkpoint file's sha256 (curriculum.Run.digest, the same
    freshness test the resume uses), so a resumed run only evaluates what changed.
    Under torchrun each checkpoint's evaluations are dealt out across ranks and gathered
    (tokens/s then shares the machine). Returns the rows, checkpoint by checkpoint, in job order.

    run: the run folder (curriculum.Run: .out, .load(name), .digest(name)); plan: what to decode;
    distance: the commit distance of every decode (--commit-distance); row_stats(fwd, B): extra fields of
    a row from its decode's traces (schedule.schedule_stats, the Ŝ statistics)."""
    cache_path = os.path.join(run.out, "eval.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    results = []
    for name in names:
        model, meta = run.load(name)
        # the digest ties a cached row to these exact bytes: a rebuilt stage is evaluated again,
        # the untouched checkpoints are not
        stamp = run.digest(name)
        key = lambda B, rule, t: cache_key(name, B, rule, t, distance, plan.temperature, plan.samples)
        jobs = [(B, rule, t) for B in stages for rule, t in eval_jobs(plan)]
        todo = [(B, rule, t) for B, rule, t in jobs
                if key(B, rule, t) not in cache or cache[key(B, rule, t)]["stamp"] != stamp]
        new = {}
        # decodes of the whole test split print nothing until done: a bar (on a terminal)
        for B, rule, t in tqdm(todo[dist.rank()::dist.world()], desc=f"eval {name}", unit="decode",
                               leave=False, disable=None if dist.is_main() else True):
            sampled = rule == "sampled"
            r = evaluate(model, test_set, B, "dynamic" if sampled else rule, plan.threshold if t is None else t,
                         seed=seed, distance=distance, temperature=plan.temperature if sampled else 0.0,
                         samples=plan.samples if sampled else 1)
            row = {k: v for k, v in r.items() if k not in ("texts", "correct", "out")}
            row["rule"] = rule  # "sampled" rows are kept apart from the greedy frontier
            row.update(row_stats(r["out"]["fwd"], B))  # Ŝ from the same traces: no second decode
            row.update(method=name, trained_block=meta.get("block_size"), decode_block=B, stamp=stamp)
            new[key(B, rule, t)] = row
        for part in dist.gather_objects(new):
            cache.update(part)
        # one line per decode, printed after the gather: every rank's results, in job order
        for B, rule, t in todo:
            row = cache[key(B, rule, t)]
            how = rule if t is None else f"{rule} θ={t:g}"
            if rule == "sampled":
                how = f"mean@{plan.samples} T={plan.temperature:g} θ={t:g}"
            print(f"eval {name:>9} @ B={B:<3} {how:>14}: acc {100 * row['accuracy']:5.1f}%  "
                  f"TPF {row['tpf']:.2f}", flush=True)
        results += [cache[key(B, rule, t)] for B, rule, t in jobs]
        release_memory()
        if dist.is_main():  # after every checkpoint: a run killed mid-evaluation keeps what it did
            write_json(cache_path, cache)
    return results


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
    correct, conf = [], []
    for i in range(0, len(problems), batch_size):
        gold = answers[i:i + batch_size].to(dev)
        every = torch.ones_like(gold, dtype=torch.bool)  # the whole answer masked in the noisy copy
        idx, pos, mask = training_input(prompts[i:i + batch_size].to(dev), gold, every, block_size)
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
    ap.add_argument("--block-size", default="4",
                    help="decode block size (0 = AR decoding); with --sweep a list, e.g. 4,8,16")
    ap.add_argument("--rule", default="dynamic", choices=RULES, help="commit rule")
    ap.add_argument("--threshold", type=float, default=0.9, help="dynamic-rule confidence threshold")
    ap.add_argument("--steps-per-block", type=int, default=None,
                    help="denoising steps per block for static/ltr (default: the block size, one token a step)")
    ap.add_argument("--samples", type=int, default=1,
                    help="decodes per problem, each seeded (--seed + i); accuracy is their mean (the field's "
                         "metric: --samples 3 --temperature 1)")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the first sample")
    ap.add_argument("--commit-distance", type=int, default=0,
                    help="commit only masks fewer than D places right of the block's leftmost mask (0 = anywhere)")
    ap.add_argument("--mask-window", type=int, default=None,
                    help="decode with this mask window instead of the checkpoint's (-1 = none; a diagnostic)")
    ap.add_argument("--test-jsonl", default=None, help="GSM8K-style test file (default: the generated test split)")
    ap.add_argument("--n", type=int, default=None, help="evaluate only the first N problems")
    ap.add_argument("--positions", action="store_true",
                    help="also print accuracy and confidence per in-block position, every block "
                         "predicted in one forward from the true context")
    ap.add_argument("--sweep", action="store_true",
                    help="the frontier: dynamic at every --sweep-thresholds θ, static and ltr, at every "
                         "--block-size; prints the rows and writes a frontier picture (--plot)")
    ap.add_argument("--sweep-thresholds", default=",".join(map(str, SWEEP_THRESHOLDS)),
                    help="θ values of the sweep, comma-separated")
    ap.add_argument("--plot", default=None,
                    help="frontier picture of --sweep (default: next to the checkpoint, NAME.frontier.png)")
    ap.add_argument("--json", action="store_true", help="print the row (with --sweep: the rows) as JSON")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--no-compile", action="store_true", help="decode eagerly on GPU too (sample.decode_blocks)")
    a = ap.parse_args()
    sample.COMPILE = not a.no_compile
    try:
        blocks = parse_list(a.block_size, int, "--block-size")
        thresholds = parse_list(a.sweep_thresholds)
        if a.samples < 1 or a.temperature < 0:
            raise ValueError(f"--samples must be >= 1 and --temperature >= 0, got {a.samples}, {a.temperature}")
        if len(blocks) != 1 and not a.sweep:
            raise ValueError(f"--block-size takes one block size without --sweep, got {a.block_size!r}")
        if a.sweep and (not thresholds or 0 in blocks):
            raise ValueError("--sweep needs at least one θ and block sizes > 0 (AR has no rule to sweep)")
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
        if a.sweep:
            jobs = [(B, rule, t) for B in blocks for rule, t in sweep_jobs(thresholds)]
        else:
            jobs = [(blocks[0], a.rule, a.threshold)]
        results = []
        # the sweep's static and ltr take one token per step (steps = B): the floor every
        # parallel decode is measured against; many silent decodes of the split: a bar
        for B, rule, t in tqdm(jobs, desc="sweep", unit="decode", disable=None if a.sweep else True):
            steps = None if a.sweep else a.steps_per_block
            r = evaluate(model, problems, B, rule, a.threshold if t is None else t, steps, seed=a.seed,
                         distance=a.commit_distance, temperature=a.temperature, samples=a.samples)
            results.append({k: v for k, v in r.items() if k not in ("texts", "correct", "out")})
    except (CheckpointError, DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    stem = a.ckpt[:-3] if a.ckpt.endswith(".pt") else a.ckpt
    name = os.path.basename(stem)
    if a.sweep:
        for r in results:  # the fields plots.py reads, named as curriculum.py's rows name them
            r.update(method=name, decode_block=r["block_size"])
    if a.json:
        print(json.dumps(results if a.sweep else results[0]))
    elif not a.sweep:
        row = results[0]
        how = (f" (mean of {a.samples} at T={a.temperature:g}: min {100 * row['acc_min']:.1f}, "
                  f"max {100 * row['acc_max']:.1f})") if a.samples > 1 else f" (T={a.temperature:g})"
        print(f"{a.ckpt}  B={row['block_size']} rule={row['rule']} D={a.commit_distance} "
              f"W={model.cfg.mask_window}  acc {100 * row['accuracy']:.1f}%{how}  "
              f"TPF {row['tpf']:.2f}  {row['tokens_per_s']:.0f} tok/s  ({row['n']} problems, "
              f"{row['device']}, seed {row['seed']}, {row['seconds']:.1f}s)")
    else:
        how = "greedy" if a.temperature == 0 else f"mean of {a.samples} at T={a.temperature:g}"
        print(f"{a.ckpt}: {results[0]['n']} problems, {how}, {results[0]['device']}\n")
        print("| B | rule | θ | accuracy | TPF | seconds |\n|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['block_size']} | {r['rule']} | {r['threshold'] if r['threshold'] is not None else '-'} "
                  f"| {100 * r['accuracy']:.1f} % | {r['tpf']:.2f} | {r['seconds']:.1f} |")
    if a.sweep:
        path = a.plot or stem + ".frontier.png"
        done = plots.frontier(results, [name], blocks, path, title=f"{name}: accuracy vs tokens per forward")
        print(f"frontier picture: {done}" if done else
              f"{os.path.basename(path)} skipped (no matplotlib: pip install -r requirements-plots.txt)",
              file=sys.stderr if a.json else sys.stdout)
    if a.positions and blocks[0] > 0:
        B = blocks[0]
        table = position_table(*block_positions(model, problems, B), B)
        print(f"one forward per block from the true context, B={B}:")
        for label, key, fmt in (("position", "position", "5d"), ("accuracy", "accuracy", "5.2f"),
                                ("confidence", "confidence", "5.2f"), ("n", "n", "5d")):
            print(f"  {label:<10} " + " ".join(format(t[key], fmt) for t in table))


if __name__ == "__main__":
    main()
