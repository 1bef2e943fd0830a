"""Exact vs scalable SVMs as the training set grows (the season-archive question).

    .venv/bin/python benchmarks/bench_svm_scale.py [--sizes 5000,50000,500000] [--out DIR]

Part 1, synthetic features shaped like MobileNetV2's (1,280-d, non-negative, max-pooled ReLU6
values up to 6, two classes made of several clusters each, so the boundary is not linear), written
into a real feature cache (shards on disk) and read back through ``CachedRows`` (memory-mapped
chunks): fit time and peak resident memory of each method at each N, every fit in its own
process (a clean peak: ``VmHWM``), with a time limit. Accuracy on a held-out synthetic split is
printed too, but synthetic accuracy says little: part 2 is the accuracy that matters.

Part 2, the shared real data at its real size (animefaces-mini, MobileNetV2 with its ImageNet
weights, features from the repo's feature cache): val / test / distinct accuracy of the exact
RBF SVC against each scalable method.

Exact SVC fits that would not finish within the limit, and fits whose memory estimate exceeds the
budget, are not started; the JSON says so and why. Results: ``benchmarks/results/svm_scale.json``
and a Markdown table on stdout. The machine is shared: the load meter's numbers go with them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D = 1280
VAL = int(os.environ.get("BENCH_SVM_VAL", 10_000))
CHUNK = 16_384
METHODS = {
    "svc_rbf (exact)": {"kernel": "rbf", "C": 1.0, "gamma": "scale"},
    "linear_svc": {"kernel": "linear_svc", "C": 1.0},
    "sgd": {"kernel": "sgd", "C": 1.0, "epochs": 10},
    "nystroem-1000 + liblinear": {"kernel": "nystroem", "C": 1.0, "n_components": 1000},
    "nystroem-1000 + sgd": {"kernel": "nystroem", "C": 1.0, "n_components": 1000,
                            "solver": "sgd", "epochs": 10},
    "poly_sketch-2-2048 + sgd": {"kernel": "poly_sketch", "degree": 2, "coef0": 1.0, "C": 1.0,
                                 "n_components": 2048, "solver": "sgd", "epochs": 10},
}


def synthetic_cache(root: Path, n: int, *, seed: int = 0):
    """n rows of MobileNetV2-like features in a feature cache under root; returns (cache, keys, y)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from animefaces.features.cache import FeatureCache

    rng = np.random.default_rng(seed)
    latent, k = 24, 6  # 6 clusters per class in a 24-d latent space, mixed into 1,280 channels
    centres = rng.normal(0, 1.2, size=(2, k, latent))
    W = np.abs(rng.normal(0, 1, size=(latent, D))) * (rng.random((latent, D)) < 0.15)
    cache = FeatureCache(root, "0" * 63 + "1", meta={"feature_dim": D, "what": "synthetic"},
                         name="synthetic")
    ys, keys = [], []
    for a in range(0, n, 50_000):
        m = min(50_000, n - a)
        y = rng.integers(0, 2, m)
        z = centres[y, rng.integers(0, k, m)] + rng.normal(0, 1.6, size=(m, latent))
        X = np.clip(z @ W * 0.4 + rng.gamma(1.0, 0.35, size=(m, D)), 0, 6).astype(np.float32)
        kk = [f"{i:064x}" for i in range(a, a + m)]
        cache.write_shard(kk, X)
        ys.append(y)
        keys += kk
    return cache, keys, np.concatenate(ys)


