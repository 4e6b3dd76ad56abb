"""How many graphs the compiled sampler builds over the decode shapes of a `--preset gpu` ladder,
counted on CPU (inductor compiles for the CPU too; the shapes and knobs are what decide the count,
not the model's width, so a 1-layer model with the preset's layout stands in for the 9.9M one).

    python docs/scripts/compile_shapes.py            # prints the graphs built after each kind of decode

The shapes: rollouts at N = 128 x 16 (the first stage) and 64 x 16 (later stages, direct), the curve
and the evaluation at N = 300 (the default test split), a ragged last batch (a test split of 513 in
batches of 512), B = 4, 8, 16; greedy dynamic at each sweep θ, static, ltr, and sampled (T = 1).
"""
import sys
import time

import torch

sys.path.insert(0, ".")
from torch._dynamo.utils import counters  # noqa: E402

from data.task import encode_prompts, make_splits  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from sample import compile_seconds, generate_fast  # noqa: E402

torch.set_num_threads(1)
cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32)  # the default task's layout (prompt area, context)
model = GPT(cfg).eval()
problems = make_splits(3, 0, 64, 0)[1]
base = encode_prompts([p["question"] for p in problems], cfg.prompt_len)
g = torch.Generator().manual_seed(0)


def rows(n):
    return base.repeat(-(-n // len(base)), 1)[:n]


t0 = time.time()
for label, n, pad in [("rollouts N=2048", 2048, 0), ("rollouts N=1024", 1024, 0), ("evaluation N=300", 300, 0),
                      ("last batch N=1 of 512", 1, 512)]:
    for B in (4, 8, 16):
        decodes = [("dynamic", 0.9, 1.0)] if label.startswith("rollouts") else \
            [("dynamic", t, 0.0) for t in (0.5, 0.7, 0.9, 0.99)] + [("static", 0.9, 0.0), ("ltr", 0.9, 0.0),
                                                                  ("dynamic", 0.9, 1.0)]
        for rule, theta, temp in decodes:
            generate_fast(model, rows(n), B, rule, theta, temperature=temp, generator=g, pad_to=pad)
    print(f"after {label:>22} at B = 4, 8, 16: {counters['stats']['unique_graphs']} graphs, "
          f"{compile_seconds():.0f} s compiling, {time.time() - t0:.0f} s in all", flush=True)
