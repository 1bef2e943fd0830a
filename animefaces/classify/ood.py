"""Out-of-domain guard: say "this is not an anime frame" instead of forcing face / no face.

Two kinds of evidence, each with a reason a person can read:

* cheap image statistics, computed on a small thumbnail (a few ms per image):
  ``tiny``   the shorter side is below ``min_side`` pixels;
  ``flat``   nothing but a smooth surface: the colour left after fitting a quadratic surface to
             each channel has a standard deviation below ``flat_resid`` grey levels (blank,
             near-uniform and gradient frames);
  ``ramp``   a smooth colour ramp without edges (linear or radial gradient): the colour range
             (1st to 99th percentile, largest over the channels) is more than ``ramp_ratio``
             times the steepest local colour step (99.5th percentile of the per-pixel Sobel
             gradient, largest over the channels), i.e. the colour changes only gradually
             over dozens of pixels; drawn images have edges as steep as their colour range;
  ``noise``  neighbouring pixels are nearly uncorrelated (lag-1 autocorrelation below
             ``noise_autocorr``): random noise, snow;
  ``text``   a text slide: one background colour covers >= 60% of the thumbnail, >= 80% of the
             pixels lie on the line between two colours, and the foreground forms >= 5 rows
             separated by empty rows, with short strokes (glyphs) rather than long lines.
* the CNN features the classifier already uses, in two ways, each with a threshold at a high
  quantile of the same score for the reference (train + val) images measured *with their own
  group left out* (a stand-in for series never seen in training):
  ``unlike the training images``  the mean cosine distance to the ``k`` nearest reference
             images (quantile 0.999: only farther than almost every unseen-series image);
  ``outside the anime subspace``  the part of the (unit-length) feature vector that the
             ``subspace`` (8) main directions of the reference features do not explain (PCA
             residual; quantile 0.998). Anime of a series never seen varies along the directions
             other anime vary along; photographs do not. On the shared sets this keeps 98-99%
             of unseen-series episode frames in domain where the distance alone flagged 11%
             (docs/trust.md has the numbers).
* both at once, where neither alone is enough: an image statistic that drawings rarely show,
  together with a feature distance above a *weak* threshold (the ``weak_quantile`` = 10%
  quantile of the same leave-group-out distances, i.e. farther from the training set than the
  nearest tenth of unseen-series anime):
  ``soft grayscale``  grayscale with fewer than ``soft_edge`` (5%) sharp-edge pixels (grey jump
             >= 12 to a neighbour on the thumbnail): no ink lines, so a photograph, micrograph or
             scan (moon, cells, a clock);
  ``palette graphic`` the 8 most common exact colours cover >= ``palette_cover`` (90%) of the
             pixels: masks, patterns, charts and diagrams (filmed or drawn frames spread over
             hundreds of colours).
  ``grayscale photo`` grayscale, with a feature distance above the ``gray_quantile`` (85%)
             quantile of the reference distances: TV anime frames are in colour (3.5% of the
             shared episode frames are grayscale, nearly all close to training images), while
             photographs, scans and scientific images often are not.
  On the shared set, the anime images that pass either statistic are plain 64 px patches, all
  close to training images (distance <= 0.75, weak threshold 0.80); among anime images above the
  weak threshold the largest palette share is 0.82 and the fewest sharp-edge pixels of a
  grayscale one is 5.2% (a thin margin, written down in docs/trust.md).

The thresholds on image statistics are fixed, physical ones (configurable in ``[trust]``, except
``ramp_ratio``); the feature-distance threshold is fitted during the sweep and saved with the
model. ``ramp_ratio`` (30) was set from the anime data only: the largest ratio among the 2080
train + val images of the shared ``animefaces-mini`` set is 26.0 (99.9% quantile 23.4), rounded
up; no probe image was looked at to choose it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

STAT_NAMES = ("min_side", "resid", "autocorr", "chroma", "top", "twotone", "bands", "strokes",
              "ramp", "edge", "palette")
STATS_VERSION = 5
# The guard's array-valued parts (saved in the model's npz, not its JSON).
ARRAY_KEYS = ("train", "subspace_mean", "subspace_components")
_THUMB = 128


@lru_cache(maxsize=4)
def _quad_pinv(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    yy = yy / max(h, 1) - 0.5
    xx = xx / max(w, 1) - 0.5
    basis = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], -1).reshape(-1, 6)
    return basis, np.linalg.pinv(basis)


def _runs(mask: np.ndarray) -> int:
    """Number of runs of True in a 1-D boolean array."""
    m = np.asarray(mask, np.int8)
    return int(np.sum(np.diff(np.concatenate([[0], m])) == 1))


def _ramp(a: np.ndarray) -> float:
    """Colour range over the steepest local colour step (see the module docstring); large for
    smooth gradients, a few units for drawings and photographs."""
    from scipy import ndimage as ndi

    lo, hi = np.quantile(a.reshape(-1, 3), [0.01, 0.99], axis=0)
    rng = float(np.max(hi - lo))
    step = np.max([np.hypot(ndi.sobel(a[..., c], 1), ndi.sobel(a[..., c], 0)) / 8 for c in range(3)], 0)
    return rng / max(float(np.quantile(step, 0.995)), 0.5)


def _palette(im) -> float:
    """Share of the pixels held by the 8 most common *exact* colours (on a nearest-neighbour
    copy of at most 256 px, so no new colours are made). Drawn, scanned, filmed or compressed
    images spread over hundreds of colours; masks, patterns, charts and diagrams do not."""
    from PIL import Image

    if max(im.size) > 256:
        s = 256 / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.NEAREST)
    a = np.asarray(im, np.int64).reshape(-1, 3)
    u, c = np.unique((a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2], return_counts=True)
    return float(np.sort(c)[::-1][:8].sum() / len(a))


def image_stats(img, *, size: tuple[int, int] | None = None, _owned: bool = False) -> np.ndarray:
    """Cheap statistics of one image, in :data:`STAT_NAMES` order, (11,) float64.

    Args:
        img: an RGB PIL image (any size; it is thumbnailed to at most 128 px).
        size: the original (width, height) when ``img`` was decoded at reduced size.
    """
    from PIL import Image

    w, h = size or img.size
    im = img if img.mode == "RGB" else img.convert("RGB")
    palette = _palette(im)
    if max(im.size) > _THUMB:
        if not _owned:  # the caller's image; file_stats' own needs no full-size copy
            im = im.copy()
        im.thumbnail((_THUMB, _THUMB), Image.BILINEAR)
    a = np.asarray(im, np.float64)
    H, W, _ = a.shape
    flat = a.reshape(-1, 3)
    small = np.asarray(im.resize((64, 64), Image.BILINEAR), np.float64).reshape(-1, 3)
    basis, pinv = _quad_pinv(64, 64)
    resid = float((small - basis @ (pinv @ small)).std())
    g = a @ np.array([0.299, 0.587, 0.114])
    gc = g - g.mean()
    v = float((gc * gc).mean())
    if v > 1e-6 and H > 1 and W > 1:
        ac = float(min((gc[:, 1:] * gc[:, :-1]).mean(), (gc[1:] * gc[:-1]).mean()) / v)
    else:
        ac = 1.0
    chroma = float(np.mean(a.max(2) - a.min(2)))
    # Dominant colour (4-bit bins) and the line to the most common clearly different colour.
    q = flat.astype(np.int64) >> 4
    codes = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    cnt = np.bincount(codes, minlength=4096)
    order = np.argsort(-cnt, kind="stable")
    c1 = flat[codes == order[0]].mean(0)
    top = float(cnt[order[0]] / len(codes))
    centres = np.stack([(order >> 8) & 15, (order >> 4) & 15, order & 15], 1) * 16.0 + 8.0
    far = (np.linalg.norm(centres - c1, axis=1) > 64) & (cnt[order] > 0)
    if far.any():
        c2 = centres[np.argmax(far)]
        d = c2 - c1
        t = np.clip(((flat - c1) @ d) / (d @ d), 0, 1)
        twotone = float(np.mean(np.linalg.norm(flat - (c1 + t[:, None] * d), axis=1) < 24))
    else:
        twotone = 1.0
    # Text rows: foreground (far from the background colour) in rows separated by empty rows,
    # with many short strokes per row (glyphs), unlike the long lines of drawings.
    fg = (np.linalg.norm(a - c1, axis=2) > 48)
    occ = fg.mean(1)
    text_rows = occ > 0.01
    bands = _runs(text_rows) if np.any(occ <= 0.002) else 0
    if text_rows.any():
        changes = np.abs(np.diff(fg[text_rows].astype(np.int8), axis=1)).sum(1)
        strokes = float(np.mean(changes) / W)
    else:
        strokes = 0.0
    # Sharp edges (ink lines): share of pixels whose grey level jumps by >= 12 to a neighbour.
    gm = np.maximum(np.abs(np.diff(g, axis=1))[:-1], np.abs(np.diff(g, axis=0))[:, :-1]) if H > 1 and W > 1 else np.zeros(1)
    edge = float(np.mean(gm >= 12))
    return np.array([min(w, h), resid, ac, chroma, top, twotone, bands, strokes, _ramp(a), edge,
                     palette], np.float64)


def file_stats(path: os.PathLike | str) -> np.ndarray:
    """:func:`image_stats` of an image file (decoded at reduced size; the size test uses the
    file's real size)."""
    from ..data.images import image_size, open_image

    # image_size, not Image.open: the same file checks and pixel limit as the decode (Pillow's
    # own bomb warning leaked to stderr here for images between 89 and 120 Mpx).
    size = image_size(path)
    return image_stats(open_image(path, draft_size=(_THUMB, _THUMB)), size=size, _owned=True)


def stats_for_files(paths, *, cache_dir: os.PathLike | str | None = None, n_jobs: int = 2) -> np.ndarray:
    """:func:`file_stats` for many files, (n, 11) float64, in threads, cached by (path, size,
    mtime) in ``cache_dir/image-stats-v1.npz`` when a cache folder is given."""
    from concurrent.futures import ThreadPoolExecutor

    from ..features.fileindex import RealPaths

    paths = [Path(p) for p in paths]
    real = RealPaths()  # Path.resolve() per file took ~1 s for 10,000 files
    keys = []
    for p in paths:
        st = p.stat()
        keys.append(f"{real(p)}|{st.st_size}|{st.st_mtime_ns}")
    known: dict[str, np.ndarray] = {}
    cache_file = Path(cache_dir) / f"image-stats-v{STATS_VERSION}.npz" if cache_dir else None
    if cache_file and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                ks, st = z["keys"], z["stats"]
            if st.ndim != 2 or st.shape[1] != len(STAT_NAMES) or len(ks) != len(st):
                raise ValueError(f"keys {ks.shape} and stats {st.shape} do not match "
                                 f"(expected (n,) and (n, {len(STAT_NAMES)}))")
            known = dict(zip(ks.tolist(), st))
        except Exception as exc:  # noqa: BLE001 - truncated zip, foreign file...: rebuilt below
            from .._io import set_aside

            set_aside(cache_file, f"{type(exc).__name__}: {exc}", what="image-stats cache")
            known = {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        with ThreadPoolExecutor(max(1, n_jobs)) as pool:
            for i, s in zip(todo, pool.map(lambda i: file_stats(paths[i]), todo)):
                known[keys[i]] = s
        if cache_file:
            import io

            from .._io import atomic_write_bytes

            buf = io.BytesIO()
            ks = sorted(known)
            np.savez(buf, keys=np.array(ks), stats=np.stack([known[k] for k in ks]))
            atomic_write_bytes(cache_file, buf.getvalue())
    if not paths:
        return np.zeros((0, len(STAT_NAMES)))
    return np.stack([known[k] for k in keys])


def _unit(X) -> np.ndarray:
    X = np.asarray(X, np.float32)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(n, 1e-12)


@dataclass
class OODGuard:
    """Flags inputs that are not anime frames. Fit with :meth:`fit`; use :meth:`check`.

    Attributes:
        min_side: shorter side in pixels below which an image is ``tiny``.
        flat_resid: grey levels; below this the image is a smooth surface (``flat``).
        ramp_ratio: above this colour range / steepest step the image is a smooth ``ramp``.
        noise_autocorr: below this lag-1 autocorrelation the image is ``noise``.
        gray_chroma: mean (max - min) over RGB below which an image counts as grayscale.
        k: neighbours for the feature distance.
        quantile: of the leave-group-out distances of train + val images, used as threshold
            (0.999: on unseen series the distances run higher than on the reference, and 0.95
            flagged 11% of real episode frames).
        text: on/off for the text-slide test.
        soft_edge: grayscale images with fewer sharp-edge pixels than this share (no ink lines)
            are ``soft grayscale`` when their feature distance is also above the weak threshold.
        palette_cover: images whose 8 most common exact colours cover at least this share of
            the pixels are a ``palette graphic`` when their feature distance is also above the
            weak threshold.
        weak_quantile: quantile of the same reference distances that sets the weak threshold.
        gray_quantile: quantile of the reference distances above which a grayscale image is a
            ``grayscale photo``.
        subspace: main directions (PCA components) of the reference features; 0 turns the
            ``outside the anime subspace`` test off.
        subspace_quantile: quantile of the reference residuals used as that test's threshold.
        max_weak_rate: a two-evidence test that flags more than this share of the reference
            (train + val, own group left out) images is turned off at fit time (``weak_off``);
            0.02 is the false-flag budget of the whole guard.
    """

    min_side: int = 32
    flat_resid: float = 2.0
    ramp_ratio: float = 30.0
    noise_autocorr: float = 0.3
    gray_chroma: float = 2.0
    k: int = 5
    quantile: float = 0.999
    text: bool = True
    soft_edge: float = 0.05
    palette_cover: float = 0.9
    weak_quantile: float = 0.1
    gray_quantile: float = 0.85
    subspace: int = 8
    subspace_quantile: float = 0.998
    max_weak_rate: float = 0.02
    weak_off: list = field(default_factory=list)
    weak_rates: dict = field(default_factory=dict)
    train: np.ndarray | None = field(default=None, repr=False)  # (n, d) float16, unit rows
    subspace_mean: np.ndarray | None = field(default=None, repr=False)  # (d,) float32
    subspace_components: np.ndarray | None = field(default=None, repr=False)  # (subspace, d)
    thresholds: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # The reference images' own leave-group-out scores (distance, residual), set by fit, not saved.
    reference_scores: tuple | None = field(default=None, repr=False, compare=False)

    # -- feature distance ------------------------------------------------------------------------
    def distance(self, X, *, exclude_codes: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Mean cosine distance (sqrt(2 - 2 cos)) to the k nearest training images, (n,).

        Args:
            X: (n, d) features, as the classifier gets them.
            exclude_codes: optional (row codes (n,), training codes (n_train,)): per row, ignore
                the training images with the row's code (its group, or itself). The mask is
                built 512 rows at a time (whole, it is n x n_train bytes: 400 MB at 20,000
                reference images).
        """
        T = self.train.astype(np.float32)
        Q = _unit(X)
        out = np.empty(len(Q))
        k = min(self.k, len(T))
        for start in range(0, len(Q), 512):
            # The k nearest are the k most similar: select on cosine similarity, and take the
            # square root of those k only (not of the whole block).
            S = Q[start:start + 512] @ T.T
            if exclude_codes is not None:
                S[exclude_codes[0][start:start + 512, None] == exclude_codes[1][None, :]] = -np.inf
            top = np.partition(S, S.shape[1] - k, axis=1)[:, S.shape[1] - k:]
            out[start:start + 512] = np.sqrt(np.maximum(2.0 - 2.0 * top, 0.0)).mean(1)
        return out

    def residual(self, X) -> np.ndarray:
        """Length of the part of each unit-length feature row outside the reference's main
        directions (PCA residual), (n,); zeros when the subspace test is off."""
        if self.subspace_components is None or not len(X):
            return np.zeros(len(X))
        Z = _unit(X) - np.asarray(self.subspace_mean, np.float32)
        V = np.asarray(self.subspace_components, np.float32)
        return np.linalg.norm(Z - (Z @ V.T) @ V, axis=1).astype(np.float64)

    def fit(self, X_train, *, groups_train=None, gray_train=None, X_val=None, groups_val=None,
            gray_val=None, stats_train=None, stats_val=None) -> "OODGuard":
        """Store the training features and set the thresholds.

        Reference scores: every train and val image's distance to the training images of
        *other* groups, and its residual outside the main directions of the other groups'
        features (when there are at least 3 groups; otherwise leave-one-out distances and
        10-fold residuals), so the thresholds reflect images of series the classifier has not
        seen. They are kept in ``reference_scores`` (see :meth:`reference_flags`).
        """
        self.train = _unit(X_train).astype(np.float16)
        X_ref = np.asarray(X_train) if X_val is None else np.concatenate([X_train, X_val])
        n_tr = len(X_train)
        g_tr = np.asarray(groups_train if groups_train is not None else [""] * n_tr, dtype=object)
        g_ref = g_tr if X_val is None else np.concatenate(
            [g_tr, np.asarray(groups_val if groups_val is not None else [""] * len(X_val), dtype=object)])
        gray_ref = np.zeros(len(X_ref), bool)
        if gray_train is not None:
            gray_ref[:n_tr] = gray_train
        if X_val is not None and gray_val is not None:
            gray_ref[n_tr:] = gray_val
        by_group = len(set(g_tr.tolist())) >= 3
        if by_group:
            # Integer codes: the (n_ref, n_train) comparison of strings would be slow at 10^4 rows.
            codes = np.unique(g_ref.astype(str), return_inverse=True)[1].reshape(-1)
            how = "leave-group-out"
        else:
            # Each training image its own code; val images (after them) match none.
            codes = np.arange(len(X_ref))
            how = "leave-one-out"
        d = self.distance(X_ref, exclude_codes=(codes, codes[:n_tr]))
        d = np.where(np.isfinite(d), d, np.nan)
        r = self._fit_subspace(X_ref, g_ref if by_group else None)
        self.reference_scores = (d, r)
        colour = d[~gray_ref]
        self.thresholds = {"colour": float(np.nanquantile(colour, self.quantile))}
        n_gray = int(np.sum(gray_ref))
        # Grayscale inputs get their own threshold only when there are enough grayscale
        # training images to estimate it; otherwise the colour one.
        self.thresholds["gray"] = (float(np.nanquantile(d[gray_ref], self.quantile))
                                   if n_gray >= 20 else self.thresholds["colour"])
        # Weak evidence: farther from the training set than this share of unseen-series images.
        # Used only together with an image statistic (soft grayscale, palette graphic).
        self.thresholds["weak"] = float(np.nanquantile(d, self.weak_quantile))
        self.thresholds["mid"] = float(np.nanquantile(d, self.gray_quantile))
        if self.subspace_components is not None:
            self.thresholds["residual"] = float(np.quantile(r, self.subspace_quantile))
        # The two-evidence tests must stay rare on the reference images themselves (a training set
        # of flat-colour cartoons or grayscale photos would otherwise be flagged): measured here
        # when the statistics are given, and a test whose rate exceeds max_weak_rate is turned off.
        self.weak_rates, self.weak_off = {}, []
        if stats_train is not None:
            S = np.atleast_2d(np.asarray(stats_train, np.float64))
            if X_val is not None and stats_val is not None:
                S = np.concatenate([S, np.atleast_2d(np.asarray(stats_val, np.float64))])
            if len(S) == len(d) and S.shape[1] >= 11:
                self.weak_rates = {k: float(np.mean((d > self.thresholds[t]) & hit))
                                   for k, (hit, t) in self._weak_hits(S).items()}
                self.weak_off = sorted(k for k, r in self.weak_rates.items() if r > self.max_weak_rate)
        self.info = {"reference": how, "n_reference": int(len(d)), "n_gray_reference": n_gray,
                     "k": self.k, "quantile": self.quantile,
                     "reference_quantiles": {str(q): float(np.nanquantile(d, q))
                                             for q in (0.1, 0.25, 0.5, 0.9, 0.95, 0.99)}}
        return self

    def _fit_subspace(self, X_ref, groups) -> np.ndarray:
        """Fit the main directions of the reference features; return each reference image's
        residual from directions fitted without its group (10 group folds; 10 plain folds
        when ``groups`` is None), (n,)."""
        from sklearn.model_selection import GroupKFold, KFold

        U = _unit(X_ref).astype(np.float64)
        n_comp = min(int(self.subspace), len(U) - 1, U.shape[1])
        if n_comp < 1:
            self.subspace_mean = self.subspace_components = None
            return np.zeros(len(U))

        def directions(A):
            mu = A.mean(0)
            return mu, np.linalg.svd(A - mu, full_matrices=False)[2][:n_comp]

        def resid(Q, mu, V):
            Z = Q - mu
            return np.linalg.norm(Z - (Z @ V.T) @ V, axis=1)

        r = np.zeros(len(U))
        if groups is not None:
            n_f = min(10, len(set(np.asarray(groups).tolist())))
            folds = GroupKFold(n_f).split(U, groups=groups)
        else:
            folds = KFold(min(10, len(U)), shuffle=True, random_state=0).split(U)
        for tr, te in folds:
            r[te] = resid(U[te], *directions(U[tr]))
        mu, V = directions(U)
        self.subspace_mean, self.subspace_components = mu.astype(np.float32), V.astype(np.float32)
        return r

    # -- decisions --------------------------------------------------------------------------------
    def _weak_hits(self, S) -> dict[str, tuple[np.ndarray, str]]:
        """Which rows of (n, >= 11) statistics pass each two-evidence test's image statistic,
        with the name of the distance threshold it needs as well (checked by the caller)."""
        S = np.atleast_2d(S)
        gray = S[:, 3] < self.gray_chroma
        return {"soft grayscale": (gray & (S[:, 9] < self.soft_edge), "weak"),
                "palette graphic": (S[:, 10] >= self.palette_cover, "weak"),
                "grayscale photo": (gray, "mid")}

    def flags(self, X, stats) -> tuple[np.ndarray, list[str | None], np.ndarray]:
        """Decide for each image.

        Args:
            X: (n, d) features, as the classifier gets them; stats: (n, 11) from :func:`image_stats`
                (older guards' 8 or 9 statistics work; the tests they lack are skipped).

        Returns:
            ((n,) bool out of domain, a reason per image (None when in domain), (n,) feature
            distances).
        """
        stats = np.atleast_2d(np.asarray(stats, np.float64))
        dist = self.distance(X) if self.train is not None and len(X) else np.zeros(len(stats))
        res = self.residual(X) if len(X) else np.zeros(len(stats))
        return self._decide(stats, dist, res)

    def reference_flags(self, stats_ref) -> tuple[np.ndarray, list[str | None], np.ndarray]:
        """:meth:`flags` for the reference images themselves (train then val, as given to
        :meth:`fit`), each scored with its own group left out: the false-flag rate on series
        the guard has not seen. Needs the guard fitted in this process."""
        if self.reference_scores is None:
            raise ValueError("reference_flags needs the guard fitted in this process (fit)")
        d, r = self.reference_scores
        return self._decide(np.atleast_2d(np.asarray(stats_ref, np.float64)), d, r)

    def _decide(self, stats, dist, res):
        reasons = [self._reason(s, float(d), float(r)) for s, d, r in zip(stats, dist, res)]
        return np.array([x is not None for x in reasons], bool), reasons, np.asarray(dist)

    def _reason(self, s, d: float, res: float = 0.0) -> str | None:
        min_side, resid, ac, chroma, top, twotone, bands, strokes = s[:8]
        ramp = s[8] if len(s) > 8 else 0.0
        if min_side < self.min_side:
            return f"tiny: shorter side {int(min_side)} px < {self.min_side} px"
        if resid < self.flat_resid:
            return (f"flat: blank, near-uniform or gradient (texture {resid:.2f} grey levels "
                    f"< {self.flat_resid:g})")
        if ramp > self.ramp_ratio:
            return (f"ramp: smooth gradient without edges (colour range {ramp:.0f} x the "
                    f"steepest local step > {self.ramp_ratio:g})")
        if ac < self.noise_autocorr:
            return f"noise: neighbouring pixels uncorrelated (autocorrelation {ac:.2f} < {self.noise_autocorr:g})"
        if self.text and top >= 0.6 and twotone >= 0.8 and bands >= 5 and strokes >= 0.04:
            return (f"text slide: {top:.0%} one background colour, two-tone, {int(bands)} rows "
                    f"of glyph-like strokes")
        if self.thresholds:
            gray = chroma < self.gray_chroma
            thr = self.thresholds["gray" if gray else "colour"]
            if d > thr:
                return (f"unlike the training images: feature distance {d:.3f} > {thr:.3f} "
                        f"({'grayscale' if gray else 'colour'} threshold)")
            rthr = self.thresholds.get("residual")
            if rthr is not None and res > rthr:
                return (f"outside the anime subspace: feature residual {res:.3f} > {rthr:.3f} "
                        f"(the part of its CNN features that the training images' "
                        f"{self.subspace} main directions do not explain)")
            if len(s) >= 11:
                hits = {k: bool(v[0]) and k not in self.weak_off and t in self.thresholds
                        and d > self.thresholds[t] for k, (v, t) in self._weak_hits(s).items()}
                edge, palette = s[9], s[10]
                weak, mid = self.thresholds.get("weak"), self.thresholds.get("mid")
                if hits["soft grayscale"]:
                    return (f"soft grayscale: no ink lines ({edge:.1%} sharp-edge pixels < "
                            f"{self.soft_edge:.0%}) and feature distance {d:.3f} > {weak:.3f}: "
                            f"a photograph or scan rather than a drawing")
                if hits["palette graphic"]:
                    return (f"palette graphic: 8 exact colours cover {palette:.1%} of the pixels "
                            f"(drawn or filmed frames have hundreds) and feature distance {d:.3f} "
                            f"> {weak:.3f}: a mask, pattern, chart or diagram")
                if hits["grayscale photo"]:
                    return (f"grayscale photo: no colour and feature distance {d:.3f} > {mid:.3f} "
                            f"(farther than {self.gray_quantile:.0%} of unseen-series training "
                            f"images): anime frames are in colour")
        return None

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"min_side": self.min_side, "flat_resid": self.flat_resid, "ramp_ratio": self.ramp_ratio,
                "noise_autocorr": self.noise_autocorr, "gray_chroma": self.gray_chroma,
                "k": self.k, "quantile": self.quantile, "text": self.text,
                "soft_edge": self.soft_edge, "palette_cover": self.palette_cover,
                "weak_quantile": self.weak_quantile, "max_weak_rate": self.max_weak_rate,
                "gray_quantile": self.gray_quantile, "subspace": self.subspace,
                "subspace_quantile": self.subspace_quantile,
                "weak_off": list(self.weak_off), "weak_rates": dict(self.weak_rates),
                "train": self.train, "subspace_mean": self.subspace_mean,
                "subspace_components": self.subspace_components,
                "thresholds": dict(self.thresholds), "info": dict(self.info),
                "stats_version": STATS_VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> "OODGuard":
        keys = ("min_side", "flat_resid", "ramp_ratio", "noise_autocorr", "gray_chroma", "k", "quantile", "text",
                "soft_edge", "palette_cover", "weak_quantile", "max_weak_rate", "weak_off", "weak_rates",
                "gray_quantile", "subspace", "subspace_quantile", "train", "subspace_mean",
                "subspace_components", "thresholds", "info")
        return cls(**{k: d[k] for k in keys if k in d})

    def describe(self) -> dict:
        """The guard's settings and fitted thresholds (for JSON)."""
        d = self.to_dict()
        for k in ARRAY_KEYS:
            d.pop(k)
        d["n_train"] = 0 if self.train is None else int(len(self.train))
        return d


def is_gray(stats, *, gray_chroma: float = 2.0) -> np.ndarray:
    return np.atleast_2d(stats)[:, STAT_NAMES.index("chroma")] < gray_chroma


def flag_summary(flagged, reasons, splits, groups=None) -> dict:
    """Flag rate per split on images that are known to be in domain (false flags), with the
    count per reason and the groups with most flags: JSON-ready."""
    flagged = np.asarray(flagged, bool)
    splits = np.asarray(splits, dtype=object)
    out = {}
    for s in dict.fromkeys(splits.tolist()):
        m = splits == s
        by_reason: dict[str, int] = {}
        for r in np.asarray(reasons, dtype=object)[m & flagged]:
            key = str(r).split(":")[0]
            by_reason[key] = by_reason.get(key, 0) + 1
        entry = {"n": int(m.sum()), "flagged": int(flagged[m].sum()),
                 "rate": round(float(flagged[m].mean()), 5) if m.any() else None,
                 "by_reason": by_reason}
        if groups is not None:
            g = np.asarray(groups, dtype=object)[m & flagged]
            counts: dict[str, int] = {}
            for x in g:
                counts[str(x)] = counts.get(str(x), 0) + 1
            entry["top_groups"] = dict(sorted(counts.items(), key=lambda t: -t[1])[:5])
        out[s] = entry
    return out
