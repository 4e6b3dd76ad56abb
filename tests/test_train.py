"""The supervised losses against their definitions."""
import torch

from data.task import task_tensors
from train import ar_loss, ce_sum


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
