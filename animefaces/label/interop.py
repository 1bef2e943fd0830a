"""Labels in and out: Label Studio JSON, plain CSV, and a sweep-ready manifest.

Label Studio (image classification): every manifest row is one task whose ``data`` holds the
image URL, the manifest ``path`` (how an import finds the row again), its group and split, and
``p_face`` / ``uncertainty`` from the current model; labelled rows carry an annotation, and
with a model every task has a ``predictions`` entry whose ``score`` is the model's confidence in
its answer (``max(p, 1 - p)``), so sorting Label Studio's task list by prediction score puts the
most uncertain frames first. The labelling config to paste into the project is
:data:`LABEL_STUDIO_CONFIG` (written beside the export). An import reads Label Studio's JSON
export (``JSON``, or ``JSON_MIN``) and takes each task's latest annotation that was not
cancelled.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from .._io import atomic_write_bytes
from ..errors import AnimeFacesError
from .store import LABELS, LabelStore, now_utc

FROM_NAME, TO_NAME = "label", "image"
LOCAL_FILES = "/data/local-files/?d="
LABEL_STUDIO_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="label" toName="image" choice="single-radio" showInLine="true">
    <Choice value="face" hotkey="f"/>
    <Choice value="no_face" hotkey="n"/>
    <Choice value="unsure" hotkey="u"/>
  </Choices>
</View>
"""
CSV_COLUMNS = ("path", "label", "split", "group", "picked", "labelled_at", "p_face")
_SPLITS = ("train", "val", "test", "distinct")


# -- export --------------------------------------------------------------------------------------
def label_studio_tasks(store: LabelStore, *, scores=None, model_version: str = "animefaces",
                       url_prefix: str = LOCAL_FILES) -> list[dict]:
    """One Label Studio task per manifest row (see the module docstring).

    Args:
        scores: (n,) P(face) per row (nan where unknown), or None for no predictions.
        url_prefix: put before each path to make the image URL (default: Label Studio's local
            file storage, ``/data/local-files/?d=``, with its document root at the manifest's
            folder).
    """
    tasks = []
    for i, r in enumerate(store.rows):
        data = {"image": url_prefix + r["path"], "path": r["path"],
                "group": r.get("group", ""), "split": r.get("split", "")}
        task = {"id": i + 1, "data": data}
        p = None if scores is None or np.isnan(scores[i]) else float(scores[i])
        if p is not None:
            data.update(p_face=round(p, 4), uncertainty=round(1 - abs(2 * p - 1), 4))
            guess = "face" if p >= 0.5 else "no_face"
            conf = round(max(p, 1 - p), 4)
            task["predictions"] = [{"model_version": model_version, "score": conf,
                                    "result": [_choice(guess, score=conf)]}]
        if r["label"]:
            ann = {"result": [_choice(r["label"])]}
            if r.get("labelled_at"):
                ann["created_at"] = r["labelled_at"]
            task["annotations"] = [ann]
        tasks.append(task)
    return tasks


def _choice(label: str, *, score: float | None = None) -> dict:
    out = {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
           "value": {"choices": [label]}}
    if score is not None:
        out["score"] = score
    return out


def export_labels(store: LabelStore, out: os.PathLike | str, *, fmt: str = "auto", scores=None,
                  model_version: str = "animefaces", url_prefix: str = LOCAL_FILES) -> list[Path]:
    """Write the manifest's labels as Label Studio JSON (plus its labelling config beside it,
    ``OUT.config.xml``) or as CSV (``path,label,split,group,picked,labelled_at,p_face``).
    Returns the files written."""
    out = Path(out)
    fmt = _format(out, fmt)
    if fmt == "labelstudio":
        tasks = label_studio_tasks(store, scores=scores, model_version=model_version,
                                   url_prefix=url_prefix)
        atomic_write_bytes(out, (json.dumps(tasks, indent=1) + "\n").encode("utf-8"))
        config = out.with_name(out.stem + ".config.xml")
        atomic_write_bytes(config, LABEL_STUDIO_CONFIG.encode("utf-8"))
        return [out, config]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for i, r in enumerate(store.rows):
        p = None if scores is None or np.isnan(scores[i]) else f"{float(scores[i]):.4f}"
        w.writerow({**{c: r.get(c, "") for c in CSV_COLUMNS}, "p_face": p or ""})
    atomic_write_bytes(out, buf.getvalue().encode("utf-8"))
    return [out]


