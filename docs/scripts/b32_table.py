"""The B=32 base table of docs/scripts/b32.sh's decodes (docs/experiments.md E48).

    python docs/scripts/b32_table.py runs/b32/base      # reads runs/b32/base/seed*/evals.jsonl

Per share of B=32 SFT batches and block size: greedy and mean@3 accuracy (mean over training seeds,
min-max) and TPF; then per share and seed the part of the B=4 accuracy kept at B=8, 16 and 32 (greedy /
mean@3), the B=4 cost against share 0, and whether the bar holds (>= half kept at B=32 on both metrics
for at most 3 points of B=4 greedy and mean@3 against share 0).
"""
import glob
import json
import os
import sys

rows = [json.loads(l) for f in sorted(glob.glob(os.path.join(sys.argv[1], "seed*", "evals.jsonl")))
        for l in open(f) if l.strip()]
cell = {(r["share"], r["seed"], r["block_size"], r["samples"] > 1): r for r in rows}
shares, seeds = sorted({r["share"] for r in rows}), sorted({r["seed"] for r in rows})
blocks = sorted({r["block_size"] for r in rows})
acc = lambda f, s, B, x: 100 * cell[f, s, B, x]["accuracy"]


def stat(xs):
    return f"{sum(xs) / len(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})" if len(xs) > 1 else f"{xs[0]:.1f}"


print("| B=32 share | " + " | ".join(f"B={B} greedy / mean@3 (TPF)" for B in blocks) + " | seeds |")
print("|---|" + "---|" * len(blocks) + "---|")
for f in shares:
    cells, n = [], len({s for s in seeds if (f, s, 4, False) in cell})
    for B in blocks:
        have = [s for s in seeds if (f, s, B, False) in cell and (f, s, B, True) in cell]
        tpf = [cell[f, s, B, False]["tpf"] for s in have]
        cells.append(f"{stat([acc(f, s, B, False) for s in have])} / {stat([acc(f, s, B, True) for s in have])} "
                     f"({sum(tpf) / len(tpf):.2f})" if have else "-")
    print(f"| {f:g} | " + " | ".join(cells) + f" | {n} |")
print("\n| B=32 share | seed | kept at B=8 | kept at B=16 | kept at B=32 | B=4 vs share 0 | TPF B=4 → 32 | bar |")
print("|---|---|---|---|---|---|---|---|")
for f in shares:
    for s in seeds:
        if not all((f, s, B, x) in cell for B in (4, 8, 16, 32) for x in (False, True)):
            continue
        kept = {(B, x): acc(f, s, B, x) / max(acc(f, s, 4, x), 1e-9) for B in (8, 16, 32) for x in (False, True)}
        cost = [acc(f, s, 4, x) - acc(0, s, 4, x) if (0, s, 4, x) in cell else float("nan") for x in (False, True)]
        half = all(kept[32, x] >= 0.5 for x in (False, True))
        # no share-0 base of this seed: the bar's B=4 half cannot be judged
        bar = "no" if not half else "? (no share 0)" if cost[0] != cost[0] else "yes" if min(cost) >= -3 else "no"
        k = lambda B: f"{100 * kept[B, False]:.0f} / {100 * kept[B, True]:.0f} %"
        print(f"| {f:g} | {s} | {k(8)} | {k(16)} | {k(32)} | {cost[0]:+.1f} / {cost[1]:+.1f} | "
              f"{cell[f, s, 4, False]['tpf']:.2f} → {cell[f, s, 32, False]['tpf']:.2f} | {bar} |")
