"""Decode a video file or an image-sequence folder into uint8 RGB frames.

Policies (one place, so every caller gets the same behaviour):

- A video whose container ends early (truncated download, cut file) still yields the frames that
  decode, minus the last one (where the data ends it may be half-decoded); ``decode_frames`` also
  reports ``truncated=True``. Truncation = fewer frames than the container declares, or (AVI) a
  file shorter than its RIFF header says. No complete frame at all is ``BadInput``.
- An image-sequence folder is sorted naturally by the numbers in the file names (``img2`` before
  ``img10``). Frames whose size differs from the first frame are resized to the first frame's size
  (CK+ has a few such sequences; rejecting them would lose labelled data) and a warning is logged.
- Grey frames become 3 identical channels; colour frames are returned as RGB (OpenCV reads BGR).
- Hidden files (names starting with ".") inside a folder are ignored (``.DS_Store``, ``._x.png``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from datasets.records import BadInput

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
)  # fmt: skip
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

_LOG = logging.getLogger(__name__)
_DIGITS = re.compile(r"(\d+)")


class DecodedFrames(NamedTuple):
    """Frames of one video plus what the container promised.

    frames: (n, H, W, 3) uint8 RGB. declared: frame count the container declares (0 = unknown,
    always 0 for image folders). truncated: True when the file ends early (see module docstring).
    dropped: unreadable images left out of an image-sequence folder (their names).
    """

    frames: np.ndarray
    declared: int
    truncated: bool
    dropped: tuple[str, ...] = ()

    def notes(self) -> list[str]:
        """What a user should hear about this decode (dropped frames)."""
        if not self.dropped:
            return []
        names = ", ".join(self.dropped[:3]) + (", ..." if len(self.dropped) > 3 else "")
        total = len(self.dropped) + len(self.frames)
        return [f"{len(self.dropped)} of {total} frames unreadable and dropped ({names})"]


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the digit runs of ``name`` by value: ``f2.png`` < ``f10.png``."""
    parts = _DIGITS.split(name.lower())
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (extensions in ``IMAGE_EXTENSIONS``), naturally sorted."""
    folder = Path(folder)
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def _to_rgb(frame: np.ndarray, path: str | Path) -> np.ndarray:
    """OpenCV frame (H, W), (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA -> (H, W, 3) uint8 RGB."""
    if frame.dtype != np.uint8:
        if frame.dtype == np.uint16:  # 16-bit PNG: keep the top 8 bits
            frame = (frame >> 8).astype(np.uint8)
        else:
            raise BadInput(str(path), f"unsupported pixel type {frame.dtype}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    raise BadInput(str(path), f"unsupported frame shape {frame.shape}")


def check_max_frames(max_frames: int | None) -> None:
    """``max_frames`` (``--max-frames``: frames kept per video) is None or at least 1."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1 (frames kept per video), got {max_frames}")


def sniff_container(path: str | Path) -> str | None:
    """Container family from the file's first bytes ("avi", "mp4", "mkv", ...), None if unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3") or head[:1] == b"\x47":
        return "mpeg"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"\x30\x26\xb2\x75":
        return "asf"
    return None


def _avi_is_short(path: Path) -> bool:
    """True when an AVI file is shorter than the size its RIFF header declares (cut file)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return False
    return int.from_bytes(head[4:8], "little") + 8 > path.stat().st_size


def open_capture(path: Path | str) -> cv2.VideoCapture:
    """OpenCV's FFmpeg reader on ``path``, with OpenCV's own warnings off: a container it cannot
    open would print "backend is generally available but can't be used to capture by name" on
    the console (and from every Ray worker) beside the one line per file this code writes."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)


def _decode_video(path: Path, max_frames: int | None) -> DecodedFrames:
    cap = open_capture(path)
    try:
        if not cap.isOpened():
            kind = sniff_container(path)
            if kind is None:
                raise BadInput(str(path), "not a video file (unrecognised content, cannot open)")
            raise BadInput(str(path), f"{kind} container cannot be opened (truncated or corrupt)")
        declared = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        frames: list[np.ndarray] = []
        while max_frames is None or len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            frame = _to_rgb(frame, path)
            if frames and frame.shape != frames[0].shape:
                raise BadInput(str(path), f"frame size changes mid-video at frame {len(frames)}")
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise BadInput(str(path), "no frame decodes (corrupt, truncated or not a video)")
    reached_end = max_frames is None or len(frames) < max_frames
    truncated = reached_end and ((0 < len(frames) < declared) or _avi_is_short(path))
    if truncated:
        # the frame where the data ends may be half-decoded garbage: keep only complete ones
        frames.pop()
        if not frames:
            raise BadInput(str(path), f"truncated video: no complete frame of {declared} declared")
        _LOG.warning("%s: truncated, kept %d of %d declared frames", path, len(frames), declared)
    return DecodedFrames(np.stack(frames), declared, truncated)  # (n, H, W, 3)


def _read_image(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise BadInput(str(path), "not a readable image")
    return _to_rgb(frame, path)


def _decode_folder(folder: Path, max_frames: int | None) -> DecodedFrames:
    files = list_images(folder)
    if not files:
        exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise BadInput(str(folder), f"folder holds no image files ({exts})")
    files = files[:max_frames]
    frames, dropped = [], []
    for f in files:
        # A few unreadable frames (a torn copy, a stray non-image) do not cost the sequence:
        # they are left out and counted; a folder with no readable frame at all is bad input.
        try:
            frame = _read_image(f)
        except BadInput:
            dropped.append(f.name)
            continue
        if frames and frame.shape[:2] != frames[0].shape[:2]:
            h, w = frames[0].shape[:2]
            _LOG.warning("%s: %s resized to the first frame's %dx%d", f, frame.shape[:2], h, w)
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    if not frames:
        raise BadInput(str(folder), f"none of its {len(files)} images is readable")
    if dropped:
        _LOG.warning("%s: %d unreadable frames dropped", folder, len(dropped))
    return DecodedFrames(np.stack(frames), 0, False, tuple(dropped))  # (n, H, W, 3)


def decode_frames(path: str | Path, max_frames: int | None = None) -> DecodedFrames:
    """Decode ``path`` (video file, image-sequence folder or single image) with a truncation flag.

    ``max_frames`` keeps the first frames only (decoding stops there). Raises ``BadInput`` for a
    missing path, a zero-byte file, a file that is not a video, a video where no frame decodes, an
    empty folder, an unreadable image or a video whose frame size changes.
    """
    check_max_frames(max_frames)
    p = Path(path)
    if not p.exists():
        raise BadInput(str(p), "path does not exist")
    if p.is_dir():
        return _decode_folder(p, max_frames)
    if not p.is_file():
        raise BadInput(str(p), "neither a regular file nor a folder")
    if p.stat().st_size == 0:
        raise BadInput(str(p), "zero-byte file")
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        frame = _read_image(p)
        return DecodedFrames(frame[None], 1, False)  # (1, H, W, 3)
    return _decode_video(p, max_frames)


def read_frames(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Frames of a video file or image-sequence folder: (n, H, W, 3) uint8 RGB.

    See ``decode_frames`` for the errors and the module docstring for the policies (truncated
    videos return the frames that decode; mixed sizes in a folder are resized to the first).
    """
    return decode_frames(path, max_frames).frames


def video_fps(path: str) -> float | None:
    """Frames per second a video container declares (None for folders, images, unknown)."""
    p = Path(path)
    if not p.is_file():
        return None
    cap = open_capture(p)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if np.isfinite(fps) and fps > 0 else None
