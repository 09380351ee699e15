"""Joint readers (round-trips of files written here), missing-joint filling, synthetic gestures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.joints import fill_missing, pick_people, read_joints
from datasets.records import BadInput, JointSequence
from datasets.synthetic_gesture import GESTURE_CLASSES, generate_gestures, write_gesture_set


# ---------------------------------------------------------------- OpenPose
def person(rng, J, centre, conf_level):
    """(J, 3) keypoints around ``centre`` with confidences near ``conf_level``; joint 1 unseen."""
    kp = np.zeros((J, 3), np.float32)
    kp[:, :2] = centre + rng.uniform(-20, 20, size=(J, 2))
    kp[:, 2] = np.clip(conf_level + rng.uniform(-0.05, 0.05, size=J), 0.01, 1)
    kp[1] = 0  # OpenPose writes an undetected joint as 0, 0, 0
    return kp


def write_openpose(folder, frames, names):
    folder.mkdir()
    for people, name in zip(frames, names, strict=True):
        doc = {
            "version": 1.3,
            "people": [{"pose_keypoints_2d": p.ravel().tolist()} for p in people],
        }
        (folder / name).write_text(json.dumps(doc))


@pytest.mark.parametrize("J, layout", [(25, "body25"), (18, "coco18")])
def test_openpose_two_people_round_trip(tmp_path, J, layout):
    rng = np.random.default_rng(J)
    T = 12
    target, others = [], []
    for t in range(T):
        target.append(person(rng, J, np.array([100.0 + 3 * t, 200.0]), 0.6))
        # A second, far-away person; from frame 4 on more confident than the tracked one.
        others.append(person(rng, J, np.array([500.0, 220.0]), 0.5 if t < 4 else 0.9))
    frames = []
    for t in range(T):
        pair = [target[t], others[t]]
        frames.append([] if t == 7 else (pair if t % 2 else pair[::-1]))
    # Frame numbers sort numerically, not as text (9 before 10), and files are unpadded.
    names = [f"clip_{t}_keypoints.json" for t in range(T)]
    write_openpose(tmp_path / "op", frames, names)
    (tmp_path / "op" / "notes.txt").write_text("ignored")

    seq = read_joints(tmp_path / "op")
    assert seq.layout == layout and seq.joints.shape == (T, J, 2) and seq.joints.dtype == np.float32
    want = np.stack(target)  # (T, J, 3)
    for t in range(T):
        if t == 7:  # nobody: every joint missing
            assert np.isnan(seq.joints[t]).all() and (seq.confidence[t] == 0).all()
            continue
        seen = np.arange(J) != 1
        np.testing.assert_array_equal(seq.joints[t, seen], want[t, seen, :2])
        np.testing.assert_array_equal(seq.confidence[t, seen], want[t, seen, 2])
        assert np.isnan(seq.joints[t, 1]).all() and seq.confidence[t, 1] == 0


def test_pick_people_first_pick_is_most_confident_then_tracks():
    a = np.array([[[0.0, 0.0, 0.9], [2.0, 0.0, 0.9]]])  # centroid (1, 0)
    b = np.array([[[50.0, 0.0, 0.5], [52.0, 0.0, 0.5]]])
    near_low = np.array([[[1.0, 1.0, 0.2], [3.0, 1.0, 0.0]]])  # centroid (1, 1): only joint 0
    far_high = np.array([[[60.0, 0.0, 1.0], [62.0, 0.0, 1.0]]])
    frames = [
        np.concatenate([b, a]),
        np.zeros((0, 2, 3)),
        np.concatenate([far_high, near_low]),
    ]
    assert pick_people(frames) == [1, None, 1]
    assert pick_people([np.concatenate([far_high, a])]) == [0]


def test_openpose_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    mixed = [[person(rng, 25, np.zeros(2), 0.5)], [person(rng, 18, np.zeros(2), 0.5)]]
    write_openpose(tmp_path / "mixed", mixed, ["a_0_keypoints.json", "a_1_keypoints.json"])
    with pytest.raises(BadInput, match="disagree"):
        read_joints(tmp_path / "mixed")
    odd = [[np.zeros((20, 3), np.float32)]]
    write_openpose(tmp_path / "odd", odd, ["a_0_keypoints.json"])
    with pytest.raises(BadInput, match="pose_keypoints_2d"):
        read_joints(tmp_path / "odd")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x_0_keypoints.json").write_text("{not json")
    with pytest.raises(BadInput, match="x_0_keypoints.json"):
        read_joints(tmp_path / "broken")
    write_openpose(tmp_path / "nobody", [[], []], ["a_0_keypoints.json", "a_1_keypoints.json"])
    with pytest.raises(BadInput, match="no person"):
        read_joints(tmp_path / "nobody")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no \\*_keypoints.json"):
        read_joints(tmp_path / "empty")


# ---------------------------------------------------------------- Kinect / mocap tables
def table_values(rng, T, J):
    return rng.uniform(-2, 2, size=(T, J, 3)).astype(np.float32)


def test_kinect_csv_with_header_index_and_timestamp(tmp_path):
    rng = np.random.default_rng(1)
    q = table_values(rng, 6, 25)
    q[2, 3] = 0  # Kinect's "not tracked"
    header = ["frame", "time"] + [f"j{j}_{a}" for j in range(25) for a in "xyz"]
    lines = [",".join(header)]
    for t in range(6):
        fields = [str(t), f"{0.033 * t:.3f}"] + [repr(float(v)) for v in q[t].ravel()]
        if t == 4:
            fields[2 + 3 * 7 : 2 + 3 * 7 + 3] = ["", "", ""]  # an empty field is missing
        lines.append(",".join(fields))
    (tmp_path / "k.csv").write_text("\n".join(lines) + "\n")
    seq = read_joints(tmp_path / "k.csv")
    assert seq.layout == "kinect25" and seq.joints.shape == (6, 25, 3)
    missing = np.zeros((6, 25), bool)
    missing[2, 3] = missing[4, 7] = True
    np.testing.assert_array_equal(seq.joints[~missing], q[~missing])
    assert np.isnan(seq.joints[missing]).all()
    np.testing.assert_array_equal(seq.confidence, (~missing).astype(np.float32))


def test_kinect_whitespace_text_without_header(tmp_path):
    rng = np.random.default_rng(2)
    q = table_values(rng, 4, 25)
    lines = [" ".join(repr(float(v)) for v in q[t].ravel()) for t in range(4)]
    (tmp_path / "k.txt").write_text("\n".join(lines))
    seq = read_joints(tmp_path / "k.txt")
    assert seq.layout == "kinect25"
    np.testing.assert_array_equal(seq.joints, q)


def test_mocap_csv_with_joint_names(tmp_path):
    rng = np.random.default_rng(3)
    q = table_values(rng, 5, 28)
    q[1, 0] = 0  # a motion-capture joint may sit at the origin: not missing
    header = ["frame"] + [f"joint{j}.{a}" for j in range(28) for a in "XYZ"]
    rows = [",".join([str(t)] + [repr(float(v)) for v in q[t].ravel()]) for t in range(5)]
    (tmp_path / "m.csv").write_text("\n".join([",".join(header)] + rows))
    seq = read_joints(tmp_path / "m.csv")
    assert seq.layout == "mocap28" and seq.joints.shape == (5, 28, 3)
    np.testing.assert_array_equal(seq.joints, q)
    assert (seq.confidence == 1).all()


def test_table_bad_inputs(tmp_path):
    (tmp_path / "w.csv").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(BadInput, match="3 columns"):
        read_joints(tmp_path / "w.csv")
    (tmp_path / "r.csv").write_text(",".join(["1"] * 75) + "\n" + ",".join(["1"] * 76) + "\n")
    with pytest.raises(BadInput, match="different numbers of columns"):
        read_joints(tmp_path / "r.csv")
    (tmp_path / "h.csv").write_text("a,b,c\n")
    with pytest.raises(BadInput, match="no data"):
        read_joints(tmp_path / "h.csv")


# ---------------------------------------------------------------- numpy files
def test_npy_and_npz_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    q = rng.normal(size=(7, 5, 2)).astype(np.float32)
    q[3, 2] = np.nan
    np.save(tmp_path / "a.npy", q)
    seq = read_joints(tmp_path / "a.npy")
    np.testing.assert_array_equal(seq.joints, q)
    assert seq.layout == "array" and seq.confidence[3, 2] == 0 and seq.confidence.sum() == 34

    conf = rng.uniform(0.1, 1, size=(7, 5)).astype(np.float32)
    conf[0, 0] = 0
    np.savez(tmp_path / "b.npz", joints=q, confidence=conf)
    seq = read_joints(tmp_path / "b.npz")
    missing = np.isnan(q).any(-1) | (conf == 0)
    np.testing.assert_array_equal(seq.joints[~missing], q[~missing])
    assert np.isnan(seq.joints[missing]).all()
    np.testing.assert_array_equal(seq.confidence, np.where(missing, 0, conf))

    np.savez(tmp_path / "c.npz", joints=q)
    np.testing.assert_array_equal(read_joints(tmp_path / "c.npz").joints, q)


def test_array_and_path_bad_inputs(tmp_path):
    np.savez(tmp_path / "k.npz", poses=np.zeros((2, 3, 2)))
    with pytest.raises(BadInput, match="'joints'"):
        read_joints(tmp_path / "k.npz")
    np.save(tmp_path / "s.npy", np.zeros((4, 3)))
    with pytest.raises(BadInput, match="T, J, 2\\|3"):
        read_joints(tmp_path / "s.npy")
    np.savez(tmp_path / "c.npz", joints=np.zeros((4, 3, 2)), confidence=np.ones((4, 2)))
    with pytest.raises(BadInput, match="does not match"):
        read_joints(tmp_path / "c.npz")
    (tmp_path / "g.npy").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="g.npy"):
        read_joints(tmp_path / "g.npy")
    (tmp_path / "x.bvh").write_text("HIERARCHY")
    with pytest.raises(BadInput, match="unknown joint format"):
        read_joints(tmp_path / "x.bvh")
    with pytest.raises(BadInput, match="no such file"):
        read_joints(tmp_path / "absent.npz")


# ---------------------------------------------------------------- fill_missing
def seq_of(joints, conf=None, source="test.npz"):
    joints = np.asarray(joints, np.float32)
    if conf is None:
        conf = np.isfinite(joints).all(-1).astype(np.float32)
    return JointSequence(joints, np.asarray(conf, np.float32), source, "array")


def test_fill_missing_interpolates_and_extends():
    nan = np.nan
    T = 6
    j0 = [[nan, nan], [3, 6], [nan, nan], [nan, nan], [6, 12], [nan, nan]]
    j1 = [[1, 1], [2, 2], [9, 9], [4, 4], [5, 5], [6, 6]]  # frame 2 has confidence 0
    j2 = [[nan, nan]] * T  # never observed
    q = np.stack([j0, j1, j2], axis=1)  # (T, 3, 2)
    conf = np.isfinite(q).all(-1).astype(np.float32)
    conf[2, 1] = 0
    out = fill_missing(seq_of(q, conf))
    want0 = [[3, 6], [3, 6], [4, 8], [5, 10], [6, 12], [6, 12]]
    want1 = [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6]]
    np.testing.assert_array_equal(out.joints[:, 0], want0)
    np.testing.assert_array_equal(out.joints[:, 1], want1)
    # A never-seen joint sits at the mean of the other joints of its frame.
    np.testing.assert_array_equal(out.joints[:, 2], (np.array(want0) + np.array(want1)) / 2)
    np.testing.assert_array_equal(out.confidence, conf)
    assert out.joints.dtype == np.float32
    again = fill_missing(out)  # filled joints keep confidence 0: filling again changes nothing
    np.testing.assert_array_equal(again.joints, out.joints)


def test_fill_missing_rejects_sequence_without_any_joint():
    with pytest.raises(BadInput, match="clip_7.npz: no valid joint"):
        fill_missing(seq_of(np.full((5, 3, 2), np.nan), source="clip_7.npz"))
    q = np.ones((4, 2, 2))
    with pytest.raises(BadInput, match="zero.npz"):
        fill_missing(seq_of(q, np.zeros((4, 2)), source="zero.npz"))


# ---------------------------------------------------------------- synthetic gestures
def test_synthetic_gestures_are_seeded_and_varied():
    a = generate_gestures(n_subjects=2, per_class=2, seed=5)
    b = generate_gestures(n_subjects=2, per_class=2, seed=5)
    c = generate_gestures(n_subjects=2, per_class=2, seed=6)
    assert len(a) == 2 * len(GESTURE_CLASSES) * 2
    for (ia, sa), (ib, sb) in zip(a, b, strict=True):
        assert ia == ib
        np.testing.assert_array_equal(sa.joints, sb.joints)
    assert any(sa.joints.shape != sc.joints.shape for (_, sa), (_, sc) in zip(a, c, strict=True))
    assert {i.label for i, _ in a} == set(GESTURE_CLASSES) and {i.subject for i, _ in a} == {
        "s00",
        "s01",
    }
    lengths = {s.joints.shape[0] for _, s in a}
    assert len(lengths) > 1 and min(lengths) >= 40 and max(lengths) <= 120
    assert all(s.joints.shape[1:] == (25, 2) for _, s in a)
    assert any((s.confidence == 0).any() for _, s in a)
    for _, s in a:
        assert np.array_equal(np.isnan(s.joints).any(-1), s.confidence == 0)
        fill_missing(s)
    small = generate_gestures(n_subjects=1, per_class=1, seed=5, num_joints=18)
    assert all(s.joints.shape[1:] == (18, 2) for _, s in small)
    with pytest.raises(ValueError, match="num_joints"):
        generate_gestures(num_joints=30)


def test_write_gesture_set_layout_and_round_trip(tmp_path):
    paths = write_gesture_set(tmp_path, n_subjects=2, per_class=1, seed=1)
    items = generate_gestures(n_subjects=2, per_class=1, seed=1)
    assert len(paths) == len(items)
    for path, (item, seq) in zip(paths, items, strict=True):
        assert path == tmp_path / item.label / f"{item.subject}_{path.stem.split('_')[1]}.npz"
        assert item.id == f"{item.label}/{path.stem}"
        back = read_joints(path)
        np.testing.assert_array_equal(back.joints, seq.joints)
        np.testing.assert_array_equal(back.confidence, seq.confidence)
    assert not list(tmp_path.rglob(".tmp-*"))


def test_synthetic_raise_and_lower_are_opposite_in_time():
    # The right wrist (joint 4) rises relative to the neck (joint 1) in "raise_right" and falls in
    # "lower_right" (image y points down), through the same range of heights.
    for item, seq in generate_gestures(n_subjects=3, per_class=2, seed=2):
        if item.label not in ("raise_right", "lower_right"):
            continue
        q = fill_missing(seq).joints
        height = q[:, 1, 1] - q[:, 4, 1]  # (T,)
        r = np.corrcoef(np.arange(len(q)), height)[0, 1]
        assert (r > 0.8) if item.label == "raise_right" else (r < -0.8), (item.id, r)


def test_kinect_metres_become_the_references_units_in_the_shard_row(tmp_path):
    """The paper's code maps Kinect coordinates with (1 - v) * 372 before normalising (which
    truncates to whole units); the shard row holds those units, other layouts stay as read."""
    from branches.gesture.data import GestureOptions, gesture_row
    from datasets.records import JointSequence, SourceItem

    rng = np.random.default_rng(5)
    q = table_values(rng, 4, 25)
    item = SourceItem("k", "s", "a", "k.csv")
    seq = JointSequence(q.copy(), np.ones((4, 25), np.float32), "k.csv", "kinect25")
    row = gesture_row(item, 0, seq, GestureOptions(fill_missing=False))
    np.testing.assert_allclose(row.joints[..., 0], (1 - q[..., 0]) * 372, rtol=1e-6)
    np.testing.assert_allclose(row.joints[..., 1], (1 - q[..., 1]) * 372, rtol=1e-6)
    np.testing.assert_array_equal(row.joints[..., 2], q[..., 2])
    other = JointSequence(q.copy(), np.ones((4, 25), np.float32), "x.npy", "array")
    np.testing.assert_array_equal(gesture_row(item, 0, other, GestureOptions()).joints, q)
