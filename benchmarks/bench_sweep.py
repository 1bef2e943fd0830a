"""Where a sweep with every feature cached spends its time, and the paper's grid in parallel.

Runs ``animefaces sweep`` as a user would (a new process each time, so imports count), first to
fill the feature cache if needed, then ``--repeats`` times with everything cached, and reads the
stage timings each run writes into ``results.json``. Then the paper's grid (linear, RBF, poly
2/3/4/5/10/50; ``configs/paper.toml``) on one backbone with the fits in threads (``n_jobs = 0``)
and one at a time (``n_jobs = 1``).

    python benchmarks/bench_sweep.py [--data ../shared/data/animefaces-mini] [--repeats 2]

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

REPO = Path(__file__).resolve().parents[1]


def run_sweep(data: str, config: Path, out: Path, backbones: str | None = None) -> dict:
    """One ``animefaces sweep`` in a new process: wall time and the run's timings."""
    cmd = [sys.executable, "-m", "animefaces.cli", "sweep", "--data", data, "--config", str(config),
           "--out", str(out / "reports"), "--models-dir", str(out / "models"), "-q"]
    if backbones:
        cmd += ["--backbones", backbones]
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
    args = p.parse_args(argv)
    os.environ.setdefault("ANIMEFACES_OFFLINE", "1")

    record: dict = {"created": datetime.now().isoformat(timespec="seconds"), "data": args.data,
                    "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        cfg = Path(args.config)
        print("[bench-sweep] warm-up sweep (fills the feature cache if needed) ...", flush=True)
        record["warmup"] = run_sweep(args.data, cfg, tmp)
        cached = []
        for i in range(args.repeats):
            cached.append(run_sweep(args.data, cfg, tmp))
            t = cached[-1]
            print(f"[bench-sweep] cached sweep {i + 1}: wall {t['wall_seconds']:.1f}s, "
                  f"SVM grid {t['fit_seconds']:.1f}s", flush=True)
        record["cached"] = cached
        paper = {}
        for n_jobs in (0, 1):
            c = with_n_jobs(Path(args.paper_config), n_jobs, tmp)
            run_sweep(args.data, c, tmp, args.paper_backbone)  # fills the max-pooled cache once
            paper[f"n_jobs={n_jobs}"] = run_sweep(args.data, c, tmp, args.paper_backbone)
            print(f"[bench-sweep] paper grid, n_jobs={n_jobs}: SVM grid "
                  f"{paper[f'n_jobs={n_jobs}']['fit_seconds']:.1f}s", flush=True)
        record["paper_grid"] = paper
    record["load_after"] = os.getloadavg()

    best = min(cached, key=lambda t: t["wall_seconds"])
    svm = best["fit_seconds"] + best.get("refit_seconds", 0) + best.get("calibration_seconds", 0)
    lines = [f"# Cached sweep timing ({record['created']})", "",
             f"Data `{args.data}`, config `{Path(args.config).name}`, {os.cpu_count()} CPUs, "
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
              f"the grid alone {best['fit_seconds'] / best['wall_seconds']:.0%}.", "",
              f"Paper grid ({args.paper_backbone}, {paper['n_jobs=0']['n_fits']} fits): "
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
