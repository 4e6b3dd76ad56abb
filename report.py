"""What a finished run writes: the tables, the pictures, and the table over seeds.

    python curriculum.py --stages 4,8,16 --out runs/tstar     # ends with report() and pictures()
    python curriculum.py --stages 4,8 --seeds 0,1,2 --out runs/s   # ... and aggregate()

curriculum.py trains and evaluates; this file only reads what that produced (evaluation
rows, the checkpoints' RL histories, the seed folders' results.json) and turns it into:
  * results.md / results.json / stdout: the main table (every checkpoint at every block
    size, dynamic at --eval-threshold and static), the frontier table, Ŝ statistics at
    each checkpoint's own block, the reward sparklines, and the one-line comparison;
  * frontier.png (accuracy vs TPF) and rewards.png (reward per RL step), via plots.py,
    each skipped with one line when matplotlib is missing;
  * aggregate.md / aggregate.json over training seeds (--seeds): mean and min-max;
  * the frontier comparison over finished runs (one row per seed), from the command line:
        python report.py --frontier runs/tstar --out frontier.md
A row is keyed by (checkpoint, decode B, rule, θ): the frontier sweep puts several
dynamic rows, one per θ, in every (checkpoint, B) cell.
"""
import argparse
import glob
import json
import os

import plots

