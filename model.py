"""A small GPT that is both an AR model and a block-diffusion MDM, with a KV cache.

    python model.py          # prints the default config and its parameter count

One transformer, three attention patterns, all built by `attention_mask` from a
per-position block id (docs/design.md §3):
  * causal: AR pre-training (train.py --stage ar).
  * block-causal: inference. A token sees every earlier block and its own block.
  * training layout [prompt | clean answer | noisy answer]: the noisy copy reuses the
    clean position ids; noisy block b sees the prompt, clean blocks < b and noisy block b,
    and clean tokens never see noisy ones. One forward trains every block with exactly
    the context the sampler has at inference (SDAR / BD3-LM's "vectorised" layout).

Every path runs the same transformer, `GPT.hidden` (tokens, positions, mask, optionally
a KV cache to attend to): `forward` (training and TraceRL's recomputation), `decode_step`
(the block sampler), `decode_ar` (AR decoding), sample.generate_fast's compiled step and the value
model only build its inputs and read its output.

Prediction convention (SDAR's): the output at a masked position predicts the token at
that position, no shift; the AR weights are only the initialisation.

The prompt sits in a fixed, left-padded area of `prompt_len` tokens and is causal within
itself in every pattern, so prefill is plain AR prefill. Simplified from the paper:
learned absolute positions instead of Qwen3's RoPE (docs/design.md §10: RoPE measured no
better here), LayerNorm, GELU MLP, no dropout by default.
"""
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.tokenizer import MASK_ID, PAD_ID, VOCAB_SIZE


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = VOCAB_SIZE
    max_seq_len: int = 48      # prompt area + answer area
    prompt_len: int = 16       # fixed, left-padded prompt area
    dropout: float = 0.0
    # Our addition (the mask window, docs/design.md §3): a noisy query sees a <|mask|> key
    # only within this many positions of itself; committed tokens stay visible at any distance.
    # 3 = B-1 for the B=4 base, so the base is trained exactly as without it; at B=16 it
    # keeps a query from attending to up to 15 masks, which it never saw in B=4 training.
    # Negative: no window (SDAR's fully bidirectional noisy block).
    mask_window: int = 3

    @property
    def answer_len(self) -> int:
        return self.max_seq_len - self.prompt_len


# ----------------------------------------------------------------------------- masks

def attention_mask(q_bid, q_noisy_copy, q_pos, k_bid, k_noisy_copy, k_pos, q_copy=None, k_copy=None):
    """Boolean [..., Tq, Tk] mask, True where query may attend key (leading batch dims allowed).

    bid is the diffusion block index of a position (-1 for the prompt); noisy_copy marks
    the positions of a noisy block (the training layout's noisy copy, or the block the
    sampler is denoising). Rules: the prompt is causal; a clean token sees the prompt and
    clean blocks <= its own; a noisy-copy token sees the prompt, clean blocks < its own
    and the noisy-copy tokens of its own block. Everything else is hidden. q_copy/k_copy
    (optional): which copy of its block a noisy token belongs to, when one sequence holds
    several noisy copies of a block (TraceRL's packed trace rows); a noisy token then sees
    only its own copy."""
    qb, kb = q_bid[..., :, None], k_bid[..., None, :]
    qc, kc = q_noisy_copy[..., :, None], k_noisy_copy[..., None, :]
    prompt = (qb < 0) & (kb < 0) & (k_pos[..., None, :] <= q_pos[..., :, None])
    clean = ~qc & ~kc & (qb >= 0) & (kb <= qb)
    own = kb == qb if q_copy is None else (kb == qb) & (k_copy[..., None, :] == q_copy[..., :, None])
    copy = qc & ((~kc & (kb < qb)) | (kc & own))
    return prompt | clean | copy


def hide_far_masks(mask, q_pos, k_pos, k_tokens, window: int):
    """The mask window: mask [Tq, Tk] (shared by the batch) or [N, Tq, Tk], positions [T] or
    [N, T] -> [N, 1, Tq, Tk], with key j hidden from query i wherever token j is <|mask|>
    and |pos_i - pos_j| > window.

    Only the noisy block ever holds <|mask|> tokens, and only queries of that same block
    can see it (attention_mask), so this one rule, keyed on the tokens alone, reads the
    same in the training layout, the cached sampler and TraceRL's rows: a row's mask
    follows its own masked set, which is what keeps pi_old equal to the recomputation.
    A query always keeps itself (distance 0) and the prompt, so no row is all False."""
    if window < 0:
        return mask if mask.dim() == 2 else mask[:, None]  # a per-row mask gets SDPA's head dim
    far = (q_pos[..., :, None] - k_pos[..., None, :]).abs() > window     # [Tq, Tk] or [N, Tq, Tk]
    return (mask & ~(far & (k_tokens == MASK_ID)[:, None, :]))[:, None]


