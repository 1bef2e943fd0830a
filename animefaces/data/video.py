"""Frame sampling from videos with PyAV (FFmpeg's libraries; no ``ffmpeg`` binary needed).

Two sampling modes, after the two papers' data sets:

* ``fps`` (AnimeFaces): one frame per ``1/fps`` seconds of video time. The video is decoded
  sequentially and the first frame at or after each tick is kept; for long GOPs this is several
  times faster than seeking to each tick (each seek re-decodes from a key frame; see
  ``benchmarks/bench_video.py``). When the step between ticks is much longer than the GOP, the
  sampler seeks instead (``seek="auto"``).
* ``keyframes=True`` (GochiUsa_Faces): every key frame plus one frame per second. Without
  ``fps`` (``fps=None``) only key frames are decoded (``skip_frame="NONKEY"``), which skips most
  of the decoding work; with ``fps`` every frame must be decoded anyway, because a non-key frame
  depends on the frames before it.

Timestamps come from each frame's ``pts`` and its stream's ``time_base`` with exact fractions, so
variable frame rate video and animated GIFs (whose frames carry their own delays) are sampled by
real display time. Frames come out upright: a display matrix in the container (phone videos
are often stored sideways with a rotation to apply) is applied as ``ffmpeg`` and players do
(:func:`apply_display_matrix`). Errors name the file: :class:`BadVideoError` for a missing
file, a non-video, a stream without video, and a truncated or corrupt stream.

:func:`extract_frames` writes the sampled frames and a labelable ``manifest.csv``;
:func:`iter_sampled_frames` streams them in batches for other commands (``scan``).
"""

from __future__ import annotations

import math
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image

# BadVideoError lives with the other error types in errors.py; it stays importable from here.
from ..errors import AnimeFacesError, BadVideoError, ConfigError
from .images import apply_display_matrix, display_rotation

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".gif", ".ts", ".m2ts",
                    ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")
SEEK_CHOICES = ("auto", "never", "always")
# Seek only when the next tick is more than this many GOPs ahead of the current key frame: a
# seek re-decodes up to one GOP before the tick, so it must skip clearly more than that. Measured
# (bench_video.py, 720p H.264): a step of 2 GOPs is a wash, 4 GOPs about 2x faster than sequential.
_SEEK_GOPS = 2
# A video stream that ends this much before its declared duration is reported as truncated.
_TRUNCATION_SLACK_S = 1.0


@dataclass(frozen=True)
class Frame:
    """One sampled frame.

    Attributes:
        index: the frame's number in the video (0-based, presentation order). Exact when the
            video is decoded sequentially; estimated from ``time_s`` and the average frame rate
            after a seek or in key-frame-only decoding, where the frames between are not decoded.
        time_s: display time in seconds from the start of the video stream.
        frame_type: ``"key"`` (a key frame, keyframes mode) or ``"sec"`` (the first frame at or
            after a ``1/fps`` tick).
        image: the decoded frame, RGB, upright (the container's display matrix applied, so a
            sideways-stored phone video gives portrait frames).
    """

    index: int
    time_s: float
    frame_type: str
    image: Image.Image


