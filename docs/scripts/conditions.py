"""Issue 27's two conditions and the comparison, per seed, from curriculum run folders.

    python docs/scripts/conditions.py runs/s150/seed0 runs/s150/seed1 runs/s150/seed2

(i)  stage 4 gains: tstar4 minus sft4 at B=4;
(ii) the gain carries: tstar4 minus sft4 at B=8 and B=16;
the gap greedy − mean@3 at B=4 of sft4 → tstar4 (how much of (i) is the samples catching up with greedy);
then T*@16 minus direct@16, and the share of the B=4 model's (tstar4 at B=4) accuracy T*@16 keeps.
Greedy = dynamic θ 0.9; mean@3 = the `sampled` rows. Points of accuracy on the run's test problems.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from report import load_records  # noqa: E402


def cell(rows, method, B, rule):
    hit = [r for r in rows if r["method"] == method and r["decode_block"] == B and r["rule"] == rule
           and r["threshold"] == 0.9]
    if len(hit) != 1:
        sys.exit(f"error: {len(hit)} rows for {method} at B={B}, {rule}")
    return 100 * hit[0]["accuracy"], hit[0]["tpf"]


print("| run | (i) B=4 greedy / mean@3 | B=4 gap sft4 → tstar4 | (ii) B=8 | (ii) B=16 | T*@16 − direct@16 | "
      "T*@16 keeps (TPF vs B=4) |")
print("|---|---|---|---|---|---|---|")
for d in sys.argv[1:]:
    rows = load_records(os.path.join(d, "results.json"))
    diff = {B: [cell(rows, "tstar4", B, r)[0] - cell(rows, "sft4", B, r)[0] for r in ("dynamic", "sampled")]
            for B in (4, 8, 16)}
    vs = [cell(rows, "tstar16", 16, r)[0] - cell(rows, "direct16", 16, r)[0] for r in ("dynamic", "sampled")]
    keep = [cell(rows, "tstar16", 16, r)[0] / cell(rows, "tstar4", 4, r)[0] for r in ("dynamic", "sampled")]
    tpf = cell(rows, "tstar16", 16, "dynamic")[1], cell(rows, "tstar4", 4, "dynamic")[1]
    gap = [cell(rows, m, 4, "dynamic")[0] - cell(rows, m, 4, "sampled")[0] for m in ("sft4", "tstar4")]
    f = " | ".join(f"{a:+.1f} / {b:+.1f}" for a, b in [diff[8], diff[16], vs])
    print(f"| {d} | {diff[4][0]:+.1f} / {diff[4][1]:+.1f} | {gap[0]:.1f} → {gap[1]:.1f} | {f} | "
          f"{100 * keep[0]:.0f} / {100 * keep[1]:.0f} % ({tpf[0]:.2f} vs {tpf[1]:.2f}) |")
