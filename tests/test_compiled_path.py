"""The compiled sampler as the main job uses it on a GPU, checked on CPU (inductor compiles for
the CPU too): a whole quick ladder's rollouts, curve and evaluation, with a ragged last batch,
build two graphs; compiling is its own phase; the compiled step says when logits are not finite;
sampled static and ltr decodes draw generate's random stream; the KV cache stays put.

    python -m pytest -q tests/test_compiled_path.py
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from data.tokenizer import EOS_ID
from model import GPT
from sample import compile_unavailable, generate, generate_fast, static_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

# A quick ladder with the compiled path forced on CPU, and an evaluation batch of 8 so the test
# split of 17 ends in a batch of 1 (a shape the compiler would specialise unless it is padded).
LADDER = r"""
import json, sys, torch
sys.path.insert(0, ".")
import curriculum, eval_math, sample
from torch._dynamo.utils import counters
sample.COMPILED_ON, eval_math.EVAL_BATCH = {"cpu"}, 8
torch.set_num_threads(1)
sys.argv = ["curriculum.py", "--stages", "4,8", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
            "--max-seq-len", "32", "--prompt-len", "8", "--level", "1", "--n-train", "200", "--n-test", "17",
            "--ar-steps", "20", "--sft-steps", "20", "--batch-size", "16", "--first-stage-steps", "2",
            "--stage-steps", "2", "--n-prompts", "4", "--k", "2", "--first-stage-prompts", "8",
            "--curve-every", "1", "--device", "cpu", "--out", sys.argv[1]]
curriculum.main()
print("COUNTS " + json.dumps(dict(graphs=counters["stats"]["unique_graphs"], broken=sample._broken,
                                  compile_seconds=sample.compile_seconds())))
"""


@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason=str(compile_unavailable("cpu")))
def test_a_quick_ladder_compiles_two_graphs(tmp_path):
    """Rollouts at N = 16 and 8, the curve and the evaluation at 8 (and a last batch of 1, padded),
    B = 4 and 8, greedy and sampled, dynamic, static and ltr, five checkpoints: one graph for a
    block's first step and one for its later steps. The compile seconds are a phase of their own,
    left out of the decodes' seconds."""
    p = subprocess.run([sys.executable, "-c", LADDER, str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                       text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    counts = json.loads(p.stdout.split("COUNTS ")[-1])
    assert counts["graphs"] == 2 and counts["broken"] == [], counts
    res = json.load(open(tmp_path / "run" / "results.json"))
    phases = {x["phase"]: x["seconds"] for x in res["phases"]}
    compiled = [s for ph, s in phases.items() if ph.startswith("compile")]
    assert len(compiled) == 1 and compiled[0] > 0
    # every compile second is counted once: in the rollouts, the curve or the evaluation
    metas = [torch.load(tmp_path / "run" / f"{n}.pt", weights_only=False)["meta"]
             for n in ("tstar4", "tstar8", "direct8")]
    in_runs = sum(m["compile_seconds"] for m in metas) + sum(r["compile_seconds"] for r in res["records"])
    assert abs(in_runs - compiled[0]) < 1e-6 and abs(in_runs - counts["compile_seconds"]) < 1.0
    assert sum(h["secs_compile"] for h in metas[0]["rl_history"]) > 0  # the first rollout compiled


@pytest.fixture(scope="module")
def nan_model(tiny_cfg):
    m = GPT(tiny_cfg).eval()
    with torch.no_grad():
        m.lm_head_bias = None
        next(m.parameters()).fill_(float("nan"))
    return m


@pytest.mark.parametrize("rule,temperature", [("dynamic", 0.0), ("static", 0.0), ("static", 1.0)])
def test_non_finite_logits_are_one_error_on_the_fast_path(nan_model, prompts, rule, temperature):
    """NaN logits: the eager sampler's error, on both of the fast path's check points (after every
    step where it asks anyway, at the end for greedy static), and never an index past the
    vocabulary on the way (on CUDA that would be a device-side assert that kills the process)."""
    g = torch.Generator().manual_seed(0)
    with pytest.raises(FloatingPointError, match="logits are not finite"):
        generate(nan_model, prompts, 8, rule, temperature=temperature, generator=g)
    with pytest.raises(FloatingPointError, match="logits are not finite"):
        generate_fast(nan_model, prompts, 8, rule, temperature=temperature, generator=g, compile=False)


@pytest.fixture(scope="module")
def eos_model(tiny_cfg):
    """A model that likes <|eos|>, so rows finish inside a block, before its last step."""
    torch.manual_seed(0)
    m = GPT(tiny_cfg).double().eval()
    head = m.head
    m.head = lambda x: head(x) + 8.0 * (torch.arange(tiny_cfg.vocab_size) == EOS_ID)
    return m


@pytest.mark.parametrize("rule", ["static", "ltr"])
def test_sampled_static_and_ltr_leave_the_random_stream_where_generate_does(eos_model, prompts, rule):
    """generate stops a block's steps when no row needs one and draws uniforms only for the steps it
    runs; the fast path must stop there too at T > 0 (not run out the known step count), or every
    later batch of an evaluation would draw a different stream."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref = generate(eos_model, prompts[:1], 8, rule, temperature=1.0, generator=g1)
    out = generate_fast(eos_model, prompts[:1], 8, rule, temperature=1.0, generator=g2, compile=False)
    assert torch.equal(ref["tokens"], out["tokens"]) and torch.equal(ref["nfe"], out["nfe"])
    assert ref["nfe"][0] < 8  # done before the first block's last step: running it out would draw more
    assert torch.equal(g1.get_state(), g2.get_state())


def test_padding_rows_change_nothing(tiny_model, prompts):
    """pad_to (an evaluation's ragged last batch) and the minimum of 2 rows add rows that are done
    from the start: they draw no random numbers and the real rows decode as without them."""
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ref = generate(tiny_model, prompts[:1], 4, "dynamic", 0.5, temperature=1.0, generator=g1)
    out = generate_fast(tiny_model, prompts[:1], 4, "dynamic", 0.5, temperature=1.0, generator=g2,
                        compile=False, pad_to=5)
    assert out["tokens"].shape[0] == 1
    for k in ("tokens", "fwd", "nfe", "n_gen", "finished"):
        assert torch.equal(ref[k], out[k]), k
    assert torch.equal(g1.get_state(), g2.get_state())


def test_the_compiled_decodes_cache_stays_put(tiny_cfg):
    """One KV cache per (model shape, batch, device), at one address (a CUDA graph reads it in place),
    zeroed for every decode; another batch size gets its own."""
    a = static_cache(tiny_cfg, 3, torch.device("cpu"))
    a.k.fill_(float("nan"))
    a.len = 7
    b = static_cache(tiny_cfg, 3, torch.device("cpu"))
    assert b is a and b.k.data_ptr() == a.k.data_ptr() and b.len == 0 and not b.k.any() and not b.v.any()
    assert static_cache(tiny_cfg, 4, torch.device("cpu")) is not a
