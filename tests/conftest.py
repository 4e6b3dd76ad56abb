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


@pytest.fixture
def no_tf32():
    """CUDA twins compare fp32 results at atol 1e-5 to 1e-4: TF32 matmuls (10-bit mantissa, on
    by default in some images) would move log-probs by ~1e-3, so these tests switch TF32 off.
    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 in the environment forces TF32 on in cuBLAS whatever
    Python sets, and torch reads it once, in C++, and keeps it: no fixture can undo it, so the
    test skips and says so (bench/gpu_check.sh runs the tests with the variable unset)."""
    if os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "0") != "0":
        pytest.skip("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE is set: cuBLAS uses TF32 whatever a test sets; "
                    "run with `env -u TORCH_ALLOW_TF32_CUBLAS_OVERRIDE`")
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
