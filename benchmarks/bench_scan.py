"""Benchmark ``scan``: sampled frames classified per second, against decoding alone.

Makes a synthetic 1280x720 H.264 video with PyAV (default 40 s, 24 fps, one key frame every
240 frames; the generator in ``_synthetic.py``, shared with ``bench_video.py``) unless --video
names a real file, then times:

* ``decode_fps1``: ``sample_frames(fps=1)`` alone, frames converted to PIL images and dropped
  (the floor for ``scan`` at 1 fps: no classifier);
* ``scan_fps1``: ``scan_video(fps=1)`` with the classifier, decoding and classifying in turn
  (the default on CPU);
* ``scan_fps1_ahead``: the same with ``decode_ahead=True`` (the next batch is decoded in a
  background thread while the classifier runs; the default on GPU);
* ``scan_fps1_bN``: ``scan_fps1`` with other ``--batch-sizes``;
* ``decode_fps4`` / ``scan_fps4`` / ``scan_fps4_ahead``: the same at 4 frames a second, where
  the classifier's share is larger.

The classifier is the model at ``--model`` (default ``models/best``) if it loads, otherwise the
tiny test backbone with random weights and an SVM fitted to random labels (speed only; the
output says which). Each timing is the best (minimum) of ``--repeats`` runs, with the median, all
runs and CPU seconds in the JSON; the runs go round robin, so a change in the machine's load hits
all alike. ``frames_per_s`` counts sampled frames, ``realtime_x`` is video seconds per wall
second. ``wait s`` is the time ``scan`` waited for decoded frames (decoding not hidden
behind classification), ``classify s`` the time in ``predict_many``.

    python benchmarks/bench_scan.py --out reports/bench_scan.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from _synthetic import add_video_args, video_for  # noqa: E402
from bench_video import timed  # noqa: E402

from animefaces.scan import model_info, scan_video  # noqa: E402
from animefaces.data.video import probe_video, sample_frames  # noqa: E402


def load_classifier(model: Path, device: str):
    """The trained model if it loads, else the tiny random backbone + an SVM on random labels."""
    from animefaces.api import FaceClassifier
    from animefaces.errors import AnimeFacesError

    try:
        return FaceClassifier.load(model, device=device), f"trained model {model}"
    except AnimeFacesError as exc:
        why = str(exc)
    from animefaces.features.extract import FeatureExtractor
    from animefaces.classify.persist import TrainedModel
    from animefaces.classify.svm import refit

    fx = FeatureExtractor("tiny", weights="random", device=device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(16)]
    X = fx.transform_images(images)
    y = np.arange(16) % 2
    pipe = refit({"kernel": "rbf", "C": 1.0}, X, y)
    meta = {"backbone": "tiny", "kernel": "rbf", "features": {"random_weights": True}}
    clf = FaceClassifier(TrainedModel(pipeline=pipe, platt=(-1.0, 0.0), meta=meta), fx)
    return clf, f"tiny backbone, random weights (no usable model at {model}: {why})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_video_args(ap, seconds=40.0)
    ap.add_argument("--model", type=Path, default=Path("models/best"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="32,8",
                    help="comma-separated batch sizes for scan at 1 fps (the first is the "
                         "default run)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("reports/bench_scan.json"))
    args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    load = os.getloadavg()[0]
    print(f"load average: {load:.2f} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    clf, which = load_classifier(args.model, args.device)
    print(f"classifier: {which} (loaded in {time.perf_counter() - t0:.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        video, made = video_for(args, Path(tmp))
        info = probe_video(video)
        duration = info.duration_s or 0.0
        # Warm-up: first forward pass (allocator, thread pools) and the file in the page cache.
        scan_video(video, clf, fps=1 / max(duration / 4, 1), progress=False)

        def decode(fps):
            return lambda: sum(1 for _ in sample_frames(video, fps=fps))

        def scan(fps, batch_size, ahead):
            return lambda: scan_video(video, clf, fps=fps, batch_size=batch_size,
                                      progress=False, decode_ahead=ahead)

        b0 = batch_sizes[0]
        runs = {"decode_fps1": decode(1), "scan_fps1": scan(1, b0, ahead=False),
                "scan_fps1_ahead": scan(1, b0, ahead=True)}
        for b in batch_sizes[1:]:
            runs[f"scan_fps1_b{b}"] = scan(1, b, ahead=False)
        runs.update({"decode_fps4": decode(4), "scan_fps4": scan(4, b0, ahead=False),
                     "scan_fps4_ahead": scan(4, b0, ahead=True)})

        # Round robin (every run once per repeat), so a change in the machine's load during
        # the benchmark hits all runs alike.
        walls = {k: [] for k in runs}
        cpus = {k: [] for k in runs}
        outs, splits = {}, {k: [] for k in runs}
        for rep in range(args.repeats):
            for name, fn in runs.items():
                w, c, outs[name] = timed(fn, 1)
                walls[name] += w
                cpus[name] += c
                if not isinstance(outs[name], int):
                    splits[name].append((outs[name].info["decode_wait_s"],
                                         outs[name].info["classify_s"]))
            print(f"repeat {rep + 1}/{args.repeats} done", flush=True)

        results = {}
        print(f"{'run':16s} {'best s':>7s} {'median':>7s} {'cpu s':>7s} {'frames/s':>9s} "
              f"{'x real time':>12s} {'frames':>7s} {'wait s':>7s} {'classify s':>10s}")
        for name in runs:
            out, best, med = outs[name], min(walls[name]), statistics.median(walls[name])
            n = out if isinstance(out, int) else len(out.frames)
            row = {"best_s": round(best, 3), "median_s": round(med, 3),
                   "runs_s": [round(t, 3) for t in walls[name]],
                   "cpu_s": [round(t, 3) for t in cpus[name]], "frames": n,
                   "frames_per_s": round(n / best, 2),
                   "frames_per_s_median": round(n / med, 2),
                   "realtime_x": round(duration / best, 2) if duration else None}
            split = ""
            if splits[name]:
                # The split of the fastest run.
                wait, cls = splits[name][int(np.argmin(walls[name]))]
                row.update({"decode_wait_s": wait, "classify_s": cls, "ranges": len(out.ranges)})
                split = f" {wait:7.2f} {cls:10.2f}"
            results[name] = row
            print(f"{name:16s} {best:7.2f} {med:7.2f} {min(cpus[name]):7.2f} {n / best:9.1f} "
                  f"{(duration / best if duration else float('nan')):11.1f}x {n:7d}{split}",
                  flush=True)

    report = {
        "benchmark": "bench_scan",
        "classifier": which,
        "model": model_info(clf),
        "extractor": {k: str(v) for k, v in vars(clf.extractor.settings).items()},
        "video": made or {"path": str(args.video)},
        "video_info": {"duration_s": duration, "codec": info.codec,
                       "size": f"{info.width}x{info.height}", "average_fps": info.average_fps},
        "repeats": args.repeats,
        "load_average_1min_at_start": round(load, 2),
        "results": results,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


def _versions():
    import av
    import torch

    return {"av": av.__version__, "torch": torch.__version__,
            "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))}


if __name__ == "__main__":
    sys.exit(main())
