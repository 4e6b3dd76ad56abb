"""The math task: seeded arithmetic with a worked answer, in GSM8K's JSONL format.

    python -m data.task --level 2 --out runs/data      # writes train.jsonl, test.jsonl

A problem is 2-5 small integers joined by + - * (parentheses at higher levels); the
answer is one operation per step, then `#### N`, exactly like GSM8K's answer field:

    question: 23+4*6-9
    answer:   4*6=24 23+24=47 47-9=38 #### 38

Nothing is downloaded (docs/design.md §2): the generator is deterministic given its seed, and
the test split is drawn from its own seed stream and removed from the training pool, so
the two never share a question. A user's own GSM8K-style JSONL goes through the same
`read_jsonl`, and a malformed line fails with the file, the line number and the reason.
Grading (`extract_answer`, `is_correct`) lives here too: the task owns the `#### N` format.
Simplified from the paper: generated arithmetic in GSM8K's format stands in for real math
data (which goes through the same reader), so a small CPU model has a task it can learn.
"""
import argparse
import json
import os
import random
import re
from dataclasses import dataclass

import torch

from data.tokenizer import EOS_ID, PAD_ID, get_tokenizer


class DataError(ValueError):
    """Bad input data; the message is one line that names the file and line."""


@dataclass(frozen=True)
class Level:
    min_terms: int
    max_terms: int
    max_operand: int   # operands are drawn from 1..max_operand
    max_mult: int      # the right operand of '*' is drawn from 2..max_mult
    p_paren: float     # chance of one parenthesised pair
    p_words: float     # chance of a one-line word template around the expression


# Level 2 is the default (docs/design.md §2 has the numbers): harder levels leave a
# small CPU model with almost no reward to learn from, while level 2 is learnable on
# a CPU budget and still not solved by AR + SFT alone, so RL has something to gain.
LEVELS = {
    1: Level(2, 2, 10, 5, 0.0, 0.0),
    2: Level(2, 3, 20, 9, 0.0, 0.0),
    3: Level(3, 4, 30, 9, 0.3, 0.0),
    4: Level(3, 5, 50, 12, 0.5, 0.5),
}
WORD_TEMPLATES = ["What is {}?", "Compute {}.", "Find {}.", "Work out {}."]


def _solve(tokens):
    """Evaluate a flat expression [n, op, n, op, ...] with '(' ')' marks, recording steps.

    The order is the one a person writes down: innermost parentheses first, then every
    '*' left to right, then '+'/'-' left to right, one operation per step."""
    steps = []

    def flat(seq):
        seq = list(seq)
        for ops in ("*", "+-"):
            i = 1
            while i < len(seq):
                if seq[i] in ops:
                    a, op, b = seq[i - 1], seq[i], seq[i + 1]
                    r = a * b if op == "*" else a + b if op == "+" else a - b
                    steps.append(f"{a}{op}{b}={r}")
                    seq[i - 1:i + 2] = [r]
                else:
                    i += 2
        return seq[0]

    while "(" in tokens:
        lo = tokens.index("(")
        hi = tokens.index(")", lo)
        tokens = tokens[:lo] + [flat(tokens[lo + 1:hi])] + tokens[hi + 1:]
    return flat(tokens), steps


def make_problem(rng: random.Random, level: Level) -> dict:
    n = rng.randint(level.min_terms, level.max_terms)
    toks = [rng.randint(1, level.max_operand)]
    for _ in range(n - 1):
        op = rng.choice("+-*")
        toks += [op, rng.randint(2, level.max_mult) if op == "*" else rng.randint(1, level.max_operand)]
    if n >= 3 and rng.random() < level.p_paren:
        i = 2 * rng.randrange(n - 1)  # wrap terms i and i+2 (indices into toks)
        toks = toks[:i] + ["("] + toks[i:i + 3] + [")"] + toks[i + 3:]
    text = "".join(str(t) for t in toks)
    if rng.random() < level.p_words:
        text = rng.choice(WORD_TEMPLATES).format(text)
    value, steps = _solve(toks)
    return {"question": text, "answer": " ".join(steps) + f" #### {value}"}


