"""T*: grow the block size stage by stage with TraceRL, against two baselines.

    python curriculum.py --stages 4,8,16            # the main job (CPU default, see README), into runs/tstar
    python curriculum.py --stages 4,8 --quick       # a few-minute smoke run, into runs/quick
    python curriculum.py --stages 4,8,16            # again: resumes it, finished stages are skipped
    python curriculum.py --stages 4,8,16 --preset gpu --out runs/big   # --out: any folder (gpu's is runs/gpu)
    torchrun --nproc_per_node 2 curriculum.py --stages 4,8 --quick --out runs/ddp   # data parallel
    python curriculum.py --stages 4,8 --train-jsonl my/train.jsonl --test-jsonl my/test.jsonl \
        --prompt-len 64 --max-seq-len 160                # your own GSM8K-style data

Each preset has its own default --out (RUN_DIRS), so a smoke run never blocks the main job's folder.
While a run writes into a folder, the folder's lock file names it, and a second run into it refuses.

What runs, each step skipped when its checkpoint already exists and its parent is the one
it was trained from (docs/design.md §8):
  data -> AR pre-train (ar.pt) -> block SFT at the first B, with a tail of the ladder's bigger
          blocks (--sft-tail 0.2: B=4 80 %, B=8 15 %, B=16 5 %; ours) (sft{B0}.pt) ->
  T*: TraceRL at every B in --stages, each from the previous stage (tstar{B}.pt; the first
      with its own recipe: 64 prompts, a cosine from lr 1e-4; PRESETS) ->
  direct: TraceRL at the last B straight from sft{B0}, with T*'s total RL steps (direct{B}.pt;
          --direct-budget rows: as many trace rows as T* built instead) ->
  no-RL: the same ladder with block SFT instead of RL, as many updates per stage (norl{B}.pt) ->
  evaluation of every checkpoint at every B (greedy: dynamic θ and static one-token-per-step,
  plus the frontier sweep: dynamic at several θ and ltr; mean@3: the mean accuracy of 3
  decodes at temperature 1, dynamic θ, the field's metric) and the Ŝ schedule statistics,
  cached in eval.json (eval_math.evaluate_all) ->
  results.json, results.md, the table on stdout, frontier.png, rewards.png (report.py);
  wall.json: the seconds spent on the run, summed over every invocation (its wall time).

Reconstructed, not copied: the paper's body is not public to us. Its abstract fixes
the idea (AR-initialised small-block MDM, TraceRL per block size, progressive growth);
the SFT tail, the stage budget (a step cap per stage), the no-RL ladder and the direct
baseline's budget are our choices (README, "What is ours"). Options that were tried and lost
(a warm-up at the old block size, commit distances per stage, a reward target, ...) are gone
from the code; docs/experiments.md names the commit that last had each.

Under torchrun (dist.py) every stage is data parallel: supervised batches and RL prompts
are split across ranks, rank 0 writes the checkpoints, settings, evaluation cache and
report, and the others wait at a barrier after each save, so a resume sees the same
files everywhere. Evaluation jobs (checkpoint x B x rule) are dealt out across ranks
(eval_math.evaluate_all).
"""
import argparse
import atexit
import json
import os
import socket
import time
from dataclasses import asdict

import dist
import sample
from data.task import DataError, add_task_args, check_fit, load_task, task_from_args
from eval_math import SWEEP_THRESHOLDS, EvalPlan, curve_recorder, eval_jobs, evaluate_all, parse_list
from schedule import schedule_stats
from model import (CheckpointError, GPTConfig, add_model_args, config_from_args, file_sha256, load_checkpoint,
                   pick_device, save_checkpoint, write_json)
from tracerl import RLConfig, add_rl_args, run_tracerl
from report import aggregate, pictures, report
from train import AR_STEPS, SFT_STEPS, release_memory, run_ar, run_sft, tail_mix, window_for

