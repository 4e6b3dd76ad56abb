"""curriculum.py: stage parsing, CLI errors, a tiny end-to-end run, resume, settings check."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zlib

import pytest
import torch

from curriculum import parse_stages, run_ladder
from report import load_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny, fast run: level-1 problems fit a 8 + 24 token layout.
TINY = ["--stages", "4,8", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
        "--max-seq-len", "32", "--prompt-len", "8", "--level", "1", "--n-train", "200",
        "--n-test", "20", "--ar-steps", "20", "--sft-steps", "20", "--batch-size", "16",
        "--first-stage-steps", "2", "--stage-steps", "2", "--n-prompts", "4", "--k", "2",
        "--first-stage-prompts", "8", "--curve-every", "1", "--device", "cpu"]
NAMES = ["sft4", "tstar4", "tstar8", "direct8", "norl8"]
# every checkpoint at every B: dynamic at the sweep's four θ (0.9 = the main table's), static, ltr,
# and the main table's mean@3 (3 decodes at T=1, dynamic θ 0.9)
DECODES = [("dynamic", t) for t in (0.5, 0.7, 0.9, 0.99)] + [("static", None), ("ltr", None), ("sampled", 0.9)]
N_ROWS = len(NAMES) * 2 * len(DECODES)  # 70


def curriculum(*args, block_matplotlib=False):
    """curriculum.py in a subprocess; block_matplotlib runs it as if matplotlib were not
    installed (sys.modules[name] = None makes `import matplotlib` raise ImportError)."""
    cmd = [sys.executable, "curriculum.py", *args]
    if block_matplotlib:
        cmd = [sys.executable, "-c", "import runpy, sys; sys.modules['matplotlib'] = None; "
               "sys.argv = sys.argv[1:]; runpy.run_path('curriculum.py', run_name='__main__')",
               "curriculum.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))  # tiny models: one thread


def one_error_line(p):
    assert p.returncode != 0, p.stdout[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- stages

def test_parse_stages_accepts():
    assert parse_stages("4,8,16", 32) == [4, 8, 16]
    assert parse_stages(" 4, 8 ,", 32) == [4, 8]
    assert parse_stages("32", 32) == [32]  # a block as large as the answer area is fine


@pytest.mark.parametrize("text,why", [
    ("", "empty"), (" , ", "empty"), ("8,4", "increasing"), ("4,4", "increasing"),
    ("0,4", "positive"), ("-4,8", "positive"), ("a,b", "integers"), ("4.5,8", "integers"),
    ("4,64", "larger than the 32-token answer area"),
])
def test_parse_stages_rejects(text, why):
    with pytest.raises(ValueError, match=why) as e:
        parse_stages(text, 32)
    assert "\n" not in str(e.value)


def test_cli_bad_stages_fails_before_any_work(tmp_path):
    out = tmp_path / "run"
    for stages in ("8,4", "4,64"):
        p = curriculum("--stages", stages, "--out", str(out), "--max-seq-len", "32", "--prompt-len", "8")
        line = one_error_line(p)
        assert "--stages" in line or "answer area" in line
        assert "Traceback" not in p.stderr and p.stdout == ""
        assert not out.exists()  # validated before the run directory is made
    for flag, value in (("--sft-tail", "1.5"), ("--eval-samples", "-1")):
        p = curriculum("--stages", "4,8", "--out", str(out), flag, value)
        assert flag in one_error_line(p) and not out.exists()


# ----------------------------------------------------------------------------- end to end

def _mtimes(out):
    return {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if f.endswith(".pt")}


def _rows(out):
    rows = load_records(os.path.join(out, "results.json"))
    return {(r["method"], r["decode_block"], r["rule"], r["threshold"]): r for r in rows}, len(rows)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("curriculum") / "run")
    p = curriculum(*TINY, "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


def test_end_to_end_outputs(tiny_run):
    out, p = tiny_run
    assert set(_mtimes(out)) == {f"{n}.pt" for n in ["ar"] + NAMES}
    for n in ["ar"] + NAMES:
        with open(os.path.join(out, f"{n}.pt.json")) as f:
            assert json.load(f)["config"]["n_embd"] == 32
    rows, n_rows = _rows(out)
    want = {(n, B, rule, t) for n in NAMES for B in (4, 8) for rule, t in DECODES}
    assert set(rows) == want and n_rows == len(want) == N_ROWS
    for r in rows.values():
        assert r["n"] == 20 and 0.0 <= r["accuracy"] <= 1.0 and r["tpf"] > 0 and r["device"] == "cpu"
        assert 0.0 <= r["left_to_right"] <= 1.0 and "stamp" not in r
        if r["rule"] == "ltr":  # one leftmost token per step: every step left to right (schedule.py)
            assert r["left_to_right"] == 1.0
        assert r["distance"] == 0 and r["trained_block"] in (4, 8)
    for k, r in rows.items():  # sampled rows are the mean of 3 decodes at T=1, greedy rows one at T=0
        assert (r["samples"], r["temperature"]) == ((3, 1.0) if k[2] == "sampled" else (1, 0.0))
        assert r["acc_min"] <= r["accuracy"] <= r["acc_max"]
    # static and ltr commit one token per step: never more than one token per forward
    assert all(r["tpf"] <= 1.0 for k, r in rows.items() if k[2] in ("static", "ltr"))
    # RL histories: 2 steps per T* stage; direct gets T*'s total budget. The first stage runs its own
    # recipe (8 prompts, cosine from 1e-4: 1e-4 then half of it at step 2 of 2), the rest --n-prompts
    # at a constant --lr
    metas = {}
    for n, steps, prompts, lrs in (("tstar4", 2, 8, [1e-4, 5e-5]), ("tstar8", 2, 4, [3e-5] * 2),
                                   ("direct8", 4, 4, [3e-5] * 4)):
        with open(os.path.join(out, f"{n}.pt.json")) as f:
            metas[n] = json.load(f)
        hist = metas[n]["rl_history"]
        assert len(hist) == steps and {h["prompts"] for h in hist} == {prompts}
        assert [h["lr"] for h in hist] == pytest.approx(lrs, rel=1e-12)
    # --curve-every 1: the first stage's curve at steps 0, 1, 2 (its values against the table:
    # test_curve_ends_are_the_tables_cells, where accuracies are not 0)
    curve = metas["tstar4"]["curve"]
    assert [c["step"] for c in curve] == [0, 1, 2] and metas["tstar8"]["curve"] == []
    md = open(os.path.join(out, "results.md")).read()
    assert "tstar4 while it trained, at B=4" in md and f"2: {curve[-1]['greedy']:.1f} / {curve[-1]['mean']:.1f}" in md
    for n in NAMES:
        assert f"| {n} | " in md
    # the main table keeps its columns; the frontier table follows it
    assert "| checkpoint | B=4 dynamic | B=4 mean@3 | B=4 static | B=8 dynamic | B=8 mean@3 | B=8 static |" in md
    assert "mean@3: T* at B=8" in md
    assert "| checkpoint | B=4 TPF≥2 | B=4 TPF≥3 | B=8 TPF≥2 | B=8 TPF≥3 |" in md
    assert "sweep decodes beyond the main table took" in md
    wall, minutes = _wall(out)  # one invocation so far: its own time, no "summed over"
    assert wall["invocations"] == 1 and minutes == round(wall["seconds"] / 60, 1) and "(summed over" not in md
    for png in ("frontier.png", "rewards.png"):  # with matplotlib: real pictures (.ci/run has it)
        if importlib.util.find_spec("matplotlib"):
            assert f"picture: {os.path.join(out, png)}" in p.stdout
            with open(os.path.join(out, png), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        else:
            assert f"{png} skipped (no matplotlib" in p.stdout
    assert "# T* results: --stages 4,8" in p.stdout
    # the first training line comes before any held-out loss: '-', not 'nan'
    first = next(l for l in p.stdout.splitlines() if l.startswith("ar step"))
    assert "held-out - |" in first and "held-out nan" not in p.stdout


def _delete_and_rerun(out, name):
    """Delete checkpoint `name`, resume the tiny run; (mtimes before, mtimes after, process).
    The same checkpoints exist afterwards: a resume rebuilds, it never drops or adds one."""
    before = _mtimes(out)
    os.remove(os.path.join(out, f"{name}.pt"))
    p = curriculum(*TINY, "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    after = _mtimes(out)
    assert set(after) == set(before)
    return before, after, p


def test_resume_rebuilds_only_the_missing_stage(tiny_run):
    out, _ = tiny_run
    rows_before, _ = _rows(out)
    before, after, p = _delete_and_rerun(out, "tstar8")
    for f in before:
        if f != "tstar8.pt":
            assert after[f] == before[f], f  # ar, sft4, tstar4, direct8, norl8 untouched
    assert "AR pre-training" not in p.stdout and "block SFT" not in p.stdout
    assert "tstar4 step" not in p.stdout and "tstar8 step" in p.stdout
    # evaluation is cached by checkpoint sha256: only the rebuilt checkpoint (new bytes: its
    # sidecar meta holds its own timing) is re-evaluated
    evals = [l.split()[1] for l in p.stdout.splitlines() if l.startswith("eval ")]
    assert evals == ["tstar8"] * 2 * len(DECODES)
    rows_after, n_rows = _rows(out)
    assert n_rows == N_ROWS and set(rows_after) == set(rows_before)
    for k, r in rows_after.items():  # same seeds, same model: the same numbers
        assert (r["accuracy"], r["tpf"]) == (rows_before[k]["accuracy"], rows_before[k]["tpf"]), k


def test_resume_rebuilds_every_descendant_of_a_missing_stage(tiny_run):
    """Each checkpoint records its parent's sha256: delete tstar4 and its rebuild (new bytes)
    makes tstar8, trained from the old tstar4, stale, so it is rebuilt as well; direct8 and
    norl8 hang off sft4 and are kept."""
    out, _ = tiny_run
    before, after, p = _delete_and_rerun(out, "tstar4")
    for f in before:
        rebuilt = f in ("tstar4.pt", "tstar8.pt")
        assert (after[f] != before[f]) == rebuilt, f
    assert "tstar4 step" in p.stdout and "tstar8 step" in p.stdout
    assert "tstar8: not trained from the current tstar4" in p.stdout
    assert "direct8 step" not in p.stdout and "norl8 step" not in p.stdout
    evals = {l.split()[1] for l in p.stdout.splitlines() if l.startswith("eval ")}
    assert evals == {"tstar4", "tstar8"}
    for child, parent in (("sft4", "ar"), ("tstar4", "sft4"), ("tstar8", "tstar4"), ("direct8", "sft4"),
                          ("norl8", "sft4")):
        with open(os.path.join(out, f"{child}.pt.json")) as f:
            recorded = json.load(f)["parent_sha256"]
        with open(os.path.join(out, f"{parent}.pt"), "rb") as f:
            assert recorded == hashlib.sha256(f.read()).hexdigest(), child


def _flags(**set_to):
    """TINY with some flags set to other values (or added)."""
    flags = list(TINY)
    for key, value in set_to.items():
        flag = "--" + key.replace("_", "-")
        if flag in flags:
            flags[flags.index(flag) + 1] = str(value)
        else:
            flags += [flag, str(value)]
    return flags


def _half_right(text, gold, finished=True):
    """A grader that passes about half of all answers (the parity of the crc32 of the answer and the
    gold one, so even one text given to every problem is right on about half): the tiny model
    never earns the real reward, so with it every accuracy would be 0 and no RL step would build
    a row."""
    return zlib.crc32((text + "|" + gold).encode()) % 2 == 0


@pytest.fixture(scope="module")
def graded_run(tmp_path_factory):
    """The tiny ladder run in-process by curriculum.main with `_half_right` grading rollouts and
    evaluation, a first stage of 3 steps (the others 2) at a rate that moves the weights, the later
    stages' and direct's curves every 2 steps (--stage-curve-every), and a record of each RL stage's
    seed and first rollouts. Returns (out, stdout, metas, results, first) with first[name] = (seed, rollouts of the stage's first step)."""
    import contextlib
    import io
    import curriculum
    import eval_math
    import tracerl
    out = str(tmp_path_factory.mktemp("graded") / "run")
    first, stage = {}, {}
    real_run, real_rollout = curriculum.run_tracerl, tracerl.rollout

    def run_spy(*args, name, seed, **kw):
        stage.update(name=name, seed=seed)
        return real_run(*args, name=name, seed=seed, **kw)

    def rollout_spy(*args, **kw):
        ro = real_rollout(*args, **kw)
        first.setdefault(stage["name"], (stage["seed"], ro))
        return ro
    log = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread, as the subprocess runs (a second one only waits)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(log):
        mp.setattr(tracerl, "is_correct", _half_right)
        mp.setattr(eval_math, "is_correct", _half_right)
        mp.setattr(curriculum, "run_tracerl", run_spy)
        mp.setattr(tracerl, "rollout", rollout_spy)
        mp.setattr(sys, "argv", ["curriculum.py", *_flags(first_stage_steps=3, first_stage_lr=1e-2),
                                 "--sweep-thresholds", "", "--stage-curve-every", "2", "--out", out])
        try:
            curriculum.main()
        finally:
            torch.set_num_threads(threads)
    metas = {n: json.load(open(os.path.join(out, f"{n}.pt.json"))) for n in ["ar"] + NAMES}
    return out, log.getvalue(), metas, _rows(out)[0], first


def test_curve_ends_are_the_tables_cells(graded_run):
    """The first stage's curve starts at its parent and ends at its checkpoint: step 0 is sft4's
    B=4 greedy and mean@3 cells and TPF, step 3 tstar4's, exactly (same decodes, same seeds), with
    accuracies that are not 0 and two ends that differ."""
    _, _, metas, rows, _ = graded_run
    curve = metas["tstar4"]["curve"]
    assert [c["step"] for c in curve] == [0, 1, 2, 3]
    for point, name in ((curve[0], "sft4"), (curve[-1], "tstar4")):
        cells = rows[(name, 4, "dynamic", 0.9)], rows[(name, 4, "sampled", 0.9)]
        assert (point["greedy"], point["mean"], point["tpf"]) == \
            (100 * cells[0]["accuracy"], 100 * cells[1]["accuracy"], cells[0]["tpf"]), name
        assert 0 < point["greedy"] < 100 and 0 < point["mean"] < 100, point
    assert (curve[0]["greedy"], curve[0]["mean"], curve[0]["tpf"]) != \
        (curve[-1]["greedy"], curve[-1]["mean"], curve[-1]["tpf"])


def test_later_stages_and_direct_record_their_curves_at_their_own_block_size(graded_run):
    """--stage-curve-every 2: tstar8 (2 steps) and direct8 (T*'s 5) record their curves at B=8, at
    step 0 and every 2 steps. tstar8's starts where tstar4 ended at B=8 and ends at its own B=8
    cells; direct8's starts at sft4's B=8 cells (its parent)."""
    _, _, metas, rows, _ = graded_run
    cell = lambda name: (100 * rows[(name, 8, "dynamic", 0.9)]["accuracy"],
                         100 * rows[(name, 8, "sampled", 0.9)]["accuracy"], rows[(name, 8, "dynamic", 0.9)]["tpf"])
    point = lambda c: (c["greedy"], c["mean"], c["tpf"])
    t8, d8 = metas["tstar8"]["curve"], metas["direct8"]["curve"]
    assert [c["step"] for c in t8] == [0, 2] and [c["step"] for c in d8] == [0, 2, 4]
    assert len(metas["direct8"]["rl_history"]) == 5
    assert (point(t8[0]), point(t8[-1])) == (cell("tstar4"), cell("tstar8"))
    assert point(d8[0]) == cell("sft4")
    assert metas["tstar8"]["curve_seconds"] > 0 and metas["direct8"]["curve_seconds"] > 0


def test_no_rl_stage_takes_as_many_steps_as_the_tstar_stage(graded_run):
    """norl{B} runs as many SFT updates as tstar{B} ran RL steps (2 here), not the first stage's
    (3) or the base's (20)."""
    _, log, metas, _, _ = graded_run
    steps = len(metas["tstar8"]["rl_history"])
    assert (steps, len(metas["tstar4"]["rl_history"]), metas["sft4"]["steps"]) == (2, 3, 20)
    assert metas["norl8"]["steps"] == steps and metas["norl8"]["method"] == "norl"
    assert "block SFT (B=8 1): 2 steps" in log and f"norl8 step {steps:5d}/{steps}" in log


def test_stages_and_direct_draw_their_own_rollouts(graded_run):
    """Every RL stage has its own rollout stream: tstar8 does not start by replaying tstar4's first
    prompts, nor direct8 either's (a shared seed would draw the same prompts first)."""
    _, _, metas, _, first = graded_run
    assert set(first) == {"tstar4", "tstar8", "direct8"}
    assert len({seed for seed, _ in first.values()}) == 3
    k = 2
    picked = {n: ro["prompts"][::k] for n, (_, ro) in first.items()}  # each group's prompt
    assert [len(picked[n]) for n in ("tstar4", "tstar8", "direct8")] == [8, 4, 4]
    for a, b in (("tstar4", "tstar8"), ("tstar4", "direct8"), ("tstar8", "direct8")):
        n = min(len(picked[a]), len(picked[b]))
        assert not torch.equal(picked[a][:n], picked[b][:n]), (a, b)
        assert len({tuple(p.tolist()) for p in picked[a][:n]} & {tuple(p.tolist()) for p in picked[b][:n]}) < n
    # the first steps' rewards, as logged, are those rollouts'
    for n, (_, ro) in first.items():
        assert metas[n]["rl_history"][0]["reward"] == pytest.approx(ro["reward"].mean().item())


def test_without_matplotlib_pictures_are_skipped_in_one_line_each(tiny_run):
    """The same (finished) run with matplotlib missing: nothing is re-evaluated (the sweep
    is cached too), each picture is one 'skipped' line, and the run still finishes."""
    out, _ = tiny_run
    p = curriculum(*TINY, "--out", out, block_matplotlib=True)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    for png in ("frontier.png", "rewards.png"):
        assert sum(l.startswith(png) for l in lines) == 1  # (results.md's text names frontier.png too)
        assert f"{png} skipped (no matplotlib: pip install -r requirements-plots.txt)" in lines
    assert not any(l.startswith(("eval ", "picture:")) for l in lines)
    assert "# T* results: --stages 4,8" in p.stdout and "Traceback" not in p.stderr


def _wall(out):
    """(wall.json's record, the minutes results.md reports)."""
    with open(os.path.join(out, "wall.json")) as f:
        wall = json.load(f)
    md = open(os.path.join(out, "results.md")).read()
    return wall, float(md.split("wall time ")[1].split(" min")[0])


def test_a_resume_adds_its_time_to_the_reported_wall_time(tiny_run, tmp_path):
    """A resume with nothing left to do used to report its own few seconds (0.0 min) over
    the first run's time; the wall time is now the run's, summed over its invocations."""
    import shutil
    out = str(tmp_path / "resumed")
    shutil.copytree(tiny_run[0], out)
    before, minutes_before = _wall(out)
    assert before["seconds"] > 0 and minutes_before == round(before["seconds"] / 60, 1)
    p = curriculum(*TINY, "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not any(l.startswith("eval ") for l in p.stdout.splitlines())  # nothing was redone
    after, minutes_after = _wall(out)
    assert after["invocations"] == before["invocations"] + 1
    assert after["seconds"] > before["seconds"] and minutes_after >= minutes_before
    assert minutes_after == round(after["seconds"] / 60, 1)  # results.md reports the summed record
    assert f"wall time {minutes_after:.1f} min (summed over {after['invocations']} invocations)" \
        in open(os.path.join(out, "results.md")).read()


def test_eval_math_sweep_one_checkpoint(tiny_run, tmp_path):
    """eval_math.py --sweep: every θ plus static and ltr at every block size given, as rows,
    and the frontier picture (or its one skip line)."""
    out, _ = tiny_run
    png = tmp_path / "f.png"
    p = subprocess.run([sys.executable, "eval_math.py", "--ckpt", os.path.join(out, "sft4.pt"), "--sweep",
                        "--block-size", "4,8", "--sweep-thresholds", "0.6,0.95", "--n", "8", "--json",
                        "--plot", str(png), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout)
    assert [(r["block_size"], r["rule"], r["threshold"]) for r in rows] == \
        [(B, rule, t) for B in (4, 8) for rule, t in (("dynamic", 0.6), ("dynamic", 0.95), ("static", None),
                                                      ("ltr", None))]
    assert all(r["n"] == 8 and r["method"] == "sft4" for r in rows)
    assert png.exists() == bool(importlib.util.find_spec("matplotlib"))
    one = subprocess.run([sys.executable, "eval_math.py", "--ckpt", os.path.join(out, "sft4.pt"),
                          "--block-size", "4,8"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_error_line(one)  # a list of block sizes needs --sweep
    assert "--block-size" in line


def test_resume_with_other_settings_fails_in_one_line(tiny_run):
    out, _ = tiny_run
    before = _mtimes(out)
    args = list(TINY)
    args[args.index("--n-embd") + 1] = "64"
    p = curriculum(*args, "--out", out)
    line = one_error_line(p)
    assert "other settings" in line and "n_embd" in line and "Traceback" not in p.stderr
    assert _mtimes(out) == before


def test_a_run_made_before_a_flag_existed_resumes(tiny_run, tmp_path):
    """A flag added since a run was made (its key absent from settings.json) is no difference
    while it keeps its default, string defaults included; typed to another value, it is one.
    A flag since removed (issue 28: its key only in settings.json) is no difference either."""
    import shutil
    out = str(tmp_path / "old")
    shutil.copytree(tiny_run[0], out)
    path = os.path.join(out, "settings.json")
    settings = json.loads(open(path).read())
    for key in ("direct_budget", "kl_beta", "sft_tail"):
        del settings[key]
    settings.update(grow_spread=False, speed_alpha=0.0, ref_to="stage")  # removed flags, at their defaults
    open(path, "w").write(json.dumps(settings))
    before = _mtimes(out)
    p = curriculum(*TINY, "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _mtimes(out) == before  # nothing retrained
    line = one_error_line(curriculum(*TINY, "--direct-budget", "rows", "--out", out))
    assert "direct_budget" in line


# ----------------------------------------------------------------------------- presets and --help

def _parsed(monkeypatch, *argv):
    """curriculum.main's own parse of `argv` (its two passes: the preset, then the typed flags), caught
    where main hands it to run_ladder: (the namespace, the model config, every flag's untyped value)."""
    import inspect
    import curriculum
    got, params = {}, inspect.signature(run_ladder)  # the real one, whatever is patched
    monkeypatch.setattr(sys, "argv", ["curriculum.py", *argv])
    monkeypatch.setattr(curriculum, "run_ladder", lambda *args, **kw: got.update(params.bind(*args, **kw).arguments))
    curriculum.main()
    return got["a"], got["cfg"], got["defaults"]


@pytest.mark.parametrize("preset", ["cpu", "quick", "gpu"])
def test_every_preset_value_reaches_the_run(monkeypatch, preset):
    """Each of the preset's values is what the run gets, and what a resume compares against as
    the untyped value; the model config follows the preset's size."""
    from curriculum import PRESETS
    want = PRESETS[preset]
    if preset != "cpu":  # else the check could not tell the preset from the defaults
        assert {k for k, v in want.items() if v != PRESETS["cpu"][k]} >= {"first_stage_prompts", "k", "n_prompts"}
    a, cfg, defaults = _parsed(monkeypatch, "--preset", preset)
    assert a.preset == preset
    for key, value in want.items():
        assert getattr(a, key) == value and defaults[key] == value, key
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (want["n_layer"], want["n_head"], want["n_embd"])


def test_quick_is_preset_quick_and_a_typed_flag_beats_the_preset(monkeypatch):
    from curriculum import PRESETS
    quick = vars(_parsed(monkeypatch, "--quick")[0])
    assert quick.pop("quick") is True
    as_preset = vars(_parsed(monkeypatch, "--preset", "quick")[0])
    assert as_preset.pop("quick") is False and quick == as_preset
    # typed flags win over --quick and --preset alike, a hidden flag (--first-stage-prompts) too; the
    # untyped values stay the preset's, in the run and in what a resume compares against
    for preset in (["--quick"], ["--preset", "gpu"]):
        p = PRESETS["quick" if preset == ["--quick"] else "gpu"]
        assert (p["k"], p["n_embd"], p["first_stage_prompts"]) != (2, 64, 5)
        a, cfg, defaults = _parsed(monkeypatch, *preset, "--k", "2", "--n-embd", "64", "--first-stage-prompts", "5")
        assert (a.k, a.n_embd, cfg.n_embd, a.first_stage_prompts) == (2, 64, 64, 5)
        assert (defaults["k"], defaults["n_embd"], defaults["first_stage_prompts"]) == \
            (p["k"], p["n_embd"], p["first_stage_prompts"])
        for key, value in p.items():
            if key not in ("k", "n_embd", "first_stage_prompts"):
                assert getattr(a, key) == value, (preset, key)


def test_gpu_preset_values_reach_a_run(tmp_path):
    """The gpu preset end to end on CPU: the model size, the supervised budgets and the first
    stage's step count are typed (the preset's would take hours here), everything else is the
    preset's, and its values are what the run trained with: settings.json holds them, and the
    first stage drew the preset's first-stage prompts per step (128) on its cosine from 1e-4 (the
    preset's curve interval, 10, is checked by test_every_preset_value_reaches_the_run; here:
    no point before it)."""
    from curriculum import PRESETS
    gpu = PRESETS["gpu"]
    typed = dict(n_layer=1, n_head=2, n_embd=32, ar_steps=5, sft_steps=5, first_stage_steps=2)
    flags = [x for k, v in typed.items() for x in ("--" + k.replace("_", "-"), str(v))]
    out = tmp_path / "gpu"
    r = curriculum("--preset", "gpu", "--stages", "4", "--max-seq-len", "32", "--prompt-len", "8", "--level", "1",
                   "--n-train", "200", "--n-test", "20", "--sweep-thresholds", "", "--device", "cpu", *flags,
                   "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["preset"] == "gpu" and settings["model"]["n_embd"] == 32
    untyped = {k for k in gpu if k not in typed}
    assert untyped >= {"batch_size", "first_stage_prompts", "first_stage_lr", "k", "n_prompts", "stage_steps"}
    for key, value in gpu.items():
        if key != "curve_every":  # not a setting (it trains nothing)
            assert settings[key] == typed.get(key, value), key
    meta = json.loads((out / "tstar4.pt.json").read_text())
    hist = meta["rl_history"]
    # the first stage's own recipe, the preset's (values no other flag or preset here has)
    assert gpu["first_stage_prompts"] not in (gpu["n_prompts"], PRESETS["cpu"]["first_stage_prompts"])
    assert len(hist) == 2 and {h["prompts"] for h in hist} == {gpu["first_stage_prompts"]}
    lr = gpu["first_stage_lr"]
    assert lr != gpu["lr"] and [h["lr"] for h in hist] == \
        pytest.approx([lr, lr / 2] if gpu["first_stage_lr_schedule"] == "cosine" else [lr, lr], rel=1e-12)
    assert [c["step"] for c in meta["curve"]] == [0]  # a curve, but no point at steps 1 or 2
    assert (out / "results.md").exists()


def test_help_fits_a_screen_in_groups():
    p = subprocess.run([sys.executable, "curriculum.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) <= 100, len(lines)
    for group in ("run", "model", "evaluation"):
        assert f"{group}:" in lines, group


# ----------------------------------------------------------------------------- seeds

def test_seeds_run_one_ladder_per_seed_and_aggregate(tmp_path):
    out = tmp_path / "seeds"
    p = curriculum(*TINY, "--seeds", "0,1", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    per_seed = {}
    for s in (0, 1):
        rows, n_rows = _rows(str(out / f"seed{s}"))  # each seed folder keeps today's results.json
        assert n_rows == N_ROWS
        per_seed[s] = rows
        settings = json.loads((out / f"seed{s}" / "settings.json").read_text())
        assert settings["seed"] == s and "seeds" not in settings
    # different training seeds train different models
    assert any(per_seed[0][k]["accuracy"] != per_seed[1][k]["accuracy"] or
               per_seed[0][k]["tpf"] != per_seed[1][k]["tpf"] for k in per_seed[0])
    agg = json.loads((out / "aggregate.json").read_text())
    assert len(agg) == N_ROWS  # one row per decode, the sweep's θ kept apart
    for r in agg:
        k = (r["method"], r["decode_block"], r["rule"], r["threshold"])
        accs = [per_seed[s][k]["accuracy"] for s in (0, 1)]
        assert r["accuracy_per_seed"] == accs and r["seeds"] == [0, 1]
        assert r["accuracy"] == pytest.approx(sum(accs) / 2)
        assert (r["accuracy_min"], r["accuracy_max"]) == (min(accs), max(accs))
        assert r["tpf"] == pytest.approx((per_seed[0][k]["tpf"] + per_seed[1][k]["tpf"]) / 2)
    md = (out / "aggregate.md").read_text()
    assert "over seeds 0,1" in md and "| tstar8 | " in md and "per seed" in md
    # the main table shows dynamic at --eval-threshold (0.9), not another θ of the sweep
    main = next(r for r in agg if (r["method"], r["decode_block"], r["rule"], r["threshold"]) ==
                ("tstar8", 8, "dynamic", 0.9))
    row = next(l for l in md.splitlines() if l.startswith("| tstar8 | "))
    assert row.split(" | ")[3].startswith(f"{100 * main['accuracy']:.1f} (")
    assert "# T* results over seeds 0,1" in p.stdout
    # the frontier comparison per seed (report.py --frontier) and the picture of the seed means
    fr = [l for l in md.splitlines() if l.startswith(f"| {os.path.normpath(out)} | ")]
    assert [l.split(" | ")[1] for l in fr] == ["0", "1"]
    if importlib.util.find_spec("matplotlib"):  # optional: without it the picture is skipped in one line
        assert (out / "frontier.png").exists() and "![the frontier, mean over seeds](frontier.png)" in md
    else:
        assert not (out / "frontier.png").exists() and "frontier.png skipped (no matplotlib" in md
    # a folder without results: one error line
    bad = subprocess.run([sys.executable, "report.py", "--frontier", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    one_error_line(bad)


def test_bad_seeds_fail_in_one_line(tmp_path):
    for seeds in ("0,x", "1,1", ","):
        line = one_error_line(curriculum("--seeds", seeds, "--out", str(tmp_path / "s")))
        assert "--seeds" in line
    assert not (tmp_path / "s").exists()


def test_no_compile_reaches_the_sampler(monkeypatch):
    """--no-compile makes every decode of the run eager (sample.decode_blocks reads sample.COMPILE)."""
    import sample
    monkeypatch.setattr(sample, "COMPILE", True)
    _parsed(monkeypatch, "--quick")
    assert sample.COMPILE is True
    _parsed(monkeypatch, "--quick", "--no-compile")
    assert sample.COMPILE is False
