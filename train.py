"""Supervised stages: AR pre-training, then block-diffusion SFT (the AR init of the MDM).

    python train.py                                   # AR pre-train + SFT at B=4 -> runs/default
    python train.py --sft-block-mix 4:0.8,8:0.15,16:0.05   # the curriculum's default base (--sft-tail 0.2)
    python train.py --stage ar --out runs/x
    python train.py --stage sft --block-size 8 --init runs/x/ar.pt --out runs/x
    python train.py --train-jsonl my/train.jsonl --test-jsonl my/test.jsonl --prompt-len 64 --max-seq-len 160
    torchrun --nproc_per_node 2 train.py --out runs/ddp   # data parallel (dist.py), same global batch

AR pre-training is next-token loss on question+answer with the prompt's loss masked.
Block SFT (docs/design.md §4) masks each answer token with probability t ~ U[0.1, 1] per sequence
(at least one), and trains CE on the masked positions in the [prompt | clean | noisy]
layout (model.py), which trains every block in one forward with the context inference
has. We use the unweighted loss (dLLM-RL's SFT), not SDAR/BD3-LM's 1/t weighting: the
weight blows up lightly-masked sequences, and our t reaches 1 so fully masked blocks,
the state every block starts from at inference, are well covered.

Our addition (not the paper's): random block offsets. Each SFT batch shifts the block
grid by a random 0..B-1, so no answer position is always a block start. We found
(docs/design.md §4) that without it a B=4 model is never right at B=8 (block starts never saw masked
predecessors), which leaves RL at B=8 no reward to learn from. `--no-block-offsets`
turns it off.

Also ours: `--sft-block-mix` draws each SFT batch at a block size from a mix (the SFT tail,
docs/design.md §4): a base that keeps most of its accuracy at bigger blocks, as the paper's do.
"""
import argparse
import ctypes
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import dist
from data.task import DataError, add_task_args, check_fit, load_task, task_from_args, task_tensors
from model import (GPT, CheckpointError, GPTConfig, add_model_args, config_from_args, load_checkpoint,
                   pick_device, save_checkpoint, training_input)


# The supervised budgets of the base, shared by train.py and curriculum.py: the arithmetic is
# learned late, so shorter runs give a much weaker base (docs/experiments.md).
AR_STEPS, SFT_STEPS = 2000, 1000
# Steps between the supervised loop's finiteness checks: each check is a host sync, which on a
# GPU stalls a launch-bound step, and a blow-up then costs at most this many wasted steps.
CHECK_EVERY = 10