def make_splits(level: int = 2, n_train: int = 20000, n_test: int = 300, seed: int = 0):
    """Fixed, disjoint train/test splits. The test set comes from seed stream seed+1;
    training draws from stream seed and skips any question the test set holds."""
    lv = LEVELS[level]
    test_rng, train_rng = random.Random(seed + 1), random.Random(seed)
    test, seen = [], set()
    while len(test) < n_test:
        p = make_problem(test_rng, lv)
        if p["question"] not in seen:
            seen.add(p["question"])
            test.append(p)
    # Training problems may repeat each other (small levels have few distinct ones),
    # but never a test question.
    train = []
    while len(train) < n_train:
        p = make_problem(train_rng, lv)
        if p["question"] not in seen:
            train.append(p)
    return train, test


def load_task(task: dict):
    """(train rows, test rows) for a task description: either the generated task
    {"level", "n_train", "n_test", "seed"} or user files {"train_jsonl", "test_jsonl"}.
    The description is stored in every checkpoint so evaluation finds the same split."""
    if task.get("train_jsonl") or task.get("test_jsonl"):
        if not (task.get("train_jsonl") and task.get("test_jsonl")):
            raise DataError("give both --train-jsonl and --test-jsonl")
        return read_jsonl(task["train_jsonl"]), read_jsonl(task["test_jsonl"])
    return make_splits(task["level"], task["n_train"], task["n_test"], task["seed"])


def add_task_args(ap):
    """The task flags every script shares."""
    ap.add_argument("--level", type=int, default=2, choices=sorted(LEVELS), help="difficulty of the generated task")
    ap.add_argument("--n-train", type=int, default=20000, help="generated training problems")
    ap.add_argument("--n-test", type=int, default=300, help="generated test problems (never in train)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the generated task")
    ap.add_argument("--train-jsonl", default=None, help="your own GSM8K-style training file (with --test-jsonl)")
    ap.add_argument("--test-jsonl", default=None, help="your own GSM8K-style test file (with --train-jsonl)")


def task_from_args(a) -> dict:
    return dict(level=a.level, n_train=a.n_train, n_test=a.n_test, seed=a.data_seed,
                train_jsonl=a.train_jsonl, test_jsonl=a.test_jsonl)


