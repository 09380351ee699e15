"""Clip sampling (Wei et al. 2024, §1.1) against its definition."""

import numpy as np
import pytest

from datasets.clips import clip_indices, item_rng, sample_clips

pytestmark = pytest.mark.timeout(120)


def ref_eval_indices(n: int, c: int, k: int) -> list[list[int]]:
    """The reference's deterministic sampler, from its description: C segments of n // C frames
    (the last takes the remainder); in a segment of `length` frames from `start`, offsets
    int(i * length / K) for i = 0..K-2 and length - 1 for i = K-1."""
    seg = n // c
    out = []
    for ci in range(c):
        start = ci * seg
        length = (n - start) if ci == c - 1 else seg
        row = [start + int(i * length / k) for i in range(k - 1)]
        out.append(row + [start + length - 1])
    return out


# n chosen so the last segment is longer than the others (a remainder) in most cases
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("n,c", [(23, 5), (100, 5), (101, 3), (29, 2), (13, 1), (1000, 7)])
def test_eval_indices_follow_the_reference_sampler(n, c, k):
    if n <= c * k:
        pytest.skip("padding case")
    idx = clip_indices(n, c, k)
    assert idx.shape == (c, k) and idx.dtype.kind == "i"
    assert idx.tolist() == ref_eval_indices(n, c, k)


def test_eval_indices_worked_examples():
    # n = 23, C = 2: segments [0, 11) and [11, 23) (12 frames, the remainder).
    assert clip_indices(23, 2, 1).tolist() == [[10], [22]]  # K = 1: each segment's last frame
    assert clip_indices(23, 2, 2).tolist() == [[0, 10], [11, 22]]  # first and last
    # K = 3: offsets 0, int(11 / 3) = 3, 10 and 0, int(12 / 3) = 4, 11
    assert clip_indices(23, 2, 3).tolist() == [[0, 3, 10], [11, 15, 22]]
    # K = 4: offsets 0, 2, 5, 10 (11 * 2 / 4 = 5.5) and 0, 3, 6, 11
    assert clip_indices(23, 2, 4).tolist() == [[0, 2, 5, 10], [11, 14, 17, 22]]


@pytest.mark.parametrize("n,c,k", [(10, 2, 2), (23, 5, 2), (100, 5, 4), (11, 5, 2), (7, 3, 3)])
def test_eval_indices_evenly_spaced_in_segments(n, c, k):
    idx = clip_indices(n, c, k)
    assert idx.shape == (c, k)
    if n <= c * k:
        expected = np.minimum(np.arange(c * k), n - 1).reshape(c, k)
        np.testing.assert_array_equal(idx, expected)
        return
    seg = n // c
    for ci in range(c):
        start, end = ci * seg, (n if ci == c - 1 else (ci + 1) * seg)
        assert idx[ci, 0] == start
        if k > 1:
            assert idx[ci, -1] == end - 1
        assert np.all(np.diff(idx[ci]) > 0)


def test_padding_repeats_last_frame():
    idx = clip_indices(3, 2, 3)
    np.testing.assert_array_equal(idx, [[0, 1, 2], [2, 2, 2]])


@pytest.mark.parametrize("n,c,k", [(23, 5, 2), (100, 5, 4), (40, 3, 5)])
def test_train_indices_random_distinct_sorted_within_segment(n, c, k):
    seg = n // c
    seen = set()
    for trial in range(20):
        idx = clip_indices(n, c, k, np.random.default_rng(trial))
        for ci in range(c):
            start, end = ci * seg, (n if ci == c - 1 else (ci + 1) * seg)
            row = idx[ci]
            assert np.all(np.diff(row) > 0) and row[0] >= start and row[-1] < end
        seen.add(idx.tobytes())
    assert len(seen) > 1  # really random


def test_item_rng_depends_only_on_seed_epoch_id():
    a = item_rng(1, 2, "S010/004").integers(0, 1 << 30, 4)
    b = item_rng(1, 2, "S010/004").integers(0, 1 << 30, 4)
    c = item_rng(1, 3, "S010/004").integers(0, 1 << 30, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_clips_gathers_frames():
    video = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    clips = sample_clips(video, 3, 2)
    assert clips.shape == (3, 2, 4, 4, 3)
    np.testing.assert_array_equal(clips[:, :, 0, 0, 0], clip_indices(12, 3, 2))
