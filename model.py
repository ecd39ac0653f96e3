"""Decoder-only transformer policy that generates the next item's semantic ID (SID).

A user's history is BOS followed by the SID tokens of its items, oldest first, and the model
predicts the next item's SID one level at a time. Every SID token log-probability is
level-restricted: the log-softmax at a position that predicts level l runs over that level's
code range only. Training, beam search and sampling all use this rule, so their numbers agree.
Batches are left-padded with PAD so that the last column is every row's last real token.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

PAD = 0
BOS = 1


@dataclass
class ModelConfig:
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    max_history: int = 20  # maximum history items per sequence (positions also fit the predicted item)


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, one entry per layer."""

    keys: list[torch.Tensor]  # per layer (B, n_head, S, head_dim)
    values: list[torch.Tensor]  # per layer (B, n_head, S, head_dim)
    key_mask: torch.Tensor  # (B, S) bool, False at padding
    next_position: torch.Tensor  # (B,) long position id of the next token


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head != 0:
            raise ValueError(f"d_model={cfg.d_model} must be divisible by n_head={cfg.n_head}")
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask, past=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, S, hd)
            v = torch.cat([past[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x, attn_mask, past=None):
        attn_out, present = self.attn(self.ln_1(x), attn_mask, past)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present


class Policy(nn.Module):
    """Pre-LayerNorm transformer over PAD, BOS and SID tokens, with the output head tied to the embedding."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, level_offsets: list[int], level_sizes: list[int]):
        super().__init__()
        if len(level_offsets) != len(level_sizes) or not level_sizes:
            raise ValueError(f"level_offsets {level_offsets} and level_sizes {level_sizes} must be non-empty and of equal length")
        if level_offsets[-1] + level_sizes[-1] > vocab_size:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the last level's end {level_offsets[-1] + level_sizes[-1]}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.level_offsets = list(level_offsets)
        self.level_sizes = list(level_sizes)
        self.sid_len = len(level_sizes)
        self.max_len = 1 + (cfg.max_history + 1) * self.sid_len  # BOS, history items, predicted item

        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(self.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight

        self.apply(self._init_weights)
        # Scale the projections that write into the residual stream so that its variance
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens, attention_mask, cache=None, use_cache=False):
        """Compute next-token logits (B, T, vocab_size) for tokens (B, T).

        attention_mask (B, T) is False at padding. With a cache, tokens continue the cached rows.
        Returns the logits, or (logits, new cache) when use_cache is True or a cache is passed.
        """
        B, T = tokens.shape
        if cache is None:
            past_mask = attention_mask.new_zeros(B, 0)
            start = tokens.new_zeros(B)
        else:
            past_mask = cache.key_mask
            start = cache.next_position
        # Position ids count real tokens only, so left padding does not shift them.
        positions = (start[:, None] + attention_mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        if int(positions.max()) >= self.max_len:
            raise ValueError(
                f"sequence of {int(positions.max()) + 1} tokens exceeds the maximum {self.max_len} "
                f"(1 + (max_history + 1) * sid_len). Encode at most max_history={self.cfg.max_history} history items"
            )

        key_mask = torch.cat([past_mask, attention_mask], dim=1)  # (B, S)
        S = key_mask.shape[1]
        query_index = torch.arange(S - T, S, device=tokens.device)[:, None]  # (T, 1)
        key_index = torch.arange(S, device=tokens.device)[None, :]  # (1, S)
        # Each query attends to the real keys up to itself and always to itself. Real tokens never
        # attend to padding, and padding rows never get an empty key set, which some SDPA backends turn
        # into NaN rows (torch 2.13 on CPU returns zeros instead).
        attn_mask = ((key_index <= query_index) & key_mask[:, None, :]) | (key_index == query_index)
        attn_mask = attn_mask[:, None]  # (B, 1, T, S)

        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))  # (B, T, d_model)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = block(x, attn_mask, past)
            keys.append(k)
            values.append(v)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)

        if cache is None and not use_cache:
            return logits
        next_position = start + attention_mask.long().sum(1)
        return logits, KVCache(keys, values, key_mask, next_position)

    def forward_candidates(self, cache: KVCache, candidates):
        """Next-token logits (B, K, l, V) for K candidate continuations (B, K, l) of each cached prefix.

        The prefix cache keeps one row per user (B rows) and is never copied per candidate: the K*l
        candidate tokens of a user form one query block, and a candidate token attends to the whole
        prefix and to its own earlier tokens only, which gives the same result as K separate rows.
        """
        B, K, l = candidates.shape
        tokens = candidates.reshape(B, K * l)
        offsets = torch.arange(l, device=tokens.device).repeat(K)  # (K*l,) index within a candidate
        positions = cache.next_position[:, None] + offsets[None, :]  # (B, K*l)
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"candidates reach position {int(positions.max())}, beyond the maximum {self.max_len - 1}")

        owner = torch.arange(K, device=tokens.device).repeat_interleave(l)  # (K*l,) candidate of each token
        own = (owner[:, None] == owner[None, :]) & (offsets[None, :] <= offsets[:, None])  # (K*l, K*l)
        prefix_keys = cache.key_mask[:, None, None, :].expand(B, 1, K * l, cache.key_mask.shape[1])
        attn_mask = torch.cat([prefix_keys, own.expand(B, 1, K * l, K * l)], dim=-1)  # (B, 1, K*l, S + K*l)

        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))  # (B, K*l, d_model)
        for i, block in enumerate(self.blocks):
            x, _ = block(x, attn_mask, (cache.keys[i], cache.values[i]))
        return self.lm_head(self.ln_f(x)).view(B, K, l, -1)

    def level_log_softmax(self, logits, level: int):
        """Apply log-softmax over level `level`'s code range: logits (..., vocab_size) -> (..., level_sizes[level])."""
        offset = self.level_offsets[level]
        return logits[..., offset : offset + self.level_sizes[level]].log_softmax(dim=-1)

    def _token_logprobs(self, logits, targets, levels, active):
        """Gather the level-restricted log-prob of each target token.

        logits (..., vocab_size); targets, levels and active (...). Entries where active is False
        get 0. Raises ValueError if an active target lies outside its level's code range.
        """
        out = logits.new_zeros(targets.shape)
        for level, (offset, size) in enumerate(zip(self.level_offsets, self.level_sizes)):
            at_level = active & (levels == level)
            codes = targets - offset
            if bool(((codes < 0) | (codes >= size))[at_level].any()):
                raise ValueError(f"a level-{level} SID token lies outside [{offset}, {offset + size}); check the SID tokens")
            logprobs = self.level_log_softmax(logits, level)
            picked = logprobs.gather(-1, codes.clamp(0, size - 1).unsqueeze(-1)).squeeze(-1)
            out = torch.where(at_level, picked, out)
        return out

    def sid_logprobs(self, prefix, prefix_mask, sids):
        """Return the level-restricted log-prob (B, G, sid_len) of each token of G candidate SIDs per user.

        prefix, prefix_mask (B, T) are left-padded histories; sids (B, G, sid_len) are tokens.
        The prefix runs once and its KV cache is shared by the G candidates. Differentiable.
        """
        check_left_padded(prefix_mask)
        B, G, L = sids.shape
        if L != self.sid_len:
            raise ValueError(f"sids have {L} tokens per SID, expected sid_len={self.sid_len}")
        logits, cache = self(prefix, prefix_mask, use_cache=True)
        flat = sids.reshape(B * G, L)
        step_logits = [logits[:, -1].repeat_interleave(G, dim=0)[:, None]]  # (B*G, 1, V) predicts level 0
        if L > 1:
            rest = self.forward_candidates(cache, sids[:, :, :-1])  # (B, G, L-1, V)
            step_logits.append(rest.reshape(B * G, L - 1, -1))
        logits = torch.cat(step_logits, dim=1)  # (B*G, L, V)
        levels = torch.arange(L, device=sids.device).expand(B * G, L)
        active = torch.ones_like(flat, dtype=torch.bool)
        return self._token_logprobs(logits, flat, levels, active).view(B, G, L)

    def nll_sequence(self, tokens, mask):
        """Teacher-forced NLL of every item after the first in left-padded sequences.

        tokens, mask (B, T): BOS then the SID tokens of a user's items. The first item is context
        only and every later item is a target. Returns (per-row summed NLL (B,), predicted items (B,)),
        so the caller can average per item. A sequence longer than max_history + 1 items raises
        ValueError, so the caller must cut long histories into windows.
        """
        check_left_padded(mask)
        logits = self(tokens, mask)[:, :-1]  # (B, T-1, V); column t predicts tokens[:, t+1]
        targets = tokens[:, 1:]
        positions = mask.long().cumsum(1)[:, 1:] - 1  # (B, T-1) position id of each target
        levels = (positions - 1) % self.sid_len
        active = mask[:, 1:] & (positions > self.sid_len)  # skip BOS and the first item
        token_logprobs = self._token_logprobs(logits, targets, levels, active)
        n_items = (active & (levels == 0)).sum(1)
        return -token_logprobs.sum(1), n_items


def check_left_padded(prefix_mask):
    """Raise ValueError unless every row ends with a real token, as left padding ensures."""
    if prefix_mask.shape[1] == 0 or not bool(prefix_mask[:, -1].all()):
        raise ValueError("prefix must be left-padded with a real token (at least BOS) in the last column")


def encode_histories(histories: list[list[int]], sid_tokens, max_history: int):
    """Encode item histories as BOS plus the SID tokens of the last max_history items, left-padded.

    sid_tokens is the (n_items, sid_len) token table. Returns (prefix (B, T) long, mask (B, T) bool).
    """
    if max_history < 0:
        raise ValueError(f"max_history must be >= 0, got {max_history}")
    table = torch.as_tensor(sid_tokens, dtype=torch.long).cpu()  # (n_items, sid_len)
    rows = []
    for history in histories:
        kept = history[max(0, len(history) - max_history) :]
        items = torch.as_tensor(kept, dtype=torch.long)
        rows.append(torch.cat([torch.tensor([BOS]), table[items].reshape(-1)]))
    T = max((len(r) for r in rows), default=1)
    prefix = torch.full((len(rows), T), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, row in enumerate(rows):
        prefix[i, T - len(row) :] = row
        mask[i, T - len(row) :] = True
    return prefix, mask