def write_jsonl(path: str, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str) -> list:
    """Read GSM8K-style rows; every line must be an object with string 'question' and
    'answer' fields, the answer holding '#### <number>'."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(r, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(r).__name__}")
            for key in ("question", "answer"):
                if not isinstance(r.get(key), str):
                    raise DataError(f"{path}:{lineno}: missing string field '{key}'")
            if "####" not in r["answer"]:
                raise DataError(f"{path}:{lineno}: answer has no '#### <number>' final answer")
            rows.append({"question": r["question"], "answer": r["answer"]})
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


# ----------------------------------------------------------------------------- grading
# The task defines the answer format ('#### N'), so it also defines what counts as right:
# the evaluation script and TraceRL's reward both grade with these two functions.
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str):
    """The final answer as a string of digits (commas removed), or None. GSM8K's rule: the
    number after the last '####'; a text without one falls back to its last number."""
    if "####" in text:
        m = _NUM.search(text.rsplit("####", 1)[1])
        if m:
            return m.group().replace(",", "")
    nums = _NUM.findall(text)
    return nums[-1].replace(",", "") if nums else None


def is_correct(response: str, gold_answer: str, finished: bool = True) -> bool:
    """Exact numeric match of the two final answers. An answer that never produced <|eos|>
    (finished = False) is wrong whatever it says: it was cut off, not concluded."""
    if not finished:
        return False
    got, want = extract_answer(response), extract_answer(gold_answer)
    if got is None or want is None:
        return False
    try:
        return float(got) == float(want)
    except ValueError:
        return False


def prompt_text(question: str) -> str:
    return question + "\n"


def encode_prompts(questions, prompt_len: int) -> torch.Tensor:
    """Left-pad every prompt to prompt_len so all answers start at one position and the
    block grid lines up across the batch (docs/design.md §2)."""
    tok = get_tokenizer()
    out = torch.full((len(questions), prompt_len), PAD_ID, dtype=torch.long)
    for i, q in enumerate(questions):
        ids = tok.encode_ordinary(prompt_text(q))
        if len(ids) > prompt_len:
            raise DataError(f"prompt of {len(ids)} tokens does not fit the {prompt_len}-token "
                            f"prompt area: {q[:40]!r}... (use a larger --prompt-len)")
        out[i, prompt_len - len(ids):] = torch.tensor(ids)
    return out


def encode_answers(answers, answer_len: int):
    """Answer bytes, one <|eos|>, then <|eos|> fill to answer_len (the MDM learns to fill
    the tail of its last block with eos). Returns (ids [N, A], lengths incl. the eos)."""
    tok = get_tokenizer()
    out = torch.full((len(answers), answer_len), EOS_ID, dtype=torch.long)
    lens = torch.zeros(len(answers), dtype=torch.long)
    for i, a in enumerate(answers):
        ids = tok.encode_ordinary(a)
        if len(ids) + 1 > answer_len:
            raise DataError(f"answer of {len(ids)} tokens + eos does not fit the {answer_len}-token "
                            f"answer area: {a[:40]!r}... (use a larger --max-seq-len)")
        out[i, :len(ids)] = torch.tensor(ids)
        lens[i] = len(ids) + 1
    return out, lens


def task_tensors(rows, prompt_len: int, answer_len: int):
    """(prompts [N, P], answers [N, A], answer lengths [N]) for a list of rows."""
    answers, lens = encode_answers([r["answer"] for r in rows], answer_len)
    return encode_prompts([r["question"] for r in rows], prompt_len), answers, lens


def check_fit(rows, prompt_len: int, answer_len: int, what: str = "data", fixed: bool = False):
    """Fail with one line, before any training, if some question does not fit the prompt
    area or some answer + eos does not fit the answer area; the line names the flag to
    raise and the value that fits. fixed=True: the areas come from a checkpoint, so the
    flag applies to pre-training it again."""
    tok = get_tokenizer()
    again = "; the checkpoint's areas are fixed, so pre-train again with it" if fixed else ""
    q = max(len(tok.encode_ordinary(prompt_text(r["question"]))) for r in rows)
    if q > prompt_len:
        raise DataError(f"the {what} has a question of {q} tokens but the prompt area holds "
                        f"{prompt_len} (raise --prompt-len to at least {q}{again})")
    ans = max(len(tok.encode_ordinary(r["answer"])) + 1 for r in rows)
    if ans > answer_len:
        raise DataError(f"the {what} has an answer of {ans} tokens with its eos but the answer area "
                        f"holds {answer_len} (raise --max-seq-len to at least {prompt_len + ans}{again})")


def main():
    ap = argparse.ArgumentParser(description="Write the generated math task as GSM8K-style JSONL.")
    ap.add_argument("--level", type=int, default=2, choices=sorted(LEVELS), help="difficulty level")
    ap.add_argument("--n-train", type=int, default=20000, help="training problems")
    ap.add_argument("--n-test", type=int, default=300, help="test problems (disjoint from train)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--out", default="runs/data", help="output directory")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train, test = make_splits(a.level, a.n_train, a.n_test, a.seed)
    write_jsonl(os.path.join(a.out, "train.jsonl"), train)
    write_jsonl(os.path.join(a.out, "test.jsonl"), test)
    print(f"wrote {len(train)} train / {len(test)} test problems (level {a.level}) to {a.out}")
    print("example:", json.dumps(test[0]))


if __name__ == "__main__":
    main()
