"""The models folder: every saved model is an immutable folder, and a name is one pointer file.

``save_model(model, "models/best")`` writes

    models/best-<digest>/model.json   the model: everything that decides an answer, and its digest
    models/best-<digest>/model.npz    its arrays (support vectors, ...), sha256 in model.json
    models/best.json                  the pointer: {"model": "best-<digest>", "digest": ...}

The folder is written under a temporary name and renamed into place whole; then the pointer is
replaced with one ``os.replace``. So a reader sees the old model or the new one, never a mix
(two sweeps saving ``best`` at once: the last rename wins), and a process killed at any moment
leaves the previous pointer, still loadable (at worst a ``.*.tmp-*`` folder, removed by a later
save). Folders are named by their content's digest and are never changed or deleted by
animefaces, so a pointer read a moment ago still leads to whole files.

The digest is the sha256 of the model JSON in a canonical form (``json.dumps(sort_keys=True,
separators=(",", ":"))``) without its ``digest`` field; the JSON holds the sha256 of the ``.npz``
(and of a ``.joblib``, written only for a pipeline that arrays cannot hold). One changed digit
anywhere (an intercept, gamma, the calibrator, the abstain band, an OOD threshold) is refused on
load. Models saved by earlier versions (``NAME.json`` + ``NAME.npz`` [+ ``NAME.joblib``] side by
side) still load; their JSON numbers had no digest (the values are checked, see svm.load_model).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .._io import sha256_bytes
from ..errors import AnimeFacesError, ModelMismatchError

MODEL_FORMAT = "animefaces-model/2"
REF_FORMAT = "animefaces-model-ref/1"
MODEL_JSON = "model.json"
# Keys of the pointer beside "model" and "digest": for people (and for `predict`, which picks
# the face or character loader by "task" before loading).
_SUMMARY = ("task", "backbone", "kernel", "run_id", "created", "accuracy")
_STALE_TMP_SECONDS = 3600


def canonical(doc: dict) -> bytes:
    """The bytes the digest is taken of: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode("utf-8")


def digest_of(doc: dict) -> str:
    """sha256 (hex) of the canonical form of ``doc`` without its ``digest`` field."""
    return sha256_bytes(canonical({k: v for k, v in doc.items() if k != "digest"}))


