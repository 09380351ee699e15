"""A clear answer to every misuse: one line naming the file or flag, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from branches import DataInfo
from datasets.manifest import read_manifest
from datasets.records import SourceItem
from datasets.sources import label_warnings, scan_folders, scan_list
from distributed import evaluate
from distributed.core.config import default_config
from distributed.search.space import load_space
from distributed.training.checkpoint import TrainedOn, save_model
from distributed.training.launch import data_info
from distributed.training.steps import build
from tests.lines import one_line_error

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]


# --- evaluate reads what the checkpoint says about itself ---------------------------------------


@pytest.fixture(scope="module")
def outer0_model(gesture_shards, tmp_path_factory):
    """An (untrained) model whose file says: trained on outer fold 0's training rows."""
    cfg = default_config("gesture", rep_size=16, rep_length=24, width=8, se_reduction=4)
    data = data_info(read_manifest(gesture_shards))
    path = tmp_path_factory.mktemp("ckpt") / "outer0.pt"
    save_model(str(path), build(cfg, data).eval(), cfg, data, TrainedOn(0, None, "subjects"), "t")
    return str(path)


def _evaluate(capsys, ckpt, shards, *extra):
    code = evaluate.main(["--checkpoint", ckpt, "--shards", shards, *extra])
    return code, capsys.readouterr()


def test_evaluate_refuses_training_rows_and_names_the_held_out_fold(
    outer0_model, gesture_shards, tmp_path, capsys
):
    out = ["--out", str(tmp_path / "e")]
    code, io = _evaluate(capsys, outer0_model, gesture_shards, "--fold", "1", *out)
    assert code == 2
    one_line_error(io.err, "outer0.pt", "training rows of outer fold 0", "--fold 0",
                    "--allow-train-rows")  # fmt: skip
    assert not (tmp_path / "e").exists()
    code, io = _evaluate(capsys, outer0_model, gesture_shards, "--fold", "0", *out)
    assert code == 0 and "WAR" in io.out
    code, io = _evaluate(capsys, outer0_model, gesture_shards, "--fold", "1",
                         "--allow-train-rows", *out)  # fmt: skip
    assert code == 0
    for bad in ("7", "-1"):
        code, io = _evaluate(capsys, outer0_model, gesture_shards, "--fold", bad, *out)
        assert code == 2
        one_line_error(io.err, f"outer fold {bad} does not exist", "0..2")
    code, io = _evaluate(capsys, outer0_model, gesture_shards, "--fold", "0", "--inner", "5")
    assert code == 2
    one_line_error(io.err, "inner split 5 does not exist")


def test_evaluate_refuses_shards_preprocessed_otherwise(gesture_shards, tmp_path, capsys):
    cfg = default_config("gesture", rep_size=16, rep_length=24, width=8, se_reduction=4)
    data = data_info(read_manifest(gesture_shards))
    other = DataInfo(data.classes, {**data.options, "fill_missing": False}, data.num_joints)
    path = tmp_path / "m.pt"
    save_model(str(path), build(cfg, other), cfg, other, TrainedOn(0, None, "subjects"), "t")
    code, io = _evaluate(capsys, str(path), gesture_shards, "--fold", "0")
    assert code == 2
    one_line_error(io.err, "preprocessed otherwise", "fill_missing False vs True",
                    "--allow-other-preprocessing")  # fmt: skip


