"""Joint files -> :class:`datasets.records.JointSequence`, and filling of missing joints.

Accepted inputs (:func:`read_joints` dispatches on the path):

- a folder of OpenPose ``*_keypoints.json`` files, one per frame, ordered by the frame number
  written just before ``_keypoints.json`` (``clip_000000000012_keypoints.json`` is frame 12).
  ``people[i].pose_keypoints_2d`` is a flat ``[x, y, c] * J`` list; J = 25 is BODY_25 and J = 18 is
  COCO-18 (layouts ``"body25"`` / ``"coco18"``); every person of every frame must have the same J.
  A joint with confidence 0 is missing. One person is followed through the video
  (:func:`pick_people`); a frame with nobody in it has every joint missing.
- ``.csv`` / ``.txt``: one frame per line, values separated by commas, semicolons or whitespace,
  an optional first line of column names (any line whose fields are not all numbers; it must name
  as many columns as the lines hold, else which column is which is ambiguous). A line holds
  ``k`` leading columns (frame index and/or timestamp; k = 0, 1 or 2, the same on every line, then
  dropped) followed by x, y, z of each joint, joint by joint. 75 + k values are a Kinect v2 skeleton
  (25 joints, layout ``"kinect25"``; a joint at exactly (0, 0, 0), the sensor itself, is Kinect's
  "not tracked" and counts as missing); 84 + k values are motion capture in the Emilya layout
  (28 joints, ``"mocap28"``). Empty fields and ``nan`` are missing joints.
- ``.npy``: an array (T, J, D), D = 2 or 3, NaN for missing joints (layout ``"array"``).
- ``.npz``: key ``joints`` (T, J, D) and optional ``confidence`` (T, J) (layout ``"array"``).

:func:`joint_layout` tells a file's layout and joint count from its first lines or header, and
:func:`one_layout` keeps a set's majority layout (the preprocessing job: one per shard folder).
Every reader returns float32 arrays where a joint is missing exactly when its coordinates are
NaN and its confidence is 0. Problems raise :class:`datasets.records.BadInput` naming the file.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from datasets.records import BadInput, JointSequence, SourceItem

OPENPOSE_LAYOUTS = {25: "body25", 18: "coco18"}
TABLE_LAYOUTS = {25: "kinect25", 28: "mocap28"}
_FRAME_NUMBER = re.compile(r"(\d+)_keypoints\.json$")
_SEPARATORS = re.compile(r"[,;\s]+")


def _consistent(joints: np.ndarray, confidence: np.ndarray, source: str, layout: str):
    """Make NaN coordinates and confidence 0 (or non-finite) mean the same thing."""
    joints = np.asarray(joints, dtype=np.float32)
    confidence = np.asarray(confidence, dtype=np.float32)
    if joints.ndim != 3 or joints.shape[0] < 1 or joints.shape[1] < 1:
        raise BadInput(source, f"expected joints (T>=1, J>=1, D), got shape {joints.shape}")
    missing = ~np.isfinite(joints).all(axis=-1) | ~(confidence > 0)  # (T, J)
    joints = np.where(missing[..., None], np.float32(np.nan), joints)
    confidence = np.where(missing, np.float32(0), confidence)
    return JointSequence(joints, confidence, source, layout)


# ---------------------------------------------------------------- OpenPose
def _centroid(person: np.ndarray) -> np.ndarray | None:
    """Mean (x, y) of a person's confident joints; person is (J, 3) [x, y, c]."""
    seen = person[:, 2] > 0
    return person[seen, :2].mean(axis=0) if seen.any() else None


