"""A trained face model (pipeline + calibration + abstain band + OOD guard) and its files:
save, resolve a path, load (pickle-free first) and check what was loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import sha256_bytes, sha256_file, versions
from ..errors import AnimeFacesError, ModelMismatchError
from .calibration import platt_apply


MODEL_FORMAT = "animefaces-svm/1"


@dataclass
class TrainedModel:
    """A fitted pipeline plus what it needs at prediction time.

    Attributes:
        pipeline: sklearn ``Pipeline(scale, SVC)``; classes are 0 (no_face) and 1 (face).
        platt: (a, b) of the score-to-probability sigmoid (fitted on val).
        meta: backbone / features / params / metrics / versions (saved as JSON beside the model).
        extras: optional parts saved with the model: ``calibration`` (the calibrator chosen on
            val, see :mod:`animefaces.classify.calibration`; used by :meth:`proba` instead of ``platt``),
            ``abstain`` (``{"band": [lo, hi], ...}``) and ``ood`` (an :class:`OODGuard` as a dict).
    """

    pipeline: object
    platt: tuple[float, float]
    meta: dict
    extras: dict = field(default_factory=dict)

    def decision(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline.decision_function(X)

    def proba(self, X: np.ndarray) -> np.ndarray:
        """P(face) per row, (n,) float64, calibrated on val."""
        return self.proba_from_decision(self.decision(X))

    def proba_from_decision(self, decision: np.ndarray) -> np.ndarray:
        cal = self.extras.get("calibration")
        if cal:
            from .calibration import apply_calibrator

            return apply_calibrator(cal, decision)
        return platt_apply(decision, self.platt)


# Keys save_model writes itself (from the model), never taken over from an earlier meta.
_DERIVED = ("format", "versions", "arrays", "pickle", "platt", "extras", "digest", "model_file",
            "model_sha256")


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be saved in a model's JSON")


def save_model(model: TrainedModel, path: os.PathLike) -> Path:
    """Save ``model`` under the name ``path`` (e.g. ``models/best``); returns ``PATH.json``.

    The model goes into a new folder ``PATH-<digest>/`` (``model.json`` + ``model.npz``: plain
    arrays, no pickle; a ``model.joblib`` pickle only for a pipeline that arrays cannot hold),
    renamed into place whole, and ``PATH.json`` is then replaced atomically to point at it (see
    :mod:`animefaces.classify.modelstore`): a reader never sees half a model, and a crash leaves the
    previous one. The JSON's digest covers every number that decides an answer.

    Raises:
        AnimeFacesError: the folder cannot be written (disk full, read-only), named.
    """
    import io

    from . import modelstore
    from .arrays import npz_bytes, split_extras, to_arrays

    meta = {k: v for k, v in model.meta.items() if k not in _DERIVED}
    extras_json, extra_arrays = split_extras(model.extras)
    try:
        extras_json = json.loads(json.dumps(extras_json, default=_json_default, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model extras cannot be saved as JSON: {exc}") from None
    doc = dict(meta, format=modelstore.MODEL_FORMAT, versions=versions(),
               platt=[float(v) for v in model.platt], extras=extras_json)
    files = {}
    packed = to_arrays(model.pipeline)
    if packed is None:  # a scalable (linear / approximate-kernel) SVM: arrays too
        from .linear import to_arrays as linear_arrays

        packed = linear_arrays(model.pipeline)
    if packed is not None:
        info, arrays = packed
        data = npz_bytes(dict(arrays, **extra_arrays))
        files["model.npz"] = data
        doc["arrays"] = dict(info, file="model.npz", sha256=sha256_bytes(data))
    else:
        # Not an SVC pipeline that arrays can hold: only a pickle can (loading it needs
        # allow_pickle=True). The OOD reference features still go to the npz.
        import joblib

        buf = io.BytesIO()
        joblib.dump({"format": MODEL_FORMAT, "pipeline": model.pipeline}, buf)
        files["model.joblib"] = buf.getvalue()
        doc["pickle"] = {"file": "model.joblib",
                         "sha256": sha256_bytes(files["model.joblib"])}
        if extra_arrays:
            data = npz_bytes(extra_arrays)
            files["model.npz"] = data
            doc["extra_arrays"] = {"file": "model.npz", "sha256": sha256_bytes(data)}
    doc = modelstore.seal(doc)
    pointer = modelstore.write_model(path, doc, files)
    model.meta = dict(doc, model_sha256=doc["digest"])
    return pointer


def resolve_model_path(path: os.PathLike | str) -> Path:
    """The file a model name resolves to, for messages: ``models/best.json`` for ``models/best``
    (a pointer), a model folder's ``model.json``, or an earlier-format ``NAME.json``.

    Raises:
        AnimeFacesError: no model there (the message says what was looked for).
    """
    from .modelstore import find

    return find(path).shown


def _pickle_refused(where, what: str) -> AnimeFacesError:
    return AnimeFacesError(
        f"model {where} is stored only as a pickle ({what}); loading a pickle can run any code "
        f"in it, so it is not loaded by default. If you made it or trust whoever did, pass "
        f"--allow-pickle (command line) or allow_pickle=True (Python); or retrain with "
        f"`animefaces sweep` to get a pickle-free model")


def load_model(path: os.PathLike | str, *, trust: bool = True,
               allow_pickle: bool = False) -> TrainedModel:
    """Load a model saved by :func:`save_model` (``models/best``, ``models/best.json``, a model
    folder), checking its digest, the sha256 of its files and every value that decides an answer.

    Args:
        allow_pickle: load a model that exists only as a joblib pickle (a pipeline that arrays
            cannot hold, or a model saved by an early animefaces). Loading a pickle can run any
            code in it: only for models you made or trust. Models with arrays never unpickle.

    Raises:
        AnimeFacesError / ModelMismatchError: missing files, a changed or damaged model, a
            value out of range, a pickle without ``allow_pickle``.
    """
    from . import modelstore

    found = modelstore.find(path)
    if found.folder is None:
        return _load_legacy(found, allow_pickle=allow_pickle)
    modelstore.check_digest(found)
    doc = found.doc
    arrays = {}
    for part in ("arrays", "extra_arrays"):
        if isinstance(doc.get(part), dict):
            arrays = _read_npz(found, doc[part])
    if isinstance(doc.get("arrays"), dict):
        pipeline = _from_arrays(found, doc["arrays"], arrays)
    elif isinstance(doc.get("pickle"), dict):
        if not allow_pickle:
            raise _pickle_refused(found.shown, f"{found.folder.name}/{doc['pickle'].get('file')}")
        pipeline = _unpickle(found.file(str(doc["pickle"].get("file"))), doc["pickle"].get("sha256"),
                             found)["pipeline"]
    else:
        raise AnimeFacesError(f"model {found.json_path} names neither arrays nor a pickle; "
                              f"restore it or retrain with `animefaces sweep`")
    from .arrays import join_extras

    model = TrainedModel(pipeline=pipeline, platt=tuple(doc.get("platt") or (0.0, 0.0)),
                         meta=dict(doc, model_sha256=doc.get("digest")),
                         extras=join_extras(doc.get("extras") or {}, arrays))
    check_answers(model, where=found.json_path)
    return model


def _read_npz(found, part: dict) -> dict:
    """The arrays of ``part`` (``{"file", "sha256"}``), hashed from the bytes that are read."""
    import io

    fname = str(part.get("file"))
    if "/" in fname or "\\" in fname or fname in ("", ".", ".."):
        raise AnimeFacesError(f"model {found.json_path} names the arrays file {fname!r}; expected "
                              f"a file name in its folder")
    arrays_file = found.file(fname)
    try:
        data = arrays_file.read_bytes()
    except FileNotFoundError:
        raise AnimeFacesError(f"model arrays {arrays_file} are missing (named in "
                              f"{found.json_path.name}); restore the file or retrain with "
                              f"`animefaces sweep`") from None
    digest = sha256_bytes(data)
    if digest != part.get("sha256"):
        raise ModelMismatchError(f"model file {arrays_file} has sha256 {digest[:16]}..., but "
                                 f"{found.json_path.name} says {str(part.get('sha256'))[:16]}...: "
                                 f"the file was changed or damaged; restore it or retrain")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise AnimeFacesError(f"cannot read model arrays {arrays_file}: {exc}") from None


def _from_arrays(found, info: dict, arrays: dict):
    from .arrays import from_arrays
    from .linear import LINEAR_FORMAT, from_arrays as linear_from_arrays

    try:
        if info.get("format") == LINEAR_FORMAT:
            return linear_from_arrays(info, arrays)
        return from_arrays(info, arrays)
    except ValueError as exc:
        raise AnimeFacesError(f"model {found.json_path}: {exc}; the file is damaged or was edited: "
                              f"restore it or retrain with `animefaces sweep`") from None


def _unpickle(model_file: Path, sha256, found) -> dict:
    import joblib

    _check_sha256(model_file, sha256, found.json_path.name)
    try:
        blob = joblib.load(model_file)
    except Exception as exc:  # noqa: BLE001 - corrupt pickles raise anything
        raise AnimeFacesError(f"cannot load model {model_file}: {exc}") from None
    if (not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT
            or not hasattr(blob.get("pipeline"), "decision_function")):
        raise AnimeFacesError(f"{model_file} is not an animefaces model ({MODEL_FORMAT} with a "
                              f"fitted pipeline)")
    return blob


def _load_legacy(found, *, allow_pickle: bool) -> TrainedModel:
    """A model of the earlier side-by-side format: ``NAME.json`` + ``NAME.npz`` [+ ``.joblib``].
    Its JSON numbers have no digest; they are checked for range, and a note says so."""
    import sys

    meta = found.doc
    info = meta.get("arrays")
    model_file = found.file(str(meta.get("model_file") or found.json_path.with_suffix(".joblib").name))
    if isinstance(info, dict):
        arrays = _read_npz(found, {"file": info.get("file"), "sha256": info.get("sha256")})
        pipeline = _from_arrays(found, info, arrays)
        from .arrays import join_extras

        model = TrainedModel(pipeline=pipeline, platt=tuple(info.get("platt") or (0.0, 0.0)),
                             meta=meta, extras=join_extras(info.get("extras") or {}, arrays))
    else:
        if not allow_pickle:
            raise _pickle_refused(found.json_path.with_suffix(""), model_file.name)
        blob = _unpickle(model_file, meta.get("model_sha256"), found)
        model = TrainedModel(pipeline=blob["pipeline"], platt=tuple(blob["platt"]), meta=meta,
                             extras=blob.get("extras", {}))
    check_answers(model, where=found.json_path)
    print(f"animefaces: model {found.json_path} was saved by an earlier animefaces: the numbers "
          f"in its JSON have no digest; save it again (animefaces.classify.persist.save_model(load_model(p), "
          f"p)) or retrain to protect them", file=sys.stderr)
    return model


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _walk_numbers(obj, prefix: str):
    """(dotted name, value) of every number inside a JSON-like object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_numbers(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_numbers(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float, np.number)) and not isinstance(obj, bool):
        yield prefix, obj