def answer_block_ids(answer_len: int, block_size: int, shift: int = 0, device=None):
    """Block id of every answer position. shift in [0, block_size) moves the grid so the
    first block holds block_size - shift positions (random block offsets in SFT)."""
    return (torch.arange(answer_len, device=device) + shift) // block_size


@functools.lru_cache(maxsize=64)
def training_layout(prompt_len: int, answer_len: int, block_size: int, shift: int = 0,
                    device: str = "cpu"):
    """(pos, mask) for the [prompt | clean | noisy] training sequence of length P + 2A."""
    P, A = prompt_len, answer_len
    ab = answer_block_ids(A, block_size, shift, device)
    bid = torch.cat([torch.full((P,), -1, device=device), ab, ab])
    noisy_copy = torch.cat([torch.zeros(P + A, dtype=torch.bool, device=device),
                            torch.ones(A, dtype=torch.bool, device=device)])
    pos = torch.cat([torch.arange(P + A, device=device), torch.arange(P, P + A, device=device)])
    return pos, attention_mask(bid, noisy_copy, pos, bid, noisy_copy, pos)


def training_input(prompts, clean, noisy_mask, block_size: int, shift: int = 0):
    """The one builder of the [prompt | clean | noisy] training input: (idx, pos, mask) for
    prompts [N, P], the clean answer [N, A] and noisy_mask [N, A] (True = <|mask|> in the
    noisy copy). Block SFT, TraceRL's rows, the value model and the per-position table all
    build their input here, so they all see the sampler's context the same way."""
    P, A = prompts.shape[1], clean.shape[1]
    pos, mask = training_layout(P, A, block_size, shift, str(clean.device))
    return torch.cat([prompts, clean, clean.masked_fill(noisy_mask, MASK_ID)], 1), pos, mask


def cached_step_layout(cache_len: int, n_pending: int, pending_bid: int, n_block: int, block_bid: int,
                       n_slots: int, device="cpu"):
    """(pos [T], mask [T, n_slots + T]) of one cached denoising step: T = n_pending clean
    tokens of block pending_bid (-1: the prompt; the tokens not cached yet), then the
    n_block tokens of the noisy block block_bid, at positions cache_len onwards, against
    n_slots cache slots (the first cache_len written) and themselves.

    The cache holds the prompt and finished blocks only, all earlier than any query's
    block, so every query sees every written slot: the cache needs no block ids, and the
    slots not written yet are hidden (the compiled sampler attends to all max_seq_len
    slots of the preallocated cache to keep its shapes static)."""
    T = n_pending + n_block
    pos = torch.arange(cache_len, cache_len + T, device=device)
    bid = torch.cat([torch.full((n_pending,), pending_bid, device=device),
                     torch.full((n_block,), block_bid, device=device)])
    noisy_copy = torch.arange(T, device=device) >= n_pending
    own = attention_mask(bid, noisy_copy, pos, bid, noisy_copy, pos)
    cached = (torch.arange(n_slots, device=device) < cache_len).expand(T, n_slots)
    return pos, torch.cat([cached, own], 1)


# ----------------------------------------------------------------------------- KV cache

