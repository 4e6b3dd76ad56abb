"""The supervised losses against their definitions, and the loop's stop on a blow-up."""
import sys

import pytest
import torch

import train
from data.task import task_tensors
from train import CHECK_EVERY, ar_loss, ce_sum


def test_ar_loss_without_the_eos_fill_is_the_full_sequence_loss(tiny_model, level1_rows, tiny_cfg):
    """ar_loss cuts the eos fill after the batch's longest answer (causal attention: no earlier
    position sees it): the same summed CE and count as on the whole answer area."""
    P, A = tiny_cfg.prompt_len, tiny_cfg.answer_len
    prompts, answers, lens = task_tensors(level1_rows, P, A)
    assert int(lens.max()) < A  # there is a fill to cut
    seq = torch.cat([prompts, answers], 1)
    tgt = seq[:, 1:].clone()
    j = torch.arange(1, seq.shape[1])[None, :] - P
    tgt[(j < 0) | (j >= lens[:, None])] = -1
    want = ce_sum(tiny_model(seq[:, :-1])[0], tgt)
    got = ar_loss(tiny_model, prompts, answers, lens)
    assert int(got[1]) == int(want[1]) > 0
    assert torch.allclose(got[0], want[0], rtol=1e-10, atol=0)


C = CHECK_EVERY


@pytest.mark.parametrize("bad,found,error", [
    # inside a window: the next step's loss shows the nan weights, and the next check finds it
    (4, C + 1, "ar step 5: the loss is nan"),
    # the last update, one step after a check
    (C + 3, C + 3, f"ar steps {C + 2}-{C + 3}: the weights are no longer finite after the update"),
])
def test_a_blow_up_between_checks_still_stops_the_run_unsaved(monkeypatch, tmp_path, bad, found, error):
    """The loop reads the loss and the weights only every CHECK_EVERY steps and at the last: an
    update that makes the weights nan at any other step still ends the run in the one line,
    naming the step(s), and no checkpoint is written."""
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def poison(params, max_norm):  # the `bad`-th update gets nan gradients behind a finite norm
        params = list(params)
        calls.append(1)
        if len(calls) == bad:
            for p in params:
                p.grad.fill_(float("nan"))
            return torch.tensor(1.0)
        return real(params, max_norm)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poison)
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--stage", "ar", "--out", str(tmp_path), "--n-layer", "1", "--n-embd", "32",
        "--n-head", "2", "--max-seq-len", "32", "--prompt-len", "8", "--level", "1", "--n-train", "64",
        "--n-test", "8", "--ar-steps", str(C + 3), "--batch-size", "8", "--log-every", "1000",
        "--device", "cpu"])
    with pytest.raises(SystemExit) as e:
        train.main()
    assert e.value.code == f"error: {error}; stopping without saving: try a lower --ar-lr (now 0.001)"
    assert len(calls) == found  # the step of the check that found it
    assert not (tmp_path / "ar.pt").exists()
