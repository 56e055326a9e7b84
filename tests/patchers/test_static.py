"""The patch contract for the static patchers, checked with hypothesis."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bytelm.patchers import (
    FixedPatcher,
    SpacePatcher,
    ends_to_lengths,
    lengths_to_ids,
    lengths_to_offsets,
)
from bytelm.vocab import BOS, EOS, PAD

# byte streams that look like packed documents: mostly text-ish bytes, some specials
byte = st.one_of(
    st.sampled_from(list(b" \n\t.,;:()abcdefghijklmnopqrstuvwxyzABC0123\xc3\xa9\xe4\xb8\xad")),
    st.integers(0, 255),
    st.sampled_from([BOS, EOS]),
)
streams = st.lists(byte, min_size=1, max_size=80)
patchers = st.one_of(
    st.builds(
        FixedPatcher, k=st.integers(1, 9), max_patch_len=st.one_of(st.none(), st.integers(1, 12))
    ),
    st.builds(SpacePatcher, max_patch_len=st.integers(1, 12)),
)


@settings(max_examples=150, deadline=None)
@given(xs=streams, patcher=patchers)
def test_lengths_cover_bytes_and_respect_max(xs, patcher):
    ids = torch.tensor([xs])
    lengths = patcher.patch(ids)[0]
    real = lengths[lengths > 0]
    assert int(real.sum()) == len(xs), "patch lengths must sum to the byte count"
    assert (real >= 1).all()
    assert (real <= patcher.max_patch_len).all()
    # padding only at the end of the row
    assert (lengths[: len(real)] > 0).all()


@settings(max_examples=150, deadline=None)
@given(xs=streams, patcher=patchers, data=st.data())
def test_prefix_patching_is_prefix_of_patching(xs, patcher, data):
    t = data.draw(st.integers(1, len(xs)))
    full = patcher.ends(torch.tensor([xs]))[0]
    prefix = patcher.ends(torch.tensor([xs[:t]]))[0]
    assert torch.equal(prefix, full[:t]), "patching a prefix must give the prefix of the patching"


@settings(max_examples=100, deadline=None)
@given(xs=streams, patcher=patchers)
def test_step_agrees_with_patch(xs, patcher):
    ids = torch.tensor([xs])
    batched = patcher.ends(ids)[0]
    state = patcher.start(1)
    stepped = torch.stack([patcher.step(state, ids[:, i])[0] for i in range(len(xs))])
    assert torch.equal(stepped, batched)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(streams, min_size=1, max_size=4), patcher=patchers)
def test_batched_rows_with_padding_match_single_rows(rows, patcher):
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (T - len(r)) for r in rows])
    lengths = patcher.patch(ids)
    for b, r in enumerate(rows):
        single = patcher.patch(torch.tensor([r]))[0]
        got = lengths[b]
        assert torch.equal(got[: single.numel()], single)
        assert (got[single.numel() :] == 0).all()


def test_patches_never_straddle_documents():
    ids = torch.tensor([[BOS, *b"abcdefg", EOS, BOS, *b"xy", EOS, BOS, *b"z"]])
    ends = FixedPatcher(k=4).ends(ids)[0]
    eos_positions = (ids[0] == EOS).nonzero().flatten()
    assert ends[eos_positions].all(), "EOS must close its patch"


def test_fixed_patch_sizes():
    ids = torch.tensor([[BOS, *range(97, 97 + 10)]])  # 11 bytes
    assert FixedPatcher(k=4).patch(ids).tolist() == [[4, 4, 3]]
    assert FixedPatcher(k=4, max_patch_len=2).patch(ids).tolist() == [[2] * 5 + [1]]


def test_space_patches_words():
    text = b"hello, world  foo"
    ids = torch.tensor([list(text)])
    lengths = SpacePatcher().patch(ids)[0].tolist()
    pieces, i = [], 0
    for n in lengths:
        pieces.append(text[i : i + n])
        i += n
    assert pieces == [b"hello,", b" world ", b" foo"]
    # UTF-8 multi-byte characters stay inside their word
    word = "naïve 中文 x".encode()
    pieces, i = [], 0
    for n in SpacePatcher().patch(torch.tensor([list(word)]))[0].tolist():
        pieces.append(word[i : i + n])
        i += n
    assert pieces == ["naïve ".encode(), "中文 ".encode(), b"x"]


def test_helpers_round_trip():
    lengths = torch.tensor([[3, 1, 2, 0], [1, 1, 1, 1]])
    ids = lengths_to_ids(lengths, 6)
    assert ids.tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, -1, -1]]
    assert lengths_to_offsets(lengths).tolist() == [[0, 3, 4, 6], [0, 1, 2, 3]]
    ends = torch.zeros(2, 6, dtype=torch.bool)
    ends[0, [2, 3, 5]] = True
    ends[1, [0, 1, 2]] = True
    n = torch.tensor([6, 4])
    assert ends_to_lengths(ends, n).tolist() == [[3, 1, 2, 0], [1, 1, 1, 1]]


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(streams, min_size=1, max_size=4), ends_p=st.floats(0.0, 1.0), data=st.data())
def test_vectorised_lengths_match_a_row_by_row_reference(rows, ends_p, data):
    """ends_to_lengths (no loops, optional fixed P) against the plain per-row definition."""
    T = max(map(len, rows))
    n = torch.tensor([data.draw(st.integers(0, T)) for _ in rows])
    g = torch.Generator().manual_seed(len(rows) * 1000 + T)
    ends = torch.rand(len(rows), T, generator=g) < ends_p
    want = []
    for b in range(len(rows)):
        cuts = [t for t in range(int(n[b])) if ends[b, t] or t == int(n[b]) - 1]
        want.append([e - s for s, e in zip([-1, *cuts], cuts)])
    P = max(map(len, want))
    ref = torch.tensor([w + [0] * (P - len(w)) for w in want], dtype=torch.long).view(len(rows), P)
    assert torch.equal(ends_to_lengths(ends, n), ref)
    bucket = P + data.draw(st.integers(0, 5))
    padded = ends_to_lengths(ends, n, n_patches=bucket)
    assert padded.shape == (len(rows), bucket)
    assert torch.equal(padded[:, :P], ref) and not padded[:, P:].any()


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(streams, min_size=2, max_size=4), patcher=patchers, data=st.data())
def test_ragged_step_equals_feeding_each_row_its_prefix(rows, patcher, data):
    """step(..., n_valid=keep): row r takes its first keep[r] bytes, as if fed alone."""
    T = min(map(len, rows))
    ids = torch.tensor([r[:T] for r in rows])
    keep = torch.tensor([data.draw(st.integers(0, T)) for _ in rows])
    state = patcher.start(len(rows))
    ends = patcher.step(state, ids, n_valid=keep)
    for b, k in enumerate(keep.tolist()):
        alone = patcher.start(1)
        want = patcher.step(alone, ids[b : b + 1, :k]) if k else torch.zeros(1, 0, dtype=bool)
        assert torch.equal(ends[b, :k], want[0])
        assert not ends[b, k:].any()
        assert int(state.patch_len[b]) == int(alone.patch_len[0])
        assert int(state.prev[b]) == int(alone.prev[0])


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(streams, min_size=2, max_size=4), patcher=patchers, data=st.data())
def test_rewind_equals_replaying_the_kept_bytes(rows, patcher, data):
    """rewind (a rollback without replay) from a mid-stream state: the state a ragged
    replay of the kept bytes gives."""
    T = min(map(len, rows))
    cut = data.draw(st.integers(0, T))  # bytes fed before the call that gets rolled back
    ids = torch.tensor([r[:T] for r in rows])
    start = patcher.start(len(rows))
    if cut:
        patcher.step(start, ids[:, :cut])
    keep = torch.tensor([data.draw(st.integers(0, T - cut)) for _ in rows])
    call = ids[:, cut:]
    ends = torch.zeros(len(rows), T - cut, dtype=torch.bool)  # what `step` gives the call
    want = start.clone()
    if T > cut:
        ends = patcher.step(start.clone(), call)
        patcher.step(want, call, n_valid=keep)
    kept = ends & (torch.arange(T - cut)[None, :] < keep[:, None])
    got = patcher.rewind(start, call, kept, keep)
    assert torch.equal(got.patch_len, want.patch_len)
    assert torch.equal(got.prev, want.prev)
