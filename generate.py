"""SID generation from a Policy: trie-constrained beam search and temperature sampling.

Both decoders run the history prefix once, copy its KV cache to every beam or rollout row,
and then feed one SID token per step. Scores are sums of level-restricted token log-probs,
the same numbers that Policy.sid_logprobs returns.
"""

import math

import torch

from model import PAD, Policy, check_left_padded


class SidTrie:
    """Valid SID prefixes of every length, for constrained decoding.

    For level l, each distinct valid prefix of l codes gets a mixed-radix id. The trie stores
    the sorted ids and a boolean table (n_prefixes, level_sizes[l]) of the codes that follow
    each prefix, so it uses O(n_items * max level size) memory.
    """

    def __init__(self, sid_tokens, level_offsets: list[int], level_sizes: list[int]):
        tokens = torch.as_tensor(sid_tokens, dtype=torch.long).cpu()  # (n_items, sid_len), built on CPU
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] != len(level_sizes):
            raise ValueError(f"sid_tokens must have shape (n_items >= 1, {len(level_sizes)}), got {tuple(tokens.shape)}")
        if math.prod(level_sizes[:-1]) >= 2**63:
            raise ValueError(f"level_sizes {level_sizes} are too large for int64 prefix ids")
        self.level_offsets = list(level_offsets)
        self.level_sizes = list(level_sizes)
        self._offsets = torch.tensor(level_offsets, dtype=torch.long)
        self._sizes = torch.tensor(level_sizes, dtype=torch.long)

        codes = tokens - self._offsets  # (n_items, sid_len)
        if bool(((codes < 0) | (codes >= self._sizes)).any()):
            raise ValueError("sid_tokens contain a token outside its level's code range")
        self.prefix_ids = []  # per level l: (n_prefixes_l,) sorted ids of valid l-code prefixes
        self.next_codes = []  # per level l: (n_prefixes_l, level_sizes[l]) bool
        for level, size in enumerate(level_sizes):
            ids = self._prefix_ids(codes[:, :level])
            unique_ids, row = torch.unique(ids, sorted=True, return_inverse=True)
            table = torch.zeros(len(unique_ids), size, dtype=torch.bool)
            table[row, codes[:, level]] = True
            self.prefix_ids.append(unique_ids)
            self.next_codes.append(table)

    def to(self, device) -> "SidTrie":
        """Move the lookup tables to `device` in place and return self."""
        self._offsets, self._sizes = self._offsets.to(device), self._sizes.to(device)
        self.prefix_ids = [ids.to(device) for ids in self.prefix_ids]
        self.next_codes = [table.to(device) for table in self.next_codes]
        return self

    def _prefix_ids(self, codes):
        """Mixed-radix id (N,) of code prefixes (N, l), with level i's size as the radix of digit i."""
        ids = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
        for level in range(codes.shape[1]):
            ids = ids * self.level_sizes[level] + codes[:, level]
        return ids

    def allowed(self, partial):
        """Mask the level-l codes that extend each partial SID (N, l) of tokens to a valid item.

        Returns (N, level_sizes[l]) bool. A prefix that no item has gets an all-False row, so
        the constraint never lapses.
        """
        level = partial.shape[1]
        codes = partial - self._offsets[:level]
        in_range = ((codes >= 0) & (codes < self._sizes[:level])).all(dim=1)  # (N,)
        ids = self._prefix_ids(codes.clamp(min=0))
        known = self.prefix_ids[level]
        row = torch.searchsorted(known, ids).clamp(max=len(known) - 1)
        found = in_range & (known[row] == ids)
        return self.next_codes[level][row] & found[:, None]


