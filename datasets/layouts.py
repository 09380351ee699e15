"""Readers for the DFEW, MAFW and FERV39k release layouts with their official splits.

Each ``scan_<dataset>(root)`` returns ``LayoutScan(items, skipped, classes, folds, name)``: the
usable items (``SourceItem``, subject "" since none of these releases names subjects), every
skipped entry with a reason naming the split file and line, the class order, and the official
protocol as outer folds of train / test ids. Nothing is dropped silently: a split-file line that
cannot be read, an unknown label, a listed item missing on disk, a duplicate line, or an item that
is not listed in every set is in ``skipped``. An id listed in both the train and the test file of
one set, or with two different labels, is ``BadInput`` (the protocol itself would be wrong).

Formats, established from public loaders (our code; no line of theirs):

- DFEW (release README; sunlicai/MAE-DFER ``preprocess/dfew.py``; zengqunzhao/DFER-CLIP
  ``annotation/preprocess_annotation.py``): ``EmoLabel_DataSplit/train(single-labeled)/set_N.csv``
  and ``test(single-labeled)/set_N.csv``, N = 1..5, CSV with the header ``video_name,label``;
  ``video_name`` is the clip number, which loaders zero-pad to 5 digits to find the clip; ``label``
  is 1..7 = Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear. Frames:
  ``Clip/clip_224x224/<00001>/*.jpg`` (face-aligned); original videos: ``Clip/original/<clip>.mp4``
  (shipped as zip parts, so searched recursively). id = the clip number as the CSV writes it.
- MAFW (MAFW-database/MAFW ``README.md``; sunlicai/MAE-DFER ``preprocess/mafw.py``):
  ``Train & Test Set/single/no_caption/set_N/{train,test}.txt``, N = 1..5, lines
  ``00025.mp4 anger`` (space separated, no header); 11 classes spelled anger, disgust, fear,
  happiness, neutral, sadness, surprise, contempt, anxiety, helplessness, disappointment (MAFW's
  own 1..11 order). Clips ``data/clips/<name>.mp4`` or frames ``data/frames/<name>/``. id = the
  clip name as written, without its video extension.
- FERV39k (sunlicai/MAE-DFER ``preprocess/ferv39k.py``; zengqunzhao/DFER-CLIP
  ``annotation/FERV39K_test.txt``): ``4_setups/All_scenes/{train,test}_All.csv``, lines
  ``Action/Happy/0015 Happy`` (space separated, no header), one fixed split; 7 classes in the order
  Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear. Frames:
  ``2_ClipsforFaceCrop/<Scene>/<Class>/<clip>/``. id = the clip's relative path as written.

Frame folders are read with ``datasets.video.list_images`` (natural order: ``2.jpg`` before
``10.jpg``); the public loaders' plain ``sorted()`` would put ``10.jpg`` first.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from datasets.records import BadInput, SourceItem
from datasets.sources import Skipped
from datasets.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, natural_key

DFEW_CLASSES: tuple[str, ...] = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
MAFW_CLASSES: tuple[str, ...] = (
    "anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
    "contempt", "anxiety", "helplessness", "disappointment",
)  # fmt: skip
FERV39K_CLASSES: tuple[str, ...] = (
    "Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear",
)  # fmt: skip
DFEW_NAME = "DFEW 5-fold official"
MAFW_NAME = "MAFW 5-fold official"
FERV39K_NAME = "FERV39k official train/test"
SOURCES = ("auto", "frames", "video")
ROLES = ("train", "test")


class OfficialFold(NamedTuple):
    """One outer fold of an official protocol: sorted train ids and sorted test ids."""

    train: tuple[str, ...]
    test: tuple[str, ...]


class LayoutScan(NamedTuple):
    """A scanned release: items (natural id order), skipped entries, the class order, the
    official outer folds and the protocol's human-readable name."""

    items: list[SourceItem]
    skipped: list[Skipped]
    classes: tuple[str, ...]
    folds: tuple[OfficialFold, ...]
    name: str


class _Entry(NamedTuple):
    id: str
    label: str
    file: str  # the split file
    where: str  # "<split file relative to root> line N"


# id -> (path, "") when found, else (the expected path, why it is unusable)
Resolver = Callable[[str], tuple[Path, str]]


