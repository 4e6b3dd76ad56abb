"""The tstar tokenizer: a byte-level `tiktoken.Encoding` built in code.

    from data.tokenizer import get_tokenizer
    tok = get_tokenizer(); ids = tok.encode_ordinary("2+3*4")

Every byte is one token (ranks 0..255, no merges file, nothing fetched from the
network), plus three special tokens: <|eos|> ends an answer (and fills the rest of the
answer area), <|mask|> is the diffusion mask, <|pad|> left-pads prompts to a fixed
width. Simplified from the paper: SDAR uses Qwen3's BPE; a byte vocabulary is enough
for generated arithmetic and still reads any UTF-8 text (real GSM8K JSONL included),
only with longer sequences.
"""
import functools

import tiktoken

EOS, MASK, PAD = "<|eos|>", "<|mask|>", "<|pad|>"
EOS_ID, MASK_ID, PAD_ID = 256, 257, 258
VOCAB_SIZE = 259


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    # With single-byte ranks and no merges, BPE is the identity on bytes; the split
    # pattern only decides how text is chunked before that, so any pattern is exact.
    return tiktoken.Encoding(
        name="tstar-bytes",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={EOS: EOS_ID, MASK: MASK_ID, PAD: PAD_ID},
    )


def decode(ids) -> str:
    """Decode answer-area ids: stop at the first <|eos|>, show masks as '_', drop pads."""
    out = []
    for i in (ids.tolist() if hasattr(ids, "tolist") else ids):  # one conversion, not one per token
        if i == EOS_ID:
            break
        if i == MASK_ID:
            out.append(ord("_"))
        elif i < 256:
            out.append(i)
    return bytes(out).decode("utf-8", errors="replace")
