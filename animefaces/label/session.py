"""One labelling session: the manifest, its features, the current model and the queue.

The HTTP layer (:mod:`.server`) and the export command call this; it knows nothing of HTTP.
Features are read from the feature cache (computed on demand in a background thread, with
progress); every ``every`` new labels the SVM is refitted in another background thread, the
held-out estimate recomputed, and the queue rebuilt from the new model. One lock guards the
state; fitting runs outside it, so labelling never waits for a refit.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from ..errors import AnimeFacesError
from . import active
from .store import LabelStore

PICKED = ("uncertain", "disagreement", "random", "browse")
_CHUNK = 256


class LabelSession:
    """Labelling state for one manifest.

    Args:
        store: the manifest (its session lock is taken by the server, not here).
        model: a saved face model to start from (``models/best``), or None to start from nothing.
        backbone, weights, device: the feature extractor when there is no model (with a model,
            its own backbone and weights are used).
        cache_dir: the feature cache (``features/``, as for extract / sweep).
        every: refit after this many new labels.
        random_share: share of random picks in the queue.
        progress: show feature extraction progress on stderr.
    """

    def __init__(self, store: LabelStore, *, model=None, backbone: str = "mobilenet_v2",
                 weights=None, device: str = "auto", cache_dir: os.PathLike | str = "features",
                 every: int = 20, random_share: float = 0.2, seed: int = 0, progress: bool = True,
                 allow_pickle: bool = False):
        if every < 1:
            raise AnimeFacesError(f"--every {every}: refit after at least 1 label (default 20)")
        if not 0 <= random_share <= 1:
            raise AnimeFacesError(f"--random-share {random_share}: a fraction from 0 to 1 "
                                  f"(default 0.2)")
        self.store = store
        self.every, self.random_share, self.seed = every, random_share, seed
        self.cache_dir, self.progress = cache_dir, progress
        self.lock = threading.RLock()
        n = len(store.rows)
        self.start_model, self.model_path = None, None
        if model is not None:
            from ..api import load_with_extractor

            self.start_model, self.fx, self.model_path = load_with_extractor(
                model, task="face", device=device, allow_pickle=allow_pickle)
        else:
            from ..features.extract import FeatureExtractor

            self.fx = FeatureExtractor(backbone, weights=weights, device=device)
        self.X = np.zeros((n, self.fx.feature_dim), np.float32)
        self.has_x = np.zeros(n, bool)
        self.bad: dict[int, str] = {}
        self.features = {"done": 0, "total": n, "running": False, "error": None, "seconds": None}
        self.decision = np.full(n, np.nan)   # the current model's decision values
        self.committee = np.full(n, np.nan)  # the linear SVM's, for "disagreement"
        self.p = np.full(n, np.nan)          # P(face) shown on the page
        self.current = "start" if self.start_model is not None else "none"
        self.refit_model = None
        self.platt = None
        self.round = 0
        self.labels_at_fit = -1
        self.fitting = False
        self.fit_error = None
        self.estimate: dict | None = None
        self.start_estimate: dict | None = None
        self.history: list[dict] = []
        self.queue: list[tuple[int, str]] = []
        self.undo_stack: list[tuple[int, dict]] = []
        self._start_decision = np.full(n, np.nan)
        self._threads: list[threading.Thread] = []
        self._rebuild_queue()

    # -- features ----------------------------------------------------------------------------
    def start(self, *, wait: bool = False) -> None:
        """Start extracting features (in the background unless ``wait``)."""
        self.features["running"] = True
        if wait:
            self._extract()
        else:
            self._spawn(self._extract)

    def _spawn(self, target) -> None:
        t = threading.Thread(target=target, daemon=True)
        self._threads.append(t)
        t.start()

    def _extract(self) -> None:
        from tqdm.auto import tqdm

        from ..features.cache import FeatureCache

        t0 = time.perf_counter()
        n = len(self.store.rows)
        try:
            cache = FeatureCache(self.cache_dir, self.fx.fingerprint, meta=self.fx.describe(),
                                 name=self.fx.spec.name)
            with tqdm(total=n, desc=f"features ({self.fx.spec.name})", unit="img",
                      disable=not self.progress, file=sys.stderr) as bar:
                for start in range(0, n, _CHUNK):
                    idx = list(range(start, min(n, start + _CHUNK)))
                    paths = [self.store.image_path(i) for i in idx]
                    X, _keys, bad = self.fx.extract_files(paths, cache=cache, skip_bad=True,
                                                          progress=False)
                    why = {str(p): r for p, r in bad}
                    good = [i for i, p in zip(idx, paths) if str(p) not in why]
                    with self.lock:
                        self.X[good] = X
                        self.has_x[good] = True
                        self.bad.update({i: why[str(p)] for i, p in zip(idx, paths) if str(p) in why})
                        self.features["done"] = idx[-1] + 1
                        if self.start_model is not None and good:
                            self._score_start(good)
                    bar.update(len(idx))
            if n - len(self.bad) >= 512:
                cache.compact()
        except Exception as exc:  # shown on the page; labelling goes on in random order
            self.features["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.features["running"] = False
            self.features["seconds"] = round(time.perf_counter() - t0, 2)
        with self.lock:
            self._rebuild_queue()
        self.maybe_refit(force=True)

    def _score_start(self, idx) -> None:
        d = self.start_model.decision(self.X[idx])
        self._start_decision[idx] = d
        if self.current == "start":
            self.decision[idx] = d
            self.p[idx] = self.start_model.proba_from_decision(d)

    # -- fitting -----------------------------------------------------------------------------
    def _training_rows(self) -> np.ndarray:
        lab = np.array([lb in ("face", "no_face") for lb in self.store.labels()])
        return np.flatnonzero(lab & self.has_x)

    def maybe_refit(self, *, force: bool = False) -> bool:
        """Start a background refit when ``every`` labels came since the last one (or when
        ``force``d and anything changed). Returns True when one was started."""
        with self.lock:
            if self.fitting or self.features["running"]:
                return False
            rows = self._training_rows()
            y = self._y(rows)
            due = len(rows) - max(self.labels_at_fit, 0) >= self.every or self.labels_at_fit < 0
            if not active.can_fit(y) or not (due or (force and len(rows) != self.labels_at_fit)):
                return False
            self.fitting = True
            self.fit_error = None
        self._spawn(self._refit)
        return True

    def _y(self, rows) -> np.ndarray:
        labels = self.store.labels()
        return np.array([labels[i] == "face" for i in rows], int)

    def _refit(self) -> None:
        from ..classify.calibration import platt_fit

        try:
            with self.lock:
                rows = self._training_rows()
                y = self._y(rows)
                X = self.X[rows].copy()
                groups = [self.store.rows[i].get("group", "") for i in rows]
                honest = [self.store.rows[i].get("picked", "") in active.HONEST for i in rows]
                scored = np.flatnonzero(self.has_x)
                Xs = self.X[scored].copy()
            t0 = time.perf_counter()
            model = active.fit_svm(X, y, seed=self.seed)
            linear = active.fit_svm(X, y, params=active.COMMITTEE, seed=self.seed)
            est = active.estimate(X, y, groups, honest, seed=self.seed)
            ok = ~np.isnan(est.decision)
            platt = (platt_fit(est.decision[ok], y[ok])
                     if ok.sum() >= 10 and len(set(y[ok])) == 2 else None)
            dec, com = model.decision_function(Xs), linear.decision_function(Xs)
            start_est = None
            if self.start_model is not None:
                start_est = active.start_model_estimate(self._start_decision[rows], y, groups, honest)
            seconds = time.perf_counter() - t0
        except Exception as exc:
            with self.lock:
                self.fitting = False
                self.fit_error = f"{type(exc).__name__}: {exc}"
            return
        with self.lock:
            self.round += 1
            self.labels_at_fit = len(rows)
            self.refit_model, self.platt = model, platt
            self.estimate = dict(est.to_dict(), labels=len(rows), seconds=round(seconds, 2))
            self.start_estimate = start_est.to_dict() if start_est is not None else None
            self.history.append({"labels": len(rows), "acc": est.acc, "n": est.n, "se": est.se})
            use_start = start_est is not None and _better(start_est, est)
            self.current = "start" if use_start else "refit"
            self.committee[:] = np.nan
            self.committee[scored] = com
            if not use_start:
                self.decision[:] = np.nan
                self.decision[scored] = dec
                self.p[:] = np.nan
                self.p[scored] = self._proba(dec)
            self.fitting = False
            self._rebuild_queue()
        self.maybe_refit()  # labels that came in during the fit may already make the next due

    def _proba(self, decision: np.ndarray) -> np.ndarray:
        from ..classify.calibration import platt_apply, raw_probability

        return platt_apply(decision, self.platt) if self.platt else raw_probability(decision)

    # -- the queue ---------------------------------------------------------------------------
    def _rebuild_queue(self) -> None:
        """Rank the unlabelled, readable frames by the current model (random before one)."""
        labels = self.store.labels()
        avail = np.array([not lb for lb in labels])
        avail[list(self.bad)] = False
        scored = ~np.isnan(self.decision)
        rng = np.random.default_rng([self.seed, self.round])
        n = max(200, 10 * self.every)
        if self.current != "none" and np.any(avail & scored):
            com = None if np.all(np.isnan(self.committee)) else np.nan_to_num(self.committee)
            self.queue = active.choose(np.nan_to_num(self.decision), avail & scored, n=n,
                                       random_share=self.random_share, rng=rng, committee=com)
        else:
            self.queue = active.choose(None, avail, n=n, rng=rng)

    def next_items(self, n: int = 5) -> list[dict]:
        """The next ``n`` frames to label, most informative first."""
        with self.lock:
            labels = self.store.labels()
            self.queue = [(i, r) for i, r in self.queue if not labels[i]]
            if len(self.queue) < n:
                self._rebuild_queue()
            return [self.item(i, reason=r) for i, r in self.queue[:n]]

    def item(self, i: int, *, reason: str | None = None) -> dict:
        if not 0 <= i < len(self.store.rows):
            raise AnimeFacesError(f"no frame {i}: the manifest has {len(self.store.rows)} rows")
        r = self.store.rows[i]
        p = self.p[i]
        return {"i": i, "path": r["path"], "label": r["label"], "split": r.get("split", ""),
                "group": r.get("group", ""), "picked": r.get("picked", ""),
                "p": None if np.isnan(p) else round(float(p), 4), "reason": reason,
                "error": self.bad.get(i)}

    def grid(self, which: str = "queue", *, n: int = 60, offset: int = 0) -> list[dict]:
        """Frames for the grid view: the queue, the labelled ones (latest first), or all."""
        with self.lock:
            if which == "queue":
                return self.next_items(offset + n)[offset:]
            rows = self.store.rows
            if which == "labelled":
                idx = sorted((i for i, r in enumerate(rows) if r["label"]),
                             key=lambda i: rows[i].get("labelled_at", ""), reverse=True)
            elif which == "all":
                idx = list(range(len(rows)))
            else:
                raise AnimeFacesError(f"grid {which!r}; choose one of: queue, labelled, all")
            return [self.item(i) for i in idx[offset:offset + n]]

    # -- labelling ---------------------------------------------------------------------------
    def label(self, i: int, label: str, *, picked: str = "browse", expect: str | None = None) -> dict:
        """Write one label (``face``, ``no_face``, ``unsure``, or ``""`` to clear it)."""
        if picked not in PICKED:
            picked = "browse"
        with self.lock:
            old = self.store.set_label(i, label, picked=picked, expect=expect)
            self.undo_stack.append((i, old))
        self.maybe_refit()
        return {"version": self.store.version, "item": self.item(i)}

    def undo(self, *, expect: str | None = None) -> dict:
        """Put back the row changed last (by this server), as it was before."""
        with self.lock:
            if not self.undo_stack:
                raise AnimeFacesError("nothing to undo (undo reaches back to this server's start)")
            i, old = self.undo_stack[-1]
            was = self.store.rows[i].get("picked", "")
            self.store.update({i: old}, expect=expect)
            self.undo_stack.pop()
            # the frame goes back to the page with the reason it was shown for the first time
            return {"version": self.store.version,
                    "item": self.item(i, reason=was if was in PICKED else None)}

    # -- what the page shows -----------------------------------------------------------------
    def state(self) -> dict:
        with self.lock:
            est = self.estimate
            return {
                "version": self.store.version, "manifest": str(self.store.path),
                "progress": self.store.progress(), "features": dict(self.features),
                "backbone": self.fx.spec.name, "every": self.every,
                "model": {"current": self.current, "round": self.round, "fitting": self.fitting,
                          "error": self.fit_error, "start": str(self.model_path) if self.model_path else None,
                          "labels_at_fit": max(self.labels_at_fit, 0),
                          "next_fit_in": (max(0, self.every - (len(self._training_rows()) - max(self.labels_at_fit, 0)))
                                          if self.labels_at_fit >= 0 else None)},
                "estimate": est, "start_estimate": self.start_estimate,
                "history": self.history[-50:],
                "hint": active.plateau(self.history),
                "bad": len(self.bad), "can_undo": bool(self.undo_stack),
            }

    def scores(self) -> np.ndarray:
        """P(face) of every row by the current model (nan where there is none)."""
        with self.lock:
            return self.p.copy()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait for the feature thread and any refit (tests, export)."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            with self.lock:
                if not self.features["running"] and not self.fitting:
                    return
            time.sleep(0.02)
        raise TimeoutError("features or refit still running")


def _better(start: active.Estimate, refit: active.Estimate) -> bool:
    """Keep the start model while it is at least as accurate on the held-out labels."""
    a = start.acc if start.acc is not None and refit.acc is not None else start.acc_all
    b = refit.acc if start.acc is not None and refit.acc is not None else refit.acc_all
    return a is not None and (b is None or a >= b)