def _lines(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(errors="replace").lstrip("\ufeff")
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), start=1) if s.strip()]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _has_images(folder: Path) -> bool:
    # early exit: a real frame folder holds hundreds of files, one is enough to know
    with os.scandir(folder) as it:
        return any(
            e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
            for e in it
        )


def _frame_folder(base: Path, names: Sequence[str]) -> tuple[Path, str]:
    for name in names:
        if (base / name).is_dir():
            if _has_images(base / name):
                return base / name, ""
            return base / name, "frame folder holds no images"
    return base / names[0], "missing on disk (no such frame folder)"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise BadInput(str(path), f"missing ({what})")
    return path


def _canonical(classes: Sequence[str]) -> dict[str, str]:
    return {c.lower(): c for c in classes}


def _assemble(
    root: Path,
    name: str,
    classes: tuple[str, ...],
    sets: list[tuple[list[_Entry], list[_Entry]]],
    skipped: list[Skipped],
    resolve: Resolver,
) -> LayoutScan:
    """Check the parsed split files, resolve ids on disk and build the official folds."""
    first: dict[str, _Entry] = {}
    members: list[tuple[set[str], set[str]]] = []
    for k, (train, test) in enumerate(sets, start=1):
        where_in: dict[str, dict[str, _Entry]] = {"train": {}, "test": {}}
        for role, entries in (("train", train), ("test", test)):
            seen = where_in[role]
            for e in entries:
                if e.id in seen:
                    skipped.append(Skipped(e.file, f"{e.where}: duplicate of {seen[e.id].where}"))
                    continue
                seen[e.id] = e
                earlier = first.setdefault(e.id, e)
                if earlier.label != e.label:
                    raise BadInput(
                        str(root),
                        f"{e.where}: {e.id!r} is labelled {e.label!r}, but {earlier.label!r} "
                        f"at {earlier.where}",
                    )
        both = sorted(where_in["train"].keys() & where_in["test"].keys(), key=natural_key)
        if both:
            a, b = where_in["train"][both[0]], where_in["test"][both[0]]
            raise BadInput(
                str(root),
                f"set {k}: {len(both)} id(s) in both train and test, e.g. {both[0]!r} at "
                f"{a.where} and {b.where}",
            )
        members.append((set(where_in["train"]), set(where_in["test"])))

    paths: dict[str, Path] = {}
    for item_id, e in first.items():
        path, why = resolve(item_id)
        if why:
            skipped.append(Skipped(str(path), f"{e.where}: {item_id!r} {why}"))
        else:
            paths[item_id] = path
    if len(sets) > 1:
        listed = [tr | te for tr, te in members]
        for item_id in list(paths):
            absent = [k for k, ids in enumerate(listed, start=1) if item_id not in ids]
            if absent:
                sets_txt = ", ".join(str(k) for k in absent)
                reason = f"{first[item_id].where}: {item_id!r} is not in set(s) {sets_txt}"
                skipped.append(Skipped(str(paths.pop(item_id)), reason))
    if not paths:
        hint = f"; first: {skipped[0].reason}" if skipped else ""
        raise BadInput(str(root), f"no usable item ({len(skipped)} skipped{hint})")
    items = [
        SourceItem(i, "", first[i].label, str(paths[i])) for i in sorted(paths, key=natural_key)
    ]
    folds = tuple(
        OfficialFold(tuple(sorted(tr & paths.keys())), tuple(sorted(te & paths.keys())))
        for tr, te in members
    )
    return LayoutScan(items, skipped, classes, folds, name)


def _source_dir(source: str, frames: Path, videos: Path, root: Path) -> str:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "auto":
        if frames.is_dir():
            return "frames"
        if videos.is_dir():
            return "video"
        raise BadInput(str(root), f"neither {_rel(frames, root)} nor {_rel(videos, root)} exists")
    _require(frames if source == "frames" else videos, f"{source} of the release")
    return source


# --- DFEW -----------------------------------------------------------------------------------


