"""The Python API: load a trained classifier and ask whether images show a face.

    >>> import animefaces
    >>> clf = animefaces.FaceClassifier.load("models/best")      # doctest: +SKIP
    >>> clf.predict("frame.png")                                  # doctest: +SKIP
    Prediction(source='frame.png', label='face', score=0.987, ...)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import AnimeFacesError, BadImageError, ConfigError, ModelMismatchError

DEFAULT_MODEL = "models/best"
# Fields of the feature fingerprint that must match between training and prediction. Precision
# and package version may differ (bf16 vs fp32 features differ by < 1%).
_MUST_MATCH = ("backbone", "weights_sha256", "layer", "pooling", "preprocessing")


@dataclass
class Prediction:
    """The answer for one image.

    Attributes:
        source: the file path, or ``<image 3>`` for in-memory inputs.
        label: ``face`` or ``no_face``; ``unsure`` when P(face) is inside the model's abstain
            band; ``out_of_domain`` when the input does not look like an anime frame (see
            ``ood_reason``); ``error`` when the image could not be read.
        score: P(face) in [0, 1], calibrated on the validation set (Platt or isotonic).
        decision: the raw SVM decision value (> 0 leans to face).
        error: why the image could not be read (only when label == "error").
        unsure: True when no face / no-face answer is given (label ``unsure`` or ``out_of_domain``).
        out_of_domain: True when the out-of-domain guard flagged the input.
        ood_reason: why it was flagged (e.g. ``tiny: shorter side 20 px < 32 px``).
    """

    source: str
    label: str
    score: float
    decision: float = float("nan")
    error: str | None = None
    unsure: bool = False
    out_of_domain: bool = False
    ood_reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def model_task(path: os.PathLike | str) -> str:
    """``face`` or ``character``: what the model at ``path`` was trained for (from its JSON)."""
    from .classify.modelstore import find

    try:
        task = find(path).doc.get("task", "face")
    except (AnimeFacesError, OSError):
        return "face"  # load_model reports a missing or broken model properly
    return task if task in ("face", "character") else "face"


def load_with_extractor(path, *, task: str, device: str = "auto", weights=None,
                        batch_size: int | None = None, allow_pickle: bool = False):
    """A saved model and the feature extractor it was trained with, checked to match.

    Args:
        allow_pickle: see :func:`animefaces.classify.persist.load_model` (never needed for models with arrays).

    Returns:
        (TrainedModel, FeatureExtractor, the model's pointer / JSON path)

    Raises:
        AnimeFacesError: the model is for the other task (names the class that loads it).
        ModelMismatchError: the backbone's weights or preprocessing differ from training.
    """
    from .classify.persist import load_model, resolve_model_path
    from .features.extract import FeatureExtractor

    model_file = resolve_model_path(path)
    model = load_model(path, allow_pickle=allow_pickle)
    got = model.meta.get("task", "face")
    if got != task:
        loader = {"face": "FaceClassifier", "character": "CharacterClassifier"}.get(got, got)
        raise AnimeFacesError(f"model {model_file} identifies {'characters' if got == 'character' else got}"
                              f", it is not a {task} model; load it with animefaces.{loader}.load "
                              f"(`animefaces predict --model` picks the right one itself)")
    feats = model.meta.get("features", {})
    if not isinstance(feats.get("backbone"), str):
        raise AnimeFacesError(f"model {model_file} does not say which backbone made its features "
                              f"(features.backbone); retrain it with `animefaces sweep`")
    if weights is None and feats.get("random_weights"):
        weights = "random"
    precision = feats.get("precision", "fp32")
    fx = FeatureExtractor(feats["backbone"], weights=weights, device=device,
                          precision=precision if precision != "fp16" else "auto",
                          pooling=feats.get("pooling", "auto"), batch_size=batch_size)
    now = fx.fingerprint_fields()
    diff = [k for k in _MUST_MATCH if str(now.get(k)) != str(feats.get(k))]
    if diff:
        detail = "; ".join(f"{k}: trained with {feats.get(k)!r}, now {now.get(k)!r}" for k in diff)
        raise ModelMismatchError(f"model {model_file} does not fit this feature extractor ({detail}); "
                                 f"use the weights file it was trained with, or retrain")
    return model, fx, model_file


def feature_chunks(fx, images, *, on_error: str, progress: bool, batch_size: int | None,
                   error_result, cache_dir: os.PathLike | str | None = None):
    """Features of mixed inputs (paths, PIL images, arrays), in input order within each chunk.

    Paths go through the extractor's file pipeline (hashing, batched decode) in one chunk;
    in-memory images in chunks of 4 batches, so only one chunk is held as RGB copies at a time.
    Unreadable inputs raise (``on_error="raise"``) or are handed to ``error_result(i, source,
    reason)``. With ``cache_dir``, file features come from (and go to) the feature cache that
    ``animefaces extract`` / ``sweep`` fill, so images seen before are not run through the CNN.

    Yields:
        (indices into ``images``, features (n, d), source names, inputs, inputs_are_files)
    """
    from .features.cache import FeatureCache

    if on_error not in ("raise", "report"):
        raise ValueError("on_error must be 'raise' or 'report'")
    is_path = [isinstance(im, (str, os.PathLike)) for im in images]
    path_idx = [i for i, p in enumerate(is_path) if p]
    mem_idx = [i for i, p in enumerate(is_path) if not p]
    if path_idx:
        cache = (FeatureCache(cache_dir, fx.fingerprint, meta=fx.describe(), name=fx.spec.name)
                 if cache_dir is not None else FeatureCache(None, fx.fingerprint, meta={},
                                                            name=fx.spec.name))
        paths = [Path(images[i]) for i in path_idx]
        X, keys, bad = fx.extract_files(paths, cache=cache, skip_bad=on_error == "report",
                                        progress=progress)
        bad_reason = {str(p): r for p, r in bad}
        good = [i for i, p in zip(path_idx, paths) if str(p) not in bad_reason]
        for i, p in zip(path_idx, paths):
            if str(p) in bad_reason:
                error_result(i, str(p), bad_reason[str(p)])
        if good:
            good_paths = [Path(images[i]) for i in good]
            yield good, X, [str(p) for p in good_paths], good_paths, True
    chunk = max(1, batch_size or fx.settings.batch_size) * 4
    for start in range(0, len(mem_idx), chunk):
        from .data.images import as_rgb_image

        ok, decoded = [], []
        for i in mem_idx[start:start + chunk]:
            try:
                decoded.append(as_rgb_image(images[i]))
                ok.append(i)
            except BadImageError as exc:
                if on_error == "raise":
                    raise
                error_result(i, f"<image {i}>", exc.reason)
        if ok:
            yield ok, fx.transform_images(decoded), [f"<image {i}>" for i in ok], decoded, False


class TrainedClassifier:
    """What the face and character classifiers share: a saved model, the feature extractor it
    was trained with (checked to match), an optional feature cache, and batched prediction over
    mixed inputs. Subclasses say how an error and a batch of features become answers."""

    def __init__(self, model, extractor, *, path: Path | None = None,
                 cache_dir: os.PathLike | str | None = None):
        self.model = model
        self.extractor = extractor
        self.path = path
        self.cache_dir = cache_dir

    @property
    def backbone(self) -> str:
        return self.extractor.spec.name

    def predict(self, image):
        """Answer for one image (path, PIL image or numpy array).

        Raises:
            BadImageError: the image cannot be read (the message names it).
        """
        return self.predict_many([image], on_error="raise")[0]

    def predict_many(self, images, *, on_error: str = "raise", progress: bool = False,
                     batch_size: int | None = None) -> list:
        """Answers for many images, batched through the CNN, in input order.

        Args:
            images: paths, PIL images or numpy arrays (mixed is fine).
            on_error: ``raise`` (stop at the first unreadable image) or ``report`` (an answer
                that carries the reason in ``error``).
        """
        images = list(images)
        results: list = [None] * len(images)

        def error_result(i, source, reason):
            results[i] = self._error(source, reason)

        for idx, X, names, inputs, files in feature_chunks(
                self.extractor, images, on_error=on_error, progress=progress,
                batch_size=batch_size, error_result=error_result, cache_dir=self.cache_dir):
            if idx:
                for i, answer in zip(idx, self._answers(X, names, inputs, files)):
                    results[i] = answer
        return results

    def _error(self, source: str, reason: str):
        raise NotImplementedError

    def _answers(self, X, names, inputs, files: bool) -> list:
        raise NotImplementedError


class FaceClassifier(TrainedClassifier):
    """A trained face / no-face classifier with its feature extractor.

    Build one with :meth:`load`. ``predict`` takes a path, a PIL image or a numpy array;
    ``predict_many`` takes a list of them and runs the CNN in batches.
    """

    def __init__(self, model, extractor, *, threshold: float = 0.5, path: Path | None = None,
                 abstain="auto", ood: bool = True, cache_dir: os.PathLike | str | None = None):
        super().__init__(model, extractor, path=path, cache_dir=cache_dir)
        self.threshold = threshold
        self.band = resolve_band(abstain, model, threshold=threshold)
        self.guard = None
        if ood and model.extras.get("ood"):
            from .classify.ood import OODGuard

            self.guard = OODGuard.from_dict(model.extras["ood"])

    @classmethod
    def load(cls, path: os.PathLike | str | None = None, *, device: str = "auto", weights=None,
             batch_size: int | None = None, threshold: float = 0.5, abstain="auto",
             ood: bool = True, cache_dir: os.PathLike | str | None = None,
             allow_pickle: bool = False) -> "FaceClassifier":
        """Load a model saved by ``animefaces sweep`` (default: ``models/best``, or the
        ``ANIMEFACES_MODEL`` environment variable).

        Nothing is unpickled: models are plain arrays and JSON, checked against their digest.

        Args:
            path: ``models/NAME`` (the pointer ``NAME.json`` to a model folder), the pointer
                file, or a model folder.
            device: where the CNN runs (``auto``, ``cpu``, ``cuda``...).
            weights: backbone weights (default: found as for extraction; must be the very file the
                model was trained with: its sha256 is checked).
            threshold: P(face) at or above which the label is ``face``.
            abstain: ``"auto"`` (the band saved with the model, chosen on held-out groups or val), ``"off"`` /
                None / False (always answer), a ``(lo, hi)`` pair (unsure when lo < P(face) <
                hi), or a string ``"lo,hi"`` (as on the command line).
            ood: apply the out-of-domain guard saved with the model (label ``out_of_domain``).
            cache_dir: a feature cache folder (e.g. ``"features"``, as filled by ``animefaces
                extract`` / ``sweep``): features of files already there are reused and new ones
                are added. None (default): nothing is written to disk.
            allow_pickle: also load a model that exists only as a joblib pickle (made by an
                early animefaces, or a pipeline arrays cannot hold). Loading a pickle can run
                any code in it: only for files you made or trust. Refused by default.

        Raises:
            ModelMismatchError: the backbone's weights or preprocessing differ from training,
                or the model was changed after it was saved.
            AnimeFacesError: no model there, a value out of range, a pickle without allow_pickle.
        """
        path = path or os.environ.get("ANIMEFACES_MODEL") or DEFAULT_MODEL
        model, fx, model_file = load_with_extractor(path, task="face", device=device,
                                                    weights=weights, batch_size=batch_size,
                                                    allow_pickle=allow_pickle)
        return cls(model, fx, threshold=threshold, path=model_file, abstain=abstain, ood=ood,
                   cache_dir=cache_dir)

    def _error(self, source: str, reason: str) -> Prediction:
        return Prediction(source=source, label="error", score=float("nan"), error=reason)

    def _answers(self, X, names, inputs, files: bool) -> list[Prediction]:
        return self._label(X, names, self._stats(inputs, files=files))

    def _stats(self, images, *, files: bool):
        if self.guard is None or not images:
            return None
        from .classify.ood import file_stats, image_stats

        return np.stack([file_stats(im) if files else image_stats(im) for im in images])

    def _label(self, X, names, stats=None) -> list[Prediction]:
        """Face / no_face / unsure / out_of_domain for each row of ``X``."""
        decision = self.model.decision(X)
        proba = self.model.proba_from_decision(decision)
        if self.guard is not None and stats is not None:
            ood, reasons, _ = self.guard.flags(X, stats)
        else:
            ood, reasons = np.zeros(len(names), bool), [None] * len(names)
        lo, hi = self.band if self.band is not None else (self.threshold, self.threshold)
        out = []
        for name, d, p, o, why in zip(names, decision, proba, ood, reasons):
            if o:
                label = "out_of_domain"
            elif lo < p < hi:
                label = "unsure"
            else:
                label = "face" if p >= self.threshold else "no_face"
            out.append(Prediction(source=name, label=label, score=float(p), decision=float(d),
                                  unsure=label in ("unsure", "out_of_domain"),
                                  out_of_domain=bool(o), ood_reason=why))
        return out

    def __repr__(self) -> str:
        m = self.model.meta
        return (f"FaceClassifier(backbone={m.get('backbone')!r}, kernel={m.get('kernel')!r}, "
                f"path={str(self.path)!r})")


def classifier_confirm(model_path: os.PathLike | str, *, device: str = "auto",
                       allow_pickle: bool = False):
    """A ``confirm`` callable for :func:`animefaces.data.crops.extract_crops` backed by a
    trained model: crops (PIL images) -> P(face) scores.

    The model is loaded now, so a wrong path fails before any video is decoded.

    Raises:
        AnimeFacesError: from loading the model (missing, mismatched...).
    """
    clf = FaceClassifier.load(model_path, device=device, allow_pickle=allow_pickle)

    def confirm(crops) -> list[float]:
        return [float(p.score) for p in clf.predict_many(crops)]

    confirm.model = clf  # for reports
    return confirm


def resolve_band(abstain, model=None, *, threshold: float = 0.5) -> tuple[float, float] | None:
    """The abstain band ``(lo, hi)`` to use, or None for no abstention.

    Args:
        abstain: ``"auto"`` (the model's saved band; None for models without one), ``"off"`` /
            ``"none"`` / None / False, a ``(lo, hi)`` pair, or a ``"lo,hi"`` string.
        model: the :class:`~animefaces.classify.persist.TrainedModel` (for ``"auto"``).

    Raises:
        ConfigError: a malformed band (the message shows the accepted forms).
    """
    if abstain is None or abstain is False:
        return None
    if isinstance(abstain, str):
        text = abstain.strip().lower()
        if text in ("off", "none", "no", "false"):
            return None
        if text == "auto":
            band = (model.extras.get("abstain") or {}).get("band") if model is not None else None
            return None if band is None else (float(band[0]), float(band[1]))
        parts = text.replace(" ", "").split(",")
        try:
            abstain = tuple(float(x) for x in parts)
        except ValueError:
            abstain = ()
    try:
        lo, hi = (float(v) for v in abstain)
    except (TypeError, ValueError):
        raise ConfigError(f"abstain band {abstain!r}: use 'auto', 'off' or 'lo,hi' with "
                         f"0 <= lo <= threshold <= hi <= 1 (e.g. '0.05,0.95')") from None
    if not 0.0 <= lo <= threshold <= hi <= 1.0:
        raise ConfigError(f"abstain band ({lo}, {hi}): need 0 <= lo <= threshold ({threshold}) "
                         f"<= hi <= 1, e.g. '0.05,0.95'")
    return (lo, hi)
