"""Small synthetic videos for the video tests (test_video, test_scan, test_crops), made with PyAV.

* :func:`write_video` encodes a list of pictures, each shown for one second (``rate`` frames), or
  at given display times (variable frame rate).
* :func:`stamp_second` / :func:`second_shown` write and read a 32x32 grey patch in the top-left
  corner whose level says which second a picture belongs to, so a test can check that a frame
  sampled at time t really shows second floor(t).
* :func:`write_audio_only` makes a file that FFmpeg opens but that holds no video stream.

A plain module beside the tests (imported as ``from _videos import ...``, like conftest's helpers),
so that conftest.py stays about images and datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

# Grey level of second s in the code patch: 20 + 18 s (seconds 0-13 fit in a byte). Steps of 18
# stay apart after lossy encoding: the patch mean moves by a few levels at most.
_CODE_BASE, _CODE_STEP, _CODE_MAX_SECOND = 20, 18, 13


def x264(gop: int, **more: str) -> dict[str, str]:
    """libx264 options for a fixed GOP: a key frame every ``gop`` frames and no others (no
    scene-cut key frames), at the fastest preset; ``more`` adds options (e.g. ``crf="12"``)."""
    return {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "ultrafast",
            **more}


def code_level(second: int) -> int:
    """The grey level (0-255) that stands for ``second`` in the code patch."""
    if not 0 <= second <= _CODE_MAX_SECOND:
        raise ValueError(f"the code patch holds seconds 0-{_CODE_MAX_SECOND}, not {second}")
    return _CODE_BASE + _CODE_STEP * second


def stamp_second(img: np.ndarray, second: int) -> np.ndarray:
    """Paint the 32x32 code patch for ``second`` into the top-left corner of an (H, W, 3) uint8
    picture, in place; returns it."""
    img[:32, :32] = code_level(second)
    return img


def second_shown(image: Image.Image) -> int:
    """Which second's picture a decoded frame shows (read from the inside of the code patch)."""
    level = float(np.asarray(image.convert("L"))[4:28, 4:28].mean())
    return int(round((level - _CODE_BASE) / _CODE_STEP))


def _rgb(picture) -> np.ndarray:
    if isinstance(picture, Image.Image):
        return np.asarray(picture.convert("RGB"))
    return picture


def write_video(path: Path, pictures: Sequence, *, rate: int = 24, codec: str = "libx264",
                options: dict | None = None, container_options: dict | None = None,
                pix_fmt: str = "yuv420p", times_s: Sequence[float] | None = None,
                display: tuple[int, bool, bool] | None = None) -> Path:
    """Encode ``pictures`` into a video file at ``path`` (the container follows the suffix).

    Args:
        pictures: (H, W, 3) uint8 RGB arrays or PIL images, all of one size (the video's size).
        rate: frames per second. Without ``times_s`` each picture is shown for one second
            (``rate`` identical frames), so picture k fills the time [k, k + 1) s.
        codec, options: the encoder and its options (e.g. :func:`x264`); a codec this FFmpeg
            build cannot encode skips the test.
        container_options: muxer options, e.g. ``{"movflags": "faststart"}``.
        pix_fmt: the encoded pixel format.
        times_s: variable frame rate instead: one frame per picture, shown at these times
            (seconds, increasing; millisecond timestamps).
        display: ``(degrees, hflip, vflip)`` for a display matrix in the container, as PyAV's
            ``VideoStream.set_display_rotation`` takes it: players turn the stored pictures
            ``degrees`` counterclockwise, then mirror them. A PyAV that cannot write one skips
            the test.

    Returns:
        ``path``.
    """
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 - an FFmpeg build without this encoder
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    pictures = [_rgb(p) for p in pictures]
    height, width = pictures[0].shape[:2]
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if display is not None:
            if not hasattr(stream, "set_display_rotation"):
                pytest.skip(f"PyAV {av.__version__} cannot write a display matrix")
            degrees, hflip, vflip = display
            stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        if times_s is None:
            frames = (av.VideoFrame.from_ndarray(pictures[i // rate], format="rgb24")
                      for i in range(len(pictures) * rate))
        else:
            if len(times_s) != len(pictures):
                raise ValueError(f"{len(times_s)} times for {len(pictures)} pictures")
            ms = Fraction(1, 1000)
            stream.codec_context.time_base = ms

            def timed():
                for pic, t in zip(pictures, times_s):
                    frame = av.VideoFrame.from_ndarray(pic, format="rgb24")
                    frame.pts, frame.time_base = int(round(t * 1000)), ms
                    yield frame
            frames = timed()
        for frame in frames:
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path, *, packets: int = 20) -> Path:
    """An AAC file of silence (``packets`` x 1024 samples at 44.1 kHz) with no video stream."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(packets):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
