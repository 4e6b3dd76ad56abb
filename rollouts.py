"""TraceRL's rollouts, their rewards and the group advantages: steps 1-3 of an RL step
(tracerl.py does the rest).

    from rollouts import rollout
    ro = rollout(model, train_rows, n_prompts=32, k=8, block_size=8, threshold=0.9,
                 gen=torch.Generator().manual_seed(0))    # what tracerl.rl_step draws
    python bench/bench_decode.py --device cpu             # times it ("TraceRL rollout")

A rollout picks P prompts, samples K responses to each at temperature 1 (--temperature) with dynamic
decoding at the rollout block size (sample.generate, which records the trace: the forward
that committed every token, and its log-prob), and grades them with the task's own
grading (data.task.is_correct): reward 1 if the answer is right, else 0 (no eos = 0).
group_advantages z-scores the rewards inside each prompt's group; tracerl.py turns them into
trace rows (traces.py) and an update.

Simplified from the paper: a binary reward, no reward model. Ours, off by default
(docs/experiments.md, round 3): `--reach-spread` (a group's samples decode with different
commit distances, sample_distances), `--threshold-spread` (and with different θ) and
`--speed-alpha` (a right answer earns 1 + α·TPF of its own decode), `--tpf-advantage` (the
advantage z(reward) + z(TPF)), `--hint-samples` (all-wrong groups redraw some samples with
spans of the reference written in, after IGPO; IGPO also keeps high-entropy hint tokens in
the loss, we keep none, and its hints cover a long chain of thought where ours cover 20-60 %
of a few arithmetic steps). Under torchrun each rank samples its own share of the prompts,
whole groups only, so no reward ever needs gathering (dist.py).
"""
import argparse

import torch

import dist
from data.task import encode_answers, encode_prompts, is_correct
from data.tokenizer import MASK_ID, decode
from sample import generate

HINT_CHUNK = 4  # tokens per hint span (IGPO writes chunks of 5-10 tokens of a longer reference)


