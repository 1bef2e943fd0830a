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
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from animefaces.cli_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