def test_garbage_checkpoints_get_one_line(gesture_shards, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(300))
    code, io = _evaluate(capsys, str(junk), gesture_shards, "--fold", "0")
    assert code == 2
    one_line_error(io.err, "junk.pt", "not a readable model checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    code, io = _evaluate(capsys, str(other), gesture_shards, "--fold", "0")
    assert code == 2
    one_line_error(io.err, "other.pt", "not an emovis model checkpoint")


# --- labels ----------------------------------------------------------------------------------


def _tree(root: Path, labels: dict[str, int]) -> Path:
    for label, n in labels.items():
        (root / label).mkdir(parents=True)
        for k in range(n):
            np.save(root / label / f"s{k}_x.npy", np.zeros((4, 25, 2), np.float32))
    return root


def test_label_typos_are_reported_and_a_class_list_rejects_them(tmp_path):
    root = _tree(tmp_path / "src", {"Happy": 3, "Hapy": 1, "sad": 2, "Sad": 3})
    items, _ = scan_folders(root, (".npy",))
    warnings = label_warnings(items)
    assert any("'Sad' (3), 'sad' (2)" in w for w in warnings), warnings
    assert any("single item: 'Hapy'" in w for w in warnings), warnings
    items, skipped = scan_folders(root, (".npy",), class_names=("Happy", "Sad"))
    assert {it.label for it in items} == {"Happy", "Sad"}
    assert {Path(p).name: why for p, why in skipped} == {
        "Hapy": "unknown label 'Hapy' (known: Happy, Sad)",
        "sad": "unknown label 'sad' (known: Happy, Sad)",
    }
    listing = tmp_path / "labels.txt"
    listing.write_text("Happy/s0_x.npy Happy\nsad/s0_x.npy sad\n")
    items, skipped = scan_list(root, listing, class_names=("Happy", "Sad"), extensions=(".npy",))
    assert [it.label for it in items] == ["Happy"]
    assert "labels.txt line 2: unknown label 'sad'" in skipped[0].reason


def test_preprocess_prints_label_warnings_before_decoding(tmp_path, ray_session, capsys):
    from datasets.synthetic_gesture import write_gesture_set
    from distributed import preprocess

    src = tmp_path / "g"
    write_gesture_set(src, n_subjects=2, per_class=2, seed=0)
    first = sorted(p for p in src.iterdir())[0]
    first.rename(src / first.name.upper())
    (src / first.name).mkdir()
    shutil.move(str(next((src / first.name.upper()).iterdir())), src / first.name)
    code = preprocess.main(["gesture", "--source", str(src), "--out", str(tmp_path / "o"),
                            "--folds", "2", "--inner-folds", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert "warning: labels" in err and "differ only in case/spacing" in err, err
    assert code in (0, 2)


# --- search spaces are checked before Ray starts ----------------------------------------------


def test_yaml_space_numbers_are_numbers(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("space:\n  lr: {loguniform: [1e-4, 1e-2]}\n  width: {choice: [8, 16]}\n")
    space = load_space("gesture", str(f))
    assert space.space["lr"] == {"loguniform": [1e-4, 1e-2]}


@pytest.mark.parametrize(
    "text,needles",
    [
        ("space:\n  learning_rate: {loguniform: [1e-4, 1e-2]}\n", ["learning_rate"]),
        ("space:\n  width: {choice: []}\n", ["width", "non-empty list"]),
        ("space:\n  lr: {loguniform: [0.1, 0.01]}\n", ["lr", "low < high"]),
        ("space:\n  lr: [oops\n", ["not valid YAML"]),
        ("spaces: {}\n", ["unknown top-level keys", "spaces"]),
        ("space:\n  representation: {choice: [timeline, pixels]}\n", ["representation"]),
    ],
)
def test_bad_space_files_fail_in_one_line_before_ray(text, needles, tmp_path, gesture_shards):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    store = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "distributed.tune", "gesture", "--smoke", "--shards",
         gesture_shards, "--space", str(f), "--storage", str(store)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    one_line_error(done.stderr, "bad.yaml", *needles)
    assert not store.exists()  # nothing written, no journal left behind
    assert "Started a local Ray instance" not in done.stderr + done.stdout


# --- symbolic links ---------------------------------------------------------------------------


def test_symlinks_out_of_the_source_and_loops_are_skipped_with_a_reason(tmp_path):
    root = _tree(tmp_path / "src", {"Happy": 2, "Sad": 2})
    (root / "Happy" / "evil").symlink_to("/etc")
    (root / "Sad" / "self").symlink_to(".")
    (root / "Sad" / "loop.npy").symlink_to(root / "Sad" / "loop.npy")
    (root / "escape").symlink_to(tmp_path)
    items, skipped = scan_folders(root, (".npy",))
    assert len(items) == 4
    why = {Path(p).name: r for p, r in skipped}
    assert "outside the source folder" in why["evil"] and "outside" in why["escape"]
    assert why["self"].startswith("symlink loop")
    assert why["loop.npy"].startswith("symlink loop")
    listing = tmp_path / "l.txt"
    listing.write_text("Happy/evil/passwd Happy\nHappy/s0_x.npy Happy\n")
    items, skipped = scan_list(root, listing, extensions=(".npy",))
    assert len(items) == 1 and "outside the source folder" in skipped[0].reason


def test_predict_walk_reads_a_folder_once(tmp_path):
    from branches import get_branch
    from distributed.predict import discover

    root = _tree(tmp_path / "src", {"a": 2})
    (root / "a" / "self").symlink_to(".")
    (root / "up").symlink_to(root)
    (root / "out").symlink_to("/etc")
    items, skipped = discover([str(root)], get_branch("gesture"))
    assert sorted(i for i, _ in items) == ["a/s0_x", "a/s1_x"]
    why = {Path(p).name: r for p, r in skipped}
    assert why["self"].startswith("symlink loop") and why["up"].startswith("symlink loop")
    assert "outside" in why["out"]


# --- outputs that cannot be written, frames that cannot be read --------------------------------


def test_unwritable_outputs_fail_in_one_line(gesture_shards, tmp_path, capsys):
    from distributed import preprocess

    src = tmp_path / "src"
    _tree(src, {"a": 2, "b": 2})
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, needle in ((a_file, "is a file, not a folder"),
                        (Path("/proc/self/emovis-out"), "cannot write")):  # fmt: skip
        code = preprocess.main(["gesture", "--source", str(src), "--out", str(out)])
        assert code == 2
        one_line_error(capsys.readouterr().err, str(out), needle)
    done = subprocess.run(
        [sys.executable, "-m", "distributed.tune", "gesture", "--smoke", "--shards",
         gesture_shards, "--storage", "/proc/self/emovis-runs"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    one_line_error(done.stderr, "/proc/self/emovis-runs", "cannot write")


def test_an_image_sequence_keeps_its_readable_frames(tmp_path):
    from branches.facial.data import FacialOptions, process_facial_item
    from datasets.faces import make_detector
    from datasets.video import decode_frames

    seq = tmp_path / "seq"
    seq.mkdir()
    for k in range(5):
        cv2.imwrite(str(seq / f"{k}.png"), np.full((16, 16, 3), 40 * k, np.uint8))
    (seq / "2.png").write_bytes(b"\x89PNG torn")
    got = decode_frames(seq)
    assert len(got.frames) == 4 and got.dropped == ("2.png",)
    assert got.notes() == ["1 of 5 frames unreadable and dropped (2.png)"]
    notes: list[str] = []
    item = SourceItem("x", "s", "a", str(seq))
    row = process_facial_item(item, 0, FacialOptions(size=16, detector="none"),
                              make_detector("none"), notes)  # fmt: skip
    assert row.frames.shape[0] == 4 and notes == got.notes()
    for k in range(5):
        (seq / f"{k}.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of its 5 images is readable"):
        decode_frames(seq)
    assert json.dumps(got.notes())