# Every budget of the job, in one place (docs/design.md §8 says how each was chosen); a flag
# typed on the command line wins over its preset's value.
#   cpu:   the default, sized for a 2-core CPU (README: ~25 min). The first stage has its own
#          recipe: 150 steps of 64 prompts with a cosine from lr 1e-4, what it takes to gain ~5
#          points of mean@3 at B=4 without drifting off; the later stages and direct run 32 x 8
#          at a constant 3e-5.
#   quick: a smoke run of a couple of minutes (it shows the pipeline works, not a result).
#   gpu:   a 9.9M-parameter model, 4x the supervised steps at 4x the batch, 2-4x the rollouts
#          per RL step, the first stage at least the CPU's 150 steps with its curve every 10.
#          Its timings are not measured on a GPU yet; tests run it on CPU.
CPU = dict(n_layer=4, n_head=4, n_embd=128, batch_size=64, ar_steps=AR_STEPS, sft_steps=SFT_STEPS,
           ar_lr=1e-3, sft_lr=1e-3, first_stage_steps=150, first_stage_prompts=64, first_stage_lr=1e-4,
           first_stage_lr_schedule="cosine", stage_steps=30, n_prompts=32, k=8, lr=3e-5, curve_every=25,
           micro_batch=16)
PRESETS = {
    "cpu": CPU,
    "quick": dict(CPU, ar_steps=150, sft_steps=100, first_stage_steps=2, first_stage_prompts=8, stage_steps=3,
                  n_prompts=8, k=4),
    "gpu": dict(CPU, n_layer=8, n_head=8, n_embd=320, batch_size=256, ar_steps=8000, sft_steps=4000,
                first_stage_steps=150, first_stage_prompts=128, stage_steps=100, n_prompts=64, k=16, curve_every=10,
                micro_batch=64),
}
# Each preset's default --out: a smoke run with other settings never takes the main job's folder.
RUN_DIRS = {"cpu": "runs/tstar", "quick": "runs/quick", "gpu": "runs/gpu"}
# The least value of every count flag. Sizes are at least 1; the supervised step counts may be 0 (a
# base without AR pre-training, or without SFT); every RL stage takes a step (the report reads its
# first and last reward); the curve intervals and the commit distance take 0 for off. "world": the
# count is split across the torchrun processes, so each needs at least one.
AT_LEAST = dict(n_layer=1, n_head=1, n_embd=1, prompt_len=1, n_train=1, n_test=1, k=1, micro_batch=1,
                shrink=1, updates=1, ar_steps=0, sft_steps=0, first_stage_steps=1, stage_steps=1,
                eval_samples=0, curve_every=0, stage_curve_every=0, commit_distance=0,
                batch_size="world", n_prompts="world", first_stage_prompts="world")
# a negative rate or coefficient would step against the loss or reward it scales
NOT_NEGATIVE = ("ar_lr", "sft_lr", "first_stage_lr", "lr", "value_lr", "clip_eps", "kl_beta", "ref_kl_beta",
                "value_clip", "eval_temperature")
# Accepted but not listed by --help (which stays one screen): the off-default RL options
# (tracerl.py --help explains them) and the rarely changed knobs.
HIDDEN = ("ar_lr", "sft_lr", "no_block_offsets", "first_stage_prompts", "first_stage_lr_schedule", "lr_schedule",
          "micro_batch", "eval_threshold", "eval_temperature", "n_train", "n_test", "data_seed", "commit_distance",
          "ref_kl_beta", "shrink", "updates", "clip_eps", "kl_beta", "acc_band", "value_model", "value_lr",
          "value_clip")


def parse_stages(text: str, answer_len: int):
    """'4,8,16' -> [4, 8, 16]; one-line ValueError for anything else."""
    # Checked before any training, so a bad ladder fails in a second, not after the AR
    # stage. Strictly increasing: each stage starts from the previous one's weights and
    # only ever grows the block (the curriculum's whole point).
    stages = parse_list(text, int, "--stages")
    if not stages:
        raise ValueError("--stages is empty; give block sizes like 4,8,16")
    if any(b <= 0 for b in stages):
        raise ValueError(f"--stages must be positive, got {text!r}")
    if any(b2 <= b1 for b1, b2 in zip(stages, stages[1:])):
        raise ValueError(f"--stages must be strictly increasing, got {text!r}")
    if stages[-1] > answer_len:
        raise ValueError(f"block size {stages[-1]} is larger than the {answer_len}-token answer area "
                         f"(raise --max-seq-len)")
    return stages


