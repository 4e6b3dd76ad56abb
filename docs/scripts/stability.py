"""Stability figures of RL stages from their recorded curves (docs/experiments.md E48).

    python docs/scripts/stability.py runs/b32/ladder           # reads runs/b32/ladder/seed*/{tstar*,direct*}.pt.json
    python docs/scripts/stability.py runs/b32/ladder runs/lr3  # several ladders, one table
    python docs/scripts/stability.py runs/lr3 --skip tstar4    # leave out a stage (here: reused at the default lr)

For every RL stage and direct with a curve (curriculum.py --curve-every / --stage-curve-every): per run,
its start (the curve's step 0, at the stage's own block size), how far below the start it falls at its
worst curve point (greedy and mean@3, in points), how far it falls below its best earlier point (the
largest fall from a peak, greedy / mean@3: a collapse after a gain shows here, not against the start), and
the spread of the rollout reward over the last third of its steps (standard deviation and min-max). Then
per method: how many runs fall >= 5 points below their start at any curve point (greedy or mean@3), and the largest drop; "T* (any stage)" counts a
seed's T* ladder as fallen when any of its stages with a curve fell.
"""
import argparse
import glob
import json
import os
import statistics
import sys

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("folders", nargs="+", help="curriculum.py --seeds output folders")
p.add_argument("--skip", default="", help="checkpoint names to leave out, e.g. tstar4")
a = p.parse_args()
folders, skip = a.folders, set(filter(None, a.skip.split(",")))
runs = {}
for folder in folders:
    found = sorted(glob.glob(os.path.join(folder, "seed*", "*.pt.json")))
    if not found:
        sys.exit(f"error: no seed*/*.pt.json under {folder}")
    for f in found:
        m = json.load(open(f))
        name = os.path.basename(f)[:-len(".pt.json")]
        if m.get("curve") and m.get("rl_history") and name not in skip:
            runs.setdefault(f"{folder}: {name}" if len(folders) > 1 else name, []).append((m["seed"], m))

print("| method | seed | B | start greedy / mean@3 | worst drop greedy / mean@3 | fall from a peak | points | "
      "reward last third: sd (min-max) |")
print("|---|---|---|---|---|---|---|---|")
summary = {}
for name, ms in runs.items():
    for seed, m in ms:
        c, rw = m["curve"], [h["reward"] for h in m["rl_history"]]
        g0, m0 = c[0]["greedy"], c[0]["mean"]
        dg = max(g0 - p["greedy"] for p in c)
        dm = max(m0 - p["mean"] for p in c)
        peak = lambda k: max(max(q[k] for q in c[:i + 1]) - p[k] for i, p in enumerate(c))
        pg, pm = peak("greedy"), peak("mean")
        tail = rw[len(rw) - max(1, len(rw) // 3):]
        sd = statistics.pstdev(tail)
        print(f"| {name} | {seed} | {m['block_size']} | {g0:.1f} / {m0:.1f} | {dg:.1f} / {dm:.1f} | {pg:.1f} / {pm:.1f} | {len(c)} | "
              f"{sd:.3f} ({min(tail):.3f}-{max(tail):.3f}) |")
        s = summary.setdefault(name, dict(runs=0, fell=0, worst=0.0, sd=[], peak=0.0))
        s["peak"] = max(s["peak"], pg, pm)
        s["runs"] += 1
        s["fell"] += max(dg, dm) >= 5
        s["worst"] = max(s["worst"], dg, dm)
        s["sd"].append(sd)
        if "tstar" in name:  # the whole T* ladder of this seed
            t = summary.setdefault(name.split("tstar")[0] + "T* (any stage)", dict(seeds={}, worst=0.0, sd=[], peak=0.0))
            t["peak"] = max(t["peak"], pg, pm)
            t["seeds"][seed] = t["seeds"].get(seed, False) or max(dg, dm) >= 5
            t["worst"] = max(t["worst"], dg, dm)
            t["sd"].append(sd)
print("\n| method | runs | runs >= 5 points below start | largest drop | largest fall from a peak | "
      "reward sd, last third (mean) |")
print("|---|---|---|---|---|---|")
for name, s in sorted(summary.items(), key=lambda kv: "T*" in kv[0]):  # the whole-ladder rows last
    if "seeds" in s:
        s.update(runs=len(s["seeds"]), fell=sum(s["seeds"].values()))
    print(f"| {name} | {s['runs']} | {s['fell']} | {s['worst']:.1f} | {s['peak']:.1f} | {sum(s['sd']) / len(s['sd']):.3f} |")
