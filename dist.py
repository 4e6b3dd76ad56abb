"""Data parallelism for torchrun: the few collective operations the scripts need.

    torchrun --nproc_per_node 2 train.py --out runs/ddp
    torchrun --nproc_per_node 2 tracerl.py --ckpt runs/ddp/sft4.pt --block-size 8 --out runs/ddp/rl8.pt
    torchrun --nproc_per_node 2 curriculum.py --stages 4,8 --quick --out runs/ddp_quick

Nothing happens unless torchrun (or the caller) puts WORLD_SIZE > 1 in the environment:
a plain `python train.py` never initialises a process group, and every helper below is
then a no-op, so single-process runs are exactly what they were. gloo on CPU, NCCL on
CUDA (one GPU per rank, cuda:LOCAL_RANK).

Why hand-written gradient all-reduce instead of wrapping the model in DDP: the RL step
gives each rank a different number of trace rows (possibly none), and the value model is
a second network; DDP needs every rank to run the same forwards. Here each rank runs its
own micro-batches, scales its loss by *global* counts, and after backward the gradients
are summed across ranks (a rank without rows contributes zeros). The sum of the ranks'
gradients is then the gradient of the single-process loss on the global batch.
"""
import os
import sys

import torch
import torch.distributed as dist


def init(device: str) -> str:
    """Join the process group if WORLD_SIZE > 1; returns this rank's device. Non-main
    ranks print nothing (stdout goes to /dev/null), so logs come from rank 0 only."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = str(device).startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    # device_id binds NCCL's communicator to this rank's GPU up front (no guessing, no hang)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(device) if cuda else None)
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def close():
    if dist.is_initialized():
        dist.destroy_process_group()


def fail(message: str):
    """Exit with a one-line error: rank 0 prints it, the others exit 1 quietly (every rank fails
    alike), and the process group is torn down first, so no rank leaves NCCL or gloo waiting."""
    main = is_main()  # before the teardown, after which every process reads as rank 0
    close()
    sys.exit(message if main else 1)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier():
    """Wait for every rank, e.g. after rank 0 saved a checkpoint the others will check for."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x):
    """Sum a tensor (returned, on its own device) or a number (returned as a float)
    over the ranks."""
    if not dist.is_initialized():
        return x
    t = x.detach().clone() if torch.is_tensor(x) else torch.tensor(float(x), dtype=torch.float64)
    if dist.get_backend() == "nccl" and not t.is_cuda:
        t = t.cuda()
    dist.all_reduce(t)
    return t.to(x.device) if torch.is_tensor(x) else t.item()


def all_reduce_grads(model):
    """Sum every parameter's gradient over the ranks, in one flat buffer. A parameter a
    rank did not touch (no rows this step) counts as zero there."""
    if not dist.is_initialized():
        return
    params = list(model.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    i = 0
    for p in params:
        p.grad.copy_(flat[i:i + p.numel()].view_as(p))
        i += p.numel()


def broadcast_params(model):
    """Make every rank start from rank 0's weights (they load the same file or seed, so
    this is a guard, not a necessity)."""
    if dist.is_initialized():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def rank_generator(gen: torch.Generator) -> torch.Generator:
    """A random stream of this rank's own. One process: `gen` itself (nothing changes).
    Under DDP: a fresh generator seeded by one draw from the shared `gen` plus the rank,
    so ranks sample different things while `gen`, which picks the next step's prompts,
    stays in step on every rank."""
    if not dist.is_initialized():
        return gen
    seed = int(torch.randint(2 ** 62, (1,), generator=gen, device=gen.device))
    return torch.Generator(device=gen.device).manual_seed(seed + rank())
