"""Sampled video frames on Ray: videos split into time ranges, decoded in Ray tasks, their
features computed by the forward actors of :mod:`.distributed` and kept in the feature cache.

A frame's cache key is the sha256 of ``animefaces-frame/1|<video sha256>|<display time>``: it
names the picture by the video's content and the time it is shown, so a rerun, another sampling
rate that hits the same frame, or another machine finds it. Each time range is one decode task
(seek to the key frame before it, decode to its end: :func:`animefaces.data.video.sample_frames`
with ``start_s`` / ``end_s``; ranges start on sampling ticks, so the pieces hold exactly the
frames of a whole-video decode). When all frames of a range are computed, the driver writes the
range's frame list (times, indices, types, keys, extra columns) to
``<cache>/video-ranges/<digest>.json``; a rerun skips the ranges listed there and decodes only the
rest. A range whose video is corrupt part-way keeps the frames before the error and is not listed
(a rerun tries it again).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import atomic_write_json, sha256_bytes
from .distributed import (RayOptions, check_resources, decode_stage, forward_stage, quiet_ray_data,
                          require_ray)

FRAME_KEY_FORMAT = "animefaces-frame/1"
RANGE_SECONDS = 60.0
RANGES_DIR = "video-ranges"


def frame_key(video_sha256: str, time_s: float) -> str:
    """The cache key of the frame shown at ``time_s`` in the video with that content hash."""
    return sha256_bytes(f"{FRAME_KEY_FORMAT}|{video_sha256}|{time_s:.6f}".encode())


def split_ranges(duration_s: float | None, *, fps: float | None,
                 range_s: float = RANGE_SECONDS) -> list[tuple[float, float | None]]:
    """``[(start, end), ...]`` covering the video; starts on sampling ticks; the last range is
    open-ended (to the end of the stream, whatever the header says)."""
    if not duration_s or duration_s <= range_s:
        return [(0.0, None)]
    ticks = max(1, round(range_s * fps)) if fps else None
    length = ticks / fps if fps else range_s
    starts = [k * length for k in range(int(duration_s // length) + 1) if k * length < duration_s]
    return [(a, b) for a, b in zip(starts, starts[1:] + [None])]


def decode_video_ranges(batch: dict, *, size, max_pixels: int, fps, keyframes: bool, seek: str,
                        extra=None, extra_width: int = 0) -> dict:
    """Ranges ``{"i", "video", "sha", "start", "end"}`` -> one row per sampled frame: ``i``
    (range), ``key``, ``stat_key`` (""), ``image`` (n, H, W, 3) uint8, ``error``, ``time_s``,
    ``frame_index``, ``frame_type``, ``range_total`` (rows of that range) and, with ``extra``,
    ``extra`` ((n, extra_width) float64 from ``extra(PIL image)``). A range without frames gives one row with
    an empty key; a broken video gives its frames before the error and a row with the error."""
    from ..data.images import as_rgb_image, resize_to_array
    from ..data.video import sample_frames
    from ..errors import AnimeFacesError

    h, w = size
    cols: dict[str, list] = {k: [] for k in ("i", "key", "image", "error", "time_s",
                                             "frame_index", "frame_type", "range_total", "extra")}
    blank = np.zeros((h, w, 3), np.uint8)
    for i, video, sha, start, end in zip(batch["i"], batch["video"], batch["sha"],
                                         batch["start"], batch["end"]):
        rows = []
        try:
            for fr in sample_frames(str(video), fps=fps, keyframes=keyframes, seek=seek,
                                    start_s=float(start), end_s=None if end < 0 else float(end)):
                arr = resize_to_array(as_rgb_image(fr.image, draft_size=(w, h),
                                                   max_pixels=max_pixels), (h, w))
                ex = np.asarray(extra(fr.image), np.float64) if extra else None
                rows.append((frame_key(str(sha), fr.time_s), arr, "", fr.time_s, fr.index,
                             fr.frame_type, ex))
        except AnimeFacesError as exc:
            rows.append(("", blank, str(exc), -1.0, -1, "", None))
        if not rows:
            rows.append(("", blank, "", -1.0, -1, "", None))
        for key, arr, err, t, idx, ftype, ex in rows:
            for name, v in zip(("i", "key", "image", "error", "time_s", "frame_index",
                                "frame_type", "range_total"),
                               (int(i), key, arr, err, t, idx, ftype, len(rows))):
                cols[name].append(v)
            cols["extra"].append(ex if ex is not None else np.zeros(extra_width))
    out = {k: np.array(v, dtype=object) for k, v in cols.items()
           if k in ("key", "error", "frame_type")}
    out.update(i=np.array(cols["i"], np.int64), image=np.stack(cols["image"]),
               time_s=np.array(cols["time_s"], np.float64),
               frame_index=np.array(cols["frame_index"], np.int64),
               range_total=np.array(cols["range_total"], np.int64),
               stat_key=np.array([""] * len(cols["i"]), dtype=object))
    if extra:
        out["extra"] = np.stack(cols["extra"])
    return out


@dataclass
class VideoFrames:
    """The sampled frames of one video with their features, in time order."""

    video: Path
    times_s: list[float] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    X: np.ndarray | None = None      # (n, d) float32
    extra: np.ndarray | None = None  # (n, k) float64
    error: str | None = None


def _range_file(cache, sha: str, fps, keyframes: bool, start: float, end, extra_name: str) -> Path:
    spec = f"{sha}|fps={fps}|key={keyframes}|{start:.6f}|{end}|extra={extra_name}"
    return cache.dir / RANGES_DIR / f"{sha256_bytes(spec.encode())[:32]}.json"


def extract_video_frames_ray(fx, videos, *, cache, fps: float | None = 1.0,
                             keyframes: bool = False, seek: str = "auto",
                             range_s: float = RANGE_SECONDS, options: RayOptions | None = None,
                             extra=None, extra_name: str = "", progress: bool = True,
                             on_batch=None) -> list[VideoFrames]:
    """Sampled frames of ``videos`` and their features, computed on Ray (inside
    :func:`~.distributed.ray_session`) and cached.

    Args:
        fx: the driver's :class:`~.extract.FeatureExtractor` (its model is not loaded here).
        cache: a :class:`~.cache.FeatureCache` on storage every node sees.
        fps, keyframes, seek: sampling, as for :func:`animefaces.data.video.sample_frames`.
        range_s: seconds of video per decode task (rounded to whole sampling steps).
        extra: a function of a frame's PIL image returning a 1-d array, computed in the decode
            tasks (the out-of-domain guard's image statistics); ``extra_name`` names it in the
            range lists.

    Returns:
        One :class:`VideoFrames` per video, in input order (``error`` set for a video that could
        not be read, with the frames before the error).
    """
    from tqdm.auto import tqdm

    from .._io import sha256_file
    from ..data.video import probe_video
    from ..errors import AnimeFacesError

    ray = require_ray()
    options = options or RayOptions()
    quiet_ray_data(ray, progress)
    check_resources(ray, options)
    videos = [Path(v) for v in videos]
    out = [VideoFrames(video=v) for v in videos]
    ranges, done = [], {}  # range id -> (video no, start, end, file); id -> frame rows
    for n, v in enumerate(videos):
        try:
            duration = probe_video(v).duration_s
            sha = sha256_file(v)
        except (AnimeFacesError, OSError) as exc:
            out[n].error = str(exc)
            continue
        for start, end in split_ranges(duration, fps=fps, range_s=range_s):
            rf = _range_file(cache, sha, fps, keyframes, start, end, extra_name)
            rid = len(ranges)
            ranges.append((n, sha, start, end, rf))
            try:
                done[rid] = json.loads(rf.read_text())["frames"]
            except (OSError, ValueError, KeyError):
                pass
    todo = [r for r in range(len(ranges)) if r not in done]
    errors: dict[int, str] = {}
    extra_width = 0
    if extra is not None:
        from PIL import Image

        extra_width = len(np.atleast_1d(extra(Image.new("RGB", (64, 36), (128, 128, 128)))))
    if todo:
        items = [{"i": r, "video": str(videos[ranges[r][0]]), "sha": ranges[r][1],
                  "start": ranges[r][2], "end": -1.0 if ranges[r][3] is None else ranges[r][3]}
                 for r in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 512)))
        ds = decode_stage(ds, decode_video_ranges, options, ray, batch_size=1,
                          fn_kwargs={"size": fx.spec.input_size, "max_pixels": fx.max_pixels,
                                     "fps": fps, "keyframes": keyframes, "seek": seek,
                                     "extra": extra, "extra_width": extra_width})
        ds = forward_stage(ds, fx, cache, options, ray)
        got: dict[int, list] = {}
        seen: dict[int, int] = {}
        bar = tqdm(total=len(todo), desc=f"scan {fx.spec.name} (ray)", unit="range",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for j, r in enumerate(batch["i"].tolist()):
                    rows = got.setdefault(r, [])
                    if batch["error"][j]:
                        errors[r] = str(batch["error"][j])
                    if batch["key"][j]:
                        ex = batch["extra"][j].tolist() if "extra" in batch else []
                        rows.append([float(batch["time_s"][j]), int(batch["frame_index"][j]),
                                     str(batch["frame_type"][j]), str(batch["key"][j]), ex])
                    seen[r] = seen.get(r, 0) + 1
                    if seen[r] == int(batch["range_total"][j]):
                        done[r] = sorted(rows)
                        bar.update(1)
                        if r not in errors:
                            _write_range(ranges[r][4], done[r])
                if on_batch is not None:
                    on_batch(batch)
        finally:
            bar.close()
    cache.reread()  # the actors added shards
    extras: list[list] = [[] for _ in out]
    for r, (n, *_rest) in enumerate(ranges):
        if r in errors and out[n].error is None:
            out[n].error = errors[r]
        for t, idx, ftype, key, ex in done.get(r, []):
            v = out[n]
            v.times_s.append(t)
            v.indices.append(idx)
            v.types.append(ftype)
            v.keys.append(key)
            extras[n].append(ex)
    for v, ex in zip(out, extras):
        v.extra = np.array(ex, np.float64).reshape(len(v.keys), -1)
        v.X = cache.get(v.keys) if v.keys else np.zeros((0, fx.feature_dim), np.float32)
    return out


def _write_range(path: Path, frames: list) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"format": "animefaces-video-range/1", "frames": frames})
    except OSError as exc:
        print(f"animefaces: could not record a finished video range in {path.parent} "
              f"({exc.strerror or exc}); a rerun decodes it again", file=sys.stderr)
