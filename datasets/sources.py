"""Scan a source folder into labelled ``SourceItem`` records, listing every skipped entry.

Three layouts: the CK+ release (``scan_ckplus``), a label list of ``<relative path> <Label>``
lines such as the reference's fold lists (``scan_list``) and one folder per label
(``scan_folders``). Each returns ``Scan(items, skipped)``; nothing is dropped silently: every
entry that cannot be used is in ``skipped`` as ``(path, reason)``. Hidden files and folders (names
starting with ".") are ignored. A source with no usable item at all raises ``BadInput``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from datasets.records import BadInput, SourceItem
from datasets.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images

# CK+ emotion codes 1..7 in this order; the names match the reference's fold lists.
CKPLUS_CLASSES: tuple[str, ...] = (
    "Angry",
    "Contempt",
    "Disgust",
    "Fear",
    "Happy",
    "Sad",
    "Surprise",
)
CANONICAL_ORDERS: tuple[tuple[str, ...], ...] = (CKPLUS_CLASSES,)
SUBJECT_PATTERN = r"^([^_]+)_"


class Skipped(NamedTuple):
    """An entry left out of the dataset and why."""

    path: str
    reason: str


class Scan(NamedTuple):
    """Result of a scan: usable items (source order) and skipped entries."""

    items: list[SourceItem]
    skipped: list[Skipped]


def _visible(entries: Iterable[Path]) -> list[Path]:
    return sorted((p for p in entries if not p.name.startswith(".")), key=lambda p: p.name)


def link_problem(path: Path, root_real: Path, ancestors: Iterable[Path] = ()) -> str | None:
    """Why a symbolic link must not be followed, or None: a broken link or a loop, a link that
    resolves outside the source folder (``evil -> /etc`` passes a ``..`` check), or a link back to
    one of the folders being walked (``d/self -> .``: walked again, forever)."""
    if not path.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        return "symlink loop (the link resolves to itself)"
    except OSError as err:
        if "loop" in str(err).lower() or getattr(err, "errno", None) == 40:
            return "symlink loop (the link resolves to itself)"
        return f"broken symlink ({err.strerror or err})"
    if target != root_real and root_real not in target.parents:
        return f"symlink to {target}, outside the source folder {root_real}"
    if target.is_dir() and (target == root_real or target in set(ancestors)):
        return f"symlink loop: points back to {target}, a folder already being read"
    return None


def _require_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise BadInput(str(root), "source folder does not exist")
    if not root.is_dir():
        raise BadInput(str(root), "source path is not a folder")
    if not _visible(root.iterdir()):
        raise BadInput(str(root), "source folder is empty")
    return root


def _finish(root: Path, items: list[SourceItem], skipped: list[Skipped]) -> Scan:
    if not items:
        first = f"; first: {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise BadInput(str(root), f"no usable item ({len(skipped)} skipped{first})")
    return Scan(items, skipped)


def _parse_ckplus_label(path: Path) -> int:
    text = path.read_text(errors="replace").strip()
    try:
        value = float(text)
    except ValueError:
        raise BadInput(str(path), f"emotion label is not a number: {text[:40]!r}") from None
    code = int(round(value))
    if code != value or not 1 <= code <= len(CKPLUS_CLASSES):
        raise BadInput(str(path), f"emotion code {text!r} is not one of 1..{len(CKPLUS_CLASSES)}")
    return code


def scan_ckplus(root: str | Path) -> Scan:
    """CK+ release: ``root/cohn-kanade-images/Sxxx/yyy/*.png`` and
    ``root/Emotion/Sxxx/yyy/*_emotion.txt``.

    id = "S010/004", subject = "S010", label = ``CKPLUS_CLASSES[code - 1]``. Sequences without an
    emotion file (about 2/3 of CK+) are skipped with the reason "unlabelled sequence".
    """
    root = _require_dir(root)
    images = root / "cohn-kanade-images"
    if not images.is_dir():
        raise BadInput(str(root), "no cohn-kanade-images folder (not a CK+ release)")
    labels = root / "Emotion"
    if not labels.is_dir() and (root / "Emotion_labels" / "Emotion").is_dir():
        labels = root / "Emotion_labels" / "Emotion"
    items: list[SourceItem] = []
    skipped: list[Skipped] = []
    real = root.resolve()
    for subject_dir in _visible(images.iterdir()):
        why = link_problem(subject_dir, real, [images.resolve()])
        if why:
            skipped.append(Skipped(str(subject_dir), why))
            continue
        if not subject_dir.is_dir():
            skipped.append(Skipped(str(subject_dir), "not a subject folder"))
            continue
        for seq in _visible(subject_dir.iterdir()):
            why = link_problem(seq, real, [images.resolve(), subject_dir.resolve()])
            if why:
                skipped.append(Skipped(str(seq), why))
                continue
            if not seq.is_dir():
                skipped.append(Skipped(str(seq), "not a sequence folder"))
                continue
            if not list_images(seq):
                skipped.append(Skipped(str(seq), "sequence folder holds no images"))
                continue
            found = sorted((labels / subject_dir.name / seq.name).glob("*_emotion.txt"))
            if not found:
                skipped.append(Skipped(str(seq), "unlabelled sequence (no *_emotion.txt)"))
                continue
            if len(found) > 1:
                skipped.append(Skipped(str(seq), f"{len(found)} emotion files, expected one"))
                continue
            try:
                code = _parse_ckplus_label(found[0])
            except BadInput as e:
                skipped.append(Skipped(e.path, e.reason))
                continue
            item_id = f"{subject_dir.name}/{seq.name}"
            items.append(SourceItem(item_id, subject_dir.name, CKPLUS_CLASSES[code - 1], str(seq)))
    return _finish(root, items, skipped)


def _strip_extension(rel: str, extensions: Sequence[str]) -> str:
    lower = rel.lower()
    for ext in extensions:
        if lower.endswith(ext):
            return rel[: -len(ext)]
    return rel


def _resolve(root: Path, rel: str, extensions: Sequence[str]) -> tuple[Path | None, str]:
    """The file or folder ``rel`` names under root (trying each extension), or None + reason."""
    direct = root / rel
    if direct.exists():
        return direct, ""
    matches = [root / (rel + ext) for ext in extensions if (root / (rel + ext)).is_file()]
    if len(matches) == 1:
        return matches[0], ""
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        return None, f"ambiguous: several files match ({names})"
    return None, "path not found (tried as folder, file and with video extensions)"


def _subject(stem: str, pattern: str | None, default: str) -> str:
    if pattern is None:
        return default
    m = re.search(pattern, stem)
    return m.group(1) if m else stem


def scan_list(
    root: str | Path,
    labels_file: str | Path,
    class_names: Sequence[str] | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    subject_pattern: str | None = None,
) -> Scan:
    """Items from a list of ``<relative path> <Label>`` lines (``Sxxx/yyy Label``).

    The path may name a folder of images or a file, with or without one of ``extensions``.
    id = the path as written (posix, known extension removed); subject = its first component, or
    group 1 of ``subject_pattern`` searched in the id. Skipped with a reason: malformed lines,
    paths that are absolute or leave ``root``, missing or ambiguous paths, labels not in
    ``class_names`` (when given) and repeated ids (the first is kept). Blank lines and lines
    starting with "#" are ignored.
    """
    root = _require_dir(root)
    labels_file = Path(labels_file)
    if not labels_file.is_file():
        raise BadInput(str(labels_file), "label list does not exist")
    known = None if class_names is None else set(class_names)
    items: list[SourceItem] = []
    skipped: list[Skipped] = []
    first_line: dict[str, int] = {}
    real = root.resolve()
    where = labels_file.name
    for lineno, raw in enumerate(labels_file.read_text(errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            skipped.append(
                Skipped(f"{labels_file}:{lineno}", f"expected '<path> <label>': {line!r}")
            )
            continue
        rel, label = fields[0].strip().replace("\\", "/"), fields[1]
        norm = os.path.normpath(rel).replace("\\", "/")
        if rel.startswith("/") or os.path.isabs(rel) or norm == ".." or norm.startswith("../"):
            skipped.append(
                Skipped(rel, f"{where} line {lineno}: path leaves the source folder {root}")
            )
            continue
        path, why = _resolve(root, norm, extensions)
        if path is None:
            skipped.append(Skipped(str(root / norm), f"{where} line {lineno}: {why}"))
            continue
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            skipped.append(
                Skipped(str(path), f"{where} line {lineno}: symlink loop or broken link")
            )
            continue
        if target != real and real not in target.parents:
            skipped.append(
                Skipped(
                    str(path),
                    f"{where} line {lineno}: resolves to {target}, "
                    f"outside the source folder {real}",
                )
            )
            continue
        if known is not None and label not in known:
            skipped.append(
                Skipped(
                    str(path),
                    f"{where} line {lineno}: unknown label {label!r} "
                    f"(known: {', '.join(class_names)})",
                )
            )
            continue
        item_id = _strip_extension(norm, extensions)
        if item_id in first_line:
            skipped.append(
                Skipped(
                    str(path),
                    f"{where} line {lineno}: duplicate id {item_id!r} "
                    f"(kept line {first_line[item_id]})",
                )
            )
            continue
        first_line[item_id] = lineno
        first = PurePosixPath(item_id).parts[0]
        subject = _subject(item_id, subject_pattern, first)
        items.append(SourceItem(item_id, subject, label, str(path)))
    return _finish(root, items, skipped)


def scan_folders(
    root: str | Path,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    subject_pattern: str = SUBJECT_PATTERN,
    class_names: Sequence[str] | None = None,
) -> Scan:
    """Items from ``root/<label>/<item>``: a file with one of ``extensions`` or a frame folder.

    A folder item must hold image files or files with one of ``extensions`` (e.g. one OpenPose
    JSON per frame). id = "<label>/<stem>"; subject = group 1 of ``subject_pattern`` matched on
    the stem (default: the text before the first "_"), or the whole stem when it does not match.
    With ``class_names``, a label folder outside them is skipped with a reason, and a name with
    no label folder is refused, naming the nearest folder (:func:`require_classes`). Symbolic
    links are followed once, inside the source folder only (see :func:`link_problem`).
    """
    root = _require_dir(root)
    real = root.resolve()
    exts = tuple(e.lower() for e in extensions)
    items: list[SourceItem] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}
    for label_dir in _visible(root.iterdir()):
        why = link_problem(label_dir, real)
        if why:
            skipped.append(Skipped(str(label_dir), why))
            continue
        if class_names is not None and label_dir.is_dir() and label_dir.name not in class_names:
            skipped.append(
                Skipped(
                    str(label_dir),
                    f"unknown label {label_dir.name!r} (known: {', '.join(class_names)})",
                )
            )
            continue
        if not label_dir.is_dir():
            skipped.append(Skipped(str(label_dir), "file outside a label folder"))
            continue
        entries = _visible(label_dir.iterdir())
        if not entries:
            skipped.append(Skipped(str(label_dir), "label folder is empty"))
            continue
        for entry in entries:
            why = link_problem(entry, real, [label_dir.resolve()])
            if why:
                skipped.append(Skipped(str(entry), why))
                continue
            if entry.is_dir():
                inner = _visible(entry.iterdir())
                if not any(p.suffix.lower() in exts + IMAGE_EXTENSIONS for p in inner):
                    skipped.append(Skipped(str(entry), "folder holds no frame or data files"))
                    continue
                stem = entry.name
            elif entry.suffix.lower() in exts:
                stem = entry.stem
            else:
                allowed = " ".join(exts)
                skipped.append(Skipped(str(entry), f"unsupported file type (expected {allowed})"))
                continue
            item_id = f"{label_dir.name}/{stem}"
            if item_id in seen:
                skipped.append(
                    Skipped(str(entry), f"duplicate id {item_id!r} (kept {seen[item_id]})")
                )
                continue
            seen[item_id] = str(entry)
            subject = _subject(stem, subject_pattern, stem)
            items.append(SourceItem(item_id, subject, label_dir.name, str(entry)))
    if class_names is not None:
        folders = {p.name for p in _visible(root.iterdir()) if p.is_dir()}
        require_classes(root, class_names, folders, "label folder")
    return _finish(root, items, skipped)


def closest_label(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate a mistyped label most likely meant: one spelled the same up to case, spacing
    and punctuation (as :func:`label_warnings` compares labels), else the nearest spelling, or
    None."""
    candidates = sorted(set(candidates))
    same = [c for c in candidates if _fold_label(c) == _fold_label(name)]
    if same:
        return same[0]
    near = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return near[0] if near else None


def listed_labels(labels_file: str | Path) -> set[str]:
    """The labels a ``<relative path> <Label>`` list names (its well-formed lines)."""
    labels = set()
    for line in Path(labels_file).read_text(errors="replace").splitlines():
        fields = line.strip().rsplit(None, 1)
        if len(fields) == 2 and not fields[0].startswith("#"):
            labels.add(fields[1])
    return labels


def require_classes(where: str | Path, class_names: Sequence[str], found: set[str], what: str):
    """Refuse ``--classes`` names that match no label of the source (``found``), naming each
    with the closest unclaimed label, if one is near (``BadInput``)."""
    missing = [c for c in class_names if c not in found]
    if not missing:
        return
    unclaimed = found - set(class_names)
    said = []
    for name in missing:
        guess = closest_label(name, unclaimed)
        said.append(f"{name!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
    there = ", ".join(sorted(found)[:12]) or "none"
    raise BadInput(
        str(where),
        f"--classes names {', '.join(said)}, but there is no such {what} (there are: {there})",
    )


def class_names_for(
    items: Iterable[SourceItem], preferred: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Class names present in ``items``, in a fixed order.

    With ``preferred``: its order, restricted to the labels present (a label outside it raises
    ValueError). Otherwise a known canonical order (CK+'s 7) when it covers every label, else
    sorted.
    """
    labels = {it.label for it in items}
    if preferred is not None:
        unknown = sorted(labels - set(preferred))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the preferred class list {preferred}")
        return tuple(c for c in preferred if c in labels)
    for order in CANONICAL_ORDERS:
        if labels <= set(order):
            return tuple(c for c in order if c in labels)
    return tuple(sorted(labels))


def _fold_label(label: str) -> str:
    return "".join(ch for ch in label.casefold() if ch.isalnum())


def label_warnings(items: Sequence[SourceItem]) -> list[str]:
    """Likely label typos, said before any decoding: labels that differ only in case, spacing or
    punctuation from another label, and classes with a single item."""
    counts: dict[str, int] = {}
    for it in items:
        counts[it.label] = counts.get(it.label, 0) + 1
    out = []
    groups: dict[str, list[str]] = {}
    for label in sorted(counts):
        groups.setdefault(_fold_label(label), []).append(label)
    for same in groups.values():
        if len(same) > 1:
            spelled = ", ".join(f"{s!r} ({counts[s]})" for s in same)
            out.append(
                f"labels {spelled} differ only in case/spacing: a typo? "
                "(give the class list with --classes)"
            )
    singles = [label for label, n in sorted(counts.items()) if n == 1]
    if singles and len(counts) > 1:
        out.append(
            f"class(es) with a single item: {', '.join(map(repr, singles))}: a typo? "
            "(give the class list with --classes)"
        )
    return out
