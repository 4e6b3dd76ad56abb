"""The task, the tokenizer, JSONL reading, grading, and checkpoint errors."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from data.task import (LEVELS, WORD_TEMPLATES, DataError, encode_answers, encode_prompts,
                       make_splits, read_jsonl)
from data.tokenizer import EOS_ID, MASK_ID, PAD_ID, get_tokenizer
from data.task import extract_answer, is_correct
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- tokenizer

def test_special_token_ids():
    tok = get_tokenizer()
    assert (EOS_ID, MASK_ID, PAD_ID) == (256, 257, 258)
    assert tok.encode("<|eos|><|mask|><|pad|>", allowed_special="all") == [256, 257, 258]
    assert tok.n_vocab == 259
    # encode_ordinary treats the special strings as plain bytes
    assert tok.encode_ordinary("<|eos|>") == list(b"<|eos|>")


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_tokenizer_round_trips_every_problem(level):
    tok = get_tokenizer()
    train, test = make_splits(level, 300, 100, seed=level)
    for r in train + test:
        for text in (r["question"], r["answer"]):
            ids = tok.encode_ordinary(text)
            assert ids == list(text.encode("utf-8"))  # byte level: one token per byte
            assert max(ids) < 256  # no special token from ordinary text
            assert tok.decode_bytes(ids) == text.encode("utf-8")
            assert tok.decode(ids) == text


def test_tokenizer_round_trips_unicode_and_whitespace():
    tok = get_tokenizer()
    text = "Tom hat 3 Äpfel — und 4×5 Birnen.\n\t  ####  12 🍐"
    ids = tok.encode_ordinary(text)
    assert max(ids) < 256 and tok.decode_bytes(ids) == text.encode("utf-8")


# ----------------------------------------------------------------------------- task

def test_make_splits_deterministic_and_disjoint():
    a_train, a_test = make_splits(2, 2000, 300, seed=5)
    b_train, b_test = make_splits(2, 2000, 300, seed=5)
    assert a_train == b_train and a_test == b_test
    c_train, c_test = make_splits(2, 2000, 300, seed=6)
    assert c_test != a_test
    assert len(a_train) == 2000 and len(a_test) == 300
    test_q = {r["question"] for r in a_test}
    assert len(test_q) == 300  # test questions are unique
    assert not test_q & {r["question"] for r in a_train}


def test_level1_small_space_still_disjoint():
    # level 1 has only a few hundred distinct questions: training must still avoid the test set
    train, test = make_splits(1, 3000, 100, seed=0)
    assert not {r["question"] for r in test} & {r["question"] for r in train}


_TEMPLATE_RES = [re.compile("^" + re.escape(t).replace(r"\{\}", "(.*)") + "$") for t in WORD_TEMPLATES]


def _expression(question: str) -> str:
    for rx in _TEMPLATE_RES:
        m = rx.match(question)
        if m:
            return m.group(1)
    return question


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_answer_equals_python_eval_of_question(level):
    train, test = make_splits(level, 300, 100, seed=level)
    n_words = 0
    for r in train + test:
        expr = _expression(r["question"])
        if level < 4:
            assert expr == r["question"]  # no word templates below level 4
        n_words += expr != r["question"]
        assert re.fullmatch(r"[0-9+\-*()]+", expr), expr
        steps, final = r["answer"].split(" #### ")
        assert int(final) == eval(expr)
        # every step is one correct operation, and the last step's result is the answer
        for s in steps.split(" "):
            m = re.fullmatch(r"(-?\d+)([+\-*])(-?\d+)=(-?\d+)", s)
            assert m, s
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert c == int(final)
    if level == 4:
        assert n_words > 50  # p_words = 0.5: the template path was exercised


# ----------------------------------------------------------------------------- JSONL

GOOD = json.dumps({"question": "1+2", "answer": "1+2=3 #### 3"})


@pytest.mark.parametrize("bad,reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"answer": "#### 3"}), "'question'"),
    (json.dumps({"question": "1+2", "answer": 3}), "'answer'"),
    (json.dumps({"question": "1+2", "answer": "it is 3"}), "####"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, bad, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n\n" + bad + "\n" + GOOD + "\n")  # bad row on line 3 (after a blank)
    with pytest.raises(DataError) as e:
        read_jsonl(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: ") and reason in msg and "\n" not in msg


def test_read_jsonl_good_missing_and_empty(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(GOOD + "\n" + json.dumps({"question": "q", "answer": "a #### 1", "x": 1}) + "\n")
    assert read_jsonl(str(path)) == [{"question": "1+2", "answer": "1+2=3 #### 3"},
                                     {"question": "q", "answer": "a #### 1"}]
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        read_jsonl(str(tmp_path / "empty.jsonl"))


def test_encode_prompts_left_pads_and_rejects_long_prompts():
    p = encode_prompts(["1+2", "10*3"], 8)
    assert p.tolist() == [[PAD_ID] * 4 + list(b"1+2\n"), [PAD_ID] * 3 + list(b"10*3\n")]
    encode_prompts(["1234567"], 8)  # 7 bytes + newline: exactly fits
    with pytest.raises(DataError, match="9 tokens does not fit the 8-token"):
        encode_prompts(["1+2", "12345678"], 8)


def test_encode_answers_eos_fill_and_overflow():
    ids, lens = encode_answers(["1+2=3 #### 3"], 16)
    assert ids[0, :12].tolist() == list(b"1+2=3 #### 3") and (ids[0, 12:] == EOS_ID).all()
    assert lens.tolist() == [13]
    with pytest.raises(DataError):
        encode_answers(["1+2=3 #### 3"], 12)  # no room for the eos


# ----------------------------------------------------------------------------- grading

@pytest.mark.parametrize("text,want", [
    ("6*7=42 #### 42", "42"),
    ("3-10=-7 #### -7", "-7"),
    ("#### 1,234", "1234"),
    ("1 #### 2 #### 3", "3"),          # the last ####
    ("#### x, then 5", "5"),            # the number after the last ####
    ("2+3=5 and so 9", "9"),            # no ####: the last number
    ("#### ", None),
    ("no number here", None),
    ("", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_is_correct():
    assert is_correct("6*7=42 #### 42", "6*7=42 #### 42")
    assert is_correct("#### 1,234", "x #### 1234")
    assert not is_correct("#### 41", "#### 42")
    assert not is_correct("6*7=42 #### 42", "#### 42", finished=False)
    assert not is_correct("nothing", "#### 42")
    assert not is_correct("#### -42", "#### 42")


# ----------------------------------------------------------------------------- checkpoints

CFG = GPTConfig(n_layer=1, n_head=2, n_embd=16, max_seq_len=16, prompt_len=4)


def _one_line(e):
    return "\n" not in str(e.value) and str(e.value)


def test_save_checkpoint_atomic_with_sidecar(tmp_path):
    torch.manual_seed(0)
    m = GPT(CFG)
    path = str(tmp_path / "sub" / "m.pt")
    save_checkpoint(path, m, {"stage": "ar", "steps": 3})
    assert sorted(os.listdir(tmp_path / "sub")) == ["m.pt", "m.pt.json"]  # no .tmp left
    side = json.load(open(path + ".json"))
    assert side["config"] == {"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 259,
                              "max_seq_len": 16, "prompt_len": 4, "dropout": 0.0,
                              "mask_window": 3}
    assert side["stage"] == "ar" and side["steps"] == 3
    m2, meta = load_checkpoint(path, expect=CFG)
    assert meta == side
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_checkpoint(str(tmp_path / "missing.pt"))
    assert _one_line(e)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="not a tstar checkpoint") as e:
        load_checkpoint(str(garbage))
    assert _one_line(e)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)  # a valid torch file, not ours
    with pytest.raises(CheckpointError, match="not a tstar checkpoint") as e:
        load_checkpoint(str(foreign))
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, GPT(CFG), {})
    other = GPTConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=16, prompt_len=4)
    with pytest.raises(CheckpointError, match="different config") as e:
        load_checkpoint(path, expect=other)
    assert _one_line(e) and "n_embd" in str(e.value) and "n_layer" not in str(e.value)


def test_eval_math_cli_garbage_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage" * 100)
    for ckpt in (garbage, tmp_path / "missing.pt"):
        p = subprocess.run([sys.executable, "eval_math.py", "--ckpt", str(ckpt), "--device", "cpu"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and str(ckpt) in lines[0], p.stderr
        assert "Traceback" not in p.stderr
