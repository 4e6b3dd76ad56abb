"""curriculum.py's run folder: each preset's own default --out, every flag checked before a folder is
made, a folder without a checkpoint taking new settings, --device, an --out that cannot be a folder,
and the lock that keeps a second run out of a folder a live run writes into."""
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict

import pytest

from curriculum import Run
from model import CheckpointError, GPTConfig, pick_device
from test_curriculum import ROOT, TINY, _parsed, curriculum, one_error_line

MODEL = asdict(GPTConfig(n_layer=1, n_head=2, n_embd=32))


def test_each_preset_has_its_own_default_folder(monkeypatch):
    """The README's smoke run, then its main command: two folders, so the second never meets the
    first's settings. A typed --out wins over every preset."""
    for argv, out in (([], "runs/tstar"), (["--preset", "cpu"], "runs/tstar"), (["--quick"], "runs/quick"),
                      (["--preset", "quick"], "runs/quick"), (["--preset", "gpu"], "runs/gpu"),
                      (["--quick", "--out", "my/q"], "my/q"),
                      (["--preset", "gpu", "--out", "runs/tstar"], "runs/tstar")):
        assert _parsed(monkeypatch, *argv)[0].out == out, argv


def test_a_bad_flag_leaves_no_folder_and_a_folder_without_checkpoints_takes_new_settings(tmp_path):
    out = tmp_path / "x"
    p = curriculum("--batch-size", "-1", "--quick", "--out", str(out))
    assert "--batch-size" in one_error_line(p) and "Traceback" not in p.stderr
    assert not out.exists()  # checked before the folder is made
    # what a run that failed before its first checkpoint leaves: settings.json alone. The corrected
    # command's settings replace it; the lock file there is no checkpoint
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(dict(model=MODEL, batch_size=-1)))
    run = Run(str(out), dict(model=MODEL, batch_size=64), "cpu")
    assert json.loads((out / "settings.json").read_text()) == dict(model=MODEL, batch_size=64)
    run.close()
    (out / "ar.pt").write_bytes(b"")  # once a checkpoint is there, the settings bind
    with pytest.raises(CheckpointError, match=r"other settings .*'batch_size': \(64, 16\)"):
        Run(str(out), dict(model=MODEL, batch_size=16), "cpu")
    assert not (out / "lock").exists()  # the refusal released the folder
    assert json.loads((out / "settings.json").read_text())["batch_size"] == 64


def test_a_device_this_machine_lacks_is_one_line(monkeypatch, tmp_path):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    for name in ("cuda", "cuda:0", "gpu", "cuda:x", "cpu:0"):
        with pytest.raises(ValueError, match="--device") as e:
            pick_device(name)
        assert "\n" not in str(e.value)
    # every script that takes --device, on a machine without CUDA (CUDA_VISIBLE_DEVICES="" hides a GPU):
    # one line, no traceback; curriculum.py says it before any folder is made
    out, ckpt = tmp_path / "run", str(tmp_path / "none.pt")
    for cmd in (["curriculum.py", "--out", str(out)], ["train.py", "--out", str(out)],
                ["tracerl.py", "--ckpt", ckpt, "--out", str(out / "rl8.pt")],
                ["eval_math.py", "--ckpt", ckpt], ["sample.py", "--ckpt", ckpt],
                ["schedule.py", "--ckpt", ckpt], ["bench/bench_decode.py"]):
        p = subprocess.run([sys.executable, *cmd, "--device", "cuda"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
        assert "--device cuda" in one_error_line(p) and "Traceback" not in p.stderr, cmd
    assert not out.exists()


def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path):
    mine = tmp_path / "file"
    mine.write_text("mine")
    for out in (mine, mine / "sub"):  # a file of that name, a file on the path
        p = curriculum(*TINY, "--out", str(out))
        assert "--out" in one_error_line(p) and "Traceback" not in p.stderr, out
    assert mine.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            p = curriculum(*TINY, "--out", str(locked))
            assert "cannot write" in one_error_line(p) and os.listdir(locked) == []
        finally:
            locked.chmod(0o700)


def test_sizes_out_of_range_fail_before_any_folder(monkeypatch, tmp_path):
    """Every count flag out of its range (curriculum.AT_LEAST, NOT_NEGATIVE), in main's own parse:
    one line naming the flag, and the run never starts."""
    import curriculum as c
    out = tmp_path / "run"
    monkeypatch.setattr(c, "run_ladder", lambda *args, **kw: pytest.fail("the run started"))
    for flag, value in (("--n-layer", "0"), ("--n-head", "0"), ("--n-embd", "0"), ("--n-head", "3"),
                        ("--batch-size", "0"), ("--k", "0"), ("--n-prompts", "0"), ("--micro-batch", "0"),
                        ("--first-stage-prompts", "0"), ("--first-stage-steps", "0"), ("--stage-steps", "0"),
                        ("--ar-steps", "-1"), ("--n-test", "0"), ("--shrink", "0"), ("--updates", "0"),
                        ("--commit-distance", "-1"), ("--lr", "-1e-5"), ("--ar-lr", "-1")):
        monkeypatch.setattr(sys, "argv", ["curriculum.py", f"{flag}={value}", "--out", str(out)])
        with pytest.raises(SystemExit) as e:
            c.main()
        message = str(e.value.code)
        assert message.startswith("error:") and flag in message and "\n" not in message, (flag, message)
    # the issue's own case, as a user meets it
    p = curriculum("--n-layer", "0", "--out", str(out))
    assert "--n-layer must be at least 1" in one_error_line(p) and "Traceback" not in p.stderr
    assert not out.exists()


def _made_with_other_settings(out):
    """A folder with a checkpoint made with other settings: a run into it that gets past the lock
    fails at once, on the settings, without training."""
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(dict(model=MODEL, n_layer=99)))
    (out / "ar.pt").write_bytes(b"")


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    _made_with_other_settings(out)
    live = f"{os.getpid()} {socket.gethostname()}\n"  # this test's process: alive
    (out / "lock").write_text(live)
    p = curriculum(*TINY, "--out", str(out))
    line = one_error_line(p)
    assert "in use by another run" in line and f"PID {os.getpid()}" in line and "Traceback" not in p.stderr
    assert (out / "lock").read_text() == live  # left to its holder
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    (out / "lock").write_text(f"{gone.pid} {socket.gethostname()}\n")
    p = curriculum(*TINY, "--out", str(out))
    assert "other settings" in one_error_line(p)  # past the lock: the dead process's lock was taken over
    assert not (out / "lock").exists()  # and released as the run failed
    # while a run is open its lock names it, a second run into the folder refuses, and close releases it
    os.remove(out / "ar.pt")
    run = Run(str(out), dict(model=MODEL), "cpu")
    assert (out / "lock").read_text().split() == [str(os.getpid()), socket.gethostname()]
    with pytest.raises(CheckpointError, match=f"PID {os.getpid()}"):
        Run(str(out), dict(model=MODEL), "cpu")
    assert (out / "lock").exists()
    run.close()
    assert not (out / "lock").exists()
