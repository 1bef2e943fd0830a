"""Frames from videos to files (``animefaces frames``): sampled frames written as images
plus a labelable manifest.csv, with near-duplicate filtering.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_write_bytes, atomic_write_json, utc_now, versions
from ..errors import BadVideoError, ConfigError
from .video import (VideoClock, check_sampling_options, check_unique_stems, probe_durations,
                    sample_frames, video_time_bar)


FRAME_COLUMNS = ("path", "label", "split", "group", "video", "frame_index", "time_s", "frame_type")
IMAGE_FORMATS = ("jpg", "png")


def dhash(image: Image.Image, *, hash_size: int = 8) -> int:
    """Difference hash: ``hash_size**2`` bits, one per horizontally adjacent pixel pair of a
    ``(hash_size, hash_size + 1)`` grayscale thumbnail (1 where the left pixel is brighter).

    Robust to re-encoding and scaling, sensitive to a changed picture. The usual threshold for
    "the same picture" is a Hamming distance of about 0-10 of 64 bits.
    """
    # BOX averages all source pixels: stable against compression noise, and cheap from 1080p.
    thumb = image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.BOX)
    px = np.asarray(thumb, dtype=np.int16)
    bits = (px[:, :-1] > px[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0]) if hash_size == 8 else \
        int("".join("1" if b else "0" for b in bits), 2)


class NearDuplicateFilter:
    """Remembers the dHash of every kept frame; a frame within ``threshold`` bits of any kept
    one is a near duplicate. Held for a whole run, so repeated shots (an opening sequence in
    every episode) are dropped across videos too, not only consecutive frames."""

    def __init__(self, threshold: int):
        if isinstance(threshold, bool) or not isinstance(threshold, int) or \
                not 0 <= threshold <= 64:
            raise ConfigError(f"dedup threshold must be a Hamming distance from 0 to 64 bits "
                              f"(got {threshold!r}); 0 drops only identical hashes, ~5 is usual")
        self.threshold = threshold
        self._hashes = np.zeros(256, dtype=np.uint64)
        self._n = 0
        self.dropped = 0

    def is_duplicate(self, image: Image.Image) -> bool:
        """True (and counted) for a near duplicate; otherwise the frame is remembered as kept."""
        h = np.uint64(dhash(image))
        if self._n and int(np.bitwise_count(self._hashes[:self._n] ^ h).min()) <= self.threshold:
            self.dropped += 1
            return True
        if self._n == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[self._n] = h
        self._n += 1
        return False


@dataclass
class VideoResult:
    """What happened to one input video."""

    video: str
    frames_written: int = 0
    frames_dropped: int = 0
    video_seconds: float = 0.0
    error: str | None = None


@dataclass
class ExtractSummary:
    """Counts for a whole :func:`extract_frames` run; ``str()`` gives the CLI's summary."""

    out_dir: Path
    manifest: Path
    results: list[VideoResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    stale_rows: int = 0  # manifest rows of an earlier run on these videos that no longer match

    @property
    def frames_written(self) -> int:
        return sum(r.frames_written for r in self.results)

    @property
    def frames_dropped(self) -> int:
        return sum(r.frames_dropped for r in self.results)

    @property
    def failures(self) -> list[VideoResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        done = len(self.results) - len(self.failures)
        lines = [f"{self.frames_written} frame(s) from {done} of {len(self.results)} video(s) "
                 f"written to {self.out_dir} (manifest: {self.manifest.name})"]
        if self.frames_dropped:
            lines.append(f"{self.frames_dropped} near-duplicate frame(s) dropped")
        if self.stale_rows:
            lines.append(f"{self.stale_rows} row(s) of an earlier run on these videos were left "
                         f"out of the manifest (other settings); their image files remain")
        for r in self.failures:
            kept = f" ({r.frames_written} frame(s) before the error kept)" \
                if r.frames_written else ""
            lines.append(f"error: {r.error}{kept}")
        if self.failures:
            lines.append(f"{len(self.failures)} video(s) failed")
        return "\n".join(lines)


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """JPEG (quality 95) or PNG bytes of an RGB image."""
    buf = io.BytesIO()
    if image_format == "jpg":
        image.save(buf, format="JPEG", quality=95)
    else:
        # Level 1 is several times faster than the default at 1080p for ~10% more bytes.
        image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _check_format(image_format: str) -> str:
    fmt = str(image_format).lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in IMAGE_FORMATS:
        raise ConfigError(f"unknown image format {image_format!r}; choose one of: "
                          f"{', '.join(IMAGE_FORMATS)}")
    return fmt


def write_manifest(csv_path: Path, rows: list[dict], *, columns: Iterable[str],
                   replace_groups: Iterable[str], sort_key=None) -> int:
    """Write ``rows`` to ``csv_path`` atomically, merged with the CSV already there.

    Rows already in the file whose ``group`` is not in ``replace_groups`` are kept (earlier runs
    on other inputs), rows of the re-processed groups are replaced, and a ``label`` or ``split``
    typed into the old file is carried over to the new row with the same ``path``: re-running
    never loses labelling work.

    Returns:
        how many old rows of the re-processed groups have no new counterpart (stale).

    Raises:
        ConfigError: the existing file is not a manifest with a ``path`` column.
    """
    columns = list(columns)
    replace = set(replace_groups)
    old_rows: list[dict] = []
    if csv_path.is_file():
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                old_cols = reader.fieldnames or []
                old_rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"cannot read the existing manifest {csv_path} ({exc}); move it "
                              f"away or choose another --out folder") from None
        if "path" not in old_cols:
            raise ConfigError(f"{csv_path} exists but is not a manifest (no 'path' column); move "
                              f"it away or choose another --out folder")
        columns += [c for c in old_cols if c not in columns]
    by_path = {r.get("path"): r for r in old_rows}
    new_paths = {r["path"] for r in rows}
    kept = [r for r in old_rows if r.get("group") not in replace]
    stale = sum(1 for r in old_rows if r.get("group") in replace and r.get("path") not in new_paths)
    merged = []
    for r in rows:
        old = by_path.get(r["path"], {})
        r = dict(r)
        for col in ("label", "split"):
            if not r.get(col) and old.get(col):
                r[col] = old[col]
        merged.append(r)
    kept = [r for r in kept if r.get("path") not in new_paths]
    out = kept + merged
    if sort_key is not None:
        out.sort(key=sort_key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in out:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    atomic_write_bytes(csv_path, buf.getvalue().encode("utf-8"))
    return stale


def _frame_sort_key(row: dict):
    try:
        idx = int(row.get("frame_index") or 0)
    except ValueError:
        idx = 0
    return (row.get("group") or "", idx, row.get("path") or "")


def extract_frames(videos: Iterable[os.PathLike | str], out_dir: os.PathLike | str, *,
                   fps: float | None = 1.0, keyframes: bool = False, dedup: int | None = None,
                   image_format: str = "jpg", seek: str = "auto",
                   progress: bool = True) -> ExtractSummary:
    """Sample frames from videos into image files plus a labelable ``manifest.csv``.

    Files are named ``{video_stem}-{frame_type}-{index}.{jpg|png}`` (``index``: the frame's
    number in the video). ``out_dir/manifest.csv`` gets the columns
    ``path,label,split,group,video,frame_index,time_s,frame_type``: ``path`` relative to the
    CSV, ``label`` and ``split`` empty for you to fill in, ``group`` the video stem (so a
    video's frames stay in one split). Rows of earlier runs on other videos are kept, and labels
    already typed in are carried over (see :func:`write_manifest`). ``manifest.json`` beside it
    records the settings, versions and per-video counts. Every file is written atomically.

    Args:
        videos: video files (mp4, mkv, webm, avi, mov, animated GIF...).
        out_dir: output folder (created).
        fps, keyframes, seek: as for :func:`sample_frames`.
        dedup: None to keep every sampled frame, or a dHash Hamming distance (0-64 bits): a
            frame within it of any frame kept so far in this run is dropped and counted.
        image_format: ``"jpg"`` (quality 95) or ``"png"``.
        progress: show a progress bar on stderr, in seconds of video time.

    Returns:
        :class:`ExtractSummary`; a video that failed (missing, not a video, no video stream,
        truncated, corrupt) has its ``error`` set while the other videos are still processed.

    Raises:
        ConfigError: bad options, two videos with the same stem, or an ``out_dir/manifest.csv``
            that is not a manifest.
    """
    check_sampling_options(fps, keyframes=keyframes, seek=seek)
    fmt = _check_format(image_format)
    dup = NearDuplicateFilter(dedup) if dedup is not None else None
    paths = [Path(v) for v in videos]
    if not paths:
        raise ConfigError("no videos given; pass one or more video files")
    check_unique_stems(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "manifest.csv"
    write_manifest_check(csv_path, kind="frames")  # fail before the long decode, not after
    t0 = time.perf_counter()
    summary = ExtractSummary(out_dir=out, manifest=csv_path)
    rows: list[dict] = []
    durations = probe_durations(paths) if progress else {}
    bar = video_time_bar(sum(d for d in durations.values() if d), enabled=progress)
    clock = VideoClock(bar)
    with bar:
        for p in paths:
            res = VideoResult(video=str(p))
            summary.results.append(res)
            bar.set_postfix_str(p.name, refresh=False)
            try:
                for fr in sample_frames(p, fps=fps, keyframes=keyframes, seek=seek,
                                        progress=clock):
                    res.video_seconds = fr.time_s
                    if dup is not None and dup.is_duplicate(fr.image):
                        res.frames_dropped += 1
                        continue
                    name = f"{p.stem}-{fr.frame_type}-{fr.index}.{fmt}"
                    atomic_write_bytes(out / name, encode_image(fr.image, fmt))
                    res.frames_written += 1
                    rows.append({"path": name, "label": "", "split": "", "group": p.stem,
                                 "video": p.name, "frame_index": fr.index,
                                 "time_s": f"{fr.time_s:.3f}", "frame_type": fr.frame_type})
            except BadVideoError as exc:
                res.error = str(exc)
            clock.next_video(durations.get(p))
    summary.stale_rows = write_manifest(csv_path, rows, columns=FRAME_COLUMNS,
                                        replace_groups={p.stem for p in paths},
                                        sort_key=_frame_sort_key)
    summary.elapsed_s = time.perf_counter() - t0
    atomic_write_json(out / "manifest.json", {
        "made_by": "animefaces.data.frames.extract_frames",
        "settings": {"fps": fps, "keyframes": keyframes, "dedup": dedup,
                     "dedup_hash": "dHash 64-bit (9x8 grayscale, BOX resize)",
                     "image_format": fmt, "seek": seek},
        "versions": versions(svm=False, video=True),
        "created": utc_now(),
        "elapsed_s": round(summary.elapsed_s, 3),
        "videos": [vars(r) for r in summary.results],
    })
    return summary


def write_manifest_check(csv_path: Path, *, kind: str = "frames") -> None:
    """Raise :class:`ConfigError` now if ``csv_path`` exists but is not a manifest of ``kind``
    (``"frames"`` or ``"crops"``) that a new run may merge into."""
    if not csv_path.exists():
        return
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read the existing manifest {csv_path} ({exc}); move it away "
                          f"or choose another --out folder") from None
    if "path" not in header:
        raise ConfigError(f"{csv_path} exists but is not a manifest (no 'path' column); move it "
                          f"away or choose another --out folder")
    is_crops = "face_index" in header
    if is_crops != (kind == "crops"):
        other = "face crops" if is_crops else "frames or images"
        raise ConfigError(f"{csv_path} is a manifest of {other}, not of {kind}; write the {kind} "
                          f"into another --out folder")