def check_answers(model: TrainedModel, *, where) -> None:
    """Refuse a model whose answer-deciding values are out of range: the Platt sigmoid, the
    calibrator, the abstain band, the OOD guard's thresholds, the task's classes, the feature
    width (the SVM's own numbers are checked by safemodel.from_arrays).

    Raises:
        AnimeFacesError: naming the value, what was expected and the fix.
    """
    from .arrays import n_features, n_outputs

    def bad(name, value, want):
        raise AnimeFacesError(f"model {where}: {name} = {value!r}; expected {want}; the file is "
                              f"damaged or was edited: restore it or retrain with `animefaces sweep`")

    platt = model.platt
    if len(platt) != 2 or not all(_finite(v) for v in platt):
        bad("platt", list(platt), "two finite numbers (a, b)")
    ex = model.extras or {}
    cal = ex.get("calibration")
    if cal:
        if not isinstance(cal, dict) or cal.get("method") not in ("platt", "isotonic"):
            bad("extras.calibration.method", cal.get("method") if isinstance(cal, dict) else cal,
                "platt or isotonic")
        if cal["method"] == "platt":
            for k in ("a", "b"):
                if not _finite(cal.get(k)):
                    bad(f"extras.calibration.{k}", cal.get(k), "a finite number")
        else:
            x, y = cal.get("x"), cal.get("y")
            if (not isinstance(x, list) or not isinstance(y, list) or not x or len(x) != len(y)
                    or not all(_finite(v) for v in x + y)):
                bad("extras.calibration.x/y", "...", "two equally long lists of finite numbers")
            if np.any(np.diff(x) < 0) or not all(0.0 <= v <= 1.0 for v in y):
                bad("extras.calibration", "x/y", "x non-decreasing and every y in [0, 1]")
        clip = cal.get("clip", (0.0, 1.0))
        if (not isinstance(clip, (list, tuple)) or len(clip) != 2 or not all(_finite(v) for v in clip)
                or not 0.0 <= clip[0] <= clip[1] <= 1.0):
            bad("extras.calibration.clip", clip, "[lo, hi] with 0 <= lo <= hi <= 1")
    abstain = ex.get("abstain") or {}
    band = abstain.get("band") if isinstance(abstain, dict) else abstain
    if band is not None and (not isinstance(band, (list, tuple)) or len(band) != 2
                             or not all(_finite(v) for v in band)
                             or not 0.0 <= band[0] <= band[1] <= 1.0):
        bad("extras.abstain.band", band, "[lo, hi] with 0 <= lo <= hi <= 1, or null")
    ood = ex.get("ood")
    if ood:
        if not isinstance(ood, dict):
            bad("extras.ood", type(ood).__name__, "a table of the guard's settings")
        arrays = ("train", "subspace_mean", "subspace_components")
        for name, v in _walk_numbers({k: v for k, v in ood.items() if k not in ("info", *arrays)},
                                     "extras.ood"):
            if not np.isfinite(v):
                bad(name, v, "a finite number")
        for k in ("quantile", "weak_quantile", "max_weak_rate", "gray_quantile", "subspace_quantile"):
            if k in ood and not (_finite(ood[k]) and 0.0 <= ood[k] <= 1.0):
                bad(f"extras.ood.{k}", ood[k], "a number in [0, 1]")
        if "k" in ood and not (isinstance(ood["k"], int) and not isinstance(ood["k"], bool)
                               and ood["k"] >= 1):
            bad("extras.ood.k", ood["k"], "an integer >= 1")
        train = ood.get("train")
        d = n_features(model.pipeline)
        if train is not None:
            t = np.asarray(train)
            if t.ndim != 2 or (d is not None and t.shape[1] != d) or not np.isfinite(t).all():
                bad("extras.ood.train", f"{t.dtype} {t.shape}",
                    f"finite reference features of shape (n, {d if d is not None else 'd'})")
        mean, comps = ood.get("subspace_mean"), ood.get("subspace_components")
        if (mean is None) != (comps is None):
            bad("extras.ood.subspace_mean/components", "one of them", "both or neither")
        if mean is not None:
            mu, V = np.asarray(mean), np.asarray(comps)
            width = d if d is not None else mu.shape[-1]
            if (mu.shape != (width,) or V.ndim != 2 or V.shape[1] != width
                    or not (np.isfinite(mu).all() and np.isfinite(V).all())):
                bad("extras.ood.subspace", f"{mu.shape} / {V.shape}",
                    f"a finite mean of shape ({width},) and components of shape (k, {width})")
    meta = model.meta
    task = meta.get("task", "face")
    if task not in ("face", "character"):
        bad("task", task, "face or character")
    k = n_outputs(model.pipeline)
    if task == "character":
        classes = meta.get("classes")
        if (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes) or (k is not None and len(classes) != k)):
            bad("classes", classes, f"a list of {k or 'n'} distinct character names")
    elif k is not None and k != 2:
        bad("task", task, f"character (the SVM tells {k} classes apart)")
    feats = meta.get("features", {})  # required by load_with_extractor, not by load_model
    if not isinstance(feats, dict):
        bad("features", type(feats).__name__, "a table describing the features")
    if "backbone" in feats and not isinstance(feats["backbone"], str):
        bad("features.backbone", feats["backbone"], "the name of the backbone it was trained on")
    dim, d = feats.get("feature_dim"), n_features(model.pipeline)
    if dim is not None and d is not None and dim != d:
        bad("features.feature_dim", dim, f"{d}, the width of the model's support vectors")


def _check_sha256(model_file: Path, expected, meta_name: str) -> None:
    """ModelMismatchError unless ``model_file`` hashes to what its JSON (``meta_name``) says."""
    try:
        digest = sha256_file(model_file)
    except FileNotFoundError:
        raise AnimeFacesError(f"model file {model_file} is missing (named in {meta_name}); "
                              f"restore it or retrain with `animefaces sweep`") from None
    if expected != digest:
        raise ModelMismatchError(f"model file {model_file} has sha256 {digest[:16]}..., but "
                                 f"{meta_name} says {str(expected)[:16]}...: "
                                 f"the file was changed or damaged; restore it or retrain")
