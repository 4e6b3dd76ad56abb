"""The fast sampler (sample.generate_fast) returns what the readable one (sample.generate)
returns: equal tokens, steps, n_gen, nfe and finished, log-probs to fp tolerance, for the
same inputs and seed, eager and compiled, on CPU and (when there is one) on CUDA.

    python -m pytest -q tests/test_fast_sample.py

The compiled CPU cases cost a one-off inductor/gcc compile (tens of seconds cold; the
on-disk cache makes later runs quicker)."""
import os
import subprocess
import sys

import pytest
import torch

from model import GPT
from sample import generate_fast
from sample import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# inductor's C++ wrapper imports a deprecated torch.jit helper; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

EXACT = ("tokens", "fwd", "n_gen", "nfe", "finished")
CASES = [  # (rule, threshold, temperature, steps)
    ("dynamic", 0.9, 0.0, None),   # greedy dynamic
    ("static", 0.9, 0.0, None),    # greedy static, one token per step
    ("dynamic", 0.3, 1.0, None),   # sampling with a seeded generator (TraceRL's rollouts)
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Ops this small gain nothing from a second intra-op thread, and on a shared 2-core
    machine the OpenMP hand-offs stall: one thread keeps this file fast."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny32(tiny_cfg):
    """conftest's tiny model in float32 (compiled kernels are float32 kernels): same init,
    weights scaled up so its distributions are far from uniform."""
    torch.manual_seed(0)
    m = GPT(tiny_cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


def _assert_same(ref, out):
    assert set(out) == set(ref)
    for k in EXACT:
        assert torch.equal(out[k], ref[k]), k
    assert torch.allclose(out["logp"], ref["logp"], atol=1e-5, rtol=0)


def _run_both(model, prompts, block_size, rule, threshold, temperature, steps, compile, seed=0):
    dev = prompts.device
    ref = generate(model, prompts, block_size, rule, threshold, steps, temperature,
                   torch.Generator(device=dev).manual_seed(seed))
    out = generate_fast(model, prompts, block_size, rule, threshold, steps, temperature,
                        torch.Generator(device=dev).manual_seed(seed), compile=compile)
    return ref, out


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("rule,threshold,temperature,steps", CASES + [("ltr", 0.9, 1.0, None),
                                                                      ("static", 0.9, 1.0, 2)])
def test_eager_fast_path_equals_generate(tiny32, prompts, block_size, rule, threshold, temperature, steps):
    _assert_same(*_run_both(tiny32, prompts, block_size, rule, threshold, temperature, steps, False))


def test_float64_model_too(tiny_model, prompts):
    """The fast path keeps generate's float32 cache, so even a float64 model agrees."""
    _assert_same(*_run_both(tiny_model, prompts, 8, "dynamic", 0.3, 1.0, None, False))


@pytest.mark.parametrize("compile", [False, True])
def test_rows_that_finish_early_do_not_shift_the_random_stream(tiny32, prompts, compile):
    """generate drops finished rows and draws random numbers only for the rest; the fast
    path keeps them, so it must draw exactly as many. Needs a batch where some rows stop
    blocks before others: check that this seed gives one, then that all still agree."""
    ref, out = _run_both(tiny32, prompts, 4, "dynamic", 0.3, 1.0, None, compile, seed=3)
    last_block = ref["fwd"].clamp_min(0).argmax(1) // 4
    assert ref["finished"].any() and last_block.unique().numel() > 1
    _assert_same(ref, out)


@pytest.mark.parametrize("rule,threshold,temperature,steps", CASES)
def test_compiled_fast_path_equals_generate_cpu(tiny32, prompts, rule, threshold, temperature, steps):
    for block_size in (4, 8, 16):  # dynamic shapes on CPU: one compile serves all three
        _assert_same(*_run_both(tiny32, prompts, block_size, rule, threshold, temperature, steps, True))


def test_stats_count_forwards_and_syncs(tiny32, prompts):
    """The dynamic rule asks "is any row left?" once per block it enters and "does any row need
    another step?" after every step, so syncs = forwards + blocks entered; batch 1: every batch
    forward is one of the row's, none wasted after it is done. Greedy static knows its step count:
    it runs every step of a block it enters and syncs once per block, plus once for the
    non-finite check at the end."""
    B, A = 8, tiny32.cfg.answer_len
    stats = {}
    out = generate_fast(tiny32, prompts[:1], B, "dynamic", compile=False, stats=stats)
    assert stats["forwards"] == int(out["nfe"][0])
    last = int((out["fwd"][0] >= 0).nonzero().max()) // B  # the block the row finished in
    entered = last + 1 + (1 if last + 1 < -(-A // B) else 0)  # ... plus the check that finds it done
    assert stats["syncs"] == stats["forwards"] + entered
    out = generate_fast(tiny32, prompts[:1], B, "static", compile=False, stats=stats)
    last = int((out["fwd"][0] >= 0).nonzero().max()) // B
    assert stats["forwards"] == (last + 1) * B >= int(out["nfe"][0])
    assert stats["syncs"] == last + 1 + (1 if last + 1 < -(-A // B) else 0) + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("rule,threshold,temperature,steps", CASES)
def test_fast_path_equals_generate_cuda(tiny32, prompts, rule, threshold, temperature, steps, compile,
                                        no_tf32):
    import copy
    from sample import compile_unavailable
    if compile and compile_unavailable("cuda"):
        pytest.skip(compile_unavailable("cuda"))
    model = copy.deepcopy(tiny32).cuda()
    p = prompts.cuda()
    for block_size in (4, 8, 16):
        _assert_same(*_run_both(model, p, block_size, rule, threshold, temperature, steps, compile))


@pytest.mark.parametrize("distance", [2, 6])
def test_eager_fast_path_equals_generate_with_commit_distance(tiny32, prompts, distance):
    """The commit distance (and the mask window, on by default) reads the same in both samplers."""
    g = lambda: torch.Generator().manual_seed(1)
    ref = generate(tiny32, prompts, 16, "dynamic", 0.3, None, 1.0, g(), distance=distance)
    out = generate_fast(tiny32, prompts, 16, "dynamic", 0.3, None, 1.0, g(), compile=False, distance=distance)
    _assert_same(ref, out)


def test_sample_cli_fast_prints_what_eager_prints(tiny32, tmp_path):
    """`python sample.py --fast` decodes through the compiled sampler and prints the same
    answers, trace picture and TPF as the eager one (only the seconds differ)."""
    from model import save_checkpoint
    save_checkpoint(str(tmp_path / "m.pt"), tiny32, {})
    outs = []
    for extra in ([], ["--fast"]):
        r = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tmp_path / "m.pt"), "--block-size", "8",
                            "--temperature", "1", "--show", "--prompt", "2+3", "--prompt", "7*4-1", *extra], cwd=ROOT, capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr
        outs.append([line.split("  (")[0] for line in r.stdout.splitlines()])  # drop the "(0.12s)"
    assert outs[0] == outs[1] and any(line.startswith("  forward") for line in outs[0])


# ----------------------------------------------------------------------------- sample.decode_blocks: which one runs

def test_decode_runs_the_compiled_step_where_told_and_eager_with_no_compile(monkeypatch, tiny32, prompts):
    """sample.decode_blocks takes generate_fast's compiled step on the devices in COMPILED_ON (here the
    CPU, for the test) unless COMPILE is off; the tokens are generate's either way."""
    import sample
    calls = []

    def spy(device_type):
        return lambda *args: calls.append(1) or sample._denoise_step(*args)
    monkeypatch.setattr(sample, "compiled_step", spy)
    monkeypatch.setattr(sample, "COMPILED_ON", {"cpu"})
    monkeypatch.setattr(sample, "_broken", [])
    g = lambda: torch.Generator().manual_seed(2)
    ref = generate(tiny32, prompts, 8, "dynamic", 0.3, None, 1.0, g())
    _assert_same(ref, sample.decode_blocks(tiny32, prompts, 8, "dynamic", 0.3, None, 1.0, g()))
    assert calls
    calls.clear()
    monkeypatch.setattr(sample, "COMPILE", False)
    _assert_same(ref, sample.decode_blocks(tiny32, prompts, 8, "dynamic", 0.3, None, 1.0, g()))
    assert not calls


def test_decode_falls_back_to_eager_in_one_line(monkeypatch, capsys, tiny32, prompts):
    """When torch.compile cannot build, decode says so in one line, decodes eagerly with the
    random stream rewound (the same tokens as generate), and never tries again."""
    import sample

    def broken(device_type):
        def step(*args):
            raise RuntimeError("InductorError: no working C compiler\nlong trace ...")
        return step
    monkeypatch.setattr(sample, "compiled_step", broken)
    monkeypatch.setattr(sample, "COMPILED_ON", {"cpu"})
    monkeypatch.setattr(sample, "COMPILE", True)
    monkeypatch.setattr(sample, "_broken", [])
    g = lambda: torch.Generator().manual_seed(3)
    ref = generate(tiny32, prompts, 8, "dynamic", 0.3, None, 1.0, g())
    _assert_same(ref, sample.decode_blocks(tiny32, prompts, 8, "dynamic", 0.3, None, 1.0, g()))
    _assert_same(ref, sample.decode_blocks(tiny32, prompts, 8, "dynamic", 0.3, None, 1.0, g()))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.compile failed" in err[0] and "no working C compiler" in err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_is_the_compiled_sampler_and_equals_generate_cuda(monkeypatch, tiny32, prompts,
                                                                          no_tf32):
    """On CUDA sample.decode_blocks (rollouts, evaluation) runs generate_fast's compiled step: the
    tokens are the eager sampler's."""
    import copy
    import sample
    if sample.compile_unavailable("cuda"):  # decode_blocks would fall back to eager: nothing to test
        pytest.skip(sample.compile_unavailable("cuda"))
    monkeypatch.setattr(sample, "COMPILE", True)
    monkeypatch.setattr(sample, "_broken", [])
    calls = []
    real = sample.compiled_step
    monkeypatch.setattr(sample, "compiled_step", lambda d: calls.append(d) or real(d))
    model, p = copy.deepcopy(tiny32).cuda(), prompts.cuda()
    g = lambda: torch.Generator(device="cuda").manual_seed(4)
    _assert_same(generate(model, p, 8, "dynamic", 0.3, None, 1.0, g()),
                 sample.decode_blocks(model, p, 8, "dynamic", 0.3, None, 1.0, g()))
    assert calls == ["cuda"] and not sample._broken
