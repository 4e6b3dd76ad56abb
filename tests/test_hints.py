"""--hint-samples (ours, after IGPO): all-wrong groups redraw some samples with spans of the
reference written in. The canvas, the sampler with given tokens (still exact against the
training layout), the rollout's replacement rule, and the first update on-policy."""
import copy

import pytest
import torch

import rollouts
from sample import generate
from tracerl import rl_step
from test_tracerl import rl_args
from test_curriculum import one_error_line


def test_hint_canvas_writes_reference_spans_of_the_worked_steps_only():
    from data.task import encode_answers
    from data.tokenizer import MASK_ID
    answers = ["4*6=24 23+24=47 47-9=38 #### 38", "3+4=7 #### 7"] * 20
    canvas = rollouts.hint_canvas(answers, 48, torch.Generator().manual_seed(0))
    ids, _ = encode_answers(answers, 48)
    given = canvas != MASK_ID
    assert torch.equal(canvas[given], ids[given])  # hints are the reference's own tokens, in place
    for ans, g in zip(answers, given):
        n = len(ans.split("####")[0])
        assert not g[n:].any()  # never the final answer or the eos
        assert 0.2 * n <= int(g.sum()) < 0.6 * n + rollouts.HINT_CHUNK  # U[0.2, 0.6] of the steps
    assert len({tuple(g.tolist()) for g in given[::2]}) > 1  # each sample gets its own spans


@pytest.mark.parametrize("block_size", [4, 8])
def test_generate_keeps_given_tokens_and_its_logprobs_equal_the_rows(tiny_model, prompts, block_size):
    """Given tokens stay as written (fwd GIVEN), are never a trace row's target and are shown
    in every row; the sampler's log-probs still equal the training layout's (the check of
    test_sample, with hints). Block 0 is given whole in every row (no forward decodes it,
    but the prompt must still reach the cache); an all-<|mask|> canvas changes nothing."""
    from data.tokenizer import MASK_ID
    from sample import GIVEN
    from traces import trace_rows, row_logprobs
    A = tiny_model.cfg.answer_len
    canvas = torch.full((len(prompts), A), MASK_ID, dtype=torch.long)
    canvas[:, :block_size] = 50 + torch.arange(block_size)
    canvas[::2, block_size + 1] = 60
    g = lambda: torch.Generator().manual_seed(0)
    out = generate(tiny_model, prompts, block_size, "dynamic", 0.3, temperature=1.0, generator=g(), given=canvas)
    given = canvas != MASK_ID
    assert torch.equal(out["tokens"][given], canvas[given]) and (out["fwd"][given] == GIVEN).all()
    n_checked = 0
    for i in range(len(prompts)):
        rows = trace_rows(out["fwd"][i], block_size)
        for noisy, tgt in rows:
            assert not (noisy | tgt)[given[i]].any()
            lp = row_logprobs(tiny_model, prompts[i:i + 1], out["tokens"][i:i + 1], noisy[None], tgt[None], block_size)
            assert torch.allclose(lp, out["logp"][i][tgt], atol=1e-5)
            n_checked += int(tgt.sum())
    assert n_checked > 30
    plain = generate(tiny_model, prompts, block_size, "dynamic", 0.3, temperature=1.0, generator=g())
    empty = generate(tiny_model, prompts, block_size, "dynamic", 0.3, temperature=1.0, generator=g(),
                     given=torch.full((len(prompts), A), MASK_ID, dtype=torch.long))
    for key in ("tokens", "fwd", "logp", "nfe"):
        assert torch.equal(plain[key], empty[key])


def _grade_by_reference_span(text, gold, finished):
    """A stand-in grade an untrained model can pass only with hints: right iff the response
    holds one of the reference's HINT_CHUNK-token spans."""
    steps, c = gold.split("####")[0], rollouts.HINT_CHUNK
    return any(steps[j:j + c] in text for j in range(0, len(steps) - c + 1, c))


def test_hinted_rollout_replaces_all_wrong_groups_with_right_redraws_on_policy(monkeypatch, tiny_model,
                                                                              level1_rows):
    from sample import GIVEN
    monkeypatch.setattr(rollouts, "is_correct", _grade_by_reference_span)
    gen = lambda: torch.Generator().manual_seed(0)
    plain = rollouts.rollout(tiny_model, level1_rows, 4, 4, 8, 0.9, gen())
    assert plain["correct"].sum() == 0 and not plain["hinted"].any()  # no hints: every group all wrong
    ro = rollouts.rollout(tiny_model, level1_rows, 4, 4, 8, 0.9, gen(), hint_samples=2)
    h = ro["hinted"]
    assert h.any() and torch.equal(h, ro["correct"].view(-1) > 0)  # only right redraws are kept
    assert not h.view(4, 4)[:, 2:].any()  # and only among each group's first H samples
    from data.tokenizer import decode
    assert ro["texts"] == [decode(t) for t in ro["tokens"]]  # the texts are the kept samples' own
    for i in range(16):  # a kept redraw carries its hints; every other sample is the plain draw's
        assert ((ro["fwd"][i] == GIVEN).any()) == bool(h[i])
        if not h[i]:
            assert torch.equal(ro["tokens"][i], plain["tokens"][i]) and torch.equal(ro["logp"][i], plain["logp"][i])
    a = rl_args(n_prompts=4, k=4, lr=1e-3, hint_samples=2)
    m = copy.deepcopy(tiny_model)
    log = rl_step(m, torch.optim.AdamW(m.parameters(), lr=a.lr), level1_rows, a, gen())
    assert log["kept"] > 0 and log["rows"] > 0 and log["clip"] == 0.0 and abs(log["kl"]) < 1e-9
    a.hint_samples = 0  # without hints the same step has nothing to learn from
    log = rl_step(copy.deepcopy(tiny_model), torch.optim.AdamW(m.parameters(), lr=a.lr), level1_rows, a, gen())
    assert log["kept"] == 0 and log["rows"] == 0


def test_cli_refuses_more_hint_samples_than_k(tmp_path):
    from test_curriculum import curriculum
    line = one_error_line(curriculum("--hint-samples", "9", "--k", "8", "--out", str(tmp_path / "h")))
    assert "--hint-samples" in line and not (tmp_path / "h").exists()
