"""The regime table of docs/scripts/regime.sh's decodes (docs/experiments.md E42).

    python docs/scripts/regime_table.py runs/regime          # reads runs/regime/seed*/evals.jsonl

Per SFT tail and block size: greedy and mean@3 accuracy (mean over training seeds, min-max) and
TPF; then per tail and seed the share of the B=4 accuracy kept at B=8 and B=16 (greedy / mean@3),
and whether the bar holds (>= 75 % at B=8, >= 50 % at B=16, B=16 TPF above B=4's, both metrics).
"""
import glob
import json
import os
import sys

rows = [json.loads(l) for f in sorted(glob.glob(os.path.join(sys.argv[1], "seed*", "evals.jsonl")))
        for l in open(f) if l.strip()]
cell = {(r["tail"], r["seed"], r["block_size"], r["samples"] > 1): r for r in rows}
tails, seeds = sorted({r["tail"] for r in rows}), sorted({r["seed"] for r in rows})
blocks = sorted({r["block_size"] for r in rows})


def stat(xs):
    return f"{sum(xs) / len(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})" if len(xs) > 1 else f"{xs[0]:.1f}"


print("| SFT tail | " + " | ".join(f"B={B} greedy / mean@3 (TPF)" for B in blocks) + " | seeds |")
print("|---|" + "---|" * len(blocks) + "---|")
for t in tails:
    cells = []
    for B in blocks:
        g = [100 * cell[t, s, B, False]["accuracy"] for s in seeds if (t, s, B, False) in cell]
        m = [100 * cell[t, s, B, True]["accuracy"] for s in seeds if (t, s, B, True) in cell]
        tpf = [cell[t, s, B, False]["tpf"] for s in seeds if (t, s, B, False) in cell]
        cells.append(f"{stat(g)} / {stat(m)} ({sum(tpf) / len(tpf):.2f})" if g and m else "-")
    n = len([s for s in seeds if all((t, s, B, x) in cell for B in blocks for x in (False, True))])
    print(f"| {t:g} | " + " | ".join(cells) + f" | {n} |")
print("\n| SFT tail | seed | B=8 kept greedy / mean@3 | B=16 kept greedy / mean@3 | TPF B=4 → B=16 | bar |")
print("|---|---|---|---|---|---|")
for t in tails:
    for s in seeds:
        if not all((t, s, B, x) in cell for B in blocks for x in (False, True)):
            continue
        kept = {(B, x): cell[t, s, B, x]["accuracy"] / max(cell[t, s, 4, x]["accuracy"], 1e-9)
                for B in (8, 16) for x in (False, True)}
        tpf4, tpf16 = cell[t, s, 4, False]["tpf"], cell[t, s, 16, False]["tpf"]
        ok = all(kept[8, x] >= 0.75 and kept[16, x] >= 0.5 for x in (False, True)) and tpf16 > tpf4
        print(f"| {t:g} | {s} | {100 * kept[8, False]:.0f} / {100 * kept[8, True]:.0f} % | "
              f"{100 * kept[16, False]:.0f} / {100 * kept[16, True]:.0f} % | {tpf4:.2f} → {tpf16:.2f} | "
              f"{'yes' if ok else 'no'} |")