# eight levels of a reward in [0, 1]: the reward curve fits one terminal line
SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values, width: int = 60):
    """Rewards in [0, 1] as one character each (▁ = 0, █ = 1). Past `width` values, each
    character is the mean of a run of consecutive steps (the runs differ by at most one step),
    so a 210-step stage still fits on one line."""
    values, n = list(values), len(values)
    if n > width:
        edges = [i * n // width for i in range(width + 1)]
        values = [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]
    return "".join(SPARK[min(int(v * len(SPARK)), len(SPARK) - 1)] for v in values)


def load_records(path):
    """The evaluation records of one results.json: {"records": [...], "phases": [...]}, or the
    plain list of records that run folders written before the phase table hold."""
    with open(path) as f:
        data = json.load(f)
    return data["records"] if isinstance(data, dict) else data


def read_results(path):
    """One results.json as {(checkpoint, decode B, rule, θ): record}."""
    return {(r["method"], r["decode_block"], r["rule"], r.get("threshold")): r for r in load_records(path)}


def phase_table(metas, names, results, plan):
    """Where a run's time went: [(phase, seconds)] from the checkpoints' metas (the time each
    took when it was trained, in this invocation or an earlier one) and the evaluation
    records' own seconds. An RL stage splits into rollout (sampling and grading), rows (the
    trace rows and what the options need) and update (forward, backward, optimiser step), plus
    its --curve-every decodes. Phases a checkpoint made before this table existed lack: '-'."""
    out = []
    for n in names:
        m = metas[n]
        if n.startswith(("tstar", "direct")):
            h = m.get("rl_history", [])
            for part in ("rollout", "rows", "update"):
                out.append((f"{n} {part}", sum(x[f"secs_{part}"] for x in h) if h and f"secs_{part}" in h[0] else None))
            if m.get("curve"):
                out.append((f"{n} curve", m.get("curve_seconds")))
        else:
            label = n + (" (pre-training)" if n == "ar" else " (SFT)")
            out.append((label, m.get("seconds")))
    main = {("dynamic", plan.threshold), ("static", None)}
    kinds = {"evaluation: greedy table": lambda r: (r["rule"], r["threshold"]) in main,
             f"evaluation: mean@{plan.samples}": lambda r: r["rule"] == "sampled",
             "evaluation: frontier sweep": lambda r: r["rule"] != "sampled" and (r["rule"], r["threshold"]) not in main}
    for kind, pick in kinds.items():
        picked = [r["seconds"] for r in results if pick(r)]
        if picked:
            out.append((kind, sum(picked)))
    # compiling the sampler's step (GPU decodes): kept out of the decode phases above and their tok/s
    compiled = sum(metas[n].get("compile_seconds", 0.0) for n in names) + \
        sum(r.get("compile_seconds", 0.0) for r in results)
    if compiled > 0:
        out.append(("compile (torch.compile of the sampler's step)", compiled))
    return out


def phase_lines(phases):
    """The phase table as Markdown lines, with each phase's share of the known total."""
    total = sum(s for _, s in phases if s is not None)
    lines = ["| phase | seconds | share |", "|---|---|---|"]
    lines += [f"| {p} | {s:.1f} | {100 * s / total:.0f} % |" if s is not None else f"| {p} | - | - |"
              for p, s in phases]
    return lines + [f"| all of the above | {total:.1f} | 100 % |"]


def aggregate(out, seeds, stages, threshold=0.9):
    """The table over seeds: every (checkpoint, decode B, rule, θ) cell of the seed folders'
    results.json as mean and min-max of accuracy and TPF. Writes OUT/aggregate.json (one
    row per cell, with the per-seed values) and OUT/aggregate.md, and prints the table of
    the main decodes (dynamic at `threshold`, static)."""
    # θ is part of the key: the frontier sweep puts several dynamic rows in every cell
    per_seed = [read_results(os.path.join(out, f"seed{s}", "results.json")) for s in seeds]
    rows = []
    for key, first in per_seed[0].items():
        if any(key not in p for p in per_seed):
            continue  # a decode only some seeds ran (other --sweep-thresholds): no mean to take
        acc = [p[key]["accuracy"] for p in per_seed]
        tpf = [p[key]["tpf"] for p in per_seed]
        rows.append(dict(method=key[0], trained_block=first.get("trained_block"), decode_block=key[1],
                         rule=key[2], threshold=key[3], seeds=seeds, samples=first.get("samples", 1),
                         accuracy=sum(acc) / len(acc), accuracy_min=min(acc), accuracy_max=max(acc),
                         accuracy_per_seed=acc, tpf=sum(tpf) / len(tpf), tpf_per_seed=tpf))
    with open(os.path.join(out, "aggregate.json"), "w") as f:
        json.dump(rows, f, indent=1)
    names = list(dict.fromkeys(r["method"] for r in rows))
    by_key = {(r["method"], r["decode_block"], r["rule"], r["threshold"]): r for r in rows}
    get = lambda k: by_key[k + ((None,) if k[2] == "static" else (threshold,))]  # the main decodes
    rules = main_rules(rows)
    cell = lambda r: (f"{100 * r['accuracy']:.1f} ({100 * r['accuracy_min']:.1f}-{100 * r['accuracy_max']:.1f})"
                      f" / {r['tpf']:.2f}")
    lines = [f"# T* results over seeds {','.join(map(str, seeds))}: --stages {','.join(map(str, stages))}", "",
             f"Cells: mean accuracy % (min-max over the {len(seeds)} training seeds) / mean tokens per "
             f"forward; {first['n']} test problems; dynamic and static greedy, mean@N sampled (the mean of N "
             f"decodes at temperature 1, dynamic). Per-seed tables: seed*/results.md.", "",
             "| checkpoint | " + " | ".join(f"B={B} {rule_name(r, rows)}" for B in stages for r in rules) + " |",
             "|---|" + "---|" * len(rules) * len(stages)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(cell(get((n, B, rule))) for B in stages for rule in rules) + " |")
    if len(stages) > 1:  # the comparison the run exists for, seed by seed
        B0, Bl = stages[0], stages[-1]
        for rule in rules[:-1]:  # greedy, then sampled
            acc = lambda m, B: get((m, B, rule))["accuracy_per_seed"]
            gap = [100 * (t - d) for t, d in zip(acc(f"tstar{Bl}", Bl), acc(f"direct{Bl}", Bl))]
            keep = [t / b if b else 0.0 for t, b in zip(acc(f"tstar{Bl}", Bl), acc(f"tstar{B0}", B0))]
            lines += ["", f"{rule_name(rule, rows)}: T*@{Bl} minus direct@{Bl} at B={Bl}, per seed: "
                          + ", ".join(f"{g:+.1f}" for g in gap) + " points; T*@" + f"{Bl} keeps "
                          + ", ".join(f"{100 * k:.0f}" for k in keep) + f" % of the B={B0} model's accuracy."]
    if len(stages) > 1 and any(r["rule"] == "ltr" for r in rows):  # the sweep ran: compare on the frontier
        lines += ["", f"On the frontier, per seed (report.py --frontier {out}): each method's best accuracy at "
                      f"B={stages[-1]} above the B={stages[0]} model's TPF, and its accuracy at that TPF.", ""]
        lines += matched_tpf_table([out], threshold)
        path = os.path.join(out, "frontier.png")
        drawn = plots.frontier(rows, names, stages, path, f"mean over training seeds {','.join(map(str, seeds))}")
        lines += ["", "![the frontier, mean over seeds](frontier.png)" if drawn else
                  "frontier.png skipped (no matplotlib: pip install -r requirements-plots.txt)"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "aggregate.md"), "w") as f:
        f.write(text)
    print("\n" + text)


