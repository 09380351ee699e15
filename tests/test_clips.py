"""Clip sampling (PAPER_SPEC §1.1) against its definition."""

import numpy as np
import pytest

from datasets.clips import clip_indices, item_rng, sample_clips


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