def check_flags(a, world: int):
    """One-line ValueError for the first flag out of its range (AT_LEAST, NOT_NEGATIVE), checked
    before any folder is made: a bad value must not leave a run folder behind."""
    for name, least in AT_LEAST.items():
        low, value = (world if least == "world" else least), getattr(a, name)
        if value < low:
            why = f" (one per process: {world} processes)" if least == "world" else ""
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}{why}, got {value}")
    for name in NOT_NEGATIVE:
        if getattr(a, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if a.n_embd % a.n_head:  # every head takes an equal slice of the width
        raise ValueError(f"--n-embd {a.n_embd} must be a multiple of --n-head {a.n_head}")


def lock_holder(path):
    """Who holds the lock file `path`: 'PID 123 on host', or None when that process is gone (a
    killed run) or the file is. A lock from another host cannot be checked from here, so it holds."""
    try:
        with open(path) as f:
            pid, host = f.read().split()
        pid = int(pid)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written this instant, or not ours to read: it holds
        return f"an unreadable {path}"
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)  # signal 0: is it alive? (sends nothing)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
    return f"PID {pid} on {host}"


def take_lock(out):
    """Hold the run folder `out` for this process: OUT/lock, made atomically (O_CREAT | O_EXCL),
    holds its PID and host. A folder a live run holds fails in one line; a lock whose process is
    gone is taken over. Returns the lock's path."""
    path = os.path.join(out, "lock")
    for attempt in (1, 2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = lock_holder(path)
            if holder or attempt == 2:
                raise CheckpointError(f"{out} is in use by another run ({holder or 'just started'}); wait "
                                      f"for it to end, or delete {path} if no run is using it") from None
            try:
                os.remove(path)  # its process is gone: the folder is free
            except FileNotFoundError:
                pass
            continue
        except OSError as e:
            raise CheckpointError(f"--out {out}: cannot write in the run folder ({e.strerror})") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return path


class Run:
    """The run directory: checkpoints, their RL histories, the settings it was made with,
    and wall.json, the seconds spent on it summed over every invocation (`add_time`). It is
    held (OUT/lock, take_lock) from here until `close`, or until the process exits."""

    def __init__(self, out, settings, device, defaults=None, started=None):
        self.out, self.device, self.lock = out, device, None
        defaults = defaults or {}
        settings = json.loads(json.dumps(settings))  # as stored: tuples (--acc-band) become lists
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:  # a file of that name, a file on the path, a folder not ours to write in
            raise CheckpointError(f"--out {out}: cannot make a run folder there ({e.strerror})") from None
        # Rank 0 alone holds the lock (the other ranks are the same job); all fail alike without it.
        # Taken before settings.json is read or written, so a second run cannot change it under us.
        error = None
        if dist.is_main():
            try:
                self.lock = take_lock(out)
                atexit.register(self.close)  # released however the process ends, error or Ctrl-C
            except CheckpointError as e:
                error = str(e)
        error = dist.gather_objects(error)[0]
        if error:
            raise CheckpointError(error)
        path = os.path.join(out, "settings.json")
        # Settings bind a folder once it holds a checkpoint: before that (a run that failed before
        # its first save) there is nothing they describe, and the new ones replace them.
        if os.path.exists(path) and any(f.endswith(".pt") for f in os.listdir(out)):
            with open(path) as f:
                old = json.load(f)
            # a flag added since the run was made is no difference while it has its default
            diff = {k: (old.get(k), v) for k, v in settings.items()
                    if old.get(k) != v and (k in old or k not in defaults or defaults[k] != v)}
            if diff:
                self.close()
                raise CheckpointError(f"{out} was made with other settings (stored vs now: {diff}); "
                                      f"use another --out or the same flags")
        elif dist.is_main():  # every rank checked above; only rank 0 writes
            write_json(path, settings, indent=1)
        # Read before the barrier: rank 0 writes it again only after it (add_time).
        self.wall_path = os.path.join(out, "wall.json")
        self.wall = dict(seconds=0.0, invocations=0)
        if os.path.exists(self.wall_path):
            with open(self.wall_path) as f:
                self.wall = json.load(f)
        self.wall["invocations"] += 1
        self._clock = started or time.time()
        dist.barrier()
        self.cfg = GPTConfig(**settings["model"])
        self._digests = {}

    def close(self):
        """Release the run folder (remove OUT/lock); a second call does nothing."""
        if self.lock:
            try:
                os.remove(self.lock)
            except FileNotFoundError:
                pass
            self.lock = None

    def path(self, name):
        return os.path.join(self.out, name + ".pt")

    def have(self, name, parent=None):
        """Is `name` there and still the child of `parent`'s current bytes? Each checkpoint
        records its parent file's sha256 (`save`); a parent rebuilt since means the child
        came from weights that no longer exist, so it is rebuilt too, and in turn its own
        children. A checkpoint without a recorded parent is rebuilt too."""
        if not os.path.exists(self.path(name)) or parent is None:
            return os.path.exists(self.path(name))
        with open(self.path(name) + ".json") as f:
            recorded = json.load(f).get("parent_sha256")
        if recorded == self.digest(parent):
            return True
        print(f"{name}: not trained from the current {parent} (changed since, or not recorded); rebuilding",
              flush=True)
        return False

    def digest(self, name):
        """sha256 of a checkpoint file's bytes (cached by size and mtime)."""
        st = os.stat(self.path(name))
        key = (name, st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = file_sha256(self.path(name))
        return self._digests[key]

    def load(self, name):
        return load_checkpoint(self.path(name), self.device, expect=self.cfg)

    def save(self, name, model, meta, parent=None):
        """Rank 0 writes; every rank waits, so `have` agrees everywhere afterwards. With a
        parent, its file's sha256 goes into the sidecar (see `have`)."""
        if parent is not None:
            meta = dict(meta, parent_sha256=self.digest(parent))
        release_memory()  # a phase ends: what it freed goes back to the OS
        if dist.is_main():
            save_checkpoint(self.path(name), model, meta)
            print(f"saved {self.path(name)}", flush=True)
            self.add_time()  # a killed invocation keeps its time up to its last checkpoint
        dist.barrier()

    def add_time(self):
        """Add the seconds since the last call (or since this invocation started) to
        wall.json and return the record {seconds, invocations}. The report's wall time is
        the whole run's: a resume adds its own seconds instead of replacing the first run's,
        so a resume with nothing left to do still reports the run's time."""
        now = time.time()
        self.wall["seconds"] += now - self._clock
        self._clock = now
        if dist.is_main():
            write_json(self.wall_path, self.wall)
        return self.wall


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports kB; 0 where unknown)."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    except (ImportError, AttributeError):
        return 0.0


class Progress:
    """Where the run is: each phase announces itself as "[k/N] name", and every RL step line
    ends with an estimate of the run's time left: the RL steps still to come at the seconds
    per prompt the steps so far took, plus the evaluation's decodes at the seconds the curve's
    decodes took (2 s each until one is timed). An estimate, no more."""

    def __init__(self, phases, rl_budget, n_decodes):
        self.phases, self.k = phases, 0
        self.rl_left = dict(rl_budget)  # RL phase -> prompt-steps still to run (steps x prompts)
        self.rl_secs = self.rl_prompts = 0.0
        self.n_decodes, self.decode_secs = n_decodes, 2.0

    def start(self, name, done=False):
        self.k += 1
        print(f"[{self.k}/{len(self.phases)}] {name}" + (": done earlier, kept" if done else "")
              + f" (peak memory so far {peak_rss_gb():.2f} GB)", flush=True)
        if done:
            self.rl_left.pop(name, None)

    def eta(self, name, steps):
        """run_tracerl's eta hook for RL phase `name` of `steps` steps."""
        def text(i, hist):
            self.rl_secs += hist[-1]["secs"]
            self.rl_prompts += hist[-1]["prompts"]
            self.rl_left[name] = (steps - i) * hist[-1]["prompts"]
            left = sum(self.rl_left.values()) * self.rl_secs / self.rl_prompts + self.n_decodes * self.decode_secs
            return f" | run ~{left / 60:.0f} min left"
        return text


def rl_stage(run, name, parent, block_size, steps, problems, a, seed, max_rows=0, curve=None, progress=None,
             **recipe):
    """TraceRL at block_size from checkpoint `parent`, saved as `name` (skipped if present
    and still `parent`'s child): at most `steps` RL steps, or until its trace rows reach
    max_rows (0 = no row budget), drawing its rollouts from `seed`. With --ref-kl-beta the
    reference is the stage's start. `recipe` overrides RL flags for this stage (the first stage's n_prompts, lr, lr_schedule).
    curve = (every, test_set, eval_seed): the stage's accuracy curve at its block size, at step 0
    and every `every` steps, printed and kept in the checkpoint's meta (--curve-every)."""
    if run.have(name, parent):
        if progress:
            progress.start(name, done=True)
        return run.load(name)[1]
    if progress:
        progress.start(name)
    model, meta = run.load(parent)
    cfg = RLConfig.from_args(a, block_size=block_size, steps=steps, max_rows=max_rows, **recipe)
    points, on_step, curve_secs, c0 = [], None, [0.0], sample.compile_seconds()
    if curve is not None and dist.is_main():  # under torchrun rank 0 alone decodes it; the others wait
        every, problems_test, eval_seed = curve
        t, c = time.time(), sample.compile_seconds()
        points, record = curve_recorder(model, problems_test, block_size, every, eval_seed)
        curve_secs[0] = time.time() - t - (sample.compile_seconds() - c)  # compiling is its own phase
        if progress:  # a point is 1 + 3 decodes of the test split: the evaluation's rate
            progress.decode_secs = curve_secs[0] / 4

        def timed_record(i, m):  # the curve's decodes, timed for the phase table
            t, c = time.time(), sample.compile_seconds()
            record(i, m)
            curve_secs[0] += time.time() - t - (sample.compile_seconds() - c)
        on_step = timed_record
    t0 = time.time()
    hist = run_tracerl(model, problems, cfg, name=name, seed=seed, on_step=on_step,
                       eta=progress.eta(name, steps) if progress else None)
    # what the RL checkpoint inherits from its parent: the task and the seed (not the parent's
    # supervised steps, learning rate or timing, which would read as the stage's own)
    meta = dict({k: meta[k] for k in ("task", "seed") if k in meta}, stage="rl", method=name, block_size=block_size,
                parent=parent, rl_history=hist, rl_seconds=time.time() - t0, curve=points, curve_seconds=curve_secs[0],
                compile_seconds=sample.compile_seconds() - c0)
    run.save(name, model, meta, parent)
    return meta


def build_parser():
    """curriculum.py's flags, in groups; defaults are the "cpu" preset's (main applies another)."""
    ap = argparse.ArgumentParser(
        usage="python curriculum.py [--stages 4,8,16] [--preset cpu|quick|gpu] [--out DIR] [flags]",
        description="T*: TraceRL block-size curriculum with its direct and no-RL baselines.",
        epilog="Also accepted (not listed): " + ", ".join("--" + h.replace("_", "-") for h in HIDDEN) +
               ". The RL options are explained by python tracerl.py --help.")
    run = ap.add_argument_group("run")
    run.add_argument("--stages", default="4,8,16", help="block sizes, increasing, e.g. 4,8,16")
    run.add_argument("--out", default=RUN_DIRS["cpu"],
                     help=f"run directory, resumed if it exists (default: {RUN_DIRS['cpu']}; "
                          f"{RUN_DIRS['quick']} with --quick, {RUN_DIRS['gpu']} with --preset gpu)")
    run.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                     help="model size and every budget (curriculum.PRESETS); typed flags win over it")
    run.add_argument("--quick", action="store_true", help="the same as --preset quick: a smoke run of a few minutes")
    run.add_argument("--seed", type=int, default=0, help="training and rollout seed (one run, into --out)")
    run.add_argument("--seeds", default=None,
                     help="training seeds, e.g. 0,1,2: one ladder per seed into OUT/seed{S}, then OUT/aggregate.md "
                          "(mean and min-max); overrides --seed")
    run.add_argument("--device", default="auto", help="cpu, cuda or auto")
    run.add_argument("--no-compile", action="store_true",
                     help="decode eagerly on GPU too (rollouts, evaluation; sample.decode_blocks); CPU always decodes eagerly")
    add_model_args(ap.add_argument_group("model"))
    base = ap.add_argument_group("budgets and the base")
    base.add_argument("--ar-steps", type=int, help="AR pre-training steps")
    base.add_argument("--sft-steps", type=int, help="block SFT steps of the base, at the first block size")
    base.add_argument("--ar-lr", type=float, help="AR peak learning rate")
    base.add_argument("--sft-lr", type=float, help="SFT peak learning rate")
    base.add_argument("--batch-size", type=int, help="sequences per supervised step")
    base.add_argument("--sft-tail", type=float, default=0.2,
                      help="share of the base's SFT batches drawn at the ladder's bigger block sizes, each next size a "
                           "third as often (ours: a base that survives bigger blocks; 0 = all at the first B)")
    base.add_argument("--no-block-offsets", action="store_true", help="SFT on the aligned block grid only")
    base.add_argument("--first-stage-steps", type=int, help="RL steps at the first block size")
    base.add_argument("--first-stage-prompts", type=int, help="prompts per RL step at the first block size")
    base.add_argument("--first-stage-lr", type=float, help="peak RL learning rate at the first block size")
    base.add_argument("--first-stage-lr-schedule", choices=["constant", "cosine"],
                      help="learning-rate schedule at the first block size (tracerl.rl_lr)")
    base.add_argument("--stage-steps", type=int, help="RL steps at every later block size")
    base.add_argument("--direct-budget", default="steps", choices=["steps", "rows"],
                      help="direct's RL budget: T*'s total steps, or as many trace rows as T* built (equal compute)")
    add_rl_args(ap)
    ev = ap.add_argument_group("evaluation")
    ev.add_argument("--eval-threshold", type=float, default=0.9, help="θ of the dynamic rule at evaluation")
    ev.add_argument("--eval-samples", type=int, default=3,
                    help="sampled decodes per problem for the mean@N column (the field's metric: 3 at T=1); 0 = greedy only")
    ev.add_argument("--eval-temperature", type=float, default=1.0, help="temperature of the mean@N decodes")
    ev.add_argument("--sweep-thresholds", default=",".join(map(str, SWEEP_THRESHOLDS)),
                    help="θ of the frontier sweep (dynamic at each, plus static and ltr); '' = the main table only")
    ev.add_argument("--curve-every", type=int,
                    help="the first stage's accuracy at its block size (greedy and mean@3 on the test split, never "
                         "used to choose anything) at step 0 and every N RL steps (0 = off)")
    ev.add_argument("--stage-curve-every", type=int, default=0,
                    help="the same curve for every later stage and for direct, each at its own block size (0 = off)")
    add_task_args(ap.add_argument_group("data"))
    ap.set_defaults(**PRESETS["cpu"])
    for action in ap._actions:  # listed in the epilog instead
        if action.dest in HIDDEN:
            action.help = argparse.SUPPRESS
    return ap