class KVCache:
    """Keys and values of the prompt and every finished block: O(L) per sequence,
    preallocated to max_seq_len. All rows share one length, since prompts are padded to
    one width and the batch decodes block by block in lockstep. Slot s holds position s."""

    def __init__(self, cfg: GPTConfig, batch: int, device, dtype=torch.float32):
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.max_seq_len, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.len = 0

    def past(self, rows=None):
        """The written part, as GPT.hidden's past_k, past_v (of the batch rows `rows` only, if given)."""
        k, v = self.k[:, :, :, :self.len], self.v[:, :, :, :self.len]
        return (k, v) if rows is None else (k[:, rows], v[:, rows])

    def append(self, keys, values, n: int):
        """Write the first n positions of a forward's per-layer keys/values (GPT.hidden's
        lists of [N, H, T, hd]) after the written part."""
        for i, (k, v) in enumerate(zip(keys, values)):
            self.k[i, :, :, self.len:self.len + n] = k[:, :, :n]
            self.v[i, :, :, self.len:self.len + n] = v[:, :, :n]
        self.len += n

    def keep(self, rows: torch.Tensor):
        """Drop finished sequences (rows = indices to keep)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


# ----------------------------------------------------------------------------- model

class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x, mask, past_k=None, past_v=None):
        """mask: bool [..., T, S + T], or None for causal attention without a cache (AR
        training), where SDPA's fused causal kernel needs no mask at all."""
        N, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(N, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        kk = k if past_k is None else torch.cat([past_k.to(k.dtype), k], dim=2)
        vv = v if past_v is None else torch.cat([past_v.to(v.dtype), v], dim=2)
        y = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(N, T, C)), k, v


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd))

    def forward(self, x, mask, past_k=None, past_v=None):
        a, k, v = self.attn(self.ln1(x), mask, past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        self.apply(self._init)
        for n, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if n.endswith("proj.weight") or n.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def head(self, x):
        """Final norm + tied LM head. <|mask|> and <|pad|> are never outputs: if the sampler
        could draw <|mask|>, a position would stay masked forever."""
        logits = self.lm_head(self.ln_f(x))
        logits[..., MASK_ID] = -math.inf
        logits[..., PAD_ID] = -math.inf
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def hidden(self, idx, pos, mask, past_k=None, past_v=None):
        """The transformer: the one forward that training, both samplers and the value
        model all run, so that a token's log-prob is the same number wherever it is
        computed (TraceRL's pi_old equals its recomputation only while they agree).

        idx [N, T] at positions pos [T] (or [N, T] without a cache: each row its own positions,
        as TraceRL's packed rows have). past_k, past_v: None, or the keys/values
        [n_layer, N, H, S, hd] of S earlier positions 0..S-1 (a KV cache), all of clean
        tokens; the queries attend to those and to idx. mask [T, S + T] (or [N, T, S + T])
        bool: which keys each query sees, past first; the mask window is applied on top.
        mask None means causal (AR), with no window: AR inputs hold no <|mask|> for it to
        hide, so no per-row mask is built, and without a cache SDPA runs its fused causal
        kernel (is_causal).
        Returns the residual stream [N, T, C] (before the final norm) and the per-layer
        keys and values of idx, lists of [N, H, T, hd], for a caller that caches them."""
        N, S = idx.shape[0], 0 if past_k is None else past_k.shape[3]
        k_pos = pos if S == 0 else torch.cat([torch.arange(S, device=idx.device), pos])  # slot s holds position s
        if mask is None:
            if S > 0:  # causal against the cache; without one, SDPA's is_causal (mask stays None)
                mask = k_pos[None, :] <= pos[:, None]
        else:  # the cached keys are clean, never <|mask|>: the window only looks at idx
            k_tok = torch.cat([torch.zeros(N, S, dtype=idx.dtype, device=idx.device), idx], 1)
            mask = hide_far_masks(mask, pos, k_pos, k_tok, self.cfg.mask_window)
        x = self.wte(idx) + self.wpe(pos)
        keys, values = [], []
        for i, blk in enumerate(self.blocks):
            past = (None, None) if past_k is None else (past_k[i], past_v[i])
            x, k, v = blk(x, mask, *past)
            keys.append(k)
            values.append(v)
        return x, keys, values

    def forward(self, idx, targets=None, pos=None, mask=None):
        """Full-sequence forward. idx [N, T]; pos [T] position ids (default 0..T-1);
        mask [T, T] bool (default causal). Returns (logits, loss); loss is the mean CE
        over targets != -1 (None without targets)."""
        if pos is None:
            pos = torch.arange(idx.shape[1], device=idx.device)
        x, _, _ = self.hidden(idx, pos, mask)
        logits = self.head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1),
                                   ignore_index=-1)
        return logits, loss

    def decode_step(self, cache: KVCache, pending, pending_bid: int, block, block_bid: int, rows=None):
        """One cached denoising step. `pending` [N, Tp] are clean tokens not yet in the
        cache (the prompt, block -1, or the block just finished, or nothing); their
        keys/values are written to the cache. `block` [N, Tb] is the noisy block being
        denoised; it attends to the cache, the pending tokens and itself, and is not
        cached. Fusing the KV write of a finished block into the next block's first
        denoising step means every forward counted in TPF also denoises.
        rows: None, or the cache rows the block's rows are (a step of only the rows that
        still have masks; it writes nothing, so it takes no pending tokens).
        Returns the block's logits [N, Tb, V]."""
        L, Tp = cache.len, pending.shape[1]
        assert rows is None or Tp == 0, "a step of some rows cannot write pending tokens to the cache"
        pos, mask = cached_step_layout(L, Tp, pending_bid, block.shape[1], block_bid, L, pending.device)
        x, keys, values = self.hidden(torch.cat([pending, block], 1), pos, mask, *cache.past(rows))
        if Tp:
            cache.append(keys, values, Tp)
        return self.head(x[:, Tp:])

    def decode_ar(self, cache: KVCache, tokens):
        """AR decoding with the cache: tokens [N, T] (the prompt, then each generated token)
        attend causally to the cache and each other, and are appended to it.
        Returns their logits [N, T, V]."""
        L = cache.len
        pos = torch.arange(L, L + tokens.shape[1], device=tokens.device)
        x, keys, values = self.hidden(tokens, pos, None, *cache.past())
        cache.append(keys, values, tokens.shape[1])
        return self.head(x)


