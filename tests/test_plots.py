"""plots.py: the frontier table picks the right decode, and the pictures skip cleanly
without matplotlib (the end-to-end run in test_curriculum.py draws the real ones)."""
import sys

import pytest

import plots


def row(method, B, rule, threshold, acc, tpf):
    return dict(method=method, decode_block=B, rule=rule, threshold=threshold, accuracy=acc, tpf=tpf)


ROWS = [row("a", 4, "dynamic", 0.5, 0.40, 3.2), row("a", 4, "dynamic", 0.7, 0.60, 2.5),
        row("a", 4, "dynamic", 0.9, 0.70, 1.8), row("a", 4, "static", None, 0.72, 0.9),
        row("a", 8, "dynamic", 0.5, 0.10, 2.0), row("a", 8, "ltr", None, 0.30, 0.9),
        row("b", 4, "dynamic", 0.9, 0.90, 1.5), row("b", 4, "static", None, 0.95, 0.8)]


def test_frontier_table_best_accuracy_at_each_tpf_floor():
    lines = plots.frontier_table(ROWS, ["a", "b"], [4, 8])
    assert lines[0] == "| checkpoint | B=4 TPF≥2 | B=4 TPF≥3 | B=8 TPF≥2 | B=8 TPF≥3 |"
    # a@4: θ 0.9 and static are more accurate but below TPF 2; θ 0.7 is the best at ≥ 2
    assert lines[2] == "| a | 60.0 / 2.50 (θ 0.7) | 40.0 / 3.20 (θ 0.5) | 10.0 / 2.00 (θ 0.5) | - |"
    assert lines[3] == "| b | - | - | - | - |"  # never reaches TPF 2; no rows at B=8


def test_pictures_skip_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert plots.frontier(ROWS, ["a", "b"], [4, 8], str(tmp_path / "f.png")) is None
    assert plots.rewards([("tstar4", [0.1, 0.2], 0)], str(tmp_path / "r.png")) is None
    assert list(tmp_path.iterdir()) == []


def test_sampled_rows_are_not_points_of_the_greedy_frontier():
    """A mean@3 row (rule 'sampled') is another metric: it never wins a frontier cell."""
    lines = plots.frontier_table(ROWS + [row("b", 4, "sampled", 0.9, 0.99, 3.5)], ["a", "b"], [4, 8])
    assert lines[3] == "| b | - | - | - | - |"


def test_frontier_picture_is_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="optional: pip install -r requirements-plots.txt")
    path = plots.frontier(ROWS, ["a", "b"], [4, 8], str(tmp_path / "f.png"))
    assert path and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