def parse_args(argv=None):
    """(the flags, every flag's untyped value). Two passes: the preset replaces the defaults (its
    budgets and its run folder), then whatever the user typed wins over it."""
    ap = build_parser()
    pre, _ = ap.parse_known_args(argv)
    preset = "quick" if pre.quick else pre.preset
    ap.set_defaults(**PRESETS[preset], out=RUN_DIRS[preset])
    a = ap.parse_args(argv)
    a.preset = preset
    # every flag's value when not typed (the preset's): a run made before a flag existed resumes
    # while that flag stays at it (Run's settings check)
    return a, json.loads(json.dumps(vars(ap.parse_args([]))))


def main():
    a, defaults = parse_args()
    sample.COMPILE = not a.no_compile
    # Every flag check that can fail does so here, before a run folder or a checkpoint is
    # written: a typo should cost a second, not a resumed run with mixed settings.
    try:
        dev = dist.init(pick_device(a.device))  # joins the process group under torchrun only
        check_flags(a, dist.world())
        stages = parse_stages(a.stages, a.max_seq_len - a.prompt_len)
        a.mask_window = window_for(stages[0], a.mask_window)
        cfg = config_from_args(a)
        seeds = parse_seeds(a.seeds) if a.seeds else None
        plan = EvalPlan.from_args(a)  # what every ladder decodes (a bad --sweep-thresholds fails here)
        mix = tail_mix(stages, a.sft_tail)
    except ValueError as e:
        dist.fail(f"error: {e}")
    try:
        if seeds is None:  # one seed, straight into --out
            run_ladder(a, cfg, stages, dev, a.out, a.seed, plan, defaults, mix)
        else:  # one complete ladder per training seed, then the table over seeds
            for s in seeds:
                print(f"=== seed {s} -> {os.path.join(a.out, f'seed{s}')}", flush=True)
                run_ladder(a, cfg, stages, dev, os.path.join(a.out, f"seed{s}"), s, plan, defaults, mix)
            if dist.is_main():
                aggregate(a.out, seeds, stages, a.eval_threshold)
    except (CheckpointError, DataError, FloatingPointError) as e:
        dist.fail(f"error: {e}")  # every rank fails alike; rank 0 says why
    dist.close()