def _plain(value):
    """JSON for numpy values and paths (anything else: its str, as the reports do)."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def seal(doc: dict) -> dict:
    """``doc`` as it will read back from JSON (tuples as lists...), with its digest."""
    doc = json.loads(json.dumps({k: v for k, v in doc.items() if k != "digest"}, default=_plain,
                                allow_nan=True))
    return dict(doc, digest=digest_of(doc))


def name_path(path: os.PathLike | str) -> Path:
    """``models/best`` from ``models/best``, ``models/best.json``, ``.npz`` or ``.joblib``."""
    p = Path(path).expanduser()
    return p.with_suffix("") if p.suffix in (".json", ".npz", ".joblib") else p


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _clean_stale_tmp(folder: Path) -> None:
    """Remove temporary folders of saves killed long ago (a running save's is younger)."""
    now = time.time()
    for tmp in folder.glob(".*.tmp-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def write_model(path: os.PathLike | str, doc: dict, files: dict[str, bytes]) -> Path:
    """Write a sealed model ``doc`` (see :func:`seal`) and its ``files`` into an immutable folder
    beside ``path``, then point ``path`` at it. Returns the pointer file (``PATH.json``).

    Raises:
        AnimeFacesError: the folder cannot be written (disk full, read-only); the message names
            it and says that the model the name pointed to before is unchanged.
    """
    from .._io import _umask, atomic_write_bytes, write_failed

    name = name_path(path)
    root = name.parent
    content = f"{name.name}-{doc['digest'][:16]}"
    final = root / content
    tmp = root / f".{content}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _clean_stale_tmp(root)
        if not (final / MODEL_JSON).is_file():
            tmp.mkdir(mode=0o777 & ~_umask())
            for fname, data in dict(files, **{MODEL_JSON: _pretty(doc)}).items():
                with open(tmp / fname, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MODEL_JSON).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # the same content, saved meanwhile
            _fsync_dir(root)
        ref = {"format": REF_FORMAT, "model": content, "digest": doc["digest"],
               **{k: doc[k] for k in _SUMMARY if k in doc}}
        pointer = name.with_name(name.name + ".json")
        atomic_write_bytes(pointer, _pretty(ref))
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        before = name.with_name(name.name + ".json")
        raise write_failed(exc, what=f"the model {name.name}", folder=root, flag="--models-dir",
                           saved=(f"{name.name} still loads the model saved as it before"
                                  if before.is_file() else "no part of it is left there")
                                 + ", and the other models there are unchanged") from exc
    # The files of the earlier side-by-side format under this name are superseded by the
    # pointer; left there, they would look like the current model.
    for suffix in (".npz", ".joblib"):
        try:
            name.with_name(name.name + suffix).unlink(missing_ok=True)
        except OSError:
            pass
    return pointer


def link(path: os.PathLike | str, target: os.PathLike | str) -> Path:
    """Point the name ``path`` (e.g. ``models/best``) at the model ``target`` points to (e.g.
    ``models/<run>-<backbone>-<kernel>``), with one atomic replace; returns the pointer file.
    ``target`` must be in the same folder."""
    from .._io import atomic_write_bytes, write_failed

    found = find(target)
    if found.folder is None:
        raise AnimeFacesError(f"model {target} is in the earlier side-by-side format; save it "
                              f"again (save_model(load_model(path), path)) before pointing "
                              f"{path} at it")
    name = name_path(path)
    if found.folder.parent.resolve() != name.parent.resolve():
        raise AnimeFacesError(f"{path} and the model {target} are in different folders; a name "
                              f"can only point to a model folder beside it")
    ref = {"format": REF_FORMAT, "model": found.folder.name, "digest": found.doc.get("digest"),
           **{k: found.doc[k] for k in _SUMMARY if k in found.doc}}
    pointer = name.with_name(name.name + ".json")
    try:
        atomic_write_bytes(pointer, _pretty(ref))
        _fsync_dir(name.parent)
    except OSError as exc:
        raise write_failed(exc, what=f"the pointer {pointer.name}", folder=name.parent,
                           flag="--models-dir",
                           saved=f"{name.name} still loads the model it loaded before (if "
                                 f"any); {name_path(target)} is saved") from exc
    for suffix in (".npz", ".joblib"):
        try:
            name.with_name(name.name + suffix).unlink(missing_ok=True)
        except OSError:
            pass
    return pointer


def _pretty(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")


@dataclass
class Found:
    """Where a model is and its JSON.

    Attributes:
        json_path: the model JSON (``.../model.json``, or ``NAME.json`` for the earlier format).
        doc: its contents.
        folder: the immutable model folder (None for the earlier side-by-side format).
        pointer: the pointer file it was reached through (None when given the folder itself).
        ref_digest: the digest the pointer names.
    """

    json_path: Path
    doc: dict
    folder: Path | None = None
    pointer: Path | None = None
    ref_digest: str | None = None

    @property
    def shown(self) -> Path:
        """The path to name in messages: what the user gave, as a pointer or folder."""
        return self.pointer or self.folder or self.json_path

    def file(self, name: str) -> Path:
        return (self.folder or self.json_path.parent) / name


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnimeFacesError(f"model file {path} is not readable JSON ({exc}); restore it or "
                              f"retrain with `animefaces sweep`") from None
    if not isinstance(doc, dict):
        raise AnimeFacesError(f"model file {path} holds a JSON {type(doc).__name__}, not a model "
                              f"description; restore it or retrain with `animefaces sweep`")
    return doc


def _candidates(path: os.PathLike | str) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        # A model folder, or a models folder holding best.json.
        return [p / MODEL_JSON, p / "best.json"]
    out = []
    if p.suffix == ".json":
        out.append(p)
    elif p.suffix in (".npz", ".joblib"):
        out.append(p.with_suffix(".json"))
    out.append(Path(str(p) + ".json"))
    return out


def find(path: os.PathLike | str) -> Found:
    """Resolve ``models/best`` (or ``models/best.json``, a model folder, its ``model.json``, a
    folder holding ``best.json``, or an earlier-format ``.joblib`` / ``.npz``) to its model.

    Raises:
        AnimeFacesError: nothing there, a pointer to a missing folder, unreadable JSON.
    """
    for cand in _candidates(path):
        try:
            doc = _read_json(cand)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if doc.get("format") != REF_FORMAT:
            folder = cand.parent if cand.name == MODEL_JSON and doc.get("format") == MODEL_FORMAT else None
            return Found(json_path=cand, doc=doc, folder=folder)
        target = doc.get("model")
        if (not isinstance(target, str) or not target or target in (".", "..")
                or "/" in target or "\\" in target):
            raise AnimeFacesError(f"model pointer {cand} names {target!r}; expected the name of a "
                                  f"model folder beside it; restore it or retrain")
        folder = cand.parent / target
        try:
            inner = _read_json(folder / MODEL_JSON)
        except (FileNotFoundError, NotADirectoryError):
            raise AnimeFacesError(f"model pointer {cand} points to {folder}, which is missing or "
                                  f"has no {MODEL_JSON}; restore that folder, point the name at "
                                  f"another model, or retrain with `animefaces sweep`") from None
        return Found(json_path=folder / MODEL_JSON, doc=inner, folder=folder, pointer=cand,
                     ref_digest=doc.get("digest"))
    p = Path(path)
    raise AnimeFacesError(f"no model at {path}: expected {name_path(p)}.json (a model saved by "
                          f"`animefaces sweep` into models/, e.g. models/best), or a model folder")


def check_digest(found: Found) -> None:
    """ModelMismatchError unless the model JSON matches its digest (and the pointer's)."""
    want = found.doc.get("digest")
    got = digest_of(found.doc)
    if got != want:
        raise ModelMismatchError(
            f"model {found.json_path} does not match its digest (its contents hash to "
            f"{got[:16]}..., it says {str(want)[:16]}...): the file was changed or damaged "
            f"after it was saved; restore it or retrain with `animefaces sweep`")
    if found.pointer is not None and found.ref_digest != want:
        raise ModelMismatchError(
            f"model pointer {found.pointer} expects digest {str(found.ref_digest)[:16]}..., but "
            f"{found.json_path} has {str(want)[:16]}...: the model was changed or damaged "
            f"after it was saved; restore it or retrain with `animefaces sweep`")
