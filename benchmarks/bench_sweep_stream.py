"""The whole sweep on a season-archive-sized data set: features in memory vs streamed from the
feature cache (``[svm] stream``).

    .venv/bin/python benchmarks/bench_sweep_stream.py [--sizes 20000,100000] [--out DIR]

For each N: N small unique PNG files (48 x 48, so hashing and the guard's image statistics stay
cheap) in a manifest with train / val / test splits (70 / 15 / 15) and 60 groups, and
MobileNetV2-shaped synthetic 1,280-d features (benchmarks/bench_svm_scale.py's generator: two
classes of several clusters each) written into the feature cache under the fingerprint of
``mobilenet_v2`` with random weights, so the sweep finds every feature cached and the numbers
are the sweep's own: group cross-validation, refit, calibration, band, out-of-domain guard (its
reference capped at ``trust.ood_max_reference``), reports; the image statistics the guard
uses are computed once beforehand (cached beside the features) and timed apart. The grid is one scalable row
(``nystroem``, 500 components, the sgd solver, 5 epochs). Each sweep runs in its own process;
its peak resident memory (``VmHWM``) and wall time are recorded, once with ``stream = false``
(features loaded into memory, split and fold copies) and once with ``stream = true``.

Results: ``benchmarks/results/sweep_stream.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
D = 1280
GRID = '''
[[svm.grid]]
kernel = "nystroem"
C = [1.0]
n_components = [500]
solver = ["sgd"]
epochs = [5]
'''


def make_data(root: Path, n: int, seed: int = 0) -> Path:
    """N unique 48 x 48 PNGs, a manifest, and their synthetic features in the cache."""
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from animefaces import _io
    from animefaces.features.cache import FeatureCache
    from animefaces.features.dataset import make_extractor

    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    latent, k = 24, 6
    centres = rng.normal(0, 1.2, size=(2, k, latent))
    W = np.abs(rng.normal(0, 1, size=(latent, D))) * (rng.random((latent, D)) < 0.15)
    fx = make_extractor("mobilenet_v2", weights="random", device="cpu", precision="fp32")
    cache = FeatureCache(root / "features", fx.fingerprint, meta=fx.describe(), name=fx.spec.name)
    base = rng.integers(40, 215, size=(48, 48, 3)).astype(np.uint8)
    rows = []
    for a in range(0, n, 10_000):
        m = min(10_000, n - a)
        y = rng.integers(0, 2, m)
        z = centres[y, rng.integers(0, k, m)] + rng.normal(0, 1.6, size=(m, latent))
        X = np.clip(z @ W * 0.4 + rng.gamma(1.0, 0.35, size=(m, D)), 0, 6).astype(np.float32)
        keys = []
        for j in range(m):
            i = a + j
            im = base.copy()
            im[i % 48, (i // 48) % 48] = [(i >> 16) & 255, (i >> 8) & 255, i & 255]  # unique bytes
            im[0, 0, 0] = (i // (48 * 48)) % 256
            path = img_dir / f"{i:07d}.png"
            Image.fromarray(im).save(path, compress_level=1)
            keys.append(_io.sha256_file(path))
            u = (i * 2654435761) % 100
            split = "train" if u < 70 else ("val" if u < 85 else "test")
            rows.append({"path": f"images/{i:07d}.png", "label": "face" if y[j] else "no_face",
                         "split": split, "group": f"g{(i * 7919) % 60}"})
        cache.write_shard(keys, X)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


def warm_image_stats(root: Path) -> None:
    """Fill the image-statistics cache the sweep's out-of-domain guard reads."""
    from animefaces.classify.ood import stats_for_files

    stats_for_files(sorted((root / "images").glob("*.png")), cache_dir=root / "features" / "image-stats")


def _child(q, data: str, root: str, stream: bool):
    sys.path.insert(0, str(ROOT))
    from animefaces.bench.measure import peak_rss_mb
    from animefaces.train.sweep import run_sweep

    out = Path(root) / ("stream" if stream else "memory")
    cfg = out / "sweep.toml"
    out.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'''
[features]
backbones = ["mobilenet_v2"]
device = "cpu"
precision = "fp32"
cache_dir = "{(Path(root) / 'features').as_posix()}"
[svm]
stream = {"true" if stream else "false"}
{GRID}
[output]
reports_dir = "{(out / 'reports').as_posix()}"
models_dir = "{(out / 'models').as_posix()}"
''')
    base = peak_rss_mb()
    t0 = time.perf_counter()
    res = run_sweep(data, config=cfg, weights="random", progress=False)
    wall = time.perf_counter() - t0
    r = res.results
    q.put({"wall_s": round(wall, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
           "rss_before_mb": round(base, 1), "streamed": r["streamed"],
           "timings": r["timings"], "accuracy": r["best"]["accuracy"],
           "ood_reference": (r["trust"].get("ood") or {}).get("reference_sample")})


def run_one(data: Path, root: Path, stream: bool) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, str(data), str(root), stream))
    p.start()
    p.join()
    if p.exitcode != 0:
        return {"error": f"exit code {p.exitcode}"}
    return q.get()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,100000", help="comma-separated N (all splits)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from animefaces.bench.measure import _LoadMeter, machine_info

    results = {"what": "whole sweep, one nystroem-500 + sgd row, synthetic 1280-d features "
                       "in the feature cache, in memory vs streamed", "grid": GRID.strip(),
               "machine": machine_info(), "sizes": {}}
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="bench-sweep-stream-", dir=args.work) as tmp:
            t0 = time.perf_counter()
            data = make_data(Path(tmp), n)
            made = time.perf_counter() - t0
            # The guard's image statistics are cached beside the features: computed once here,
            # so neither run pays for them (or for the first read of the files) and both compare
            # like with like.
            t0 = time.perf_counter()
            warm_image_stats(Path(tmp))
            entry = {"data_seconds": round(made, 1),
                     "image_stats_seconds": round(time.perf_counter() - t0, 1)}
            for stream in (False, True):
                meter = _LoadMeter()
                entry["stream" if stream else "memory"] = dict(run_one(data, Path(tmp), stream),
                                                               load=meter.result())
                print(f"N={n:,} {'stream' if stream else 'memory'}: "
                      f"{entry['stream' if stream else 'memory']}", flush=True)
            results["sizes"][str(n)] = entry
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_stream.json").write_text(json.dumps(results, indent=2))
    print("\n| N images | in memory: peak RSS, wall | streamed: peak RSS, wall |\n|---|---|---|")
    for n, e in results["sizes"].items():
        m, s = e["memory"], e["stream"]
        print(f"| {int(n):,} | {m.get('peak_rss_mb', 0) / 1024:.2f} GB, {m.get('wall_s')} s | "
              f"{s.get('peak_rss_mb', 0) / 1024:.2f} GB, {s.get('wall_s')} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
