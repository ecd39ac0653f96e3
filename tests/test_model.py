import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generate import SidTrie, beam_search, sample  # noqa: E402
from model import BOS, PAD, ModelConfig, Policy, encode_histories  # noqa: E402

LEVEL_SIZES = [3, 3, 2]
OFFSETS = [2, 5, 8]
VOCAB = 10
ALL_CODES = list(itertools.product(*(range(k) for k in LEVEL_SIZES)))  # 18 SIDs



def to_tokens(codes):
    """Turn code tuples (n, sid_len) into SID token rows."""
    return np.asarray(codes, dtype=np.int64) + np.asarray(OFFSETS)


def make_model(seed=0, max_history=4, std=0.5):
    """Build a random model whose weights are large enough that log-probs have no near ties."""
    torch.manual_seed(seed)
    model = Policy(ModelConfig(n_layer=2, n_head=2, d_model=32, dropout=0.0, max_history=max_history), VOCAB, OFFSETS, LEVEL_SIZES)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def random_sid_table(n_items, seed=0):
    """Stand-in SID table: n_items distinct random code tuples, as tokens."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ALL_CODES), size=n_items, replace=False)
    return to_tokens([ALL_CODES[i] for i in chosen])


def brute_force(model, prefix, mask):
    """Score every SID for each user: (all SID tokens (18, sid_len), log-probs (B, 18))."""
    all_sids = torch.as_tensor(to_tokens(ALL_CODES))
    candidates = all_sids.expand(prefix.shape[0], -1, -1)
    with torch.no_grad():
        scores = model.sid_logprobs(prefix, mask, candidates).sum(-1)
    return all_sids, scores


def rows_as_tuples(sids):
    return [tuple(row) for row in sids.tolist()]


@pytest.fixture
def batch():
    """Left-padded batch of users with histories of different lengths, one empty."""
    table = random_sid_table(12, seed=1)
    histories = [[0, 3, 5], [7], [], [2, 4, 6, 8, 10]]
    prefix, mask = encode_histories(histories, table, max_history=4)
    return table, histories, prefix, mask


def test_encode_histories_left_pads_and_truncates():
    table = random_sid_table(6)
    prefix, mask = encode_histories([[0, 1, 2], [4]], table, max_history=2)
    expected_long = [BOS, *table[1], *table[2]]
    expected_short = [PAD, PAD, PAD, BOS, *table[4]]
    assert prefix.shape == (2, 7)
    assert prefix[0].tolist() == expected_long
    assert prefix[1].tolist() == expected_short
    assert mask[1].tolist() == [False, False, False, True, True, True, True]


def test_encode_histories_zero_max_history():
    prefix, mask = encode_histories([[0, 1], []], random_sid_table(3), max_history=0)
    assert prefix.tolist() == [[BOS], [BOS]]
    assert mask.all()


def test_output_head_tied_to_embedding():
    model = make_model()
    assert model.lm_head.weight is model.tok_emb.weight


def test_forward_rejects_too_long_sequence():
    model = make_model(max_history=1)  # max_len = 1 + 2 * 3 = 7
    tokens = torch.full((1, 8), OFFSETS[0])
    with pytest.raises(ValueError, match="exceeds the maximum 7"):
        model(tokens, torch.ones_like(tokens, dtype=torch.bool))


def test_kv_cache_matches_full_forward(batch):
    model = make_model()
    _, _, prefix, mask = batch
    suffix = torch.as_tensor(to_tokens([[0, 1, 1], [2, 0, 0], [1, 1, 0], [0, 2, 1]]))
    full = model(torch.cat([prefix, suffix], 1), torch.cat([mask, torch.ones_like(suffix, dtype=torch.bool)], 1))
    _, cache = model(prefix, mask, use_cache=True)
    stepped = []
    for t in range(suffix.shape[1]):
        logits, cache = model(suffix[:, t : t + 1], torch.ones(suffix.shape[0], 1, dtype=torch.bool), cache)
        stepped.append(logits)
    stepped = torch.cat(stepped, 1)
    real = full[:, prefix.shape[1] :]
    assert torch.allclose(stepped, real, atol=1e-5)


@pytest.mark.parametrize("beam_size", [10, 18])
def test_beam_search_equals_brute_force(batch, beam_size):
    # W >= 9 keeps every level-1 prefix, so beam search must find the exact top W.
    model = make_model()
    _, _, prefix, mask = batch
    all_sids, all_scores = brute_force(model, prefix, mask)
    sids, logprobs = beam_search(model, prefix, mask, beam_size)
    assert sids.shape == (prefix.shape[0], beam_size, 3)
    for user in range(prefix.shape[0]):
        top_scores, top_index = all_scores[user].topk(beam_size)
        assert set(rows_as_tuples(sids[user])) == set(rows_as_tuples(all_sids[top_index]))
        assert torch.allclose(logprobs[user], top_scores, atol=1e-5)


def test_beam_search_distinct_and_sorted(batch):
    model = make_model()
    _, _, prefix, mask = batch
    sids, logprobs = beam_search(model, prefix, mask, 5)
    for user in range(prefix.shape[0]):
        assert len(set(rows_as_tuples(sids[user]))) == 5
        assert torch.all(logprobs[user, :-1] >= logprobs[user, 1:])
    assert torch.isfinite(logprobs).all()


def test_beam_search_more_beams_than_sids(batch):
    model = make_model()
    _, _, prefix, mask = batch
    sids, logprobs = beam_search(model, prefix, mask, 20)
    assert torch.isfinite(logprobs[:, :18]).all()
    assert torch.isneginf(logprobs[:, 18:]).all()
    assert (sids[:, 18:] == PAD).all()
    assert len(set(rows_as_tuples(sids[0, :18]))) == 18


def test_beam_logprobs_match_sid_logprobs(batch):
    model = make_model()
    _, _, prefix, mask = batch
    sids, logprobs = beam_search(model, prefix, mask, 4)
    with torch.no_grad():
        rescored = model.sid_logprobs(prefix, mask, sids).sum(-1)
    assert torch.allclose(rescored, logprobs, atol=1e-5)


def test_beam_search_cached_equals_uncached(batch):
    model = make_model()
    _, _, prefix, mask = batch
    for trie in [None, SidTrie(batch[0], OFFSETS, LEVEL_SIZES)]:
        cached_sids, cached_logprobs = beam_search(model, prefix, mask, 4, trie)
        plain_sids, plain_logprobs = beam_search(model, prefix, mask, 4, trie, use_cache=False)
        assert torch.equal(cached_sids, plain_sids)
        assert torch.allclose(cached_logprobs, plain_logprobs, atol=1e-5)


def test_left_padding_does_not_change_outputs(batch):
    model = make_model()
    table, histories, prefix, mask = batch
    sids, logprobs = beam_search(model, prefix, mask, 4)
    with torch.no_grad():
        scores = model.sid_logprobs(prefix, mask, sids)
    for user, history in enumerate(histories):
        alone_prefix, alone_mask = encode_histories([history], table, max_history=4)
        alone_sids, alone_logprobs = beam_search(model, alone_prefix, alone_mask, 4)
        with torch.no_grad():
            alone_scores = model.sid_logprobs(alone_prefix, alone_mask, sids[user : user + 1])
        assert torch.equal(alone_sids[0], sids[user])
        assert torch.allclose(alone_logprobs[0], logprobs[user], atol=1e-5)
        assert torch.allclose(alone_scores[0], scores[user], atol=1e-5)


def test_trie_allowed_codes():
    # Items (codes): prefix (0,) has the single child (0, 1); prefix (2, 2) has both last codes.
    table = to_tokens([[0, 1, 1], [2, 2, 0], [2, 2, 1], [2, 0, 0]])
    trie = SidTrie(table, OFFSETS, LEVEL_SIZES)
    empty = torch.zeros(1, 0, dtype=torch.long)
    assert trie.allowed(empty).tolist() == [[True, False, True]]
    level1 = torch.as_tensor([[2], [3], [4]])
    assert trie.allowed(level1).tolist() == [[False, True, False], [False, False, False], [True, False, True]]
    level2 = torch.as_tensor([[2, 6], [4, 7], [3, 5], [PAD, 6]])
    assert trie.allowed(level2).tolist() == [[False, True], [True, True], [False, False], [False, False]]


def test_trie_rejects_out_of_range_tokens():
    with pytest.raises(ValueError, match="outside its level's code range"):
        SidTrie(np.array([[2, 5, 10]]), OFFSETS, LEVEL_SIZES)


def test_constrained_beam_search_equals_brute_force(batch):
    model = make_model()
    _, _, prefix, mask = batch
    table = to_tokens([[0, 1, 1], [2, 2, 0], [2, 2, 1], [2, 0, 0], [1, 0, 1], [1, 2, 0], [0, 1, 0]])
    trie = SidTrie(table, OFFSETS, LEVEL_SIZES)
    # The items have 5 distinct level-1 prefixes, so W=5 prunes no item and must be exact.
    sids, logprobs = beam_search(model, prefix, mask, 5, trie)
    items = torch.as_tensor(table)
    item_scores = model.sid_logprobs(prefix, mask, items.expand(prefix.shape[0], -1, -1)).sum(-1).detach()
    for user in range(prefix.shape[0]):
        best_scores, best_index = item_scores[user].topk(5)
        assert rows_as_tuples(sids[user]) == rows_as_tuples(items[best_index])
        assert torch.allclose(logprobs[user], best_scores, atol=1e-5)


def test_constrained_beam_search_small_beam(batch):
    model = make_model()
    _, _, prefix, mask = batch
    table = to_tokens([[0, 1, 1], [2, 2, 0], [2, 2, 1], [2, 0, 0], [1, 0, 1], [1, 2, 0], [0, 1, 0]])
    sids, logprobs = beam_search(model, prefix, mask, 3, SidTrie(table, OFFSETS, LEVEL_SIZES))
    valid = set(rows_as_tuples(torch.as_tensor(table)))
    for user in range(prefix.shape[0]):
        assert set(rows_as_tuples(sids[user])) <= valid
        assert len(set(rows_as_tuples(sids[user]))) == 3
    assert torch.isfinite(logprobs).all()


def test_constrained_single_child_prefixes(batch):
    # Every level-0 code has one child chain, so each beam is forced after level 0.
    model = make_model()
    _, _, prefix, mask = batch
    table = to_tokens([[0, 2, 1], [1, 0, 0], [2, 1, 1]])
    trie = SidTrie(table, OFFSETS, LEVEL_SIZES)
    sids, logprobs = beam_search(model, prefix, mask, 2, trie)
    valid = set(rows_as_tuples(torch.as_tensor(table)))
    for user in range(prefix.shape[0]):
        assert set(rows_as_tuples(sids[user])) <= valid
    assert torch.isfinite(logprobs).all()


def test_constrained_fewer_items_than_beams(batch):
    model = make_model()
    _, _, prefix, mask = batch
    table = to_tokens([[0, 1, 1], [2, 2, 0], [2, 2, 1]])
    trie = SidTrie(table, OFFSETS, LEVEL_SIZES)
    sids, logprobs = beam_search(model, prefix, mask, 5, trie)
    items = torch.as_tensor(table)
    item_scores = model.sid_logprobs(prefix, mask, items.expand(prefix.shape[0], -1, -1)).sum(-1).detach()
    for user in range(prefix.shape[0]):
        order = item_scores[user].argsort(descending=True)
        assert rows_as_tuples(sids[user, :3]) == rows_as_tuples(items[order])
        assert torch.allclose(logprobs[user, :3], item_scores[user, order], atol=1e-5)
    assert torch.isneginf(logprobs[:, 3:]).all()
    assert (sids[:, 3:] == PAD).all()


def test_beam_search_rejects_mismatched_trie(batch):
    _, _, prefix, mask = batch
    trie = SidTrie(np.array([[2, 5, 8, 10]]), [2, 5, 8, 10], [3, 3, 2, 2])
    with pytest.raises(ValueError, match="do not match"):
        beam_search(make_model(), prefix, mask, 2, trie)


def test_beam_search_rejects_zero_beams(batch):
    _, _, prefix, mask = batch
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        beam_search(make_model(), prefix, mask, 0)


def test_sample_shapes_ranges_and_logprobs(batch):
    model = make_model()
    _, _, prefix, mask = batch
    generator = torch.Generator().manual_seed(0)
    sids, logprobs = sample(model, prefix, mask, 6, temperature=1.5, generator=generator)
    assert sids.shape == (prefix.shape[0], 6, 3)
    assert logprobs.shape == (prefix.shape[0], 6)
    for level, (offset, size) in enumerate(zip(OFFSETS, LEVEL_SIZES)):
        assert (sids[..., level] >= offset).all()
        assert (sids[..., level] < offset + size).all()
    with torch.no_grad():
        rescored = model.sid_logprobs(prefix, mask, sids).sum(-1)
    assert torch.allclose(rescored, logprobs, atol=1e-5)


def test_sample_cached_equals_uncached(batch):
    model = make_model()
    _, _, prefix, mask = batch
    cached = sample(model, prefix, mask, 4, 1.0, torch.Generator().manual_seed(3))
    plain = sample(model, prefix, mask, 4, 1.0, torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(cached[0], plain[0])
    assert torch.allclose(cached[1], plain[1], atol=1e-5)


def test_sample_low_temperature_is_greedy(batch):
    model = make_model()
    _, _, prefix, mask = batch
    sids, _ = sample(model, prefix, mask, 3, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    greedy, _ = beam_search(model, prefix, mask, 1)
    assert torch.equal(sids, greedy.expand_as(sids))


def test_sample_rejects_nonpositive_temperature(batch):
    _, _, prefix, mask = batch
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample(make_model(), prefix, mask, 2, temperature=0.0)


def test_nll_sequence_matches_sid_logprobs():
    model = make_model()
    table = random_sid_table(8)
    sequences = [[0, 3, 5], [6, 1]]
    tokens, mask = encode_histories(sequences, table, max_history=4)
    nll, n_items = model.nll_sequence(tokens, mask)
    assert n_items.tolist() == [2, 1]
    for row, sequence in enumerate(sequences):
        expected = 0.0
        for step in range(1, len(sequence)):
            prefix, prefix_mask = encode_histories([sequence[:step]], table, max_history=4)
            target = torch.as_tensor(table[sequence[step]])[None, None]
            expected -= model.sid_logprobs(prefix, prefix_mask, target).sum().item()
        assert math.isclose(nll[row].item(), expected, rel_tol=1e-5)


def test_training_decreases_nll_and_changes_weights():
    # Deterministic task: the next item is always (last item + 1) mod n_items.
    n_items = 8
    table = random_sid_table(n_items, seed=2)
    sequences = [[(start + k) % n_items for k in range(4)] for start in range(n_items)]
    tokens, mask = encode_histories(sequences, table, max_history=3)
    torch.manual_seed(0)
    model = Policy(ModelConfig(n_layer=2, n_head=2, d_model=32, dropout=0.0, max_history=3), VOCAB, OFFSETS, LEVEL_SIZES)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def mean_nll():
        nll, n_predicted = model.nll_sequence(tokens, mask)
        return nll.sum() / n_predicted.sum()

    start = mean_nll().item()
    for _ in range(60):
        loss = mean_nll()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = mean_nll().item()
    assert end < 0.25 * start
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


def test_sid_logprobs_rejects_wrong_level_token(batch):
    model = make_model()
    _, _, prefix, mask = batch
    sids = torch.as_tensor(to_tokens([[0, 1, 1]]))[None].expand(prefix.shape[0], 1, 3).clone()
    sids[0, 0, 1] = OFFSETS[0]  # a level-0 token at level 1
    with pytest.raises(ValueError, match="level-1 SID token lies outside"):
        model.sid_logprobs(prefix, mask, sids)


def test_sid_logprobs_rejects_right_padding():
    model = make_model()
    prefix = torch.tensor([[BOS, OFFSETS[0], PAD]])
    mask = torch.tensor([[True, True, False]])
    sids = torch.as_tensor(to_tokens([[0, 1, 1]]))[None]
    with pytest.raises(ValueError, match="left-padded"):
        model.sid_logprobs(prefix, mask, sids)


def test_sid_logprobs_has_gradients(batch):
    model = make_model()
    _, _, prefix, mask = batch
    sids = torch.as_tensor(to_tokens([[0, 1, 1], [2, 0, 1]]))[None].expand(prefix.shape[0], 2, 3)
    model.sid_logprobs(prefix, mask, sids).sum().backward()
    assert model.tok_emb.weight.grad is not None
    assert model.tok_emb.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
