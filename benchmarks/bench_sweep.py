"""Where a sweep with every feature cached spends its time, and the paper's grid in parallel.

Runs ``animefaces sweep`` as a user would (a new process each time, so imports count), first to
fill the feature cache if needed, then ``--repeats`` times with everything cached, and reads the
stage timings each run writes into ``results.json``. Then the paper's grid (linear, RBF, poly
2/3/4/5/10/50; ``configs/paper.toml``) on one backbone with the fits in threads (``n_jobs = 0``)
and one at a time (``n_jobs = 1``).

    python benchmarks/bench_sweep.py [--data ../shared/data/animefaces-mini] [--repeats 2]
    python benchmarks/bench_sweep.py --images 10000 --work /tmp/bench-sweep-10k

``--images N`` times the sweep at a larger size: every image of ``--data`` plus augmented copies
(random crop of 75-100% of each side, mirror, brightness / contrast / colour jitter; each copy
keeps its source's label, split and group) up to N images, written under ``--work`` with a
manifest there; the feature cache lives there too, so a second run skips the extraction. The
copies are real anime pixels but not new anime: the SVMs find them about as easy as the
originals, so this measures time, not accuracy.

Writes ``reports/bench/sweep-<time>.json`` and ``.md`` (reports/ stays out of git).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_sweep(data: str, config: Path, out: Path, backbones: str | None = None,
              cache_dir: Path | None = None) -> dict:
    """One ``animefaces sweep`` in a new process: wall time and the run's timings."""
    cmd = [sys.executable, "-m", "animefaces.cli", "sweep", "--data", data, "--config", str(config),
           "--out", str(out / "reports"), "--models-dir", str(out / "models"), "-q"]
    if backbones:
        cmd += ["--backbones", backbones]
    if cache_dir:
        cmd += ["--cache-dir", str(cache_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    runs = sorted((out / "reports").glob("*/results.json"), key=lambda p: p.stat().st_mtime)
    res = json.loads(runs[-1].read_text())
    t = dict(res["timings"])
    t["wall_seconds"] = round(wall, 3)
    t["startup_seconds"] = round(wall - t.get("total_with_reports_seconds", t["total_seconds"]), 3)
    t["n_fits"] = len(res["fits"])
    return t


def scaled_dataset(data: str, work: Path, n: int, seed: int = 0) -> Path:
    """A manifest of ``n`` images under ``work``: ``data``'s images (by absolute path) and
    augmented JPEG copies of them. Reused when ``work`` already holds one of that size."""
    import csv
    import hashlib

    from PIL import Image, ImageEnhance, ImageOps

    from animefaces.data.datasets import load_dataset

    manifest = work / f"manifest-{n}.csv"
    if manifest.is_file():
        return manifest
    ds = load_dataset(data, require_splits=True)
    recs = ds.records
    if n < len(recs):
        sys.exit(f"--images {n} is below the {len(recs)} images of {data}")
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = [(str(Path(r.path).resolve()), r.label, r.split, r.group or "") for r in recs]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for i in range(n - len(recs)):
        src = recs[i % len(recs)]
        with Image.open(src.path) as im:
            im = im.convert("RGB")
        w, h = im.size
        cw, ch = (max(8, int(round(v * rng.uniform(0.75, 1.0)))) for v in (w, h))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            im = enh(im).enhance(float(rng.uniform(0.85, 1.15)))
        name = hashlib.sha1(f"{src.path}|{i}".encode()).hexdigest()[:16] + ".jpg"
        im.save(img_dir / name, quality=90)
        rows.append((f"images/{name}", src.label, src.split, src.group or ""))
        if (i + 1) % 2000 == 0:
            print(f"[bench-sweep] {i + 1} / {n - len(recs)} augmented copies "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    tmp = manifest.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["path", "label", "split", "group"])
        wr.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


def with_n_jobs(config: Path, n_jobs: int, folder: Path) -> Path:
    text = re.sub(r"(?m)^n_jobs\s*=.*$", f"n_jobs = {n_jobs}", config.read_text())
    path = folder / f"{config.stem}-n_jobs{n_jobs}.toml"
    path.write_text(text)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "animefaces-mini"))
    p.add_argument("--config", default=str(REPO / "configs" / "default.toml"))
    p.add_argument("--paper-config", default=str(REPO / "configs" / "paper.toml"))
    p.add_argument("--paper-backbone", default="mobilenet_v2",
                   help="backbone for the paper-grid timing (default: the one with offline weights)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "reports" / "bench"))
    p.add_argument("--images", type=int, default=0,
                   help="time the sweep on this many images: --data plus augmented copies")
    p.add_argument("--work", default=None,
                   help="with --images: folder for the copies and their feature cache "
                        "(default: a temp folder, deleted afterwards)")
    p.add_argument("--no-paper", action="store_true", help="skip the paper-grid timing")
    args = p.parse_args(argv)
    os.environ.setdefault("ANIMEFACES_OFFLINE", "1")

    record: dict = {"created": datetime.now().isoformat(timespec="seconds"), "data": args.data,
                    "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        cfg = Path(args.config)
        data, cache_dir = args.data, None
        if args.images:
            work = Path(args.work) if args.work else tmp / "work"
            work.mkdir(parents=True, exist_ok=True)
            data, cache_dir = str(scaled_dataset(args.data, work, args.images)), work / "features"
            record.update(data=data, images=args.images, made_from=args.data)
        print("[bench-sweep] warm-up sweep (fills the feature cache if needed) ...", flush=True)
        record["warmup"] = run_sweep(data, cfg, tmp, cache_dir=cache_dir)
        cached = []
        for i in range(args.repeats):
            cached.append(run_sweep(data, cfg, tmp, cache_dir=cache_dir))
            t = cached[-1]
            print(f"[bench-sweep] cached sweep {i + 1}: wall {t['wall_seconds']:.1f}s, "
                  f"SVM grid {t['fit_seconds']:.1f}s", flush=True)
        record["cached"] = cached
        paper = {}
        for n_jobs in () if args.no_paper else (0, 1):
            c = with_n_jobs(Path(args.paper_config), n_jobs, tmp)
            # the first run fills the max-pooled cache
            run_sweep(data, c, tmp, args.paper_backbone, cache_dir=cache_dir)
            paper[f"n_jobs={n_jobs}"] = run_sweep(data, c, tmp, args.paper_backbone,
                                                  cache_dir=cache_dir)
            print(f"[bench-sweep] paper grid, n_jobs={n_jobs}: SVM grid "
                  f"{paper[f'n_jobs={n_jobs}']['fit_seconds']:.1f}s", flush=True)
        record["paper_grid"] = paper
    record["load_after"] = os.getloadavg()

    best = min(cached, key=lambda t: t["wall_seconds"])
    svm = best["fit_seconds"] + best.get("refit_seconds", 0) + best.get("calibration_seconds", 0)
    lines = [f"# Cached sweep timing ({record['created']})", "",
             f"Data `{record['data']}`"
             + (f" ({args.images} images: `{args.data}` plus augmented copies)" if args.images else "")
             + f", config `{Path(args.config).name}`, {os.cpu_count()} CPUs, "
             f"load {record['load_before'][0]:.1f} -> {record['load_after'][0]:.1f}. Best of "
             f"{args.repeats} cached runs (new process each):", "",
             "| stage | seconds | share of wall |", "|---|---|---|"]
    for key, label in (("startup_seconds", "process start + imports"),
                       ("extract_seconds", "feature cache load"),
                       ("fit_seconds", "SVM grid fits"), ("refit_seconds", "refit best + Platt"),
                       ("calibration_seconds", "per-row calibration"),
                       ("trust_seconds", "trust (calibrator, abstain, OOD)"),
                       ("report_seconds", "reports (md, csv, json, html)"),
                       ("wall_seconds", "wall")):
        v = best.get(key, 0.0)
        lines.append(f"| {label} | {v:.2f} | {v / best['wall_seconds']:.0%} |")
    lines += ["", f"SVM work (grid + refit + calibration): {svm:.2f} s = "
              f"{svm / best['wall_seconds']:.0%} of the wall time; "
              f"the grid alone {best['fit_seconds'] / best['wall_seconds']:.0%}."]
    if paper:
        lines += ["", f"Paper grid ({args.paper_backbone}, {paper['n_jobs=0']['n_fits']} fits): "
                  f"threads {paper['n_jobs=0']['fit_seconds']:.2f} s, one at a time "
                  f"{paper['n_jobs=1']['fit_seconds']:.2f} s."]
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
