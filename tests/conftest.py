import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.task import encode_prompts, make_splits  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_cfg():
    return GPTConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=40, prompt_len=8)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    """An untrained tiny model in float64, so exactness tests compare to ~1e-12.
    Its weights are scaled up so its distributions are far from uniform (a near-uniform
    model would make many different code paths agree by accident)."""
    torch.manual_seed(0)
    m = GPT(tiny_cfg).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


@pytest.fixture(scope="session")
def level1_rows():
    return make_splits(1, 0, 8, 0)[1]


@pytest.fixture(scope="session")
def prompts(level1_rows, tiny_cfg):
    return encode_prompts([r["question"] for r in level1_rows], tiny_cfg.prompt_len)