def parse_values(text: str, flag: str, kind, kinds: str, ok, bound: str):
    """A comma-separated spread flag: '4,4,8' -> [4, 4, 8] (each `kind`, each passing `ok`);
    '' -> None (no spread); a one-line argparse error naming `flag` otherwise."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} must be comma-separated {kinds}, got {text!r}") from None
    if not all(ok(v) for v in values):
        raise argparse.ArgumentTypeError(f"{flag} {bound}, got {text!r}")
    return values or None


def parse_spread(text: str):
    """--reach-spread: '4,4,8,0' -> [4, 4, 8, 0]; distances >= 0 (0 = anywhere)."""
    return parse_values(text, "--reach-spread", int, "integers", lambda d: d >= 0, "distances must be >= 0")


def parse_thresholds(text: str):
    """--threshold-spread: '0.7,0.99' -> [0.7, 0.99]; each θ in (0, 1] (θ > 1 would never
    commit above it: every forward would fall back to one token)."""
    return parse_values(text, "--threshold-spread", float, "numbers", lambda t: 0 < t <= 1,
                        "values must be in (0, 1]")


def positive_temperature(text: str) -> float:
    """--temperature: a float > 0 (0 would be greedy: no two samples of a group differ, and
    the tempered log-probs divide by it); one-line error otherwise."""
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperature must be a number, got {text!r}") from None
    if not t > 0:
        raise argparse.ArgumentTypeError(f"--temperature must be > 0, got {text!r}")
    return t


def add_rollout_args(ap):
    """The rollout flags (steps 1-3), shared by tracerl.py and curriculum.py."""
    ap.add_argument("--temperature", type=positive_temperature, default=1.0,
                    help="rollout sampling temperature; the update's log-probs are of the same tempered "
                         "policy, so π_old = the sampler's (IGPO and DiffuCoder sample at 1.2)")
    ap.add_argument("--commit-distance", type=int, default=0,
                    help="rollouts commit only masks fewer than D places right of the block's leftmost "
                         "mask (0 = anywhere; sample.near_frontier)")
    ap.add_argument("--reach-spread", type=parse_spread, default=None,
                    help="commit distances cycled over each group's K samples, e.g. 4,4,6,6,8,8,0,0 "
                         "(sample j uses the (j mod n)-th; 0 = anywhere; ours); overrides "
                         "--commit-distance in rollouts; '' = off")
    ap.add_argument("--threshold-spread", type=parse_thresholds, default=None,
                    help="rollout θs cycled over each group's K samples, e.g. 0.7,0.9,0.95,0.99 (sample j "
                         "uses the (j mod n)-th; ours); overrides --threshold in rollouts; '' = off")
    ap.add_argument("--tpf-advantage", action="store_true",
                    help="advantage z(reward) + z(TPF) inside each group, all-right groups kept and "
                         "all-wrong ones dropped (after LightningRL; ours); not with --value-model")
    ap.add_argument("--speed-alpha", type=float, default=0.0,
                    help="a right answer earns 1 + α·TPF of its own rollout (ours, after DiRL/LightningRL); "
                         "0 = binary reward")
    ap.add_argument("--hint-samples", type=int, default=0,
                    help="in a group whose K answers are all wrong, redraw the first H samples with "
                         "spans of the reference answer written in (20-60%% of its worked steps, never "
                         "its final answer); right redraws replace their samples, hint tokens stay out "
                         "of the loss (after IGPO; ours); 0 = off")


def per_sample(n_groups: int, k: int, value, spread=None, dtype=torch.long):
    """One setting for every rollout sample [n_groups * k]: with a spread (--reach-spread,
    --threshold-spread; ours), sample j of each group uses spread[j % len(spread)], so within
    one prompt some samples may commit far from the frontier (or at a low θ) and some stay
    near it (or cautious), and the group's advantage says which was right; without one,
    every sample uses `value`. Two spreads cycle independently: with lengths 8 and 4 sample j
    has distance spread[j] and θ spread[j % 4]."""
    each = [spread[j % len(spread)] for j in range(k)] if spread else [value] * k
    return torch.tensor(each, dtype=dtype).repeat(n_groups)


def hint_canvas(answers, answer_len: int, gen, lo: float = 0.2, hi: float = 0.6):
    """[n, A] answer areas for hinted decoding (--hint-samples; ours, after IGPO): <|mask|>
    everywhere but a few HINT_CHUNK-token spans of each reference answer, at their own
    positions, covering a fraction drawn from U[lo, hi] of its worked steps. Only the steps
    before '####' are hinted, never the final answer or the eos, so a hinted sample still
    has to write its answer itself."""
    ids, _ = encode_answers(answers, answer_len)
    canvas = torch.full_like(ids, MASK_ID)
    for i, ans in enumerate(answers):
        n = len(ans.split("####")[0].encode())  # the worked steps, in bytes (= tokens)
        chunks = torch.randperm(-(-n // HINT_CHUNK), generator=gen).tolist()
        want = n * (lo + (hi - lo) * float(torch.rand((), generator=gen)))
        covered = 0
        for c in chunks:
            if covered >= want:
                break
            span = slice(c * HINT_CHUNK, min((c + 1) * HINT_CHUNK, n))
            canvas[i, span] = ids[i, span]
            covered += span.stop - span.start
    return canvas


def sample_distances(n_groups: int, k: int, distance: int = 0, spread=None):
    """Commit distance of every rollout sample [n_groups * k] (per_sample)."""
    return per_sample(n_groups, k, distance, spread)


@torch.no_grad()
def rollout(model, problems, n_prompts, k, block_size, threshold, gen, sample_gen=None, distance=0,
            spread=None, speed_alpha: float = 0.0, temperature: float = 1.0, threshold_spread=None,
            hint_samples: int = 0):
    """Pick P prompts from `problems` with the shared `gen` (every rank picks the same
    ones), sample K responses for this rank's share with `sample_gen` (default: gen), grade
    them. DDP: the P prompts are split across ranks, prompt p on rank p % world, each with
    all its K samples, so a group's mean and std (its advantage) are computed on the rank
    that sampled it and no rewards need gathering.

    The reward is 1 for a right answer, 0 otherwise; with speed_alpha > 0 a right answer
    earns 1 + speed_alpha * TPF of its own decode (ours, after DiRL's and LightningRL's speed
    rewards), so among right answers the faster ones carry the advantage. temperature
    (--temperature) tempers the sampling distribution, whose log-probs the sampler records
    and the update recomputes (traces.row_logprobs at the same temperature). Returns a dict of
    tensors: the sampler's outputs plus prompts, reward [G, K], correct [G, K], distance [N],
    threshold [N] (each sample's θ: `threshold`, or its entry of threshold_spread), hinted [N].

    With hint_samples H > 0 (--hint-samples; ours, after IGPO) every group whose K answers
    are all wrong decodes its first H samples again, with the same distances and θs, from a
    hint canvas (hint_canvas: spans of the reference written in); each hinted redraw that
    comes out right replaces its sample, so the group now has a right answer to learn from.
    The hint tokens are context, not actions: their fwd is sample.GIVEN, so no trace row
    targets them and every row shows them, as the sampler's states did."""
    dev = next(model.parameters()).device
    pick = torch.randint(len(problems), (n_prompts,), generator=gen, device=dev).tolist()
    group = [problems[i] for i in pick[dist.rank()::dist.world()]]
    prompts = encode_prompts([p["question"] for p in group], model.cfg.prompt_len)
    prompts = prompts.repeat_interleave(k, 0).to(dev)
    reach = sample_distances(len(group), k, distance, spread)
    theta = per_sample(len(group), k, threshold, threshold_spread, torch.float32)
    model.eval()
    decode_rows = lambda idx, given=None: generate(
        model, prompts[idx], block_size, "dynamic", theta[idx] if threshold_spread else threshold,
        temperature=temperature, generator=sample_gen or gen, distance=reach[idx] if spread else distance,
        given=given)

    def graded(out, idx):  # the texts of decoded rows idx, and whether each is right
        texts = [decode(t) for t in out["tokens"]]
        return texts, torch.tensor([float(is_correct(t, group[i // k]["answer"], bool(f)))
                                    for i, t, f in zip(idx.tolist(), texts, out["finished"])])
    every = torch.arange(len(prompts))
    out = decode_rows(every)
    texts, correct = graded(out, every)
    out["hinted"] = torch.zeros(len(prompts), dtype=torch.bool)
    wrong = (correct.view(-1, k).sum(1) == 0).nonzero().squeeze(1)
    if hint_samples and len(wrong):
        idx = (wrong[:, None] * k + torch.arange(min(hint_samples, k))[None, :]).view(-1)
        canvas = hint_canvas([group[i // k]["answer"] for i in idx.tolist()], model.cfg.answer_len,
                             sample_gen or gen)
        hinted = decode_rows(idx, canvas)
        hinted_texts, ok = graded(hinted, idx)
        ok = ok > 0
        hinted["hinted"] = torch.ones(len(idx), dtype=torch.bool)
        for key, v in hinted.items():  # the right redraws take their samples' places
            out[key][idx[ok]] = v[ok]
        for j in ok.nonzero().squeeze(1).tolist():
            texts[int(idx[j])] = hinted_texts[j]
        correct[idx[ok]] = 1.0
    tpf = out["n_gen"].float() / out["nfe"].clamp_min(1).float()  # this sample's own TPF
    reward = correct * (1 + speed_alpha * tpf)
    return dict(out, prompts=prompts.cpu(), reward=reward.view(len(group), k),
                correct=correct.view(len(group), k), distance=reach, threshold=theta, texts=texts)


def group_advantages(rewards: torch.Tensor, band=(0.0, 1.0), correct: torch.Tensor = None,
                     tpf: torch.Tensor = None):
    """rewards [P, K] -> (advantages [P, K], kept [P]). Population-std z-score inside each
    group; a group is kept iff its accuracy lies in [lo, hi] and it has any variance.
    Accuracy is the mean of `correct` [P, K] (default: the rewards themselves, binary): with
    a speed term a reward is more than 0/1, but the band still reads the share right.

    With `tpf` [P, K] (--tpf-advantage, after LightningRL) the advantage is z(reward) +
    z(TPF), each z-scored inside the group on its own, so a group whose answers are all right
    but differ in speed carries signal (the faster ones up). As LightningRL does, all-wrong
    groups are dropped (a faster wrong answer is not worth teaching on its own), and a
    group's TPF term counts only where its TPF range is at least 0.01."""
    z = lambda x, varies: torch.where(varies, (x - x.mean(1, keepdim=True)) /
                                      x.std(1, unbiased=False, keepdim=True).clamp_min(1e-8), torch.zeros_like(x))
    std = rewards.std(1, unbiased=False, keepdim=True)
    adv = z(rewards, std > 0)
    acc = (rewards if correct is None else correct).mean(1)
    in_band = (acc >= band[0]) & (acc <= band[1])
    kept = in_band & (std.squeeze(1) > 0)
    if tpf is not None:
        spread = (tpf.amax(1) - tpf.amin(1) >= 0.01)[:, None]
        adv = adv + z(tpf, spread)
        kept = in_band & (acc > 0) & ((std > 0) | spread).squeeze(1)
    return adv * kept[:, None], kept


def advantages(ro, a):
    """group_advantages of a rollout dict under the flags `a`: [P, K] advantages and kept."""
    tpf = (ro["n_gen"].float() / ro["nfe"].clamp_min(1).float()).view_as(ro["reward"]) if a.tpf_advantage else None
    return group_advantages(ro["reward"], a.acc_band, ro["correct"], tpf)


def merge_rollouts(first: dict, second: dict) -> dict:
    """Two rollout dicts as one: every tensor (and the texts) concatenated along the batch
    (dynamic sampling's extra draws, tracerl.rl_step)."""
    return {key: first[key] + second[key] if isinstance(first[key], list) else torch.cat([first[key], second[key]])
            for key in first}
