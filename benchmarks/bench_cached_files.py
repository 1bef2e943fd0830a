"""A cached run over image files: how long until the features are in hand.

Every feature is cached, so the work left is finding each file's cache key (its content sha256)
and reading the rows. Measured with the remembered hashes (``features/file-hashes-v1.npz``, see
``animefaces/features/fileindex.py``) and without them (every file read and hashed again), on synthetic
1280x720 JPEG frames in the page cache (a cold disk makes hashing far slower still).

    python benchmarks/bench_cached_files.py [--frames 3000]

Writes ``reports/bench/cached-files-<time>.json`` (reports/ stays out of git).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "reports" / "bench"))
    args = p.parse_args(argv)
    os.environ.setdefault("ANIMEFACES_OFFLINE", "1")

    from animefaces.features import fileindex
    from animefaces import _runtime as runtime
    from animefaces.bench import measure
    from animefaces.features.cache import FeatureCache
    from animefaces.features.dataset import make_extractor

    runtime.tune_allocator()
    fx = make_extractor("tiny", weights="random")  # the forward pass is not what is measured
    record = {"created": datetime.now().isoformat(timespec="seconds"), "frames": args.frames,
              "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-cached-") as tmp:
        tmp = Path(tmp)
        print(f"[bench-cached] making {args.frames} 720p frames ...", flush=True)
        (tmp / "frames").mkdir()
        paths = [Path(x) for x in measure.synthetic_frames(tmp / "frames", args.frames)]
        record["bytes"] = sum(x.stat().st_size for x in paths)
        # The frames were written just now: let them age past the racy-write window.
        time.sleep(fileindex.RACY_SECONDS + 0.5)
        root = tmp / "features"

        def run() -> float:
            cache = FeatureCache(root, fx.fingerprint, meta={}, name="bench")
            t0 = time.perf_counter()
            X, _, bad = fx.extract_files(paths, cache=cache, progress=False)
            assert X.shape[0] == len(paths) and not bad
            return time.perf_counter() - t0

        record["first_run_s"] = round(run(), 3)  # extracts and remembers the hashes
        times = {"with remembered hashes": [], "hashing every file": []}
        for _ in range(args.repeats):
            times["with remembered hashes"].append(run())
            (root / fileindex.INDEX_NAME).unlink()
            times["hashing every file"].append(run())  # (and writes the index again)
        record["seconds"] = {k: [round(v, 4) for v in vs] for k, vs in times.items()}
    record["load_after"] = os.getloadavg()
    mb = record["bytes"] / 1e6
    lines = [f"Cached run over {args.frames} 720p JPEG frames ({mb:.0f} MB, page cache), "
             f"best of {args.repeats}:", "", "| keys from | seconds | per 10,000 frames |",
             "|---|---|---|"]
    for k, vs in times.items():
        lines.append(f"| {k} | {min(vs):.3f} | {min(vs) * 10000 / args.frames:.2f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cached-files-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
