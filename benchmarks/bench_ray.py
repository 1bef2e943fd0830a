"""Extraction throughput on Ray Data against the single-process path, on this machine.

    .venv/bin/python benchmarks/bench_ray.py [--backbone mobilenet_v2] [--n 384] [--out DIR]

Synthetic 1280x720 anime-like JPEG frames (~150 KB, made in a temporary folder), the backbone
with its real weights where installed (else random: same FLOPs), each configuration on its own
fresh frames (nothing cached), end to end: hash, decode, forward, cache write.

* ``single``: ``FeatureExtractor.extract_files`` (decode threads and torch threads on all cores).
* ``ray-1`` / ``ray-2``: a local Ray, 1 or 2 forward actors of 1 CPU (torch thread) each;
  decode tasks of 0.5 CPU beside them. The local Ray gets one logical CPU more than the cores so
  decode tasks can be scheduled next to two actors: logical CPUs, not cores; the 2 cores are
  shared by all of them. Each Ray number includes starting the actors and loading the model
  (once per actor), not ``ray.init``.

Also measured, for the scaling estimate: the per-actor forward rate (from the actors' own timing
of each batch), the cache shard write rate (``FeatureCache.write_shard`` of one batch) and the
JPEG read rate. Results: ``benchmarks/results/ray.json`` and lines on stdout. The machine is
shared: the load meter's numbers go with them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--n", type=int, default=384, help="frames per configuration")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)

    from animefaces.bench.measure import _LoadMeter, machine_info, synthetic_frames
    from animefaces.errors import WeightsNotFoundError
    from animefaces.features.cache import FeatureCache
    from animefaces.features.distributed import RayOptions, extract_files_ray, ray_session
    from animefaces.features.extract import FeatureExtractor

    meter = _LoadMeter()
    try:
        fx = FeatureExtractor(args.backbone, batch_size=args.batch_size)
    except WeightsNotFoundError:
        fx = FeatureExtractor(args.backbone, weights="random", batch_size=args.batch_size)
    doc = {"machine": machine_info(), "backbone": args.backbone, "n": args.n,
           "weights": "random" if fx.weights.is_random else "pretrained", "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        sets = {}
        for k, name in enumerate(("single", "ray-1", "ray-2")):
            (tmp / name).mkdir()
            sets[name] = synthetic_frames(tmp / name, args.n, seed=100 + k, prefix=name)
        mb = sum(p.stat().st_size for p in sets["single"]) / 1e6
        t0 = time.perf_counter()
        for p in sets["single"]:
            p.read_bytes()
        doc["jpeg_read_mb_s_page_cache"] = round(mb / (time.perf_counter() - t0), 1)
        doc["jpeg_mb_per_frame"] = round(mb / args.n, 3)

        def cache(name):
            return FeatureCache(tmp / f"cache-{name}", fx.fingerprint, meta=fx.describe(),
                                name=fx.spec.name)

        t0 = time.perf_counter()
        X, _, _ = fx.extract_files(sets["single"], cache=cache("single"), progress=False)
        dt = time.perf_counter() - t0
        doc["runs"]["single"] = {"seconds": round(dt, 2), "frames_per_s": round(args.n / dt, 1)}
        print(f"single process: {args.n / dt:.1f} frames/s", flush=True)

        with ray_session(num_cpus=3):
            for name, actors in (("ray-1", 1), ("ray-2", 2)):
                opts = RayOptions(actors=actors, actor_cpus=1.0, decode_cpus=0.5,
                                  batch_size=args.batch_size)
                per_worker: dict[str, list] = {}
                arrivals: list[tuple[float, int]] = []

                def note(batch):
                    arrivals.append((time.perf_counter(), len(batch["i"])))
                    for w, s in zip(batch["worker"], batch["seconds"]):
                        per_worker.setdefault(str(w), []).append(float(s))

                t0 = time.perf_counter()
                Xr, _, _ = extract_files_ray(fx, sets[name], cache=cache(name), options=opts,
                                             progress=False, on_batch=note)
                dt = time.perf_counter() - t0
                fwd = {w: round(len(s) / sum(s), 1) for w, s in per_worker.items()}
                # steady state: from the first result to the last (actor start-up and model
                # loading excluded), over the frames that came after the first batch
                first = arrivals[0][0] - t0
                later = sum(k for _, k in arrivals[1:])
                span = arrivals[-1][0] - arrivals[0][0]
                doc["runs"][name] = {"seconds": round(dt, 2), "frames_per_s": round(args.n / dt, 1),
                                     "first_result_s": round(first, 2),
                                     "steady_frames_per_s": round(later / span, 1) if span > 0 else None,
                                     "actors": actors, "frames_per_worker": {w: len(s) for w, s in per_worker.items()},
                                     "forward_frames_per_s_per_actor": fwd}
                print(f"{name}: {args.n / dt:.1f} frames/s end to end, first result after "
                      f"{first:.1f} s, then {doc['runs'][name]['steady_frames_per_s']} frames/s; "
                      f"forward per actor {fwd}", flush=True)
        # Cache write: one batch of features as one shard, as each actor writes it.
        c = cache("write")
        feats = np.random.default_rng(0).random((args.batch_size, fx.feature_dim), np.float32)
        t0 = time.perf_counter()
        for s in range(50):
            c.write_shard([f"{s:032x}{i:032x}" for i in range(args.batch_size)], feats)
        dt = (time.perf_counter() - t0) / 50
        doc["cache_write"] = {"shard_rows": args.batch_size, "seconds_per_shard": round(dt, 5),
                              "rows_per_s": round(args.batch_size / dt, 0),
                              "mb_per_row": round(fx.feature_dim * 4 / 1e6, 4)}
        print(f"cache write: {args.batch_size / dt:.0f} rows/s ({dt * 1000:.1f} ms per "
              f"{args.batch_size}-row shard)", flush=True)
    doc["load"] = meter.result()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc["load"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