def main_rules(rows):
    """The main table's columns per block size: greedy dynamic, the sampled mean@N where the
    run decoded it, greedy static."""
    return ["dynamic"] + (["sampled"] if any(r["rule"] == "sampled" for r in rows) else []) + ["static"]


def rule_name(rule, rows):
    """A column's name: 'sampled' reads as mean@N (N from the rows)."""
    if rule != "sampled":
        return rule
    return f"mean@{next(r['samples'] for r in rows if r['rule'] == 'sampled')}"


def report(run, names, stages, results, wall, plan, seed):
    """results.md, results.json and the table on stdout. The main table shows the main
    decodes (dynamic at --eval-threshold, static); the frontier table condenses the sweep.
    `wall`: the run's wall.json record, {seconds, invocations}, summed over its resumes."""
    by_key = {(r["method"], r["decode_block"], r["rule"], r["threshold"]): r for r in results}
    # the main table's cell: static rows carry no θ, dynamic and sampled ones the --eval-threshold one
    get = lambda k: by_key[k + ((None,) if k[2] == "static" else (plan.threshold,))]
    rules = main_rules(results)
    runs = f" (summed over {wall['invocations']} invocations)" if wall["invocations"] > 1 else ""
    lines = [f"# T* results: --stages {','.join(map(str, stages))}",
             "",
             f"{results[0]['n']} test problems. dynamic = greedy, θ = {plan.threshold}; "
             + (f"mean@{plan.samples} = the mean accuracy of {plan.samples} decodes at temperature "
                f"{plan.temperature:g} with the same rule (the field's metric); " if "sampled" in rules else "")
             + f"static = greedy, one token per step. Cells: accuracy % / tokens per forward. "
             f"Device {results[0]['device']}, seed {seed}, wall time {wall['seconds'] / 60:.1f} min{runs}. "
             f"Commit distance per B (0 = anywhere in the block): "
             + ", ".join(f"B={B}: {get((names[0], B, 'static')).get('distance', 0)}" for B in stages) + ".",
             "",
             "| checkpoint | " + " | ".join(f"B={B} {rule_name(r, results)}" for B in stages for r in rules) + " |",
             "|---|" + "---|" * len(rules) * len(stages)]
    for n in names:
        cells = []
        for B in stages:
            for rule in rules:
                r = get((n, B, rule))
                cells.append(f"{100 * r['accuracy']:.1f} / {r['tpf']:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += frontier_section(results, names, stages, plan)
    lines += ["", "Ŝ, from the dynamic-rule traces at each checkpoint's own block size "
                  "(left-to-right fraction of steps, Kendall τ position vs step, tokens per step):", ""]
    lines += ["| checkpoint | decode B | left-to-right | Kendall τ | tokens/step |", "|---|---|---|---|---|"]
    for n in names:
        for B in stages:
            r = get((n, B, "dynamic"))
            if n.startswith("sft") or r["trained_block"] == B:  # SFT at every B, others at their own
                lines.append(f"| {n} | {B} | {r['left_to_right']:.2f} | {r['kendall_tau']:.2f} | "
                             f"{r['tokens_per_step']:.2f} |")
    lines += ["", "Rollout reward per RL step (▁ = 0, █ = 1):", ""]
    metas = {}
    for n in names:
        if n.startswith(("tstar", "direct")):
            meta = metas[n] = run.load(n)[1]
            h = [x["reward"] for x in meta["rl_history"]]
            per = f", {len(h) / 60:.1f} steps a character" if len(h) > 60 else ""
            lines.append(f"    {n:>9}  {sparkline(h)}  {h[0]:.2f} -> {h[-1]:.2f} ({len(h)} steps{per})")
    metas.update({n: run.load(n)[1] for n in ["ar"] + names if n not in metas})
    for n in names:  # --curve-every (and --stage-curve-every): each stage's accuracy at its own block
        curve = metas[n].get("curve") if n.startswith(("tstar", "direct")) else None
        if curve:
            lines += ["", f"{n} while it trained, at B={curve[0]['block_size']} (step: greedy / mean@3 %):", "",
                      "    " + ", ".join(f"{c['step']}: {c['greedy']:.1f} / {c['mean']:.1f}" for c in curve)]
    if len(stages) > 1:
        B0, Bl = stages[0], stages[-1]
        for rule in rules[:-1]:  # the one-line comparison, greedy and sampled
            base = get((f"tstar{B0}", B0, rule))
            ts, di, no = (get((f"{m}{Bl}", Bl, rule)) for m in ("tstar", "direct", "norl"))
            lines += ["", f"{rule_name(rule, results)}: T* at B={Bl}: {100 * ts['accuracy']:.1f}% at TPF "
                          f"{ts['tpf']:.2f}, vs the B={B0} model at B={B0}: {100 * base['accuracy']:.1f}% at TPF "
                          f"{base['tpf']:.2f} (TPF x{ts['tpf'] / base['tpf']:.2f}); direct "
                          f"{100 * di['accuracy']:.1f}%, no-RL {100 * no['accuracy']:.1f}% at B={Bl}."]
    phases = phase_table(metas, ["ar"] + names, results, plan)
    lines += ["", f"Where the time went (seconds when each part ran; wall time {wall['seconds'] / 60:.1f} min{runs}):",
              ""] + phase_lines(phases)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(run.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(run.out, "results.json"), "w") as f:
        json.dump(dict(records=[{k: v for k, v in r.items() if k != "stamp"} for r in results],
                       phases=[dict(phase=p, seconds=sec) for p, sec in phases]), f, indent=1)
    print("\n" + text)


def frontier_section(results, names, stages, plan):
    """results.md's frontier table: the best accuracy each checkpoint reaches at TPF ≥ 2 and
    ≥ 3 among all its decodes at a block size, and what the sweep cost. The main table
    answers "how good at θ = 0.9"; this one the paper's question, "how good at a given
    parallelism", which a checkpoint may reach only at another θ. Empty without a sweep."""
    thetas = sorted({r["threshold"] for r in results if r["rule"] == "dynamic"})
    if len(thetas) < 2:
        return []
    main = [r for r in results if (r["rule"], r["threshold"]) in
            (("dynamic", plan.threshold), ("static", None), ("sampled", plan.threshold))]
    total = sum(r["seconds"] for r in results)
    extra = total - sum(r["seconds"] for r in main)
    return (["", "Frontier (frontier.png): the best accuracy % / its TPF (decode) at each TPF floor, among "
                 "dynamic θ ∈ {" + ", ".join(f"{t:g}" for t in thetas) + "}, static and ltr; - = no decode "
                 "gets there.", ""]
            + plots.frontier_table(results, names, stages)
            + ["", f"Decoding took {total:.0f} s for {len(results)} decodes; the {len(results) - len(main)} "
                   f"sweep decodes beyond the main table took {extra:.0f} s of it."])


def pictures(run, names, stages, results):
    """frontier.png and rewards.png in the run folder, one line each: written, or skipped
    when matplotlib is missing (it is optional: the run's numbers never depend on it)."""
    curves, done = [], 0
    for n in names:  # T*'s stages one after another on the step axis, direct from step 0
        if n.startswith(("tstar", "direct")):
            h = [x["reward"] for x in run.load(n)[1]["rl_history"]]
            curves.append((n, h, done if n.startswith("tstar") else 0))
            done += len(h) if n.startswith("tstar") else 0
    what = f"greedy, {results[0]['n']} test problems"
    draws = {"frontier.png": lambda p: plots.frontier(results, names, stages, p,
                                                      f"accuracy vs tokens per forward, {what}"),
             "rewards.png": lambda p: plots.rewards(curves, p, "rollout reward per RL step (T* stages; direct)")}
    for fname, draw in draws.items():
        path = os.path.join(run.out, fname)
        print(f"picture: {path}" if draw(path) else
              f"{fname} skipped (no matplotlib: pip install -r requirements-plots.txt)", flush=True)


def result_files(folder):
    """A run folder's results.json files: its own (one seed), or every seed*/results.json
    under it (a --seeds parent), in seed-folder order."""
    own = os.path.join(folder, "results.json")
    return [own] if os.path.exists(own) else sorted(glob.glob(os.path.join(folder, "seed*", "results.json")))


def load_seed_results(folder):
    """A run folder's evaluation rows, one list per training seed: the folder's own
    results.json (one seed), or every seed*/results.json under it (--seeds)."""
    files = result_files(folder)
    if not files:
        raise SystemExit(f"error: {folder} holds no results.json (nor seed*/results.json): not a finished run")
    out = [read_results(path) for path in files]
    settings = os.path.join(os.path.dirname(files[0]), "settings.json")
    with open(settings) as f:
        return out, json.load(f)


def curve(per, method, B):
    """A checkpoint's frontier at block size B: its (TPF, accuracy) points over every decode
    of the sweep (dynamic at each θ, static, ltr), sorted by TPF."""
    return sorted((r["tpf"], r["accuracy"]) for (m, b, rule, _), r in per.items()
                  if m == method and b == B and rule != "sampled")


def at_tpf(points, x):
    """Accuracy at TPF x on a frontier, linear between the two sweep points around x (None
    outside the points' TPF range: no extrapolation)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def frontier_rows(folder, threshold=0.9):
    """The frontier comparison of one finished run folder, one row per training seed. The
    reference is the B=B0 SFT model at B0 (dynamic at `threshold`): the paper's question is
    whether a checkpoint at the last B decodes *more* tokens per forward at nearly its
    accuracy. Per method at the last B: the best accuracy at a TPF above the reference's
    (any decode of the sweep), and the accuracy at the reference's TPF (matched TPF)."""
    per_seed, _ = load_seed_results(folder)
    # each results.json's own settings name its seed (a --seeds parent's seed{S} folders too)
    seeds = [json.load(open(os.path.join(os.path.dirname(p), "settings.json"))).get("seed")
             for p in result_files(folder)]
    blocks = sorted({k[1] for k in per_seed[0]})
    B0, Bl = blocks[0], blocks[-1]
    rows = []
    for i, per in enumerate(per_seed):
        ref = per[(f"sft{B0}", B0, "dynamic", threshold)]
        cells = {}
        for m in ("tstar", "direct", "norl"):
            pts = curve(per, f"{m}{Bl}", Bl)
            above = [p for p in pts if p[0] > ref["tpf"]]
            cells[m] = (max(above, key=lambda p: p[1]) if above else None, at_tpf(pts, ref["tpf"]))
        rows.append(dict(seed=seeds[i], ref=ref, cells=cells))
    return rows, B0, Bl


def matched_tpf_table(folders, threshold=0.9):
    """The frontier comparison over run folders (one seed or a --seeds parent each), as
    markdown lines: one row per folder and seed, then the T*-direct gap at matched TPF."""
    lines = []
    for folder in folders:
        rows, B0, Bl = frontier_rows(folder, threshold)
        if not lines:
            head = ["run", "seed", f"sft{B0} @{B0} (ref) acc / TPF"] + \
                   [f"{m}@{Bl} best above ref TPF" for m in ("T*", "direct", "no-RL")] + \
                   [f"{m}@{Bl} at ref TPF" for m in ("T*", "direct", "no-RL")] + \
                   ["T* - direct at ref TPF", "T* keeps >= 80 % above ref TPF"]
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            ref = r["ref"]
            best = [r["cells"][m][0] for m in ("tstar", "direct", "norl")]
            matched = [r["cells"][m][1] for m in ("tstar", "direct", "norl")]
            pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
            gap = "-" if None in matched[:2] else f"{100 * (matched[0] - matched[1]):+.1f}"
            keeps = best[0] is not None and best[0][1] >= 0.8 * ref["accuracy"]
            lines.append("| " + " | ".join(
                [os.path.normpath(folder), str(r["seed"]), f"{100 * ref['accuracy']:.1f} / {ref['tpf']:.2f}"]
                + ["-" if b is None else f"{100 * b[1]:.1f} / {b[0]:.2f}" for b in best]
                + [pct(v) for v in matched] + [gap, "yes" if keeps else "no"]) + " |")
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the frontier comparison over finished runs")
    ap.add_argument("--frontier", nargs="+", metavar="RUN", required=True,
                    help="finished run folders: per seed, each method's best accuracy at the last B above "
                         "the B0 model's TPF, and its accuracy at that TPF (matched)")
    ap.add_argument("--threshold", type=float, default=0.9, help="θ of the dynamic cells (and of the reference)")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    a = ap.parse_args()
    text = "\n".join(matched_tpf_table(a.frontier, a.threshold)) + "\n"
    print(text, end="")
    if a.out:  # the file says how it was made and how to read it
        head = ["# Frontier comparison", "", "    python report.py --frontier " + " ".join(a.frontier), "",
                f"Accuracy %, greedy, on the test split. ref = the first stage's SFT model at its own block "
                f"(dynamic θ {a.threshold}). 'best above ref TPF': the highest accuracy / its TPF among "
                "every decode of the sweep (dynamic θ, static, ltr) whose TPF beats the ref's; 'at ref "
                "TPF': accuracy interpolated on the checkpoint's accuracy-TPF curve at the ref's TPF "
                "(matched parallelism). The last column: T* keeps >= 80 % of the ref accuracy at a higher "
                "TPF (our bar for the paper's effect).", ""]
        with open(a.out, "w") as f:
            f.write("\n".join(head) + "\n" + text)