def _format(path: Path, fmt: str) -> str:
    if fmt == "auto":
        suffix = path.suffix.lower()
        if suffix not in (".json", ".csv"):
            raise AnimeFacesError(f"{path}: cannot tell the format from the name; end it in "
                                  f".json (Label Studio) or .csv, or pass --format")
        return "labelstudio" if suffix == ".json" else "csv"
    if fmt not in ("labelstudio", "csv"):
        raise AnimeFacesError(f"format {fmt!r}; choose one of: auto, labelstudio, csv")
    return fmt


# -- import --------------------------------------------------------------------------------------
def _norm_label(value) -> str | None:
    text = re.sub(r"[\s\-]+", "_", str(value).strip().lower())
    text = {"noface": "no_face", "no": "no_face", "yes": "face", "skip": "unsure"}.get(text, text)
    return text if text in LABELS else None


def _ls_label(task: dict) -> str | None:
    """The label of a Label Studio task: its latest annotation that was not cancelled (JSON
    export), or a top-level choice field (JSON_MIN export)."""
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    anns.sort(key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
    for ann in reversed(anns):
        for res in ann.get("result") or []:
            choices = (res.get("value") or {}).get("choices") or []
            if res.get("type", "choices") == "choices" and choices:
                return choices[0]
    if "annotations" not in task:
        for key in (FROM_NAME, "choice", "choices"):
            v = task.get(key)
            if isinstance(v, dict):
                v = (v.get("choices") or [None])[0]
            if isinstance(v, list):
                v = v[0] if v else None
            if v:
                return v
    return None


def _ls_path(task: dict) -> str | None:
    data = task.get("data") if isinstance(task.get("data"), dict) else task
    if data.get("path"):
        return str(data["path"])
    url = str(data.get(TO_NAME) or "")
    if not url:
        return None
    q = parse_qs(urlparse(url).query).get("d")
    return unquote(q[0]) if q else unquote(urlparse(url).path)


def read_labels(path: os.PathLike | str, *, fmt: str = "auto") -> list[tuple[str, str]]:
    """``[(manifest path or image name, label)]`` from a Label Studio JSON export or a CSV with
    ``path`` and ``label`` columns; rows without a label are left out."""
    path = Path(path)
    fmt = _format(path, fmt)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnimeFacesError(f"cannot read {path}: {exc}") from None
    out = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not {"path", "label"} <= set(reader.fieldnames or []):
            raise AnimeFacesError(f"{path}: a label CSV needs columns path,label (found "
                                  f"{', '.join(reader.fieldnames or []) or 'no header'})")
        return [(r["path"].strip(), r["label"]) for r in reader if (r.get("label") or "").strip()]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnimeFacesError(f"{path}: not JSON ({exc}); expected Label Studio's JSON export") from None
    tasks = doc.get("tasks", doc) if isinstance(doc, dict) else doc
    if not isinstance(tasks, list):
        raise AnimeFacesError(f"{path}: expected a list of Label Studio tasks")
    for t in tasks:
        if isinstance(t, dict):
            label, where = _ls_label(t), _ls_path(t)
            if label and where:
                out.append((where, label))
    return out


def _match(store: LabelStore, name: str) -> int | None:
    by_path = {os.path.normpath(r["path"]): i for i, r in enumerate(store.rows)}
    i = by_path.get(os.path.normpath(name.lstrip("/")))
    if i is not None:
        return i
    # Label Studio's uploads rename files to "<8 hex>-<name>"; its storages keep longer paths.
    base = re.sub(r"^[0-9a-f]{8}-", "", Path(name).name)
    hits = [i for i, r in enumerate(store.rows) if Path(r["path"]).name == base]
    return hits[0] if len(hits) == 1 else None


def import_labels(store: LabelStore, source: os.PathLike | str, *, fmt: str = "auto",
                  keep_existing: bool = False) -> dict:
    """Merge labels from a Label Studio export or CSV into the manifest (one atomic write).

    Args:
        keep_existing: leave rows that already have a different label as they are (default:
            the imported label wins, and the report lists what it replaced).

    Returns:
        ``{"read", "matched", "new", "changed": [(path, old, new)], "kept", "same",
        "unmatched": [names], "bad_labels": [(name, label)]}``.
    """
    pairs = read_labels(source, fmt=fmt)
    changes: dict[int, dict] = {}
    rep = {"read": len(pairs), "matched": 0, "new": 0, "changed": [], "kept": 0, "same": 0,
           "unmatched": [], "bad_labels": []}
    when = now_utc()
    for name, raw in pairs:
        label = _norm_label(raw)
        if label is None:
            rep["bad_labels"].append((name, raw))
            continue
        i = _match(store, name)
        if i is None:
            rep["unmatched"].append(name)
            continue
        rep["matched"] += 1
        old = store.rows[i]["label"]
        if old == label:
            rep["same"] += 1
            continue
        if old and keep_existing:
            rep["kept"] += 1
            continue
        if old:
            rep["changed"].append((store.rows[i]["path"], old, label))
        else:
            rep["new"] += 1
        changes[i] = {"label": label, "picked": "import", "labelled_at": when}
    if changes:
        store.update(changes)
    return rep


# -- to the sweep --------------------------------------------------------------------------------
def assign_splits(rows: list[dict], *, seed: int = 0) -> tuple[list[str], str]:
    """A train / val / test split for labelled rows (face / no_face), and how it was made.

    Rows keep their own split when every row has one of train, val, test, distinct and each of
    train / val / test holds both classes. Otherwise whole groups (series, episodes) go to val
    and test, about 20% of the rows each, so the sweep's val and test accuracies are measured on
    groups it did not train on; with fewer than 3 groups, or no draw of groups that gives every
    split both classes, a seeded stratified 60/20/20 split of the rows is made instead.
    """
    labels = [r["label"] for r in rows]
    own = [r.get("split", "") for r in rows]
    if all(s in _SPLITS for s in own) and all(
            {"face", "no_face"} <= {lb for lb, s in zip(labels, own) if s == want}
            for want in ("train", "val", "test")):
        return own, "the manifest's own splits"
    groups = [r.get("group") or "" for r in rows]
    names = sorted(set(groups))
    if len(names) >= 3:
        for attempt in range(200):
            order = names[:]
            random.Random(f"{seed}:{attempt}").shuffle(order)
            split_of, filled = {}, Counter()
            for g in order:
                n_g = groups.count(g)
                target = next((s for s in ("test", "val") if filled[s] + n_g / 2 <= 0.2 * len(rows)
                               and filled[s] < 0.2 * len(rows)), "train")
                split_of[g] = target
                filled[target] += n_g
            out = [split_of[g] for g in groups]
            if all({"face", "no_face"} <= {lb for lb, s in zip(labels, out) if s == want}
                   for want in ("train", "val", "test")):
                return out, f"by group: whole groups in val and test (seed {seed})"
    out = [""] * len(rows)
    for cls in ("face", "no_face"):
        idx = [i for i, lb in enumerate(labels) if lb == cls]
        random.Random(f"{seed}:{cls}").shuffle(idx)
        n_tr, n_va = round(len(idx) * 0.6), round(len(idx) * 0.2)
        for k, i in enumerate(idx):
            out[i] = "train" if k < n_tr else "val" if k < n_tr + n_va else "test"
    return out, (f"stratified 60/20/20 by row (seed {seed}): "
                 f"{'fewer than 3 groups' if len(names) < 3 else 'no split by group gave every split both classes'}")


def write_sweep_manifest(store: LabelStore, out: os.PathLike | str | None = None, *,
                         seed: int = 0) -> tuple[Path, str, int]:
    """Write the face / no_face rows with a split (see :func:`assign_splits`) to a manifest
    beside the labelling one (``<stem>.labelled.csv`` by default), for ``animefaces sweep``.

    Returns:
        (path, how the splits were made, number of rows).

    Raises:
        AnimeFacesError: fewer than 3 labelled frames of a class, or ``out`` outside the
            manifest's folder (its paths are relative to that folder).
    """
    rows = [dict(r) for r in store.rows if r["label"] in ("face", "no_face")]
    have = Counter(r["label"] for r in rows)
    if min(have["face"], have["no_face"]) < 3:
        raise AnimeFacesError(f"{store.path}: {have['face']} face and {have['no_face']} no_face "
                              f"labels; a sweep needs at least 3 of each (train, val and test "
                              f"each need both classes): label some more first")
    splits, how = assign_splits(rows, seed=seed)
    for r, s in zip(rows, splits):
        r["split"] = s
    out = Path(out) if out else store.root / f"{store.path.stem}.labelled.csv"
    if out.resolve().parent != store.root.resolve():
        raise AnimeFacesError(f"{out}: write the sweep manifest into the manifest's folder "
                              f"{store.root} (its paths are relative to it)")
    columns = list(store.columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out, buf.getvalue().encode("utf-8"))
    return out, how, len(rows)