# ----------------------------------------------------------------------------- checkpoints

class CheckpointError(RuntimeError):
    """A missing, unreadable or mismatched checkpoint; the message is one line."""


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes: what a checkpoint records of its parent (parent_sha256), so
    a resumed run can tell a child of the current parent from one of weights since replaced."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def save_checkpoint(path: str, model: GPT, meta: dict) -> None:
    """Atomic save: write a temp file, then os.replace, so a killed run never leaves a
    half-written checkpoint. The config travels inside the file and in a JSON sidecar
    (path + '.json') that people and the resume logic can read without torch."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = dict(meta, config=asdict(model.cfg))
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)
    write_json(path + ".json", meta, indent=1)


def write_json(path: str, obj, indent=None) -> None:
    """Atomic JSON write (temp file, then os.replace): checkpoint sidecars and a run folder's
    settings.json, wall.json and eval.json are never left half-written by a killed run."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, device="cpu", expect: GPTConfig = None):
    """Returns (model, meta). Fails with one line if the file is missing or broken, or if
    `expect` is given and the stored config differs from it."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
        cfg = GPTConfig(**ck["meta"]["config"])
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise CheckpointError(f"checkpoint {path} is not a tstar checkpoint ({type(e).__name__})") from None
    if expect is not None and asdict(cfg) != asdict(expect):
        diff = {name: (v, asdict(expect)[name]) for name, v in asdict(cfg).items() if asdict(expect)[name] != v}
        raise CheckpointError(f"checkpoint {path} was made with a different config "
                              f"(stored vs wanted: {diff}); use another --out or matching flags")
    model = GPT(cfg).to(device)
    model.load_state_dict(ck["model"])
    return model, ck["meta"]


def add_model_args(ap):
    """The model-shape flags train.py and curriculum.py share (defaults: GPTConfig's)."""
    d = GPTConfig()
    ap.add_argument("--n-layer", type=int, default=d.n_layer, help="transformer layers")
    ap.add_argument("--n-head", type=int, default=d.n_head, help="attention heads")
    ap.add_argument("--n-embd", type=int, default=d.n_embd, help="model width")
    ap.add_argument("--max-seq-len", type=int, default=d.max_seq_len, help="prompt area + answer area, in tokens")
    ap.add_argument("--prompt-len", type=int, default=d.prompt_len, help="prompt area in tokens (left-padded)")
    ap.add_argument("--mask-window", type=int, default=None,
                    help="a noisy query sees <|mask|> keys only within this distance (ours; default: "
                         "the first block size - 1, so the base is unchanged; -1 = off)")


def config_from_args(a) -> GPTConfig:
    return GPTConfig(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, max_seq_len=a.max_seq_len,
                     prompt_len=a.prompt_len, mask_window=a.mask_window)


def pick_device(name: str = "auto") -> str:
    """--device: 'auto' is cuda where a GPU is visible, else cpu; 'cpu', 'cuda' and 'cuda:N' are
    taken as given if this machine has them. Anything else is a one-line ValueError here, before
    any work, instead of a traceback from inside torch at the first tensor."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if name == "cpu":
        return name
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise ValueError(f"--device {name!r} is not one of cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"--device {name}: {why}; use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return name


if __name__ == "__main__":
    cfg = GPTConfig()
    print(asdict(cfg))
    print(f"parameters (excluding position embeddings): {GPT(cfg).num_params() / 1e6:.2f}M")