def warmup_cosine(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of lr. (train_loop caps the warm-up at a
    tenth of the run, so short runs such as the no-RL ladder's stages reach full lr.)"""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def ce_sum(logits, targets):
    """(summed CE over targets != -1, in fp32 or wider; number of such targets). The train
    loop divides by the count over all ranks, so the ranks' shares add up to the token mean."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                         ignore_index=-1, reduction="sum")
    return ce, (targets != -1).sum()


def ar_loss(model, prompts, answers, lens, part=slice(None)):
    """Next-token CE on the answer and its eos; prompt and eos fill are ignored (-1).
    `part` picks this rank's rows of the batch. Returns ce_sum's (sum, count)."""
    prompts, answers, lens = prompts[part], answers[part], lens[part]
    P = prompts.shape[1]
    # Causal attention: a position never sees a later one, so the eos fill after the batch's
    # longest answer changes no loss term and is cut off (the same loss, from fewer positions).
    seq = torch.cat([prompts, answers[:, :int(lens.max()) if len(lens) else 0]], 1)
    tgt = seq[:, 1:].clone()
    j = torch.arange(1, seq.shape[1], device=seq.device)[None, :] - P  # answer index of each target
    tgt[(j < 0) | (j >= lens[:, None])] = -1
    return ce_sum(model(seq[:, :-1])[0], tgt)


def sft_loss(model, prompts, answers, block_size: int, gen: torch.Generator, offsets: bool = True,
             part=slice(None), host: torch.Generator = None):
    """Masked-diffusion CE in the [prompt | clean | noisy] layout at block_size. The noise
    is drawn for the whole batch, then `part` picks this rank's rows, so every rank sees
    the same noise a single process would. The grid shift comes from `host` (default: gen;
    see host_twin). Returns ce_sum's (sum, count)."""
    N, A = answers.shape
    dev = answers.device
    host = gen if host is None else host
    t = torch.rand(N, 1, generator=gen, device=dev) * 0.9 + 0.1
    m = torch.rand(N, A, generator=gen, device=dev) < t
    force = torch.randint(A, (N,), generator=gen, device=dev)
    m[torch.arange(N, device=dev), force] |= ~m.any(1)  # at least one masked token
    shift = int(torch.randint(block_size, (1,), generator=host, device=host.device)) if offsets else 0
    prompts, answers, m = prompts[part], answers[part], m[part]
    idx, pos, mask = training_input(prompts, answers, m, block_size, shift)
    tgt = torch.cat([torch.full_like(prompts, -1), torch.full_like(answers, -1),
                     answers.masked_fill(~m, -1)], 1)
    return ce_sum(model(idx, pos=pos, mask=mask)[0], tgt)


def parse_block_mix(text: str, answer_len: int = None):
    """'4:0.8,8:0.15,16:0.05' -> [(4, 0.8), (8, 0.15), (16, 0.05)]: the block sizes an SFT batch
    is drawn at and their probabilities (they must add up to 1). A bare '4' is [(4, 1.0)].
    One-line ValueError for anything else."""
    mix = []
    try:
        for part in (x.strip() for x in text.split(",") if x.strip()):
            B, _, p = part.partition(":")
            mix.append((int(B), float(p) if p else 1.0))
    except ValueError:
        raise ValueError(f"--sft-block-mix must look like 4:0.8,8:0.15,16:0.05, got {text!r}") from None
    if not mix or any(B <= 0 or p <= 0 for B, p in mix) or len({B for B, _ in mix}) != len(mix):
        raise ValueError(f"--sft-block-mix needs distinct positive block sizes with positive "
                         f"probabilities, got {text!r}")
    if abs(sum(p for _, p in mix) - 1) > 1e-6:
        raise ValueError(f"--sft-block-mix probabilities must add up to 1, got {text!r}")
    if answer_len is not None and max(B for B, _ in mix) > answer_len:
        raise ValueError(f"--sft-block-mix block size {max(B for B, _ in mix)} is larger than the "
                         f"{answer_len}-token answer area")
    return mix


def tail_mix(stages, tail: float):
    """The base's block mix for a ladder (curriculum.py --sft-tail): the first block size with
    probability 1 - tail, the rest of the ladder sharing `tail`, each next size a third as often
    as the one before (4,8,16 at tail 0.2: B=4 0.8, B=8 0.15, B=16 0.05). None without a tail."""
    if not 0 <= tail < 1:
        raise ValueError(f"--sft-tail must be in [0, 1), got {tail}")
    if tail == 0 or len(stages) == 1:
        return None
    w = [3.0 ** -i for i in range(len(stages) - 1)]
    return [(stages[0], 1 - tail)] + [(B, tail * x / sum(w)) for B, x in zip(stages[1:], w)]


def draw_block(mix, gen: torch.Generator) -> int:
    """One SFT batch's block size, drawn from `mix` with the batch's host generator (host_twin;
    every rank draws the same one). A single-entry mix draws nothing, so a single block size's loss draws
    no extra random numbers."""
    if len(mix) == 1:
        return mix[0][0]
    u, acc = float(torch.rand(1, generator=gen, device=gen.device)), 0.0
    for B, p in mix:
        acc += p
        if u < acc:
            return B
    return mix[-1][0]


def window_for(B0: int, window):
    """The mask window for a ladder starting at block size B0: B0 - 1 unless given. Then a
    noisy query of the B0 base sees every mask of its own block, so the base is trained as
    it would be without the window. A window below B0 - 1 (and not -1 = off) would hide
    masks of the base's own block: a different base, refused in one line."""
    if window is None:
        return B0 - 1
    if 0 <= window < B0 - 1:
        raise ValueError(f"--mask-window {window} would hide masks inside the {B0}-token blocks of "
                         f"the B={B0} base and change it; use {B0 - 1} (or -1 = off)")
    return window


def release_memory():
    """Hand the heap memory Python and torch freed back to the OS (glibc's malloc_trim; a no-op
    elsewhere). CPU tensors of ever-changing shapes (rollouts, packed rows) leave the heap
    fragmented, and without this the resident memory only grows: 0.63 -> 1.05 GB over 40 RL steps
    at B=16, flat at 0.36 GB with it (docs/experiments.md)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def weight_sum(model) -> torch.Tensor:
    """Sum of |w| over all weights, on the device, in a few fused kernels: finite iff every weight
    is (a sum keeps nan and inf on every backend, and overflows only past 3e38)."""
    return torch.stack(torch._foreach_norm(list(model.parameters()), 1)).sum()


def finite(model) -> bool:
    """Are all weights finite? Checked after every RL step and in the supervised loop's checks:
    a finite loss and gradient norm do not guarantee it (a huge learning rate overflows the
    update itself), and a blown-up model otherwise dies later, deep inside the sampler or the loss."""
    return bool(torch.isfinite(weight_sum(model)))  # one host sync


def host_twin(gen: torch.Generator, seed: int) -> torch.Generator:
    """The generator of the numbers the host itself needs (an SFT batch's block size and grid
    shift). On CPU it is `gen`, so the draws and their order are what they always were; on
    CUDA it is a CPU generator seeded alike, since reading a device draw back stalls the host
    until the device queue drains (a host sync every step)."""
    return gen if gen.device.type == "cpu" else torch.Generator().manual_seed(seed)


def blew_up(where: str, what: str, flag: str, lr: float) -> FloatingPointError:
    """The one-line error of a training step that went non-finite (nothing is saved yet)."""
    return FloatingPointError(f"{where}: {what}; stopping without saving: try a lower {flag} (now {lr:g})")


def train_loop(model, loss_fn, steps: int, lr: float, batch_size: int, data, test_data,
               seed: int = 0, warmup: int = 50, eval_every: int = 100, log_every: int = 10,
               name: str = "train", lr_flag: str = "--lr"):
    """The flat loop shared by both stages. loss_fn(model, batch_tensors, gen, host, part) ->
    (summed loss, token count) over the rows `part` of the batch, drawing on the device from
    `gen` and on the host from `host` (host_twin). Returns the final held-out loss.

    Under torchrun every rank draws the same global batch and noise from the shared-seed
    `gen` and takes rows rank::world of it; the loss is divided by the global token
    count and the gradients are summed across ranks, so a step equals the single-process
    step on the whole batch (tests/test_ddp.py). --batch-size is the global batch."""
    dev = next(model.parameters()).device
    if batch_size < dist.world():
        raise DataError(f"--batch-size {batch_size} is smaller than the {dist.world()} processes")
    part = slice(dist.rank(), None, dist.world())
    dist.broadcast_params(model)
    gen = torch.Generator(device=dev).manual_seed(seed)
    host = host_twin(gen, seed)
    eval_gen = torch.Generator(device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01,
                            fused=dev.type == "cuda")
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    n = data[0].shape[0]
    held_out = None  # no held-out loss until the first evaluation
    losses = []  # the global mean loss of each step since the last check, on the device

    def global_mean(loss_sum, count):
        tot = dist.all_reduce_sum(torch.stack([loss_sum.detach().float(), count.float()]))
        return tot[1], tot[0] / tot[1]

    def held_out_loss():
        model.eval()
        # The same noise every eval (any fixed seed; not the training stream, which it would
        # shift) so the held-out curve moves only with the weights; the first 512 test rows
        # are enough for a steady curve and cheap at every eval.
        eval_gen.manual_seed(1234)
        with torch.no_grad(), autocast:
            batch = [x[:512] for x in test_data]
            loss = global_mean(*loss_fn(model, batch, eval_gen, host_twin(eval_gen, 1234), part))[1].item()
        model.train()
        return loss

    def check(step):
        """Stop at the first non-finite loss since the last check, or at weights no longer
        finite (see finite). One host sync for all of it; every rank reads the same global
        losses and weights, so they all stop alike. Returns this step's loss."""
        read = torch.cat([torch.stack(losses).double(), weight_sum(model).double()[None]])
        *window, weights = read.tolist()
        first = step + 1 - len(window)
        for s, v in enumerate(window, first):
            if not math.isfinite(v):
                raise blew_up(f"{name} step {s + 1}", f"the loss is {v}", lr_flag, lr)
        if not math.isfinite(weights):
            span = f"step {step + 1}" if first == step else f"steps {first + 1}-{step + 1}"
            raise blew_up(f"{name} {span}", "the weights are no longer finite after the update", lr_flag, lr)
        losses.clear()
        return window[-1]

    model.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, steps, lr, min(warmup, steps // 10 + 1))
        idx = torch.randint(n, (batch_size,), generator=gen, device=dev)
        with autocast:
            loss_sum, count = loss_fn(model, [x[idx] for x in data], gen, host, part)
        n_tok, loss = global_mean(loss_sum, count)
        losses.append(loss)
        opt.zero_grad(set_to_none=True)
        (loss_sum / n_tok).backward()
        dist.all_reduce_grads(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        logged = step % log_every == 0 or step + 1 == steps
        # The host reads the losses and the weights only every CHECK_EVERY steps, at logged steps
        # and at the last: each read waits for the device. A blow-up in between is caught by
        # the next check (non-finite weights stay so), always before anything is saved.
        if step % CHECK_EVERY == 0 or logged:
            loss_value = check(step)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            held_out = held_out_loss()
        if logged:
            shown = "-" if held_out is None else f"{held_out:.4f}"  # '-' (not nan) until the first eval
            print(f"{name} step {step + 1:5d}/{steps} | loss {loss_value:.4f} | held-out {shown} "
                  f"| lr {opt.param_groups[0]['lr']:.1e} | {time.time() - t0:6.1f}s", flush=True)
    model.eval()
    return held_out


def run_ar(cfg: GPTConfig, task: dict, train_set, test_set, steps, lr, batch_size, device, seed=0,
           log_every=10):
    torch.manual_seed(seed)
    model = GPT(cfg).to(device)
    print(f"AR pre-training: {model.num_params() / 1e6:.2f}M parameters, {steps} steps, device {device}")
    data = [x.to(device) for x in task_tensors(train_set, cfg.prompt_len, cfg.answer_len)]
    test = [x.to(device) for x in task_tensors(test_set, cfg.prompt_len, cfg.answer_len)]
    loss = train_loop(model, lambda m, b, g, host, part: ar_loss(m, *b, part), steps, lr, batch_size, data,
                      test, seed, log_every=log_every, name="ar", lr_flag="--ar-lr")
    return model, dict(stage="ar", steps=steps, lr=lr, held_out_loss=loss, task=task, seed=seed)


def run_sft(model, task: dict, train_set, test_set, block_size, steps, lr, batch_size, seed=0,
            offsets=True, log_every=10, name=None, block_mix=None):
    """Block SFT at block_size; with block_mix [(B, p), ...] every batch is drawn at B with
    probability p instead (the base's tail of bigger blocks, ours: README, "What is ours").
    The checkpoint is still named and evaluated as the block_size model."""
    cfg, dev = model.cfg, next(model.parameters()).device
    mix = block_mix or [(block_size, 1.0)]
    shown = ", ".join(f"B={B} {p:g}" for B, p in mix)
    print(f"block SFT ({shown}): {steps} steps, block offsets {'on' if offsets else 'off'}")
    data = [x.to(dev) for x in task_tensors(train_set, cfg.prompt_len, cfg.answer_len)[:2]]
    test = [x.to(dev) for x in task_tensors(test_set, cfg.prompt_len, cfg.answer_len)[:2]]
    # the held-out loss is measured at block_size (a mix draws its block per training batch)
    loss_fn = lambda m, b, g, host, part: sft_loss(m, *b, draw_block(mix, host) if m.training else block_size,
                                                   g, offsets, part, host)
    loss = train_loop(model, loss_fn, steps, lr, batch_size, data, test, seed, log_every=log_every,
                      name=name or f"sft{block_size}", lr_flag="--sft-lr")
    return model, dict(stage="sft", block_size=block_size, steps=steps, lr=lr, offsets=offsets,
                       block_mix=[list(x) for x in mix], held_out_loss=loss, task=task, seed=seed)


def main():
    ap = argparse.ArgumentParser(description="AR pre-training and block-diffusion SFT.")
    ap.add_argument("--stage", default="both", choices=["ar", "sft", "both"], help="which stage(s) to run")
    ap.add_argument("--out", default="runs/default", help="directory for ar.pt / sft{B}.pt")
    ap.add_argument("--init", default=None, help="AR checkpoint for --stage sft (default: OUT/ar.pt)")
    ap.add_argument("--block-size", type=int, default=4, help="diffusion block size for SFT")
    # The curriculum's base budgets (one set: curriculum.py reads these constants too)
    ap.add_argument("--ar-steps", type=int, default=AR_STEPS, help="AR pre-training steps")
    ap.add_argument("--sft-steps", type=int, default=SFT_STEPS, help="block SFT steps")
    ap.add_argument("--sft-block-mix", default="",
                    help="SFT batches drawn at several block sizes, e.g. 4:0.8,8:0.15,16:0.05 (ours: a base "
                         "that survives bigger blocks); '' = every batch at --block-size")
    ap.add_argument("--ar-lr", type=float, default=1e-3, help="AR peak learning rate")
    ap.add_argument("--sft-lr", type=float, default=1e-3, help="SFT peak learning rate")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per step (global under torchrun)")
    ap.add_argument("--no-block-offsets", action="store_true", help="SFT on the aligned block grid only")
    add_model_args(ap)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    add_task_args(ap)
    a = ap.parse_args()
    try:
        a.mask_window = window_for(a.block_size, a.mask_window)  # the SFT block this base is for
        mix = parse_block_mix(a.sft_block_mix, a.max_seq_len - a.prompt_len) if a.sft_block_mix else None
        dev = pick_device(a.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    dev = dist.init(dev)  # joins the process group under torchrun only
    task = task_from_args(a)
    try:
        train_set, test_set = load_task(task)
        if a.stage in ("ar", "both"):
            cfg = config_from_args(a)
            check_fit(train_set + test_set, cfg.prompt_len, cfg.answer_len)
            t0 = time.time()
            model, meta = run_ar(cfg, task, train_set, test_set, a.ar_steps, a.ar_lr, a.batch_size,
                                 dev, a.seed, a.log_every)
            save(os.path.join(a.out, "ar.pt"), model, meta, t0)
        if a.stage in ("sft", "both"):
            model, _ = load_checkpoint(a.init or os.path.join(a.out, "ar.pt"), dev)
            # the window belongs to the SFT block, not to the AR file (made for --block-size 4 by
            # default): an SFT at B=8 from it needs window 7, or its base would hide its own masks
            model.cfg.mask_window = a.mask_window
            check_fit(train_set + test_set, model.cfg.prompt_len, model.cfg.answer_len,
                      fixed=a.stage == "sft")
            t0 = time.time()
            model, meta = run_sft(model, task, train_set, test_set, a.block_size, a.sft_steps,
                                  a.sft_lr, a.batch_size, a.seed, not a.no_block_offsets, a.log_every,
                                  block_mix=mix)
            save(os.path.join(a.out, f"sft{a.block_size}.pt"), model, meta, t0)
    except (CheckpointError, DataError, FloatingPointError) as e:
        dist.fail(f"error: {e}")  # every rank fails alike; rank 0 says why
    dist.close()


def save(path, model, meta, t0):
    """Rank 0 writes; the others wait, so nobody reads a checkpoint before it exists."""
    if dist.is_main():
        save_checkpoint(path, model, meta)
        print(f"saved {path} ({time.time() - t0:.0f}s)")
    dist.barrier()

if __name__ == "__main__":
    main()
