"""How many labels active learning saves: simulated labelling with the manifest as the oracle.

From no labels, frames of the ``--pool`` split are "labelled" ``--step`` at a time (their label is
read from the manifest, as a user would type it), in one of two orders:

* ``uncertainty``: what the labelling page does (``animefaces.label.active.choose``): random
  picks until both classes have two frames, then the frames nearest the SVM's decision boundary,
  frames where a linear SVM disagrees first, with every k-th pick random (``--random-share``);
* ``random``: uniformly random order.

After each step the page's SVM (RBF, C=1, L2-normalised features) is fitted on the labels so far
and scored on the ``--eval`` split. ``labels_to_target`` is the first label count whose accuracy
reaches ``--target``; the curves and counts are medians over ``--seeds`` seeds (null when the
median seed never reaches it).

``--holdout-groups F`` holds out whole groups (series) for evaluation: rows of the pool split
whose group is drawn for evaluation (a seeded shuffle of the groups, until about F of the rows)
are the eval set, the rest the pool, so the model is measured on series it never saw a label of
(each seed draws its own groups). Use it when pool and eval are the same split
(``anime-episodes``: ``--pool episodes --eval episodes --holdout-groups 0.5``).

Features come from the feature cache (``--cache-dir``, default ``features/``; extracted once if
missing), so a run takes a minute or two.

    python benchmarks/bench_active_learning.py --data ../shared/data/animefaces-mini/manifest.csv \\
        --pool train --eval distinct --json benchmarks/active_learning_mini.json
    python benchmarks/bench_active_learning.py --data ../shared/data/anime-episodes/manifest.csv \\
        --pool episodes --eval episodes --holdout-groups 0.5 --json benchmarks/active_learning_episodes.json

``plot OUT.png A.json B.json`` draws saved results side by side (no run).

Writes ``{"uncertainty": {"labels_to_target": N, "curve": [[labels, accuracy], ...]},
"random": {...}, "target": 0.95, "n_pool": ..., "n_eval": ...}`` plus the settings and the
per-seed counts; ``--plot PNG`` draws both curves (no images in it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from animefaces.label import active

REPO = Path(__file__).resolve().parents[1]

STRATEGIES = ("uncertainty", "random")


def load_features(manifest: str, *, cache_dir: str, backbone: str):
    """(X, y, split, group) of every readable row of a face / no_face manifest."""
    from animefaces.data.datasets import Dataset, Record
    from animefaces.features.dataset import extract_dataset
    from animefaces.label.store import LabelStore

    store = LabelStore(manifest)
    recs = [Record(path=store.image_path(i), label=r["label"], split=r["split"] or None,
                   group=r.get("group") or None)
            for i, r in enumerate(store.rows) if r["label"] in ("face", "no_face")]
    feats = extract_dataset(Dataset(records=recs, source=manifest, layout="manifest"),
                            backbone=backbone, cache_dir=cache_dir, skip_bad=True, progress=True)
    y = np.array([r.label == "face" for r in feats.records], int)
    split = np.array([r.split or "" for r in feats.records], dtype=object)
    group = np.array([r.group or "" for r in feats.records], dtype=object)
    return feats.X, y, split, group


def holdout_groups(group: np.ndarray, y: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Bool mask of the rows whose (whole) group is held out: groups in a seeded order until
    about ``fraction`` of the rows; drawn again until both sides hold both classes."""
    names = sorted(set(group.tolist()))
    for _ in range(100):
        held, n = [], 0
        for g in rng.permutation(names):
            if n >= fraction * len(group):
                break
            held.append(g)
            n += int(np.sum(group == g))
        mask = np.isin(group, held)
        if len(set(y[mask])) == 2 and len(set(y[~mask])) == 2:
            return mask
    raise SystemExit("could not hold out groups with both classes on each side")


def simulate(Xp, yp, Xe, ye, *, strategy: str, step: int, max_labels: int, seed: int,
             random_share: float, committee: bool) -> list[list[float]]:
    """[[labels, eval accuracy], ...] after each step where a model can be fitted."""
    rng = np.random.default_rng(seed)
    labelled = np.zeros(len(yp), bool)
    decision = linear = None
    curve = []
    while labelled.sum() < min(max_labels, len(yp)):
        n = min(step, int(max_labels - labelled.sum()))
        if strategy == "random" or decision is None:
            picks = active.choose(None, ~labelled, n=n, rng=rng)
        else:
            picks = active.choose(decision, ~labelled, n=n, random_share=random_share, rng=rng,
                                  committee=linear)
        if not picks:
            break
        labelled[[i for i, _ in picks]] = True
        if not active.can_fit(yp[labelled]):
            continue
        model = active.fit_svm(Xp[labelled], yp[labelled], seed=seed)
        acc = float(np.mean((model.decision_function(Xe) >= 0).astype(int) == ye))
        curve.append([int(labelled.sum()), acc])
        if strategy == "uncertainty":
            decision = model.decision_function(Xp)
            if committee:
                linear = active.fit_svm(Xp[labelled], yp[labelled], params=active.COMMITTEE,
                                        seed=seed).decision_function(Xp)
    return curve


def to_target(curve, target: float):
    return next((n for n, a in curve if a >= target - 1e-12), None)


def median_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """Median accuracy at each label count that every seed measured."""
    common = sorted(set.intersection(*(set(n for n, _ in c) for c in curves)))
    by = [dict((n, a) for n, a in c) for c in curves]
    return [[n, round(float(np.median([b[n] for b in by])), 4)] for n in common]


