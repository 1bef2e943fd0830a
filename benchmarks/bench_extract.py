"""Benchmark feature extraction on this machine: how fast, and how close to its limits.

In one run it measures and writes JSON + a Markdown table (default into reports/bench/):

* peak matmul GFLOP/s (fp32, bf16) with the thread count, and a bf16-convolution probe;
* per backbone (random weights: same FLOPs as trained ones): GFLOPs/image (FlopCounterMode),
  forward-only images/s for fp32, channels_last, bf16 autocast, bf16 + channels_last
  (optionally torch.compile) at batch 1/16/64, fraction of peak; the chosen defaults against the
  best mode; the gain from folding BatchNorm;
* decode-only images/s for 720p JPEG frames and small crops: Pillow plain, Pillow draft (the
  extractor's path), torchvision.io.decode_jpeg; GPU decode with CUDA;
* end to end from JPEG files (hash, decode, resize, forward, cache write) with the defaults,
  against the ideal from decode-only and forward-only costs, and against a naive one-image-at-a-
  time script; for the default backbone, each way of sharing the cores between decode and forward;
* the glibc allocator fix (forward only, with and without, each in its own process);
* peak RSS when extracting 1k vs 10k images (each in its own process) and the time to load 10k
  cached features.

Frames are synthetic (anime-like flat colours with outlines and grain, ~150 KB at 720p q90), made
in a temporary folder and deleted afterwards.

    python benchmarks/bench_extract.py                       # full run, ~10-15 min on 2 cores
    python benchmarks/bench_extract.py --quick --backbones tiny
    python benchmarks/bench_extract.py --backbones mobilenet_v2 --compile

Memory only (peak RSS, one fresh process per count and kind, nothing else measured): extraction
of N images end to end, and the feature cache alone (N x feature_dim synthetic features written as
extraction writes them, then read back with get()):

    python benchmarks/bench_extract.py --memory-only --memory-backbone mobilenet_v2
    python benchmarks/bench_extract.py --memory-only --cache-only --counts 1000 10000 100000
"""

import sys
from pathlib import Path


from animefaces.cli.bench import main  # noqa: E402


def _cache_child(n: int, d: int, shard: int = 256) -> dict:
    """In a fresh process: write ``n`` x ``d`` float32 features through FeatureCache.add/flush
    in shards of ``shard`` rows (as extract_files does), then get() them all; peak RSS (VmHWM)
    before, after writing, after get(). The allocator fix is applied, as in extraction."""
    import tempfile

    import numpy as np

    from animefaces.features.cache import FeatureCache
    from animefaces.bench.measure import peak_rss_mb
    from animefaces._runtime import tune_allocator

    tune_allocator()
    rng = np.random.default_rng(0)
    keys = [f"{i:064x}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="animefaces-memcache-") as tmp:
        cache = FeatureCache(tmp, "f" * 64, meta={"feature_dim": d}, name="mem")
        before = peak_rss_mb()
        for s in range(0, n, shard):
            cache.add(keys[s:s + shard],
                      rng.standard_normal((min(shard, n - s), d), dtype=np.float32))
            cache.flush()
        written = peak_rss_mb()
        feats = cache.get(keys)
        peak = peak_rss_mb()
    return {"images": n, "dim": d, "peak_rss_before_mb": round(before, 1),
            "peak_rss_after_write_mb": round(written, 1), "peak_rss_mb": round(peak, 1),
            "growth_mb": round(peak - before, 1), "features_mb": round(feats.nbytes / 2**20, 1)}


def memory_main(argv=None) -> int:
    """``--memory-only``: peak RSS (VmHWM) of a fresh process running ``extract_files`` on N
    distinct 64x64 JPEGs into an empty on-disk cache, for each N, and of one running the feature
    cache alone on N synthetic features of the backbone's width; the ratios largest / smallest.
    Writes ``<out>/memory-<backbone>-<time>.json`` and prints it."""
    import argparse
    import json
    import os
    import subprocess
    import tempfile
    import time

    from animefaces.features.backbones import get_backbone
    from animefaces.bench.measure import _small_jpegs
    from animefaces.bench.harness import run_child

    p = argparse.ArgumentParser(prog="bench_extract.py --memory-only")
    p.add_argument("--memory-only", action="store_true", required=True)
    p.add_argument("--memory-backbone", default="tiny", metavar="NAME")
    p.add_argument("--counts", nargs="+", type=int, default=[1000, 10000], metavar="N")
    p.add_argument("--cache-only", action="store_true",
                   help="only the feature-cache runs (seconds), no extraction")
    p.add_argument("--out", default="reports/bench", metavar="DIR")
    args = p.parse_args(argv)
    counts = sorted(set(args.counts))
    dim = get_backbone(args.memory_backbone).feature_dim
    res = {"backbone": args.memory_backbone, "counts": counts, "runs": {}, "cache_runs": {},
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg()}
    for c in counts:
        proc = subprocess.run([sys.executable, __file__, "--cache-child", str(c), str(dim)],
                              capture_output=True, text=True, check=True)
        res["cache_runs"][str(c)] = run = json.loads(proc.stdout)
        print(f"cache alone {c} x {dim}: {run}", file=sys.stderr, flush=True)
    lo, hi = res["cache_runs"][str(counts[0])], res["cache_runs"][str(counts[-1])]
    res["cache_peak_ratio"] = round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3)
    if not args.cache_only:
        with tempfile.TemporaryDirectory(prefix="animefaces-mem-") as tmp:
            small = _small_jpegs(Path(tmp) / "small", max(counts))
            for c in counts:
                run = run_child({"kind": "memory", "backbone": args.memory_backbone,
                                 "paths": [str(q) for q in small[:c]], "workdir": tmp})
                res["runs"][str(c)] = run
                print(f"memory {args.memory_backbone} {c}: {run}", file=sys.stderr, flush=True)
        lo, hi = res["runs"][str(counts[0])], res["runs"][str(counts[-1])]
        res["peak_ratio"] = round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3)
    res["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"memory-{args.memory_backbone}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cache-child"]:
        import json

        print(json.dumps(_cache_child(int(sys.argv[2]), int(sys.argv[3]))))
        sys.exit(0)
    if "--memory-only" in sys.argv[1:]:
        sys.exit(memory_main(sys.argv[1:]))
    sys.exit(main())