def _dfew_split_file(root: Path, role: str, k: int) -> Path:
    split = root / "EmoLabel_DataSplit"
    # the README names the zips "train(single_labeled)", the unpacked folders use a hyphen
    for spelling in ("single-labeled", "single_labeled"):
        path = split / f"{role}({spelling})" / f"set_{k}.csv"
        if path.is_file():
            return path
    raise BadInput(str(split / f"{role}(single-labeled)" / f"set_{k}.csv"), "split file missing")


def _parse_dfew(path: Path, root: Path, skipped: list[Skipped]) -> list[_Entry]:
    rel = _rel(path, root)
    lines = _lines(path)
    if not lines:
        raise BadInput(str(path), "empty split file (expected the header 'video_name,label')")
    header = [c.strip().lower() for c in next(csv.reader([lines[0][1]]))]
    if "video_name" not in header or "label" not in header:
        raise BadInput(str(path), f"line {lines[0][0]}: expected the header 'video_name,label'")
    col_id, col_label = header.index("video_name"), header.index("label")
    entries = []
    for lineno, line in lines[1:]:
        where = f"{rel} line {lineno}"
        row = [c.strip() for c in next(csv.reader([line]))]
        if len(row) != len(header) or not row[col_id].isdigit():
            skipped.append(Skipped(str(path), f"{where}: unreadable line {line!r}"))
            continue
        code = row[col_label]
        if not (code.isdigit() and 1 <= int(code) <= len(DFEW_CLASSES)):
            skipped.append(Skipped(str(path), f"{where}: unknown label {code!r} (expected 1..7)"))
            continue
        entries.append(_Entry(row[col_id], DFEW_CLASSES[int(code) - 1], str(path), where))
    return entries


def scan_dfew(root: str | Path, source: str = "auto", n_sets: int = 5) -> LayoutScan:
    """DFEW release: official 5-fold sets of single-labelled clips (see the module docstring).

    ``source``: "frames" (``Clip/clip_224x224``), "video" (``Clip/original``) or "auto" (frames
    when that folder exists, else videos). A clip folder is ``<id>`` or ``<id>`` zero-padded to 5
    digits (the release's folder names).
    """
    root = _require(Path(root), "DFEW release folder")
    sets, skipped = [], []
    for k in range(1, n_sets + 1):
        train, test = (_parse_dfew(_dfew_split_file(root, r, k), root, skipped) for r in ROLES)
        sets.append((train, test))
    frames, videos = root / "Clip" / "clip_224x224", root / "Clip" / "original"
    kind = _source_dir(source, frames, videos, root)

    def names(clip: str) -> list[str]:
        return list(dict.fromkeys([f"{int(clip):05d}", clip, str(int(clip))]))

    if kind == "frames":
        return _assemble(
            root, DFEW_NAME, DFEW_CLASSES, sets, skipped, lambda c: _frame_folder(frames, names(c))
        )
    index = {p.stem: p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS}

    def video(clip: str) -> tuple[Path, str]:
        found = [index[n] for n in names(clip) if n in index]
        if found:
            return found[0], ""
        return videos / f"{names(clip)[0]}.mp4", "missing on disk (no such video)"

    return _assemble(root, DFEW_NAME, DFEW_CLASSES, sets, skipped, video)


# --- MAFW -----------------------------------------------------------------------------------

MAFW_SPLIT_DIRS = ("Train & Test Set", "Train_Test_Set")


def _parse_mafw(path: Path, root: Path, skipped: list[Skipped]) -> list[_Entry]:
    rel, canon = _rel(path, root), _canonical(MAFW_CLASSES)
    entries = []
    for lineno, line in _lines(path):
        where = f"{rel} line {lineno}"
        fields = line.split()
        if len(fields) != 2:
            skipped.append(Skipped(str(path), f"{where}: unreadable line {line!r}"))
            continue
        name, label = fields
        stem, ext = os.path.splitext(name)
        clip = stem if ext.lower() in VIDEO_EXTENSIONS else name
        if label.lower() not in canon:
            skipped.append(Skipped(str(path), f"{where}: unknown label {label!r}"))
            continue
        entries.append(_Entry(clip, canon[label.lower()], str(path), where))
    return entries


