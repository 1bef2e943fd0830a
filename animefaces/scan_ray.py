"""``scan --ray`` (:func:`scan_videos_ray`): the frames of many videos sampled and run through
the CNN on a Ray cluster (:mod:`animefaces.features.distributed_video`), then classified and
merged into face ranges here, exactly as :func:`animefaces.scan.scan_video` does with the frames
it decodes itself.

The SVM, the calibration and the range rule are cheap and stay on the driver; the out-of-domain
guard's image statistics are computed in the decode tasks, next to the pictures. Contact-sheet
thumbnails (the first frame of each range) are decoded here afterwards, one short seek each.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image

from .classify.ranges import FrameScore, video_frame_label
from .errors import AnimeFacesError


def scan_results_ray(paths: list[Path], classifier, settings, *, options, thumbnails: bool,
                     cache_dir="features", range_s: float | None = None, progress: bool = True,
                     on_batch=None) -> list:
    """One :class:`animefaces.scan.ScanResult` per video, in input order (a video that cannot
    be read gets ``error``, with the frames before it), computed on Ray."""
    from .features.cache import FeatureCache
    from .features.distributed import ray_session
    from .features.distributed_video import RANGE_SECONDS, extract_video_frames_ray
    from .scan import ScanResult, _thumbnail_bytes, _video_header, fill_ranges

    fx = classifier.extractor
    guard = getattr(classifier, "guard", None)
    extra = None
    if guard is not None:
        from .classify.ood import image_stats as extra
    if cache_dir is None:
        raise AnimeFacesError("scan --ray keeps the frames' features in a feature cache that every "
                              "node sees: give --cache-dir")
    cache = FeatureCache(cache_dir, fx.fingerprint, meta=fx.describe(), name=fx.spec.name)
    t0 = time.perf_counter()
    with ray_session(options.address):
        frames = extract_video_frames_ray(
            fx, paths, cache=cache, fps=settings.fps, keyframes=settings.keyframes,
            seek=settings.seek, range_s=range_s or RANGE_SECONDS, options=options, extra=extra,
            extra_name="ood.image_stats" if extra else "", progress=progress, on_batch=on_batch)
    elapsed = time.perf_counter() - t0
    out = []
    for vf in frames:
        res = ScanResult(video=vf.video, error=vf.error)
        try:
            res.info["video"] = _video_header(vf.video)
        except AnimeFacesError as exc:
            res.error = res.error or str(exc)
        if vf.keys:
            names = [f"{vf.video.name}@{t:.3f}" for t in vf.times_s]
            preds = classifier._label(vf.X, names, vf.extra if guard is not None else None)
            res.frames = [FrameScore(t, idx, float(p.score), label, ftype, why)
                          for t, idx, ftype, p in zip(vf.times_s, vf.indices, vf.types, preds)
                          for label, why in [video_frame_label(p)]]
        step = fill_ranges(res, settings)
        if thumbnails:
            res.thumbnails = [_first_frame(vf.video, r.start_s, settings, step, _thumbnail_bytes)
                              for r in res.ranges]
        res.info.update({"step_s": step,
                         "min_gap_s": step if settings.min_gap is None else settings.min_gap,
                         "frames_scanned": len(res.frames), "ray": True,
                         "elapsed_all_videos_s": round(elapsed, 3)})
        out.append(res)
    return out


def _first_frame(video: Path, t: float, settings, step: float, thumb) -> Image.Image:
    """The sampled frame shown at ``t`` (a range's start), as a contact-sheet thumbnail."""
    from .data.video import sample_frames

    frames = sample_frames(video, fps=settings.fps, keyframes=settings.keyframes,
                           seek=settings.seek, start_s=max(0.0, t - (step or 1.0)),
                           end_s=t + 1e-6)
    try:
        image = next((f.image for f in frames if f.time_s == t), None)
    finally:
        frames.close()
    if image is None:  # cannot happen for a range found in the same frames; a grey tile
        image = Image.new("RGB", (320, 180), (200, 200, 200))
    return Image.open(io.BytesIO(thumb(image))).convert("RGB")


def scan_videos_ray(videos, classifier, *, ray, cache_dir="features", out_dir=None,
                    contact_sheets: bool = False, fps: float | None = 1.0,
                    keyframes: bool = False, on: float = 0.6, off: float = 0.4,
                    min_gap: float | None = None, min_duration: float = 0.0,
                    batch_size: int = 32, seek: str = "auto", progress: bool = True,
                    range_s: float | None = None):
    """:func:`animefaces.scan.scan_videos` with the frames sampled and run through the CNN on
    Ray (``ray``: a :class:`~animefaces.features.distributed.RayOptions`; the features are kept
    in ``cache_dir``, on storage every node sees): the same files and summary.

    Raises:
        ConfigError: bad options, checked before Ray starts.
    """
    from .errors import ConfigError
    from .scan import ScanSettings, scan_videos

    settings = ScanSettings(fps=fps, keyframes=keyframes, on=on, off=off, min_gap=min_gap,
                            min_duration=min_duration, batch_size=batch_size, seek=seek)
    paths = [Path(v) for v in videos]
    if not paths:
        raise ConfigError("no videos given; pass one or more video files")
    if contact_sheets and out_dir is None:
        raise ConfigError("contact sheets are files: give an output folder (--out DIR)")
    results = scan_results_ray(paths, classifier, settings, options=ray, cache_dir=cache_dir,
                               thumbnails=contact_sheets, range_s=range_s, progress=progress)
    return scan_videos(paths, classifier, out_dir=out_dir, contact_sheets=contact_sheets, fps=fps,
                       keyframes=keyframes, on=on, off=off, min_gap=min_gap,
                       min_duration=min_duration, batch_size=batch_size, seek=seek,
                       progress=progress, precomputed=results)