def pick_people(frames: list[np.ndarray]) -> list[int | None]:
    """Choose one person per frame from ``frames`` (each (P, J, 3) [x, y, c]; P may be 0).

    Rule: the first pick is the person with the highest mean confidence over all J joints; after
    that, in each frame, the person whose centroid (mean x, y of the joints with confidence > 0) is
    nearest the centroid of the last picked person, so a second person who is briefly more
    confident does not steal the track. When no candidate has a centroid (or nothing was picked
    yet), the highest mean confidence wins. Returns the picked index per frame (None: nobody).
    """
    picks: list[int | None] = []
    last: np.ndarray | None = None
    for people in frames:
        if len(people) == 0:
            picks.append(None)
            continue
        pick = int(np.argmax(people[:, :, 2].mean(axis=1)))
        if last is not None:
            centres = [_centroid(p) for p in people]
            dist = [np.inf if c is None else float(np.hypot(*(c - last))) for c in centres]
            if np.isfinite(min(dist)):
                pick = int(np.argmin(dist))
        picks.append(pick)
        centre = _centroid(people[pick])
        last = last if centre is None else centre
    return picks


def _read_keypoint_file(path: Path) -> np.ndarray:
    """One OpenPose frame -> (P, J, 3) float32."""
    try:
        data = json.loads(path.read_text())
        people = [p["pose_keypoints_2d"] for p in data["people"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInput(str(path), f"not an OpenPose keypoint file ({err!r})") from None
    if not people:
        return np.zeros((0, 0, 3), np.float32)
    sizes = {len(p) for p in people}
    if len(sizes) != 1 or (size := sizes.pop()) % 3 or size // 3 not in OPENPOSE_LAYOUTS:
        raise BadInput(
            str(path),
            f"pose_keypoints_2d lengths {sorted(len(p) for p in people)}; "
            f"expected 3 x {sorted(OPENPOSE_LAYOUTS)} values per person",
        )
    try:
        arr = np.asarray(people, dtype=np.float32)  # (P, 3J)
    except (ValueError, TypeError) as err:
        raise BadInput(str(path), f"non-numeric keypoints ({err})") from None
    return arr.reshape(len(people), size // 3, 3)  # (P, J, 3)


def _numbered_frames(folder: Path) -> list[tuple[int, Path]]:
    """An OpenPose folder's keypoint files in frame order."""
    files = list(folder.glob("*_keypoints.json"))
    if not files:
        raise BadInput(str(folder), "no *_keypoints.json files in this folder")
    numbered = []
    for f in files:
        m = _FRAME_NUMBER.search(f.name)
        if m is None:
            raise BadInput(str(f), "no frame number before '_keypoints.json'")
        numbered.append((int(m.group(1)), f))
    numbered.sort()
    if len({n for n, _ in numbered}) != len(numbered):
        raise BadInput(str(folder), "two keypoint files share a frame number")
    return numbered


def read_openpose(folder: str | Path) -> JointSequence:
    """Read a folder of OpenPose ``*_keypoints.json`` files (see the module docstring)."""
    folder = Path(folder)
    frames = [_read_keypoint_file(f) for _, f in _numbered_frames(folder)]
    counts = {fr.shape[1] for fr in frames if len(fr)}
    if not counts:
        raise BadInput(str(folder), "no person detected in any frame")
    if len(counts) != 1:
        raise BadInput(str(folder), f"frames disagree on the keypoint count: {sorted(counts)}")
    J = counts.pop()
    out = np.full((len(frames), J, 3), np.nan, np.float32)  # (T, J, [x, y, c])
    out[..., 2] = 0
    for t, (people, pick) in enumerate(zip(frames, pick_people(frames), strict=True)):
        if pick is not None:
            out[t] = people[pick]
    return _consistent(out[..., :2], out[..., 2], str(folder), OPENPOSE_LAYOUTS[J])


# ---------------------------------------------------------------- Kinect / mocap tables
def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _table_rows(lines: list[str]) -> list[list[str]]:
    # Split on separators but keep empty CSV fields (",,") as missing values.
    return [
        [f.strip() for f in re.split(r"[,;]", ln)]
        if re.search(r"[,;]", ln)
        else _SEPARATORS.split(ln.strip())
        for ln in lines
    ]


def _table_layout(rows: list[list[str]], path: Path) -> tuple[list[list[str]], str, int, int]:
    """(data rows, layout, joints J, leading columns) of a table's split lines; a header line is
    dropped, and must name as many columns as the data lines hold."""
    header = None
    if rows and not all(_is_number(f) for f in rows[0] if f):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise BadInput(str(path), "no data lines")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise BadInput(str(path), f"lines have different numbers of columns: {sorted(widths)}")
    width = widths.pop()
    if header is not None and len(header) != width:
        raise BadInput(
            str(path),
            f"the header names {len(header)} columns but the lines hold {width} values: "
            "which columns are which is ambiguous",
        )
    for joints, name in TABLE_LAYOUTS.items():
        if 3 * joints <= width <= 3 * joints + 2:
            return rows, name, joints, width - 3 * joints
    raise BadInput(
        str(path),
        f"{width} columns: expected 75-77 (Kinect v2, 25 joints) or "
        "84-86 (mocap, 28 joints): up to 2 leading columns, then x, y, z per joint",
    )


def _table_lines(path: Path, limit: int | None = None) -> list[str]:
    """The non-blank lines of a table file (the first ``limit`` of them)."""
    try:
        with open(path) as f:
            lines = []
            for ln in f:
                if ln.strip():
                    lines.append(ln.rstrip("\r\n"))
                    if limit is not None and len(lines) == limit:
                        break
            return lines
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(str(path), f"cannot read ({err})") from None


def read_table(path: str | Path) -> JointSequence:
    """Read a Kinect v2 (25 joints) or motion-capture (28 joints) CSV/text file.

    See the module docstring for the accepted columns.
    """
    path = Path(path)
    rows, layout, J, lead = _table_layout(_table_rows(_table_lines(path)), path)
    try:
        values = np.array([[float(f) if f else np.nan for f in r[lead:]] for r in rows], np.float64)
    except ValueError as err:
        raise BadInput(str(path), f"non-numeric value ({err})") from None
    joints = values.reshape(len(rows), J, 3)  # (T, J, 3)
    confidence = np.ones(joints.shape[:2], np.float32)
    if layout == "kinect25":
        confidence[(joints == 0).all(axis=-1)] = 0
    return _consistent(joints, confidence, str(path), layout)


# ---------------------------------------------------------------- numpy files
def read_array(path: str | Path) -> JointSequence:
    """Read ``.npy`` (T, J, D) or ``.npz`` (``joints`` and optional ``confidence``)."""
    path = Path(path)
    confidence = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "joints" not in loaded.files:
                    raise BadInput(str(path), f"no 'joints' key (keys: {sorted(loaded.files)})")
                joints = loaded["joints"]
                if "confidence" in loaded.files:
                    confidence = loaded["confidence"]
        else:
            joints = loaded
    except (OSError, ValueError, EOFError) as err:
        if isinstance(err, BadInput):
            raise
        raise BadInput(str(path), f"not a readable numpy file ({err})") from None
    if joints.ndim != 3 or joints.shape[2] not in (2, 3):
        raise BadInput(str(path), f"joints must be (T, J, 2|3), got {joints.shape}")
    if confidence is None:
        confidence = np.ones(joints.shape[:2], np.float32)
    elif confidence.shape != joints.shape[:2]:
        raise BadInput(str(path), f"confidence {confidence.shape} does not match {joints.shape}")
    return _consistent(joints, confidence, str(path), "array")


def read_joints(path: str | Path) -> JointSequence:
    """Read any accepted joint input: an OpenPose folder, ``.csv``/``.txt``, ``.npy``, ``.npz``."""
    path = Path(path)
    if path.is_dir():
        return read_openpose(path)
    if not path.is_file():
        raise BadInput(str(path), "no such file or folder")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return read_table(path)
    if suffix in (".npy", ".npz"):
        return read_array(path)
    raise BadInput(
        str(path),
        f"unknown joint format {suffix!r}: expected an OpenPose folder, .csv, .txt, .npy or .npz",
    )


def joint_layout(path: str | Path) -> tuple[str, int]:
    """(layout, joints per frame) of a joint input, read from as little of it as tells: an
    OpenPose folder's first frame with a person, a table's first lines, a ``.npy`` header. The
    preprocessing job keeps one layout per shard folder with it. Raises ``BadInput`` as
    :func:`read_joints` would."""
    path = Path(path)
    if path.is_dir():
        for _, frame in _numbered_frames(path):
            people = _read_keypoint_file(frame)
            if len(people):
                return OPENPOSE_LAYOUTS[people.shape[1]], people.shape[1]
        raise BadInput(str(path), "no person detected in any frame")
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".csv", ".txt"):
        _, layout, J, _ = _table_layout(_table_rows(_table_lines(path, limit=3)), path)
        return layout, J
    if path.is_file() and suffix == ".npy":
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError, EOFError) as err:
            raise BadInput(str(path), f"not a readable numpy file ({err})") from None
        if len(shape) != 3 or shape[2] not in (2, 3):
            raise BadInput(str(path), f"joints must be (T, J, 2|3), got {shape}")
        return "array", int(shape[1])
    seq = read_joints(path)  # .npz (small) and anything read_joints refuses
    return seq.layout, seq.joints.shape[1]


def one_layout(source: str, items: list[SourceItem]) -> tuple[list[SourceItem], list[list[str]]]:
    """(kept items, skipped [path, reason]) of a set of joint files: those of the set's majority
    layout (layout name and joints per frame, :func:`joint_layout`) are kept, every other file
    is skipped with its layout named, one that cannot be read with its reason. Layouts in equal
    numbers raise ``BadInput`` naming them: which one the set means is ambiguous."""
    layout_of, skipped = {}, []
    for it in items:
        try:
            layout_of[it.id] = joint_layout(it.path)
        except BadInput as err:
            skipped.append([err.path, err.reason])
    ranked = Counter(layout_of.values()).most_common()
    if not ranked:
        return [], skipped

    def said(layout: tuple[str, int]) -> str:
        return f"{layout[0]} ({layout[1]} joints)"

    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        tied = ", ".join(f"{n} x {said(lay)}" for lay, n in ranked if n == ranked[0][1])
        raise BadInput(source, f"joint files of several layouts, none in the majority: {tied}; "
                               "keep one layout per source folder")  # fmt: skip
    main, n = ranked[0]
    for it in items:
        layout = layout_of.get(it.id)
        if layout is not None and layout != main:
            skipped.append([it.path, f"joint layout {said(layout)} differs from the set's "
                            f"{said(main)} ({n} of {len(layout_of)} files): one layout per "
                            "shard folder"])  # fmt: skip
    return [it for it in items if layout_of.get(it.id) == main], skipped


# ---------------------------------------------------------------- missing joints
def fill_missing(seq: JointSequence) -> JointSequence:
    """Fill missing joints (NaN or confidence 0) so every coordinate is finite.

    Per joint and coordinate, frames between observations are linearly interpolated over the frame
    index and frames before the first / after the last observation copy the nearest observation.
    A joint never observed in the sequence is placed, in each frame, at the mean of the other
    (already filled) joints, so it sits inside the body and leaves the per-frame min/max
    normalisation of the observed joints unchanged. A sequence with no observed joint at all is
    rejected (BadInput naming ``seq.source``). Confidences are returned unchanged, so filled
    joints keep confidence 0 and the result can be filled again to the same values.
    """
    joints, conf = seq.joints, seq.confidence
    T, J, D = joints.shape
    observed = np.isfinite(joints).all(axis=-1) & (conf > 0)  # (T, J)
    seen = observed.any(axis=0)  # (J,)
    if not seen.any():
        raise BadInput(seq.source, "no valid joint in any frame")
    out = np.empty((T, J, D), np.float64)
    t = np.arange(T)
    for j in np.flatnonzero(seen):
        frames = np.flatnonzero(observed[:, j])
        for d in range(D):
            out[:, j, d] = np.interp(t, frames, joints[frames, j, d].astype(np.float64))
    if not seen.all():
        out[:, ~seen] = out[:, seen].mean(axis=1, keepdims=True)  # (T, unseen, D)
    return JointSequence(out.astype(np.float32), conf.copy(), seq.source, seq.layout)


__all__ = [
    "OPENPOSE_LAYOUTS",
    "TABLE_LAYOUTS",
    "fill_missing",
    "joint_layout",
    "one_layout",
    "pick_people",
    "read_array",
    "read_joints",
    "read_openpose",
    "read_table",
]
