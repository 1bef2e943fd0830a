"""Scan videos for the time ranges where a character's face is on screen.

Sampled frames stream from :func:`animefaces.data.video.sample_frames` straight into a trained
classifier's ``predict_many`` in batches: nothing is written to disk but the results. Each
sampled frame gets P(face); :func:`face_ranges` then merges the frames into time ranges with
hysteresis:

* a range **starts** at a frame with ``P >= on``;
* inside a range, frames with ``P >= off`` keep it going (``off <= on``: a frame between the two
  neither starts nor ends a range);
* a **dip** (consecutive frames with ``P < off``) ends the range only when it lasts longer than
  ``min_gap`` seconds, measured from the first low frame to the frame that recovers. The default,
  one sampling step, bridges a single noisy frame; two low frames in a row end the range.
  Frame times jitter around the sampling ticks by up to one video frame, so lengths are compared
  with a slack of half a sampling step;
* ranges shorter than ``min_duration`` seconds are dropped.

Times: a frame sampled at ``t`` stands for ``[t, t + step)`` (``step = 1 / fps``). A range runs
from its first frame's time to its last frame's time plus one step, cut short at the next
sampled frame's time (key frames in between ticks) and at the end of the video. So at 1 fps,
faces in the frames at 3, 4, 5 and 6 s give the range ``[3.0, 7.0)``; the true edges lie within
one step before each end.

:func:`scan_video` scans one video (Python API); :func:`scan_videos` scans many, keeps going past
a bad file, and writes ``{video}.frames.csv``, ``{video}.ranges.csv``, an optional
``{video}.contact.png`` and one ``scan.json`` (the CLI's ``animefaces scan``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ._io import atomic_write_bytes, atomic_write_json, utc_now, versions
from .classify.ranges import (FaceRange, FrameScore, check_seconds, check_thresholds, face_ranges,
                              infer_step, video_frame_label)
from .data.video import (Frame, VideoClock, check_sampling_options, check_unique_stems,
                         probe_durations, probe_video, sample_frames, video_time_bar)
from .errors import AnimeFacesError, BadVideoError, ConfigError

FRAME_CSV_COLUMNS = ("time_s", "frame_index", "p_face", "label", "frame_type", "reason")
RANGE_CSV_COLUMNS = ("range", "start_s", "end_s", "duration_s", "peak_p", "start", "end",
                     "first_frame_index", "frames")
# Contact-sheet tiles: thumbnails fit in this box (16:9, the usual anime frame).
THUMB_SIZE = (320, 180)


@dataclass(frozen=True)
class ScanSettings:
    """Sampling and range settings of a scan (validated on creation; see :func:`scan_video`)."""

    fps: float | None = 1.0
    keyframes: bool = False
    on: float = 0.6
    off: float = 0.4
    min_gap: float | None = None
    min_duration: float = 0.0
    batch_size: int = 32
    seek: str = "auto"

    def __post_init__(self):
        check_sampling_options(self.fps, keyframes=self.keyframes, seek=self.seek)
        check_thresholds(self.on, self.off)
        check_seconds("min_gap", self.min_gap, allow_none=True)
        check_seconds("min_duration", self.min_duration)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or \
                self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive whole number of frames per "
                              f"classifier call (got {self.batch_size!r}), e.g. 32")

    @property
    def step_s(self) -> float | None:
        """Seconds between sampling ticks; None in key-frame-only mode (inferred from times)."""
        return 1.0 / float(self.fps) if self.fps else None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScanResult:
    """What :func:`scan_video` found in one video.

    Attributes:
        video: the input path.
        frames: one :class:`FrameScore` per sampled frame, in time order.
        ranges: :class:`FaceRange` ``(start_s, end_s, peak_p)`` tuples, in time order.
        info: the video's header (codec, size, duration, fps), ``step_s`` used for the ranges,
            ``min_gap_s`` in effect, timings: ``elapsed_s``, ``frames_per_s``, ``classify_s``
            (in ``predict_many``) and ``decode_wait_s`` (waiting for decoded frames: the part
            of decoding not hidden behind classification).
        thumbnails: with ``thumbnails=True``, the first frame of each range (RGB, at most
            :data:`THUMB_SIZE`), aligned with ``ranges``; otherwise None.
        error: set only by :func:`scan_videos` for a video that failed part-way (the results
            then cover the frames before the error).
    """

    video: Path
    frames: list[FrameScore] = field(default_factory=list)
    ranges: list[FaceRange] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    thumbnails: list[Image.Image] | None = None
    error: str | None = None

    @property
    def face_seconds(self) -> float:
        return sum(r.duration_s for r in self.ranges)


# -- scanning one video ------------------------------------------------------------------------

def _thumbnail_bytes(image: Image.Image) -> bytes:
    # Kept as JPEG: candidates are held until the ranges are known, at ~10 KB each.
    thumb = image.copy()
    thumb.thumbnail(THUMB_SIZE, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _video_header(path: Path) -> dict:
    info = probe_video(path)
    return {"codec": info.codec, "width": info.width, "height": info.height,
            "duration_s": info.duration_s, "average_fps": info.average_fps,
            "frames": info.frames, "rotation": info.rotation}


def _decoded_ahead(frames: Iterator[Frame], *, depth: int) -> Iterator[Frame]:
    """Run the ``frames`` generator in a background thread, up to ``depth`` frames ahead.

    FFmpeg decodes without holding the GIL, so the next batch is decoded while the classifier
    works on this one (used on GPU; see ``benchmarks/bench_scan.py``). Errors (a
    :class:`BadVideoError` part-way) come out in order, after the frames decoded before them.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for fr in frames:
                if not put(("frame", fr)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            frames.close()

    worker = threading.Thread(target=work, name="scan-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "frame":
                yield item
            elif kind == "end":
                return
            else:
                raise item
    finally:
        # The consumer stopped (done, an error, or the classifier raised): end the decoder too.
        stop.set()
        worker.join()


def _wants_decode_ahead(classifier, decode_ahead: bool | None) -> bool:
    if decode_ahead is not None:
        return bool(decode_ahead)
    # On CPU the CNN already keeps every core busy: decoding ahead measured no faster on 2 cores
    # (benchmarks/bench_scan.py), as for the feature extractor's own decode-ahead.
    device = getattr(getattr(classifier, "extractor", None), "device", None)
    return getattr(device, "type", "cpu") != "cpu"


def _scan(path: Path, classifier, settings: ScanSettings, *, thumbnails: bool,
          progress: Callable[[float], None] | None,
          decode_ahead: bool | None = None) -> ScanResult:
    """Scan one video; a :class:`BadVideoError` is stored in ``result.error`` (with the results
    of the frames before it) instead of raised."""
    res = ScanResult(video=path)
    t0 = time.perf_counter()
    wait_s = classify_s = 0.0
    candidates: dict[int, bytes] = {}  # frame position -> thumbnail, for P crossing up to `on`
    prev_p = -1.0

    def classify(frames: list[Frame]) -> None:
        nonlocal classify_s, prev_p
        t = time.perf_counter()
        preds = classifier.predict_many([f.image for f in frames])
        classify_s += time.perf_counter() - t
        if len(preds) != len(frames):
            raise AnimeFacesError(f"the classifier returned {len(preds)} predictions for "
                                  f"{len(frames)} frames of {path}")
        for fr, pred in zip(frames, preds):
            score = float(pred.score)
            if thumbnails and score >= settings.on and prev_p < settings.on:
                # Every range starts at such a frame; which of them do is known at the end.
                candidates[len(res.frames)] = _thumbnail_bytes(fr.image)
            prev_p = score
            label, why = video_frame_label(pred)
            res.frames.append(FrameScore(fr.time_s, fr.index, score, label, fr.frame_type, why))

    # Batched here (not with iter_sampled_frames) so that decoding ahead works frame by frame.
    pending: list[Frame] = []
    try:
        res.info["video"] = _video_header(path)
        t1 = time.perf_counter()
        frames = sample_frames(path, fps=settings.fps, keyframes=settings.keyframes,
                               seek=settings.seek, progress=progress)
        if _wants_decode_ahead(classifier, decode_ahead):
            frames = _decoded_ahead(frames, depth=settings.batch_size)
        try:
            for frame in frames:
                pending.append(frame)
                if len(pending) == settings.batch_size:
                    wait_s += time.perf_counter() - t1
                    classify(pending)
                    pending = []
                    t1 = time.perf_counter()
            wait_s += time.perf_counter() - t1
        finally:
            frames.close()  # now, not at garbage collection: stops the decoding thread
    except BadVideoError as exc:
        res.error = str(exc)
        res.info["exception"] = exc
    if pending:
        classify(pending)
    step = fill_ranges(res, settings)
    if thumbnails:
        pos = {f.time_s: i for i, f in enumerate(res.frames)}
        res.thumbnails = [Image.open(io.BytesIO(candidates[pos[r.start_s]])).convert("RGB")
                          for r in res.ranges]
    elapsed = time.perf_counter() - t0
    res.info.update({
        "step_s": step, "min_gap_s": step if settings.min_gap is None else settings.min_gap,
        "frames_scanned": len(res.frames), "elapsed_s": round(elapsed, 3),
        "decode_wait_s": round(wait_s, 3), "classify_s": round(classify_s, 3),
        "frames_per_s": round(len(res.frames) / elapsed, 2) if elapsed > 0 else None,
    })
    return res


def fill_ranges(res, settings) -> float:
    """Set ``res.ranges`` from its scored frames (hysteresis on P(face), gaps, minimum length);
    returns the frame step used (the settings' or the one the frame times show)."""
    duration = res.info.get("video", {}).get("duration_s")
    times = [f.time_s for f in res.frames]
    step = settings.step_s if settings.step_s is not None else infer_step(np.asarray(times),
                                                                           duration)
    res.ranges = face_ranges(times, [f.p_face for f in res.frames], on=settings.on,
                             off=settings.off, min_gap=settings.min_gap,
                             min_duration=settings.min_duration, step=step,
                             duration=None if res.error else duration)
    return step


def scan_video(video_path: os.PathLike | str, classifier, *, fps: float | None = 1.0,
               keyframes: bool = False, on: float = 0.6, off: float = 0.4,
               min_gap: float | None = None, min_duration: float = 0.0, batch_size: int = 32,
               seek: str = "auto", thumbnails: bool = False,
               progress: bool | Callable[[float], None] = True,
               decode_ahead: bool | None = None) -> ScanResult:
    """Find the time ranges of a video where a face is on screen.

    Frames are sampled as by :func:`animefaces.data.video.sample_frames` and classified in batches
    of ``batch_size`` PIL images with ``classifier.predict_many`` (no frame touches the disk);
    :func:`face_ranges` merges them into ranges.

    Args:
        video_path: any file FFmpeg reads (mp4, mkv, webm, avi, mov, animated GIF...).
        classifier: a :class:`animefaces.api.FaceClassifier`, or anything whose
            ``predict_many(list of PIL images)`` returns objects with ``.score`` (P(face)) and
            ``.label``.
        fps, keyframes, seek: sampling, as for ``sample_frames`` (default one frame a second).
        on, off, min_gap, min_duration: range settings, as for :func:`face_ranges`.
        batch_size: frames per ``predict_many`` call.
        thumbnails: keep each range's first frame (at most :data:`THUMB_SIZE`) in
            ``result.thumbnails``, for contact sheets.
        progress: True for a progress bar on stderr in seconds of video time, False for none,
            or a callable fed the current video time in seconds (from the decoding thread).
        decode_ahead: decode the next batch in a background thread while the classifier
            runs. None (default): only when the classifier's CNN runs on a GPU; on CPU the CNN
            already uses every core and decoding ahead measured no faster.

    Returns:
        :class:`ScanResult` with ``frames``, ``ranges`` and ``info``.

    Raises:
        BadVideoError: naming the file: missing, not a video, no video stream, truncated or
            corrupt.
        ConfigError: a bad option (checked before any decoding).
    """
    settings = ScanSettings(fps=fps, keyframes=keyframes, on=on, off=off, min_gap=min_gap,
                            min_duration=min_duration, batch_size=batch_size, seek=seek)
    path = Path(video_path)
    if callable(progress):
        res = _scan(path, classifier, settings, thumbnails=thumbnails, progress=progress,
                    decode_ahead=decode_ahead)
    else:
        duration = probe_durations([path]).get(path) if progress else None
        with video_time_bar(duration, enabled=bool(progress)) as bar:
            bar.set_postfix_str(path.name, refresh=False)
            res = _scan(path, classifier, settings, thumbnails=thumbnails,
                        progress=VideoClock(bar), decode_ahead=decode_ahead)
    if res.error:
        raise res.info.pop("exception")
    res.info["settings"] = settings.to_dict()
    return res


# -- many videos, with files -------------------------------------------------------------------

@dataclass
class ScanSummary:
    """A :func:`scan_videos` run: one :class:`ScanResult` per input, in input order.
    ``str()`` gives the CLI's summary."""

    results: list[ScanResult]
    settings: ScanSettings
    model: dict
    out_dir: Path | None = None
    elapsed_s: float = 0.0
    outputs: dict[str, dict] = field(default_factory=dict)  # video -> {kind: file name}

    @property
    def failures(self) -> list[ScanResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = []
        for r in self.results:
            if r.error and not r.frames:
                continue
            dur = r.info.get("video", {}).get("duration_s")
            of = f" of {format_time(dur)}" if dur else ""
            lines.append(f"{r.video.name}: {len(r.frames)} frame(s) scanned, {len(r.ranges)} "
                         f"face range(s), {format_time(r.face_seconds)}{of} with a face"
                         + (" (partial: see the error below)" if r.error else ""))
            shown = r.ranges if self.out_dir is None else r.ranges[:20]
            for k, g in enumerate(shown, 1):
                lines.append(f"  {k:3d}  {format_time(g.start_s)} - {format_time(g.end_s)}  "
                             f"({g.duration_s:.1f} s, peak P {g.peak_p:.2f})")
            if len(shown) < len(r.ranges):
                csv_name = self.outputs.get(str(r.video), {}).get("ranges_csv", "")
                lines.append(f"  ... {len(r.ranges) - len(shown)} more in "
                             f"{self.out_dir / csv_name}")
        done = len(self.results) - len(self.failures)
        frames = sum(len(r.frames) for r in self.results)
        ranges = sum(len(r.ranges) for r in self.results)
        where = f"; results in {self.out_dir}" if self.out_dir is not None else ""
        lines.append(f"scanned {done} of {len(self.results)} video(s): {frames} frame(s), "
                     f"{ranges} face range(s) in {self.elapsed_s:.1f} s{where}")
        for r in self.failures:
            kept = f" ({len(r.frames)} frame(s) before the error kept)" if r.frames else ""
            lines.append(f"error: {r.error}{kept}")
        if self.failures:
            lines.append(f"{len(self.failures)} video(s) failed")
        return "\n".join(lines)


def format_time(seconds: float | None, *, decimals: int = 1) -> str:
    """``MM:SS.s`` (or ``H:MM:SS.s`` from one hour), for people; files keep plain seconds."""
    if seconds is None:
        return "?"
    scale = 10 ** decimals
    n = int(round(seconds * scale))
    h, rest = divmod(n, 3600 * scale)
    m, s = divmod(rest, 60 * scale)
    width = 3 + decimals if decimals else 2
    sec = f"{s / scale:0{width}.{decimals}f}"
    return f"{h}:{m:02d}:{sec}" if h else f"{m:02d}:{sec}"


def model_info(classifier) -> dict:
    """What identifies a classifier in reports: path, backbone, kernel, model sha256..."""
    meta = getattr(getattr(classifier, "model", None), "meta", None) or {}
    feats = meta.get("features") or {}
    path = getattr(classifier, "path", None)
    return {"class": type(classifier).__name__, "path": str(path) if path else None,
            "backbone": meta.get("backbone"), "kernel": meta.get("kernel"),
            "run_id": meta.get("run_id"), "model_sha256": meta.get("model_sha256"),
            "weights_sha256": feats.get("weights_sha256"),
            "random_weights": feats.get("random_weights"),
            "threshold": getattr(classifier, "threshold", None),
            "accuracy": meta.get("accuracy")}


def _csv_bytes(columns, rows) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _frame_rows(res: ScanResult) -> list[dict]:
    return [{"time_s": f"{f.time_s:.3f}", "frame_index": f.frame_index,
             "p_face": f"{f.p_face:.4f}", "label": f.label, "frame_type": f.frame_type,
             "reason": f.reason} for f in res.frames]


def _range_rows(res: ScanResult) -> list[dict]:
    rows = []
    for k, r in enumerate(res.ranges, 1):
        inside = [f for f in res.frames if r.start_s <= f.time_s < r.end_s]
        rows.append({"range": k, "start_s": f"{r.start_s:.3f}", "end_s": f"{r.end_s:.3f}",
                     "duration_s": f"{r.duration_s:.3f}", "peak_p": f"{r.peak_p:.4f}",
                     "start": format_time(r.start_s, decimals=3),
                     "end": format_time(r.end_s, decimals=3),
                     "first_frame_index": inside[0].frame_index if inside else "",
                     "frames": len(inside)})
    return rows


def contact_sheet(res: ScanResult, *, columns: int = 4, title: str | None = None) -> Image.Image:
    """One picture per video: the first frame of each face range with its times, in a grid.

    Needs ``res.thumbnails`` (``scan_video(..., thumbnails=True)``). A video without ranges
    gets a sheet that says so.
    """
    from PIL import ImageDraw, ImageFont

    def font(size):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: the fixed bitmap font
            return ImageFont.load_default()

    thumbs = res.thumbnails or []
    if len(thumbs) != len(res.ranges):
        raise ConfigError("contact_sheet needs one thumbnail per range: scan with "
                          "thumbnails=True")
    tw, th = THUMB_SIZE
    pad, cap, head = 8, 38, 34
    cols = max(1, min(columns, len(thumbs) or 1))
    rows = max(1, math.ceil(len(thumbs) / cols))
    sheet = Image.new("RGB", (pad + cols * (tw + pad), head + rows * (th + cap + pad)),
                      (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    title = title or (f"{res.video.name}: {len(res.ranges)} face range(s), "
                      f"{format_time(res.face_seconds)} with a face")
    d.text((pad, 8), title, fill=(0, 0, 0), font=font(16))
    if not thumbs:
        d.text((pad, head + 8), "no face ranges found", fill=(120, 120, 120), font=font(14))
    small = font(13)
    for k, (r, im) in enumerate(zip(res.ranges, thumbs)):
        x = pad + (k % cols) * (tw + pad)
        y = head + (k // cols) * (th + cap + pad)
        d.rectangle([x, y, x + tw - 1, y + th - 1], fill=(235, 235, 235))  # letterbox
        sheet.paste(im, (x + (tw - im.width) // 2, y + (th - im.height) // 2))
        d.text((x, y + th + 3), f"#{k + 1}  {format_time(r.start_s)} - {format_time(r.end_s)}",
               fill=(0, 0, 0), font=small)
        d.text((x, y + th + 20), f"{r.duration_s:.1f} s, peak P(face) {r.peak_p:.2f}",
               fill=(90, 90, 90), font=small)
    return sheet


def _write_outputs(res: ScanResult, out: Path, *, sheet: bool) -> dict:
    stem = res.video.stem
    names = {"frames_csv": f"{stem}.frames.csv", "ranges_csv": f"{stem}.ranges.csv"}
    atomic_write_bytes(out / names["frames_csv"], _csv_bytes(FRAME_CSV_COLUMNS, _frame_rows(res)))
    atomic_write_bytes(out / names["ranges_csv"], _csv_bytes(RANGE_CSV_COLUMNS, _range_rows(res)))
    if sheet:
        names["contact_sheet"] = f"{stem}.contact.png"
        buf = io.BytesIO()
        contact_sheet(res).save(buf, format="PNG", optimize=False)
        atomic_write_bytes(out / names["contact_sheet"], buf.getvalue())
    return names


def _result_json(res: ScanResult, outputs: dict | None) -> dict:
    info = {k: v for k, v in res.info.items() if k != "exception"}
    return {"video": str(res.video), "error": res.error, "complete": res.error is None,
            "info": info, "outputs": outputs or {},
            "ranges": [{"start_s": round(r.start_s, 3), "end_s": round(r.end_s, 3),
                        "duration_s": round(r.duration_s, 3), "peak_p": round(r.peak_p, 4)}
                       for r in res.ranges],
            "frames": [{"time_s": round(f.time_s, 3), "frame_index": f.frame_index,
                        "p_face": round(f.p_face, 4), "label": f.label,
                        "frame_type": f.frame_type, **({"reason": f.reason} if f.reason else {})}
                       for f in res.frames]}


def scan_videos(videos: Iterable[os.PathLike | str], classifier, *,
                out_dir: os.PathLike | str | None = None, contact_sheets: bool = False,
                fps: float | None = 1.0, keyframes: bool = False, on: float = 0.6,
                off: float = 0.4, min_gap: float | None = None, min_duration: float = 0.0,
                batch_size: int = 32, seek: str = "auto", progress: bool = True,
                decode_ahead: bool | None = None, precomputed: list | None = None) -> ScanSummary:
    """Scan several videos; a bad one is reported and the others still run.

    With ``out_dir``, each video gets ``{stem}.frames.csv`` (``time_s,frame_index,p_face,label,
    frame_type``), ``{stem}.ranges.csv`` (``range,start_s,end_s,duration_s,peak_p,start,end,
    first_frame_index,frames``; ``start`` / ``end`` as ``MM:SS.mmm``) and, with
    ``contact_sheets``, ``{stem}.contact.png``, written as soon as it is done; ``scan.json``
    (settings, model, versions, and every video's info, ranges and frames) describes the whole
    run. All files are written atomically. A video that fails part-way (truncated) keeps the
    files for the frames before the error, marked ``"complete": false`` in ``scan.json``.

    Args:
        videos: video files.
        classifier: as for :func:`scan_video`.
        out_dir: output folder (created), or None to write nothing.
        contact_sheets: also write a PNG per video with each range's first frame.
        fps, keyframes, on, off, min_gap, min_duration, batch_size, seek, decode_ahead: as
            for :func:`scan_video`.
        progress: a progress bar on stderr in seconds of video time, across all videos.
        precomputed: one :class:`ScanResult` per video, made elsewhere (on Ray:
            :func:`animefaces.scan_ray.scan_videos_ray`), written out here instead of scanning.

    Raises:
        ConfigError: bad options, no videos, or two videos with one stem while writing files
            (checked before any decoding).
    """
    settings = ScanSettings(fps=fps, keyframes=keyframes, on=on, off=off, min_gap=min_gap,
                            min_duration=min_duration, batch_size=batch_size, seek=seek)
    paths = [Path(v) for v in videos]
    if not paths:
        raise ConfigError("no videos given; pass one or more video files")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_unique_stems(paths)
        out.mkdir(parents=True, exist_ok=True)
    elif contact_sheets:
        raise ConfigError("contact sheets are files: give an output folder (--out DIR)")
    t0 = time.perf_counter()
    summary = ScanSummary(results=[], settings=settings, model=model_info(classifier),
                          out_dir=out)
    durations = probe_durations(paths) if progress else {}
    bar = video_time_bar(sum(d for d in durations.values() if d),
                         enabled=progress and precomputed is None)
    clock = VideoClock(bar)
    on_ray = precomputed
    with bar:
        for k, p in enumerate(paths):
            bar.set_postfix_str(p.name, refresh=False)
            res = on_ray[k] if on_ray is not None else _scan(
                p, classifier, settings, thumbnails=contact_sheets, progress=clock,
                decode_ahead=decode_ahead)
            res.info.pop("exception", None)
            summary.results.append(res)
            if out is not None and res.frames:
                summary.outputs[str(p)] = _write_outputs(res, out, sheet=contact_sheets)
            clock.next_video(durations.get(p))
    summary.elapsed_s = time.perf_counter() - t0
    if out is not None:
        atomic_write_json(out / "scan.json", {
            "made_by": "animefaces.scan.scan_videos",
            "settings": settings.to_dict(),
            "range_rule": "hysteresis: start at P >= on, continue while P >= off, dips below "
                          "off longer than min_gap end a range; a frame at t stands for "
                          "[t, t + step); ranges shorter than min_duration dropped",
            "model": summary.model,
            "versions": versions(video=True),
            "created": utc_now(),
            "elapsed_s": round(summary.elapsed_s, 3),
            "videos": [_result_json(r, summary.outputs.get(str(r.video)))
                       for r in summary.results],
        })
    return summary
