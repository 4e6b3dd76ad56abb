"""report.py --frontier: the matched-TPF comparison, on hand-made results."""
import json
import subprocess
import sys

from report import at_tpf, frontier_rows, sparkline
from test_curriculum import ROOT


def test_at_tpf_interpolates_inside_and_refuses_outside():
    pts = [(1.0, 0.5), (2.0, 0.4), (4.0, 0.0)]
    assert at_tpf(pts, 1.5) == 0.45 and at_tpf(pts, 3.0) == 0.2 and at_tpf(pts, 2.0) == 0.4
    assert at_tpf(pts, 0.5) is None and at_tpf(pts, 4.5) is None


def _row(method, B, rule, theta, acc, tpf):
    return dict(method=method, decode_block=B, rule=rule, threshold=theta, accuracy=acc, tpf=tpf)


def test_frontier_rows_by_hand(tmp_path):
    rows = [_row("sft4", 4, "dynamic", 0.9, 0.60, 2.5)]
    for m, curve in (("tstar16", [(0.9, 0.40), (2.0, 0.50), (3.0, 0.30), (4.0, 0.10)]),
                     ("direct16", [(0.9, 0.45), (2.0, 0.40), (3.0, 0.20)]),
                     ("norl16", [(0.9, 0.30), (2.0, 0.30)])):
        rows += [_row(m, 16, "dynamic", t, acc, tpf) for t, (tpf, acc) in zip((0.5, 0.7, 0.9, 0.99), curve[::-1])]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    (tmp_path / "settings.json").write_text(json.dumps({"seed": 7}))
    (r,), B0, Bl = frontier_rows(str(tmp_path))
    assert (B0, Bl, r["seed"]) == (4, 16, 7)
    assert r["cells"]["tstar"][0] == (3.0, 0.30)  # the best point above TPF 2.5
    assert abs(r["cells"]["tstar"][1] - 0.40) < 1e-9 and abs(r["cells"]["direct"][1] - 0.30) < 1e-9
    assert r["cells"]["norl"] == (None, None)  # never reaches TPF 2.5
    p = subprocess.run([sys.executable, "report.py", "--frontier", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert "| 60.0 / 2.50 | 30.0 / 3.00 | 20.0 / 3.00 | - | 40.0 | 30.0 | - | +10.0 | no |" in last


def test_sparkline_one_char_per_step_then_run_means():
    assert sparkline([0.0, 0.5, 0.99, 1.0]) == "▁▅██"
    # 150 steps: 60 characters, each the mean of 2 or 3 consecutive steps
    steps = [0.0, 1.0] * 75
    line = sparkline(steps)
    assert len(line) == 60 and set(line) == set("▃▅▆")  # runs of 2 or 3 alternating 0/1: means 1/3, 1/2, 2/3
    assert sparkline([0.3] * 210) == "▃" * 60
