"""The synthetic test video of the video benchmarks (bench_video.py, bench_scan.py).

A 1280x720 H.264 video made with PyAV: moving shapes over a gradient with fixed noise and a new
"shot" every 4 s, one key frame every ``gop`` frames and none at scene cuts, as TV anime
encodes often have. Both benchmarks take the same options for it (:func:`add_video_args`) and
record how it was made the same way (:func:`video_for`), so their numbers describe one video.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

# The encoder settings below, as the benchmarks' JSON records them.
CODEC = "libx264 veryfast crf 23"


def make_video(path: Path, *, seconds: float, fps: int, gop: int, width: int, height: int) -> None:
    """Moving shapes over a gradient, so motion compensation has real work to do.

    Args:
        path: the output file (.mp4).
        seconds: duration; ``round(seconds * fps)`` frames are encoded.
        fps: frame rate.
        gop: key frame interval in frames (exact: no scene-cut key frames).
        width, height: frame size in pixels.
    """
    import av

    n = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={
            "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "veryfast",
            "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([(xx * 255 // width), (yy * 255 // height),
                         ((xx + yy) * 255 // (width + height))], axis=-1).astype(np.uint8)
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)
        for i in range(n):
            img = base.copy()
            img += noise
            shot = i // (fps * 4)  # a new "shot" every 4 s
            img[:, :, shot % 3] //= 2
            for k in range(4):
                cx = int((i * (3 + k) + k * 200) % (width - 160))
                cy = int((k * 150 + 40 * np.sin(i / (10 + k))) % (height - 160)) + 20
                img[cy:cy + 120, cx:cx + 140] = ((k * 70 + shot * 40) % 256, 200 - k * 40, 90)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


def add_video_args(ap: argparse.ArgumentParser, *, seconds: float) -> None:
    """``--video`` (a real file instead) and the synthetic video's ``--seconds`` (default
    ``seconds``), ``--fps``, ``--gop`` and ``--size``."""
    ap.add_argument("--video", type=Path, help="benchmark this file instead of a synthetic one")
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--fps", type=int, default=24, help="frame rate of the synthetic video")
    ap.add_argument("--gop", type=int, default=240, help="key frame interval in frames")
    ap.add_argument("--size", default="1280x720")


def video_for(args: argparse.Namespace, tmp_dir: Path) -> tuple[Path, dict | None]:
    """The video to benchmark: ``args.video``, or a synthetic one made in ``tmp_dir``.

    Returns:
        ``(path, made)``: ``made`` is None for ``--video``, otherwise the settings, the encoder,
        the encoding time (s) and the size (bytes) of the synthetic video, for the JSON report.
    """
    if args.video:
        return args.video, None
    w, h = (int(v) for v in args.size.lower().split("x"))
    video = Path(tmp_dir) / "synthetic.mp4"
    t0 = time.perf_counter()
    make_video(video, seconds=args.seconds, fps=args.fps, gop=args.gop, width=w, height=h)
    return video, {"seconds": args.seconds, "fps": args.fps, "gop": args.gop, "size": args.size,
                   "codec": CODEC, "encode_s": round(time.perf_counter() - t0, 2),
                   "bytes": video.stat().st_size}