def parse_seeds(text: str):
    """'0,1,2' -> [0, 1, 2]; one-line ValueError for anything else."""
    seeds = parse_list(text, int, "--seeds")
    # distinct: a repeated seed would train one ladder into one folder twice and count
    # twice in the mean over seeds
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must name distinct seeds, got {text!r}")
    return seeds


def run_ladder(a, cfg, stages, dev, out, seed, plan, defaults=None, mix=None):
    """The whole job for one training seed in the run directory `out`: supervised base,
    T*, direct, no-RL, evaluation, report. Every step is skipped when its checkpoint exists."""
    task = task_from_args(a)
    # Flags that do not change what is trained may differ on resume; the ladder may grow.
    skip = {"out", "device", "stages", "eval_threshold", "seeds", "sweep_thresholds", "eval_samples",
            "eval_temperature", "curve_every", "stage_curve_every", "quick", "no_compile"}  # quick: --preset quick says it
    settings = dict(model=asdict(cfg), **{k: v for k, v in vars(a).items() if k not in skip | {"seed"}},
                    seed=seed)
    t_start = time.time()
    train_set, test_set = load_task(task)  # before Run: bad data leaves no run directory
    check_fit(train_set + test_set, cfg.prompt_len, cfg.answer_len)
    run = Run(out, settings, dev, defaults, started=t_start)
    B0, B_last = stages[0], stages[-1]
    sft0 = f"sft{B0}"
    # the phases, and the RL work each stands for (prompt-steps; direct's = T*'s)
    rl_budget = {f"tstar{B}": (a.first_stage_steps * a.first_stage_prompts if i == 0 else a.stage_steps * a.n_prompts)
                 for i, B in enumerate(stages)}
    if len(stages) > 1:
        rl_budget[f"direct{B_last}"] = (a.first_stage_steps + (len(stages) - 1) * a.stage_steps) * a.n_prompts
    n_ckpt = 1 + len(stages) + (len(stages) if len(stages) > 1 else 0)
    n_decodes = n_ckpt * len(stages) * sum(plan.samples if r == "sampled" else 1 for r, _ in eval_jobs(plan))
    progress = Progress(["ar", sft0] + list(rl_budget) + [f"norl{B}" for B in stages[1:]] + ["evaluation"],
                        rl_budget, n_decodes)
    # --- supervised stages: the AR-initialised small-block MDM
    progress.start("ar", done=run.have("ar"))
    if not run.have("ar"):
        t = time.time()
        model, meta = run_ar(cfg, task, train_set, test_set, a.ar_steps, a.ar_lr, a.batch_size,
                             dev, seed, log_every=100)
        run.save("ar", model, dict(meta, seconds=time.time() - t))
    progress.start(sft0, done=run.have(sft0, "ar"))
    if not run.have(sft0, "ar"):
        model, _ = run.load("ar")
        t = time.time()
        model, meta = run_sft(model, task, train_set, test_set, B0, a.sft_steps, a.sft_lr,
                              a.batch_size, seed, not a.no_block_offsets, log_every=100, block_mix=mix)
        run.save(sft0, model, dict(meta, method="sft", seconds=time.time() - t), "ar")
    # --- T*: TraceRL at each block size from the previous stage
    parent, steps_used, rows_used = sft0, {}, {}
    for i, B in enumerate(stages):
        cap = a.first_stage_steps if i == 0 else a.stage_steps
        # Rollout streams: stage i draws from seed + 1 + 100 * i, so every stage draws its own
        # prompts and samples (a shared stream would make stage 8 start by replaying stage 4's
        # first rollouts), and none replays the base's training stream (`seed`)
        recipe = dict(n_prompts=a.first_stage_prompts, lr=a.first_stage_lr,
                      lr_schedule=a.first_stage_lr_schedule) if i == 0 else {}
        every = a.curve_every if i == 0 else a.stage_curve_every
        curve = (every, test_set, seed) if every > 0 else None
        meta = rl_stage(run, f"tstar{B}", parent, B, cap, train_set, a, seed + 1 + 100 * i, curve=curve,
                        progress=progress, **recipe)
        steps_used[B] = len(meta["rl_history"])
        rows_used[B] = sum(h["rows"] for h in meta["rl_history"])
        parent = f"tstar{B}"
    # --- direct: the last block size straight from the SFT model, T*'s total RL steps
    if len(stages) > 1:
        # its own rollout stream (seed + 1001, past any stage's): direct does not replay the
        # prompt draws of T*'s first stage, which start from the same weights
        # --direct-budget steps: T*'s total RL steps; rows: as many steps as it takes to build as
        # many trace rows as all T* stages did (a step at a small block builds fewer rows, so
        # equal steps give direct more compute), capped at 3x the steps
        n_steps, max_rows = sum(steps_used.values()), 0
        if a.direct_budget == "rows":
            n_steps, max_rows = 3 * n_steps, sum(rows_used.values())
        curve = (a.stage_curve_every, test_set, seed) if a.stage_curve_every > 0 else None
        rl_stage(run, f"direct{B_last}", sft0, B_last, n_steps, train_set, a, seed + 1001, max_rows,
                 curve=curve, progress=progress)
    # --- no-RL: the same ladder with supervised updates instead of RL
    parent = sft0
    for B in stages[1:]:
        name = f"norl{B}"
        progress.start(name, done=run.have(name, parent))
        if not run.have(name, parent):
            model, meta = run.load(parent)
            t = time.time()
            model, meta = run_sft(model, task, train_set, test_set, B, steps_used[B], a.sft_lr,
                                  a.batch_size, seed, not a.no_block_offsets, log_every=100,
                                  name=name)
            run.save(name, model, dict(meta, method="norl", parent=parent, seconds=time.time() - t), parent)
        parent = name
    # --- evaluation
    names = [sft0] + [f"tstar{B}" for B in stages] + \
            ([f"direct{B_last}"] + [f"norl{B}" for B in stages[1:]] if len(stages) > 1 else [])
    # Ŝ statistics are handed in (schedule.py imports eval_math); every B decodes at
    # --commit-distance, as the rollouts did
    progress.start("evaluation")
    results = evaluate_all(run, names, stages, test_set, plan, seed,
                           distance=a.commit_distance, row_stats=schedule_stats)
    if dist.is_main():
        report(run, names, stages, results, run.add_time(), plan, seed)
        pictures(run, names, stages, results)
    run.close()  # the folder is free now (under --seeds, before the next seed's run)
    return results


if __name__ == "__main__":
    main()