def scan_mafw(root: str | Path, source: str = "auto", n_sets: int = 5) -> LayoutScan:
    """MAFW release, single-expression set without captions: official 5-fold sets.

    ``source``: "frames" (``data/frames/<clip>/``), "video" (``data/clips/<clip>.mp4``) or "auto"
    (frames when that folder exists, else clips).
    """
    root = _require(Path(root), "MAFW release folder")
    split = next((root / d for d in MAFW_SPLIT_DIRS if (root / d).is_dir()), None)
    if split is None:
        raise BadInput(str(root / MAFW_SPLIT_DIRS[0]), "split folder missing (not a MAFW release)")
    split = split / "single" / "no_caption"
    sets, skipped = [], []
    for k in range(1, n_sets + 1):
        files = [_require(split / f"set_{k}" / f"{r}.txt", "split file") for r in ROLES]
        train, test = (_parse_mafw(f, root, skipped) for f in files)
        sets.append((train, test))
    frames, clips = root / "data" / "frames", root / "data" / "clips"
    kind = _source_dir(source, frames, clips, root)

    def resolve(clip: str) -> tuple[Path, str]:
        if kind == "frames":
            return _frame_folder(frames, [clip])
        found = [clips / (clip + e) for e in VIDEO_EXTENSIONS if (clips / (clip + e)).is_file()]
        if found:
            return found[0], ""
        return clips / f"{clip}.mp4", "missing on disk (no such clip)"

    return _assemble(root, MAFW_NAME, MAFW_CLASSES, sets, skipped, resolve)


# --- FERV39k --------------------------------------------------------------------------------


def _parse_ferv39k(path: Path, root: Path, skipped: list[Skipped]) -> list[_Entry]:
    rel, canon = _rel(path, root), _canonical(FERV39K_CLASSES)
    entries = []
    for lineno, line in _lines(path):
        where = f"{rel} line {lineno}"
        fields = line.split()
        clip = fields[0].replace("\\", "/").strip("/") if len(fields) == 2 else ""
        parts = clip.split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
            skipped.append(Skipped(str(path), f"{where}: unreadable line {line!r}"))
            continue
        label = fields[1]
        if label.lower() not in canon:
            skipped.append(Skipped(str(path), f"{where}: unknown label {label!r}"))
            continue
        if parts[1].lower() != label.lower():
            reason = f"{where}: label {label!r} disagrees with the clip's class folder {parts[1]!r}"
            skipped.append(Skipped(str(path), reason))
            continue
        entries.append(_Entry(clip, canon[label.lower()], str(path), where))
    return entries


def scan_ferv39k(root: str | Path) -> LayoutScan:
    """FERV39k release: the fixed All_scenes train/test split over face-crop frame folders."""
    root = _require(Path(root), "FERV39k release folder")
    clips = _require(root / "2_ClipsforFaceCrop", "face-crop clips of the release")
    if (clips / "2_ClipsforFaceCrop").is_dir():  # the zip unpacks into a folder of the same name
        clips = clips / "2_ClipsforFaceCrop"
    setups = root / "4_setups" / "All_scenes"
    skipped: list[Skipped] = []
    files = [_require(setups / f"{r}_All.csv", "split file") for r in ROLES]
    train, test = (_parse_ferv39k(f, root, skipped) for f in files)

    def resolve(clip: str) -> tuple[Path, str]:
        return _frame_folder(clips, [clip])

    return _assemble(root, FERV39K_NAME, FERV39K_CLASSES, [(train, test)], skipped, resolve)


# ---------------------------------------------------------------- the registry


class Release(NamedTuple):
    """A dataset release whose own files name its classes and its official outer folds: the
    reader, and what preprocessing and ``distributed.folds`` say about it."""

    key: str  # --layout and --protocol name
    scan: Callable[[str], LayoutScan]
    title: str


RELEASES: dict[str, Release] = {
    r.key: r
    for r in (
        Release("dfew", scan_dfew, DFEW_NAME),
        Release("mafw", scan_mafw, MAFW_NAME),
        Release("ferv39k", scan_ferv39k, FERV39K_NAME),
    )
}
# Every --layout preprocessing reads: the three generic ones (datasets.sources), then the
# releases. Adding a release is one entry above and its reader.
LAYOUTS: tuple[str, ...] = ("ckplus", "list", "folders", *RELEASES)
VIDEO_ONLY: tuple[str, ...] = ("ckplus", *RELEASES)  # hold videos / image sequences (faces)