def _fit_child(q, root, keys_file, y_file, n_train, params):
    """In a child process: fit on the first n_train rows, score the VAL rows after them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from animefaces.bench.measure import peak_rss_mb
    from animefaces.classify import scalable
    from animefaces.features.cache import FeatureCache
    from animefaces.features.stream import CachedRows

    keys = np.load(keys_file).tolist()
    y = np.load(y_file)
    cache = FeatureCache(root, "0" * 63 + "1", meta={"feature_dim": D}, name="synthetic")
    train = CachedRows(cache, keys[:n_train])
    val = CachedRows(cache, keys[n_train:n_train + VAL])
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if params["kernel"] == "rbf":
        from sklearn.preprocessing import Normalizer
        from sklearn.svm import SVC

        Xtr = Normalizer().fit_transform(train.chunk(0, len(train)))
        svc = SVC(kernel="rbf", C=params["C"], gamma="scale", cache_size=2000).fit(Xtr, y[:n_train])
        fit_s = time.perf_counter() - t0
        pred = svc.predict(Normalizer().fit_transform(val.chunk(0, len(val))))
    else:
        pipe = scalable.fit(params, train, y[:n_train], chunk_rows=CHUNK)
        fit_s = time.perf_counter() - t0
        pred = (scalable.decision_function(pipe, val) > 0).astype(int)
    acc = float(np.mean(pred == y[n_train:n_train + VAL]))
    q.put({"fit_s": round(fit_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
           "rss_before_fit_mb": round(base, 1), "synthetic_val_accuracy": round(acc, 4)})


def estimate_gb(method: str, params: dict, n: int) -> float:
    """What the fit must hold (GB), from the sizes (measured shapes, not a model of libsvm)."""
    if params["kernel"] == "rbf":
        return n * D * 8 / 1e9 + 2.0  # the scaled copy + libsvm's kernel cache (2000 MB)
    width = params.get("n_components", D)
    if params["kernel"] == "linear_svc" or params.get("solver", "liblinear") == "liblinear" \
            and params["kernel"] != "sgd":
        return n * width * (8 + 16) / 1e9  # float64 matrix + liblinear's (index, value) copy
    return CHUNK * (D + width) * 8 * 3 / 1e9  # a few chunks


def part1(sizes, *, limit_s: float, budget_gb: float, exact_max: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-svm-scale-") as tmp:
        n_max = max(sizes) + VAL
        t0 = time.perf_counter()
        cache, keys, y = synthetic_cache(Path(tmp) / "cache", n_max)
        print(f"# synthetic cache: {n_max:,} x {D} float32 in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        np.save(Path(tmp) / "keys.npy", np.array(keys))
        np.save(Path(tmp) / "y.npy", y)
        # Validation rows come after the largest training set's rows for every N: the first N
        # rows train, rows [N, N + VAL) score.
        for n in sizes:
            for method, params in METHODS.items():
                row = {"n_train": n, "method": method, "params": params,
                       "estimate_gb": round(estimate_gb(method, params, n), 2)}
                if params["kernel"] == "rbf" and n > exact_max:
                    row["skipped"] = (f"exact SVC beyond {exact_max:,} train rows: see the "
                                      f"measured growth; a fit would run past the {limit_s:.0f} s limit")
                elif row["estimate_gb"] > budget_gb:
                    row["skipped"] = (f"needs ~{row['estimate_gb']:.1f} GB, over the "
                                      f"{budget_gb:.0f} GB budget of this shared machine")
                else:
                    ctx = mp.get_context("spawn")
                    q = ctx.Queue()
                    p = ctx.Process(target=_fit_child, args=(q, str(Path(tmp) / "cache"),
                                                              str(Path(tmp) / "keys.npy"),
                                                              str(Path(tmp) / "y.npy"), n, params))
                    t1 = time.perf_counter()
                    p.start()
                    p.join(limit_s)
                    if p.is_alive():
                        p.kill()
                        p.join()
                        row["skipped"] = f"did not finish within {limit_s:.0f} s"
                    elif p.exitcode != 0:
                        row["skipped"] = f"failed (exit {p.exitcode})"
                    else:
                        row.update(q.get(timeout=10))
                    row["wall_s"] = round(time.perf_counter() - t1, 1)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def part2() -> list[dict]:
    """Accuracy on the shared data at its real size: exact RBF vs the scalable methods."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from animefaces.classify.svm import fit_grid
    from animefaces.features.dataset import extract_dataset

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "animefaces-mini"
    feats = extract_dataset(root / "manifest.csv", backbone="mobilenet_v2",
                            cache_dir=Path(__file__).resolve().parents[1] / "features",
                            progress=False)
    split = np.array([r.split for r in feats.records])
    yall = np.array([r.label == "face" for r in feats.records], dtype=np.int64)
    X = {s: feats.X[split == s] for s in ("train", "val", "test", "distinct")}
    y = {s: yall[split == s] for s in X}
    grid = [{"kernel": "rbf", "C": 1.0, "gamma": "scale"}, {"kernel": "rbf", "C": 10.0, "gamma": "scale"},
            {"kernel": "linear_svc", "C": 1.0}, {"kernel": "sgd", "C": 1.0},
            {"kernel": "nystroem", "C": 1.0, "n_components": 500},
            {"kernel": "nystroem", "C": 10.0, "n_components": 1000},
            {"kernel": "nystroem", "C": 10.0, "n_components": 1000, "solver": "sgd"},
            {"kernel": "poly_sketch", "degree": 2, "coef0": 1.0, "C": 1.0, "n_components": 2048},
            {"kernel": "poly_sketch", "degree": 3, "coef0": 1.0, "C": 1.0, "n_components": 4096}]
    out = []
    for p in grid:
        r = fit_grid(X, y, [(p["kernel"], {}, [p])], n_jobs=1)[0]
        out.append({"params": p, "fit_s": round(r.fit_seconds, 2),
                    "accuracy": {k: round(v, 4) for k, v in r.accuracy.items()}})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000,50000,500000")
    ap.add_argument("--limit-s", type=float, default=900.0, help="time limit of one fit")
    ap.add_argument("--budget-gb", type=float, default=8.0, help="largest fit started (GB)")
    ap.add_argument("--exact-max", type=int, default=20000,
                    help="largest n_train an exact SVC is started at")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (svm_scale-TAG.json)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from animefaces.bench.measure import _LoadMeter, machine_info

    meter = _LoadMeter()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.methods:
        for name in list(METHODS):
            if name not in args.methods.split(","):
                del METHODS[name]
    doc = {"machine": machine_info(), "sizes": sizes, "limit_s": args.limit_s,
           "budget_gb": args.budget_gb,
           "synthetic": part1(sizes, limit_s=args.limit_s, budget_gb=args.budget_gb,
                              exact_max=args.exact_max)}
    if not args.skip_real:
        doc["real"] = part2()
    doc["load"] = meter.result()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"svm_scale{'-' + args.tag if args.tag else ''}.json").write_text(json.dumps(doc, indent=1))
    print("| N train | method | fit s | peak RSS MB | synthetic val acc |\n|---|---|---|---|---|")
    for r in doc["synthetic"]:
        print(f"| {r['n_train']:,} | {r['method']} | {r.get('fit_s', '-')} | "
              f"{r.get('peak_rss_mb', '-')} | {r.get('synthetic_val_accuracy', r.get('skipped'))} |")
    print(f"\nload: {doc['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