@dataclass
class FrameBatch:
    """Up to ``batch_size`` frames of one video, in display order."""

    video: Path
    frames: list[Frame]

    @property
    def images(self) -> list[Image.Image]:
        return [f.image for f in self.frames]

    @property
    def times_s(self) -> list[float]:
        return [f.time_s for f in self.frames]

    @property
    def indices(self) -> list[int]:
        return [f.index for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the chosen video stream (durations may be unknown)."""

    path: Path
    codec: str
    width: int
    height: int
    duration_s: float | None
    average_fps: float | None
    frames: int | None
    # Clockwise degrees the stored pictures are turned for display (the display matrix, read
    # as ffmpeg does: a mirrored picture can read as 180 plus a flip; 0 when there is none).
    # width / height are the upright size, as frames come out; stored_* as encoded.
    rotation: int = 0
    stored_width: int | None = None
    stored_height: int | None = None


def is_video_name(path: os.PathLike | str) -> bool:
    """True when the file name has a video extension (animated GIF counts as video)."""
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


def _import_av():
    try:
        import av
    except ImportError:
        raise ConfigError('video support needs PyAV; install it with: pip install "av>=12" '
                          '(or pip install "animefaces[video]")') from None
    return av


def check_sampling_options(fps: float | None, *, keyframes: bool,
                           seek: str) -> Fraction | None:
    """Check the frame-sampling options of :func:`sample_frames` before any decoding.

    Args:
        fps: sampled frames per second of video time, or ``None`` / ``0`` for key frames only.
        keyframes: whether every key frame is kept too.
        seek: one of :data:`SEEK_CHOICES`.

    Returns:
        the exact step between ticks in seconds (``1 / fps`` as a :class:`~fractions.Fraction`),
        or ``None`` in key-frames-only mode.

    Raises:
        ConfigError: an unknown ``seek``, a non-positive or non-finite ``fps``, or no ``fps``
            without ``keyframes``; the message names the value and the fix.
    """
    if seek not in SEEK_CHOICES:
        raise ConfigError(f"unknown seek mode {seek!r}; choose one of: {', '.join(SEEK_CHOICES)}")
    if fps is None or fps == 0:
        if not keyframes:
            raise ConfigError(f"fps={fps!r} keeps no frames without keyframes=True (--keyframes);"
                              f" give a positive fps, e.g. 1 for one frame per second of video, "
                              f"or ask for key frames only")
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not fps > 0 \
            or not math.isfinite(fps):
        raise ConfigError(f"fps must be a positive number of frames per second (got {fps!r}), "
                          f"e.g. 1 for one frame a second or 0.5 for one every two seconds")
    # Exact tick arithmetic: 0.1 as a float is not 1/10, and ticks must land on frame times.
    return 1 / Fraction(str(fps)).limit_denominator(1_000_000)


def _video_stream(container, path):
    streams = [s for s in container.streams.video
               if not (s.disposition & s.disposition.__class__.attached_pic)]
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        held = ", ".join(f"{sum(s.type == k for s in container.streams)} {k}" for k in kinds)
        raise BadVideoError(path, f"it has no video stream (it holds: {held or 'nothing'})")
    return streams[0]


def _open(path: Path):
    av = _import_av()
    if not path.exists():
        raise BadVideoError(path, "no such file")
    if path.is_dir():
        raise BadVideoError(path, "it is a folder, not a video file")
    if path.stat().st_size == 0:
        raise BadVideoError(path, "the file is empty (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise BadVideoError(path, f"not a video, or a truncated or corrupt one that FFmpeg cannot "
                                  f"open ({_reason(exc)})") from None
    try:
        if _is_image_demuxer(container):
            raise BadVideoError(path, _not_a_video_but(path))
        stream = _video_stream(container, path)
    except BaseException:
        container.close()
        raise
    return container, stream


def _is_image_demuxer(container) -> bool:
    """FFmpeg opens a still image (or anything named like one) with its image demuxers:
    ``image2`` (by file name) or ``png_pipe``, ``jpeg_pipe``... (by content)."""
    names = set(str(getattr(container.format, "name", "")).split(","))
    return bool(names & {"image2", "image2pipe"}) or any(n.endswith("_pipe") for n in names)


def _not_a_video_but(path: Path) -> str:
    """Why a file that FFmpeg reads as an image is refused as a video: a still image (say
    what to use instead), or not even an image (say so, as for any non-video)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
            size = f"{im.width}x{im.height} "
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return (f"not a video: FFmpeg takes it for an image by its name, and it is not a "
                f"readable image either ({type(exc).__name__})")
    return (f"it is a still {size}image, not a video (a scan of it would be one frame at 0 s); "
            f"classify images with `animefaces predict {path}`")


def _reason(exc) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _display_matrix(av, frame) -> tuple[int, ...] | None:
    """The decoded frame's display matrix (FFmpeg attaches the container's to each frame)."""
    try:
        side = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    except AttributeError:  # a PyAV without frame side data: no rotation to apply
        return None
    if side is None:
        return None
    data = bytes(side)
    return struct.unpack("=9i", data[:36]) if len(data) >= 36 else None


def _upright_image(av, frame) -> Image.Image:
    return apply_display_matrix(frame.to_image(), _display_matrix(av, frame))


def _duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:  # AV_TIME_BASE units; may include audio
        return container.duration / 1_000_000
    return None


def probe_video(video_path: os.PathLike | str) -> VideoInfo:
    """Read a video's header: codec, size (upright, as frames come out: the first frame is
    decoded for its display rotation), duration (or None), average fps (or None).

    Raises:
        BadVideoError: missing file, not a video, no video stream.
    """
    path = Path(video_path)
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate
        w, h = stream.width, stream.height
        rotation = _first_frame_rotation(container, stream)
        if rotation in (90, 270):
            w, h = h, w  # frames come out upright (apply_display_matrix)
        return VideoInfo(path=path, codec=stream.codec_context.name, width=w, height=h,
                         duration_s=_duration_s(container, stream),
                         average_fps=float(rate) if rate else None, frames=stream.frames or None,
                         rotation=rotation, stored_width=stream.width,
                         stored_height=stream.height)


def _first_frame_rotation(container, stream) -> int:
    """Clockwise display rotation (degrees) of the first decoded frame (FFmpeg attaches the
    container's display matrix to frames); 0 when there is none or the first frame cannot be
    decoded (sampling reports a broken file itself)."""
    av = _import_av()
    try:
        frame = next(container.decode(stream), None)
    except (av.error.FFmpegError, OSError, ValueError):
        return 0
    if frame is None:
        return 0
    return display_rotation(_display_matrix(av, frame)) or 0


def sample_frames(video_path: os.PathLike | str, *, fps: float | None = 1.0,
                  keyframes: bool = False, seek: str = "auto",
                  progress: Callable[[float], None] | None = None, start_s: float = 0.0,
                  end_s: float | None = None) -> Iterator[Frame]:
    """Decode a video and yield the sampled frames in display order.

    Args:
        video_path: any file FFmpeg reads: mp4, mkv, webm, avi, mov, animated GIF...
        fps: sampled frames per second of video time (1.0 = one a second, as AnimeFaces did).
            Ticks fall at ``k / fps`` seconds; each keeps the first frame at or after it. A
            frame shown across several ticks (a long GIF frame, a VFR still) is yielded once.
            ``None`` with ``keyframes=True`` samples key frames only.
        keyframes: also yield every key frame (``frame_type="key"``), as GochiUsa_Faces did. A
            tick whose first frame is a key frame yields it once, as ``"key"``.
        seek: ``"auto"`` seeks ahead when the next tick is more than a few GOPs away (sparse
            sampling), ``"never"`` always decodes sequentially, ``"always"`` seeks whenever
            the next tick lies beyond the next key frame.
        progress: called with the current video time in seconds as decoding advances.
        start_s, end_s: only the frames shown in ``[start_s, end_s)`` (a piece of the video for
            one worker: see :mod:`animefaces.features.distributed_video`). The decoder seeks to
            the key frame before ``start_s``, which is rounded to the nearest tick, so the
            pieces of a video give exactly the frames of the whole (measured by a test).

    Yields:
        :class:`Frame` objects (index, time_s, frame_type, RGB image).

    Raises:
        BadVideoError: naming the file, when it is missing, not a video, has no video stream,
            or is truncated or corrupt (possibly after some frames were yielded).
        ConfigError: for a bad ``fps`` / ``seek``.
    """
    step = check_sampling_options(fps, keyframes=keyframes, seek=seek)
    path = Path(video_path)
    av = _import_av()
    t_from = Fraction(start_s or 0)
    if step is not None:
        t_from = round(t_from / step) * step
    t_to = Fraction(end_s) if end_s is not None else None
    container, stream = _open(path)
    with container:
        yield from _sample(av, container, stream, path, step=step, keyframes=keyframes,
                           seek=seek, progress=progress, t_from=t_from, t_to=t_to)


def _sample(av, container, stream, path, *, step, keyframes, seek, progress,
            t_from=Fraction(0), t_to=None):
    tb = Fraction(stream.time_base) if stream.time_base else None
    rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
    start = stream.start_time  # pts of time 0; the first timestamp seen when undeclared
    key_only = step is None
    if key_only:
        # The decoder then drops all but key frames (~6x less work for GOP 240, measured); the
        # key_frame filter below keeps the output right for codecs that ignore the flag.
        stream.codec_context.skip_frame = "NONKEY"

    next_tick = t_from
    count = 0                  # frames seen since the start: the exact index while sequential
    exact_index = not key_only
    last_t: Fraction | None = None     # time of the last frame handled (never goes back)
    last_end: Fraction | None = None   # ... plus its duration
    last_key: Fraction | None = None
    gop: Fraction | None = None        # longest key-frame interval seen so far
    try_seek = seek != "never" and not key_only and tb is not None
    sought: set[Fraction] = set()
    done = False  # reached t_to
    if t_from > 0 and tb is not None:
        try:  # to the key frame before the piece; the frames before t_from are skipped
            container.seek(int(t_from / tb) + (start or 0), stream=stream, backward=True,
                           any_frame=False)
            exact_index = False
        except av.error.FFmpegError:
            pass  # decode from the start instead

    def to_time(pts, ptb) -> Fraction | None:
        nonlocal start
        if pts is None or ptb is None:
            return None
        if start is None:
            start = pts
        return (pts - start) * Fraction(ptb)

    while True:
        seek_to = None
        demux = container.demux(stream)
        try:
            for packet in demux:
                for frame in packet.decode():
                    t = to_time(frame.pts if frame.pts is not None else frame.dts,
                                frame.time_base or tb)
                    if t is None:
                        # Raw streams may lack timestamps: continue at the stream's rate.
                        t = last_end if last_end is not None else (
                            count / rate if rate else Fraction(count))
                    if last_t is not None and t <= last_t:
                        # Already handled before a seek (or a broken timestamp): skip.
                        continue
                    if t_to is not None and t >= t_to:
                        done = True
                        break
                    is_key = bool(frame.key_frame)
                    if key_only and not is_key:
                        continue
                    index = count if exact_index else (round(t * rate) if rate else count)
                    count += 1
                    dur = frame.duration
                    last_t = t
                    last_end = t + (dur * Fraction(frame.time_base or tb) if dur and tb
                                    else (1 / rate if rate else Fraction(0)))
                    if progress is not None:
                        progress(float(t))
                    if t < 0 or t < t_from:  # hidden by an edit list, or before the piece
                        continue
                    take_tick = step is not None and t >= next_tick
                    if take_tick:
                        next_tick = (t // step + 1) * step
                    if keyframes and is_key:
                        yield Frame(index, float(t), "key", _upright_image(av, frame))
                    elif take_tick:
                        yield Frame(index, float(t), "sec", _upright_image(av, frame))
                if done:
                    break
                # Decide on a seek only after the key frame packet is decoded, so a container
                # that refuses to seek leaves the decoder in a consistent state.
                if try_seek and packet.is_keyframe and packet.pts is not None:
                    kt = to_time(packet.pts, tb)
                    if last_key is not None and kt > last_key:
                        gop = max(gop or 0, kt - last_key)
                    last_key = kt
                    if gop and next_tick not in sought and \
                            next_tick - kt > gop * (_SEEK_GOPS if seek == "auto" else 1):
                        seek_to = next_tick
                        break
        except av.error.FFmpegError as exc:
            where = f"at {float(last_t):.2f} s" if last_t is not None else "before the first frame"
            raise BadVideoError(path, f"the stream is truncated or corrupt ({where}: "
                                      f"{_reason(exc)})") from None
        finally:
            demux.close()
        if seek_to is None or done:
            break
        sought.add(seek_to)
        try:
            # backward=True lands on the key frame at or before the tick; PyAV flushes the
            # decoder. Frames before the tick are then decoded and skipped as usual.
            container.seek(int(seek_to / tb) + (start or 0), stream=stream, backward=True,
                           any_frame=False)
        except av.error.FFmpegError:
            try_seek = False  # carry on sequentially; the t <= last_t guard drops repeats
        else:
            exact_index = False  # the frames skipped were not counted
            last_key = None      # the jump is not a key-frame interval

    if done or (last_t is None and t_from > 0):
        return  # the piece ended before the stream did (or lies past its end)
    if last_t is None:
        raise BadVideoError(path, "no frame could be decoded (the stream is empty, truncated "
                                  "or corrupt)")
    declared = stream.duration * tb if stream.duration is not None and tb else None
    if declared is not None and not key_only and \
            float(last_end) + _TRUNCATION_SLACK_S < float(declared):
        raise BadVideoError(path, f"the stream ends at {float(last_end):.2f} s but the file "
                                  f"declares {float(declared):.2f} s: it is truncated")


def iter_sampled_frames(video_path: os.PathLike | str, *, fps: float | None = 1.0,
                        keyframes: bool = False, batch_size: int = 16, seek: str = "auto",
                        progress: Callable[[float], None] | None = None
                        ) -> Iterator[FrameBatch]:
    """Stream one video's sampled frames in batches (for batched classification, e.g. ``scan``).

    A batch never spans two videos; call this once per video and catch :class:`BadVideoError`
    per video to go on with the others. Only ``batch_size`` decoded frames are held at a time.
    When the stream breaks midway, the frames decoded before the error come as a last (short)
    batch and the error is raised on the next iteration.

    Args:
        video_path, fps, keyframes, seek, progress: as for :func:`sample_frames`.
        batch_size: frames per batch (the last one may be shorter).

    Yields:
        :class:`FrameBatch` with ``.images`` (RGB PIL images), ``.times_s``, ``.indices`` and
        ``.frames``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
    path = Path(video_path)
    batch: list[Frame] = []
    try:
        for frame in sample_frames(path, fps=fps, keyframes=keyframes, seek=seek,
                                   progress=progress):
            batch.append(frame)
            if len(batch) == batch_size:
                yield FrameBatch(path, batch)
                batch = []
    except BadVideoError:
        # Frames decoded before a stream error are good: hand them over, then raise.
        if batch:
            yield FrameBatch(path, batch)
        raise
    if batch:
        yield FrameBatch(path, batch)


# -- writing frames and the manifest ---------------------------------------------------------


def check_unique_stems(paths: Iterable[Path], *, what: str = "videos") -> None:
    """Output names start with each input's stem; two inputs with one stem would overwrite
    each other's files, so refuse before any work."""
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen and seen[p.stem] != p:
            raise ConfigError(f"two {what} share the name '{p.stem}' ({seen[p.stem]} and {p}); "
                              f"their outputs would overwrite each other: rename one, or run "
                              f"them into different --out folders")
        seen[p.stem] = p


class VideoClock:
    """Feeds a tqdm bar in seconds of video time across all videos of a run.

    Pass it as the ``progress`` callback of :func:`sample_frames` (it is called with the current
    video time in seconds) and call :meth:`next_video` after each video.
    """

    def __init__(self, bar):
        self.bar = bar
        self.pos = 0.0

    def _advance(self, seconds: float) -> None:
        if self.bar.total:  # durations are declared, frame times are measured: stay in range
            seconds = min(seconds, self.bar.total - self.bar.n)
        if seconds > 0:
            self.bar.update(seconds)

    def __call__(self, t: float) -> None:
        """Advance the bar to video time ``t`` (seconds) of the current video."""
        if t > self.pos:
            self._advance(t - self.pos)
            self.pos = t

    def next_video(self, duration: float | None) -> None:
        """Finish the current video (its declared ``duration`` in seconds, or None) and start
        the next one at 0 s."""
        # Count a finished video in full, so the total stays truthful after an early error.
        if duration is not None and duration > self.pos:
            self._advance(duration - self.pos)
        self.pos = 0.0


def video_time_bar(total: float | None, *, enabled: bool):
    """A tqdm progress bar on stderr counted in seconds of video time.

    Args:
        total: seconds of video to decode (the sum of declared durations), or None / 0 when
            unknown (the bar then counts up without a percentage).
        enabled: False gives a disabled bar, so callers need no second code path.
    """
    from tqdm.auto import tqdm

    fmt = ("{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}"
           "{postfix}]") if total else "{desc}: {n:.0f} s [{elapsed}{postfix}]"
    return tqdm(total=total or None, desc="video time", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, bar_format=fmt)


def probe_durations(paths: list[Path]) -> dict[Path, float | None]:
    """Each video's declared duration in seconds (:func:`probe_video`), or None for a video
    without one or that cannot be opened (its error comes later, from the decode itself)."""
    out = {}
    for p in paths:
        try:
            out[p] = probe_video(p).duration_s
        except AnimeFacesError:
            out[p] = None
    return out