class _Decoder:
    """Next-token logits for rows that each extend one user's prefix, with or without a KV cache.

    rows (N,) is the user of each decoding row. The cache-free mode recomputes the whole
    sequence at every step and exists to check the cached mode.
    """

    def __init__(self, model: Policy, prefix, prefix_mask, rows, use_cache: bool):
        check_left_padded(prefix_mask)
        self.model, self.prefix, self.prefix_mask, self.rows = model, prefix, prefix_mask, rows
        self.cache = None
        if use_cache:
            # One cache row per user: rows must list each user's decoding rows contiguously, the same
            # number for every user, as repeat_interleave makes them.
            logits, self.cache = model(prefix, prefix_mask, use_cache=True)
        else:
            logits = model(prefix, prefix_mask)
        self.first_logits = logits[rows, -1]  # (N, V), predicts level 0

    def next_logits(self, partial):
        """Feed each row's partial SID (N, l) and return the next-token logits (N, V).

        Rows may have been reordered by a beam step since the last call: nothing is kept per row.
        """
        if self.cache is None:
            ones = torch.ones_like(partial, dtype=torch.bool)
            tokens = torch.cat([self.prefix[self.rows], partial], dim=1)
            mask = torch.cat([self.prefix_mask[self.rows], ones], dim=1)
            return self.model(tokens, mask)[:, -1]
        # The shared prefix cache is not reordered: every step feeds each row's whole partial SID
        # (at most sid_len - 1 tokens), so the parent rows need no cache of their own.
        users = self.prefix.shape[0]
        grouped = partial.view(users, partial.shape[0] // users, partial.shape[1])  # (B, K, l)
        return self.model.forward_candidates(self.cache, grouped)[:, :, -1].reshape(partial.shape[0], -1)


@torch.no_grad()
def beam_search(model: Policy, prefix, prefix_mask, beam_size: int, trie: SidTrie | None = None, use_cache: bool = True):
    """Find the beam_size most likely distinct SIDs per user by beam search over SID levels.

    Returns (sids (B, W, sid_len) tokens, logprobs (B, W)), best first, where a log-prob is the
    sum of level-restricted token log-probs. With a trie, only SIDs of real items are returned.
    When fewer than W SIDs exist (under the trie, or in the whole code space), the missing beams
    have log-prob -inf and PAD tokens, which map to no item. The model runs in its current mode,
    so call model.eval() first for deterministic output.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if trie is not None and (trie.level_offsets, trie.level_sizes) != (model.level_offsets, model.level_sizes):
        raise ValueError(
            f"trie levels (offsets {trie.level_offsets}, sizes {trie.level_sizes}) do not match the model's "
            f"(offsets {model.level_offsets}, sizes {model.level_sizes}); build the trie from the same SID table"
        )
    B, W, device = prefix.shape[0], beam_size, prefix.device
    users = torch.arange(B, device=device)
    decoder = _Decoder(model, prefix, prefix_mask, users.repeat_interleave(W), use_cache)
    logits = decoder.first_logits  # (B*W, V)

    sids = prefix.new_zeros(B, W, 0)
    # Only beam 0 is live before level 0, so the W copies of the prefix do not yield duplicates.
    scores = logits.new_full((B, W), -math.inf)
    scores[:, 0] = 0.0
    for level in range(model.sid_len):
        size = model.level_sizes[level]
        logprobs = model.level_log_softmax(logits, level).view(B, W, size)
        if trie is not None:
            allowed = trie.allowed(sids.view(B * W, level)).view(B, W, size)
            logprobs = logprobs.masked_fill(~allowed, -math.inf)
        candidates = (scores[:, :, None] + logprobs).view(B, W * size)
        # A dead beam (-inf) only yields -inf candidates, so the live beams stay distinct.
        scores, index = candidates.topk(W, dim=1)  # (B, W), sorted best first
        parent = index // size
        code = index % size
        history = sids.gather(1, parent[:, :, None].expand(B, W, level))
        sids = torch.cat([history, (code + model.level_offsets[level])[:, :, None]], dim=2)
        if level + 1 < model.sid_len:
            logits = decoder.next_logits(sids.view(B * W, level + 1))

    sids = sids.masked_fill(torch.isneginf(scores)[:, :, None], PAD)
    return sids, scores


@torch.no_grad()
def sample(model: Policy, prefix, prefix_mask, n: int, temperature: float, generator=None, use_cache: bool = True):
    """Draw n SIDs per user, each level from the level-restricted softmax of logits / temperature.

    Returns (sids (B, n, sid_len) tokens, logprobs (B, n)). The log-probs are under the policy at
    temperature 1, as Policy.sid_logprobs computes them. Rollouts may repeat and need not be real
    items. The model runs in its current mode.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    B = prefix.shape[0]
    decoder = _Decoder(model, prefix, prefix_mask, torch.arange(B, device=prefix.device).repeat_interleave(n), use_cache)
    logits = decoder.first_logits  # (B*n, V)

    sids = prefix.new_zeros(B * n, 0)
    total = logits.new_zeros(B * n)
    for level in range(model.sid_len):
        offset, size = model.level_offsets[level], model.level_sizes[level]
        level_logits = logits[:, offset : offset + size]  # (B*n, size)
        probs = (level_logits / temperature).softmax(dim=-1)
        code = torch.multinomial(probs, 1, generator=generator)  # (B*n, 1)
        total += level_logits.log_softmax(dim=-1).gather(1, code).squeeze(1)
        sids = torch.cat([sids, code + offset], dim=1)
        if level + 1 < model.sid_len:
            logits = decoder.next_logits(sids)
    return sids.view(B, n, model.sid_len), total.view(B, n)