def median_count(counts: list) -> int | None:
    vals = sorted(np.inf if c is None else c for c in counts)
    m = float(np.median(vals))
    return None if not np.isfinite(m) else int(round(m))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plot"]:  # plot OUT.png A.json [B.json ...]: one panel per result
        if len(argv) < 3:
            raise SystemExit("usage: bench_active_learning.py plot OUT.png RESULT.json ...")
        plot([(_title(json.loads(Path(f).read_text())), json.loads(Path(f).read_text()))
              for f in argv[2:]], argv[1])
        print(argv[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="manifest CSV (path,label,split[,group])")
    ap.add_argument("--pool", required=True, help="split whose frames are labelled")
    ap.add_argument("--eval", required=True, dest="eval_split", help="split accuracy is measured on")
    ap.add_argument("--holdout-groups", type=float, default=None, metavar="F",
                    help="hold out whole groups (about F of the pool split's rows) for evaluation")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-labels", type=int, default=None, help="stop there (default: the pool)")
    ap.add_argument("--random-share", type=float, default=0.2,
                    help="share of random picks in the uncertainty order (the page's default)")
    ap.add_argument("--no-committee", action="store_true", help="no linear-SVM disagreement")
    ap.add_argument("--cache-dir", default=str(REPO / "features"))
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--plot", default=None, help="also draw the curves into this PNG")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    X, y, split, group = load_features(args.data, cache_dir=args.cache_dir, backbone=args.backbone)
    for s in (args.pool, args.eval_split):
        if not np.any(split == s):
            raise SystemExit(f"no rows with split {s!r} in {args.data}; splits: "
                             f"{', '.join(sorted(set(split.tolist())))}")
    runs = {s: {"curves": [], "counts": []} for s in STRATEGIES}
    sizes = []
    for seed in range(args.seeds):
        pool, ev = split == args.pool, split == args.eval_split
        if args.holdout_groups:
            held = holdout_groups(group[pool], y[pool], args.holdout_groups,
                                  np.random.default_rng(1000 + seed))
            ev = np.zeros(len(y), bool)
            ev[np.flatnonzero(pool)[held]] = True
            pool = pool & ~ev
        sizes.append((int(pool.sum()), int(ev.sum())))
        max_labels = args.max_labels or int(pool.sum())
        for s in STRATEGIES:
            c = simulate(X[pool], y[pool], X[ev], y[ev], strategy=s, step=args.step,
                         max_labels=max_labels, seed=seed, random_share=args.random_share,
                         committee=not args.no_committee)
            runs[s]["curves"].append(c)
            runs[s]["counts"].append(to_target(c, args.target))
            print(f"seed {seed} {s:<11} labels to {args.target}: {runs[s]['counts'][-1]}, "
                  f"final {c[-1][1]:.3f} at {c[-1][0]} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    out = {s: {"labels_to_target": median_count(runs[s]["counts"]),
               "curve": median_curve(runs[s]["curves"]),
               "per_seed_labels_to_target": runs[s]["counts"],
               "final_accuracy": round(float(np.median([c[-1][1] for c in runs[s]["curves"]])), 4)}
           for s in STRATEGIES}
    u, r = out["uncertainty"]["labels_to_target"], out["random"]["labels_to_target"]
    out.update({
        "target": args.target,
        "n_pool": int(np.median([p for p, _ in sizes])), "n_eval": int(np.median([e for _, e in sizes])),
        "pool_eval_sizes_per_seed": sizes,
        "ratio_uncertainty_to_random": (round(u / r, 3) if u is not None and r else None),
        "settings": {"data": args.data, "pool": args.pool, "eval": args.eval_split,
                     "holdout_groups": args.holdout_groups, "step": args.step, "seeds": args.seeds,
                     "random_share": args.random_share, "committee": not args.no_committee,
                     "model": active.PARAMS, "backbone": args.backbone,
                     "max_labels": args.max_labels},
        "seconds": round(time.perf_counter() - t0, 1),
    })
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"uncertainty: {u} labels to {args.target}, random: {r} "
          f"(ratio {out['ratio_uncertainty_to_random']}); {args.json}")
    if args.plot:
        plot([(_title(out), out)], args.plot)
    return 0


def _title(res: dict) -> str:
    st = res["settings"]
    held = f", series held out ({st['holdout_groups']:.0%})" if st.get("holdout_groups") else ""
    return f"{Path(st['data']).parent.name}{held}"


def plot(results: list[tuple[str, dict]], path: str) -> None:
    """One panel per result: median eval accuracy against labels, both orders, the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, (title, res) in zip(axes[0], results):
        for s, style in (("uncertainty", "-"), ("random", "--")):
            c = np.array(res[s]["curve"])
            n = res[s]["labels_to_target"]
            ax.plot(c[:, 0], c[:, 1], style, label=f"{s} ({n if n is not None else 'never'})")
        ax.axhline(res["target"], color="grey", lw=0.8, ls=":")
        ax.set_title(f"{title}\npool {res['n_pool']}, eval {res['n_eval']} ({res['settings']['eval']}), "
                     f"median of {res['settings']['seeds']} seeds", fontsize=9)
        ax.set_xscale("log")  # the first hundred labels are where the orders differ
        ax.set_xlabel("labels given (log scale)")
        ax.set_ylabel(f"accuracy on {res['settings']['eval']}")
        lo = min(min(a for _, a in res[s]["curve"]) for s in STRATEGIES)
        ax.set_ylim(max(0.5, lo - 0.02), 1.0)
        ax.legend(title=f"labels to {res['target']}", fontsize=8, title_fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
