"""The methods at a ladder's last block size over training seeds, at θ 0.9 and on the frontier.

    python docs/scripts/last_block.py runs/b32/ladder                       # --stages 4,8,16,32
    python docs/scripts/last_block.py runs/b32/ladder --rows runs/b32/rows  # + direct with --direct-budget rows

For every seed folder LADDER/seed*/results.json (curriculum.py --seeds), at the last block size B:
each checkpoint's greedy (dynamic θ 0.9) and mean@3 (the `sampled` rows: 3 decodes at T=1, dynamic θ 0.9)
accuracy and TPF, mean (min-max) over seeds; and the frontier: its best greedy accuracy among the
decodes of the sweep (dynamic at every θ, static, ltr) whose TPF is above the B=4 model's (tstar{B0} at
B0, dynamic θ 0.9, that seed's). Mean@3 has one decode (θ 0.9), so it is on the frontier only where its
TPF is above that floor. Then per seed: T* (tstar{B}) minus direct{B}, and whether T* leads by >= 5
points of mean@3 with both above the floor (the issue's bar).
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from report import load_records  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("ladder", help="a curriculum.py --seeds output folder")
p.add_argument("--rows", help="the same ladder run with --direct-budget rows: its direct row is added as direct (rows)")
a = p.parse_args()


def seeds_of(folder):
    found = sorted(glob.glob(os.path.join(folder, "seed*", "results.json")))
    if not found:
        sys.exit(f"error: no seed*/results.json under {folder}")
    return {int(os.path.basename(os.path.dirname(f))[4:]): load_records(f) for f in found}


runs = seeds_of(a.ladder)
extra = seeds_of(a.rows) if a.rows else {}
first = next(iter(runs.values()))
B = max(r["decode_block"] for r in first)
B0 = min(r["decode_block"] for r in first)
names = list(dict.fromkeys(r["method"] for r in first))


def get(rows, method, b, rule, th=0.9):
    hit = [r for r in rows if r["method"] == method and r["decode_block"] == b and r["rule"] == rule
           and (r["threshold"] == th or rule in ("static", "ltr"))]
    return hit[0] if len(hit) == 1 else None


per = {}  # (name, seed) -> dict of figures
for s, rows in runs.items():
    floor = get(rows, f"tstar{B0}", B0, "dynamic")["tpf"]
    sources = [(n, n, rows) for n in names]
    if s in extra:
        sources.append((f"direct{B} (rows)", f"direct{B}", extra[s]))
    for label, n, rs in sources:
        g, m = get(rs, n, B, "dynamic"), get(rs, n, B, "sampled")
        if g is None or m is None:
            continue
        sweep = [r for r in rs if r["method"] == n and r["decode_block"] == B and r["rule"] != "sampled"
                 and r["tpf"] > floor]
        best = max(sweep, key=lambda r: r["accuracy"], default=None)
        per[label, s] = dict(g=100 * g["accuracy"], m=100 * m["accuracy"], tpf=g["tpf"], mtpf=m["tpf"],
                             floor=floor, best=100 * best["accuracy"] if best else None,
                             best_tpf=best["tpf"] if best else None, m_above=m["tpf"] > floor)


def mean(vals):  # over the seeds that have a value (no decode above the floor: None)
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def agg(vals, fmt="{:.1f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{fmt.format(mean(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


labels = list(dict.fromkeys(k[0] for k in per))
seeds = sorted(runs)
print(f"At B={B}, seeds {','.join(map(str, seeds))}: mean (min-max) over seeds; the floor is tstar{B0}'s TPF at "
      f"B={B0}: {agg([per[f'tstar{B0}', s]['floor'] for s in seeds], '{:.2f}')}\n")
print(f"| checkpoint | greedy θ 0.9 | mean@3 | TPF (greedy / mean@3) | best greedy above the floor (its TPF) | seeds |")
print("|---|---|---|---|---|---|")
for label in labels:
    f = [per[label, s] for s in seeds if (label, s) in per]
    print(f"| {label} | {agg([x['g'] for x in f])} | {agg([x['m'] for x in f])} | "
          f"{sum(x['tpf'] for x in f) / len(f):.2f} / {sum(x['mtpf'] for x in f) / len(f):.2f} | "
          f"{agg([x['best'] for x in f])} ({mean([x['best_tpf'] for x in f]):.2f}) | {len(f)} |")

t = f"tstar{B}"
print(f"\n| seed | vs | T* − it, greedy / mean@3 | T* − it on the frontier (greedy) | mean@3 both above the floor | "
      f"T* ahead by >= 5 mean@3 there |")
print("|---|---|---|---|---|---|")
for other in [x for x in labels if x.startswith(f"direct{B}")]:
    for s in seeds:
        if (other, s) not in per:
            continue
        x, y = per[t, s], per[other, s]
        front = "-" if x["best"] is None or y["best"] is None else f"{x['best'] - y['best']:+.1f}"
        both = x["m_above"] and y["m_above"]
        print(f"| {s} | {other} | {x['g'] - y['g']:+.1f} / {x['m'] - y['m']:+.1f} | {front} | {'yes' if both else 'no'} | "
              f"{'yes' if both and x['m'] - y['m'] >= 5 else 'no'} |")
