"""Read a labelled image collection into records, and validate it.

Two layouts are accepted:

* a manifest CSV with columns ``path,label,split[,group]`` (extra columns are kept and ignored);
  paths are relative to the CSV's folder and stay inside it (absolute paths and ``../`` that
  leave it are refused unless ``allow_outside=True``: a manifest from elsewhere must not make
  the tool open and hash any file it names);
* a folder tree: ``ROOT/face/``, ``ROOT/no_face/``, optionally under ``ROOT/{train,val,test,distinct}/``;
  an image's group is its sub-folder under the class folder (``face/SERIES/x.jpg``), else the
  source video of a frame or crop written by ``animefaces frames`` / ``crops``
  (``VIDEO-sec-12.jpg``), else none.

Splits other than ``train``, ``val``, ``test`` and ``distinct`` in a manifest (e.g. the shared
``anime-episodes`` set's ``episodes``) are evaluation-only: measured and reported like
``distinct``, never trained or chosen on (a note says so, which also shows a typo).

Problems (missing files, unknown labels or splits, duplicate paths, empty splits, a split that
lacks a class) raise :class:`DatasetError` naming the rows or folders and the fix.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError

FACE_LABELS = ("face", "no_face")
SPLITS = ("train", "val", "test", "distinct")
# Any other split name is an evaluation-only split (measured like distinct); it must be a plain
# name, since it becomes a column, a JSON key and part of file names in the reports.
_EXTRA_SPLIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Frames and crops written by `animefaces frames` / `crops`: VIDEO-sec-12.jpg, VIDEO-key-3-0.png
_FRAME_NAME = re.compile(r"(.+)-(?:sec|key)-\d+(?:-\d+)?")
_MAX_LISTED = 5


@dataclass(frozen=True)
class Record:
    """One labelled image. ``split`` and ``group`` may be None."""

    path: Path
    label: str | None
    split: str | None = None
    group: str | None = None


@dataclass
class Dataset:
    """A validated list of records plus where they came from."""

    records: list[Record]
    source: str
    layout: str  # "manifest" | "folders" | "files"
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        """The splits present: train, val, test, distinct in that order, then evaluation-only
        ones (sorted)."""
        present = {r.split for r in self.records}
        return [s for s in SPLITS if s in present] + sorted(
            s for s in present if s is not None and s not in SPLITS)

    @property
    def extra_splits(self) -> list[str]:
        """Evaluation-only splits (names other than train / val / test / distinct)."""
        return [s for s in self.splits if s not in SPLITS]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: count}} in stable order."""
        out: dict[str, dict[str, int]] = {}
        for s in self.splits:
            c = Counter(r.label for r in self.split(s))
            out[s] = {k: c[k] for k in sorted(c)}
        return out


def _listed(items) -> str:
    items = list(items)
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return "; ".join(str(i) for i in items[:_MAX_LISTED]) + more


def load_dataset(data: os.PathLike | str, *, labels: tuple[str, ...] | None = FACE_LABELS,
                 require_splits: bool = False, seed: int = 0, allow_outside: bool = False) -> Dataset:
    """Read and validate a manifest CSV or folder tree.

    Args:
        data: a ``.csv`` manifest, or a folder (containing ``manifest.csv``, or class folders).
        labels: allowed labels, or None to accept any (e.g. character names).
        require_splits: when the data has no splits, make a deterministic stratified
            60/20/20 train/val/test split (seeded) instead of leaving ``split`` empty.
        seed: seed for that split.
        allow_outside: accept manifest paths that leave the manifest's folder (absolute, or
            ``../`` above it); they are refused by default, and noted in the report when allowed.

    Raises:
        DatasetError: with the offending rows / folders named.
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise DatasetError(f"--data {data}: no such file or folder; give a manifest CSV "
                           f"(path,label,split[,group]) or a folder with face/ and no_face/")
    if data.is_dir() and (data / "manifest.csv").is_file():
        data = data / "manifest.csv"
    if data.is_file():
        ds = _read_manifest(data, labels, allow_outside=allow_outside)
    else:
        ds = _read_folders(data, labels)
    _validate(ds, labels)
    if require_splits and not ds.splits:
        ds = _auto_split(ds, seed=seed)
    elif require_splits and any(r.split is None for r in ds.records):
        raise DatasetError(f"{ds.source}: some rows have a split and some have none; give every "
                           f"row one of {', '.join(SPLITS)}")
    return ds


# Names that mean one of SPLITS: refused rather than taken as an evaluation-only split, which
# would silently keep their images out of training.
_ALIASES = {"training": "train", "trn": "train", "validation": "val", "valid": "val",
            "dev": "val", "testing": "test", "tst": "test"}


def _meant_split(name: str) -> str | None:
    """The split of :data:`SPLITS` that ``name`` looks like a variant or typo of, or None."""
    import difflib

    low = name.lower()
    if low in SPLITS:
        return low
    if low in _ALIASES:
        return _ALIASES[low]
    close = difflib.get_close_matches(low, SPLITS, n=1, cutoff=0.75)
    return close[0] if close else None


def _outside(root: Path, rel: str) -> bool:
    """True when manifest path ``rel`` names a file outside ``root`` (judged on the text, as
    written: a symlinked images/ folder inside the data folder is the user's own choice)."""
    if os.path.isabs(rel):
        return True
    norm = os.path.normpath(rel)
    return norm == ".." or norm.startswith(".." + os.sep)


def _read_manifest(csv_path: Path, labels, *, allow_outside: bool = False) -> Dataset:
    root = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except UnicodeDecodeError:
        raise DatasetError(f"{csv_path}: not a UTF-8 text CSV; expected a manifest with columns "
                           f"path,label,split[,group]") from None
    except csv.Error as exc:
        raise DatasetError(f"{csv_path}: malformed CSV ({exc})") from None
    missing_cols = [c for c in ("path", "label") if c not in columns]
    if missing_cols:
        raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing_cols)}; found "
                           f"{', '.join(columns) or 'no header'}; expected path,label,split[,group]")
    if not rows:
        raise DatasetError(f"{csv_path}: the manifest has a header but no rows")
    records = []
    bad_split = []
    outside = []
    for lineno, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        if not rel:
            raise DatasetError(f"{csv_path}:{lineno}: empty path")
        if _outside(root, rel):
            outside.append(f"line {lineno}: {rel}")
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            meant = _meant_split(split)
            if meant or not _EXTRA_SPLIT.fullmatch(split):
                bad_split.append(f"line {lineno}: {split!r}"
                                 + (f" (did you mean {meant!r}?)" if meant else ""))
        group = (row.get("group") or "").strip() or None
        label = (row.get("label") or "").strip() or None
        records.append((lineno, Record(path=(root / rel), label=label, split=split, group=group)))
    if bad_split:
        raise DatasetError(f"{csv_path}: unknown split(s) {_listed(bad_split)}; use one of "
                           f"{', '.join(SPLITS)}, an evaluation-only name of letters, digits, "
                           f"'_', '-', '.' (e.g. episodes), or leave it empty")
    if outside and not allow_outside:
        raise DatasetError(f"{csv_path}: {len(outside)} path(s) outside the manifest's folder "
                           f"{root}: {_listed(outside)}; paths are relative to the CSV's folder "
                           f"and must stay inside it: move the images under it, or pass "
                           f"--allow-outside-paths (allow_outside=True) if you trust this manifest")
    _check_rows(csv_path, records, labels)
    notes = ([f"{len(outside)} manifest path(s) outside the manifest's folder, allowed "
              f"(--allow-outside-paths): {_listed(outside)}"] if outside else [])
    extra = sorted({r.split for _, r in records if r.split and r.split not in SPLITS})
    if extra:
        notes.append(f"evaluation-only split(s) {', '.join(extra)} (not one of "
                     f"{', '.join(SPLITS)}): measured and reported like distinct, never "
                     f"trained or chosen on")
    return Dataset(records=[r for _, r in records], source=str(csv_path), layout="manifest",
                   notes=notes)


def _check_rows(csv_path: Path, records, labels) -> None:
    if labels is not None:
        bad = [f"line {n}: {r.label!r}" for n, r in records if r.label not in labels]
        if bad:
            raise DatasetError(f"{csv_path}: unknown label(s) {_listed(bad)}; "
                               f"use one of {', '.join(labels)}")
    else:
        empty = [f"line {n}" for n, r in records if not r.label]
        if empty:
            raise DatasetError(f"{csv_path}: empty label at {_listed(empty)}")
    seen: dict[Path, int] = {}
    dups = []
    for n, r in records:
        key = Path(os.path.normpath(r.path))
        if key in seen:
            dups.append(f"line {n} repeats line {seen[key]} ({r.path.name})")
        else:
            seen[key] = n
    if dups:
        raise DatasetError(f"{csv_path}: duplicate path(s): {_listed(dups)}; each image may "
                           f"appear once")
    missing = [f"line {n}: {r.path}" for n, r in records if not r.path.is_file()]
    if missing:
        raise DatasetError(f"{csv_path}: {len(missing)} file(s) not found: {_listed(missing)}; "
                           f"paths are relative to the CSV's folder")


def _files_in(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _read_folders(root: Path, labels) -> Dataset:
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if d in SPLITS]
    records: list[Record] = []
    if split_dirs:
        stray = [d for d in subdirs if d not in SPLITS]
        if stray:
            raise DatasetError(f"{root}: folder(s) {', '.join(stray)} next to split folders "
                               f"{', '.join(split_dirs)}; use only {', '.join(SPLITS)} here")
        for split in split_dirs:
            recs = _class_folders(root / split, labels, split)
            if not recs:
                raise DatasetError(f"{root / split}: empty split: no images in its class folders "
                                   f"({', '.join(labels or ('CLASS',))}/)")
            records.extend(recs)
    else:
        records = _class_folders(root, labels, None)
    if not records:
        raise DatasetError(f"{root}: no images found; expected {'/, '.join(labels or ('CLASS',))}/ "
                           f"folders (optionally under train/ val/ test/ distinct/) or a manifest.csv")
    return Dataset(records=records, source=str(root), layout="folders")


def _class_folders(folder: Path, labels, split) -> list[Record]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if labels is not None:
        unknown = [c for c in classes if c not in labels]
        if unknown:
            raise DatasetError(f"{folder}: unknown class folder(s) {', '.join(unknown)}; expected "
                               f"{', '.join(labels)}")
    loose = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose and classes:
        raise DatasetError(f"{folder}: file(s) {_listed(loose)} outside the class folders; move "
                           f"them into {'/ or '.join(classes)}/")
    out = []
    for c in classes:
        out.extend(Record(path=p, label=c, split=split, group=_folder_group(folder / c, p))
                   for p in _files_in(folder / c))
    return out


def _folder_group(class_dir: Path, path: Path) -> str | None:
    """The group of an image in a folder tree: its first sub-folder under the class folder
    (``face/SERIES/x.jpg`` -> ``SERIES``), else the source video of a frame or crop written by
    ``animefaces frames`` / ``crops`` (``VIDEO-sec-12.jpg`` -> ``VIDEO``), else None."""
    rel = path.relative_to(class_dir)
    if len(rel.parts) > 1:
        return rel.parts[0]
    m = _FRAME_NAME.fullmatch(path.stem)
    return m.group(1) if m else None


def _validate(ds: Dataset, labels) -> None:
    splits = {r.split for r in ds.records}
    for s in sorted(x for x in splits if x):
        present = {r.label for r in ds.records if r.split == s}
        if labels is not None:
            lacking = [lab for lab in labels if lab not in present]
        else:
            lacking = ["a second class"] if len(present) < 2 else []
        if lacking:
            raise DatasetError(f"{ds.source}: split {s!r} has no {' or '.join(lacking)} images; "
                               f"every split needs both classes to be measured")


def without_bad(ds: Dataset, kept: list[Record], bad, *,
                labels: tuple[str, ...] | None = FACE_LABELS) -> Dataset:
    """``ds`` with only the ``kept`` records, validated again as the manifest was.

    Leaving unreadable images out (``--skip-bad``) can empty a class of a split, or a whole
    split, and the sweep would then measure and choose models on what is left (a val split of
    faces only scores 1.000 for a model that answers "face" to everything).

    Args:
        ds: the dataset as read.
        kept: its records that could be read, in record order.
        bad: ``[(path, reason)]`` of the images left out.
        labels: as for :func:`load_dataset`.

    Raises:
        DatasetError: a split lost all its images, or every image of a class, with the files
            left out from it named.
    """
    bad = list(bad)
    out = Dataset(records=list(kept), source=ds.source, layout=ds.layout, notes=list(ds.notes))
    if not bad:
        return out
    split_of = {r.path: r.split for r in ds.records}

    def left_out(split) -> str:
        mine = [f"{p}: {why}" for p, why in bad if split_of.get(Path(p)) == split]
        return (f"; that is after leaving out {len(bad)} unreadable image(s) (--skip-bad), "
                f"{len(mine)} of them from {split!r}: {_listed(mine)}; fix or replace those files")

    for s in ds.splits:
        if s not in out.splits:
            raise DatasetError(f"{ds.source}: empty split {s!r}: no images left{left_out(s)}")
    try:
        _validate(out, labels)
    except DatasetError as exc:
        split = next((s for s in ds.splits if f"split {s!r}" in str(exc)), None)
        raise DatasetError(f"{exc}{left_out(split)}") from None
    return out


def _auto_split(ds: Dataset, *, seed: int) -> Dataset:
    by_label: dict[str, list[Record]] = {}
    for r in ds.records:
        by_label.setdefault(r.label, []).append(r)
    out = []
    for label in sorted(by_label):
        recs = sorted(by_label[label], key=lambda r: str(r.path))
        random.Random(f"{seed}:{label}").shuffle(recs)
        n = len(recs)
        n_train, n_val = round(n * 0.6), round(n * 0.2)
        for i, r in enumerate(recs):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            out.append(Record(path=r.path, label=r.label, split=split, group=r.group))
    out.sort(key=lambda r: str(r.path))
    ds2 = Dataset(records=out, source=ds.source, layout=ds.layout,
                  notes=ds.notes + [f"no splits in the data: made a stratified 60/20/20 "
                                    f"train/val/test split with seed {seed}"])
    _validate(ds2, None if len(by_label) != 2 else tuple(sorted(by_label)))
    return ds2


def records_from_paths(inputs, *, recursive: bool = True,
                       problems: dict[Path, str] | None = None) -> list[Path]:
    """Expand files and folders (recursively, sorted, images only) into a list of image paths.

    Args:
        inputs: files and folders, in the order given.
        recursive: look into sub-folders.
        problems: when given, an input that is missing, or a folder without images, does not
            stop the expansion: it stays in the list, in its place, and ``problems[path]`` says
            what is wrong with it (so a caller can answer it with an error row).

    Raises:
        DatasetError: a path does not exist, or a folder has no images (without ``problems``).
    """
    from .images import is_image_name

    def problem(p: Path, reason: str) -> None:
        if problems is None:
            raise DatasetError(f"{p}: {reason}")
        problems[p] = reason
        paths.append(p)

    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            try:
                found = [f for f in _files_in(p) if is_image_name(f)] if recursive else \
                    sorted(f for f in p.iterdir() if f.is_file() and is_image_name(f))
            except OSError as exc:
                problem(p, f"cannot list this folder ({exc.strerror})")
                continue
            if not found:
                what = ("it is a folder, not an image file, and it holds no image files"
                        if is_image_name(p) else "no image files (.jpg, .png, .webp, ...) in this folder")
                problem(p, what)
                continue
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            problem(p, "no such file or folder")
    return paths


def with_extra_training(ds: Dataset, extra: list[Dataset]) -> tuple[Dataset, dict[str, list[Path]]]:
    """``ds`` with every image of the ``extra`` data sets added to its train split (their own
    splits ignored), for training on more series than one data set has.

    Images of a group that ``ds`` evaluates on (its distinct and evaluation-only splits: anime
    never seen in training) are left out, so those splits stay unseen; a note names how many.
    Groups shared with ``ds``'s own train / val / test are the same series, and join them.

    Returns:
        (the merged data set, {extra source: paths added from it}).

    Raises:
        DatasetError: an extra image is already in ``ds``, or an extra data set has no labels.
    """
    unseen = {r.group for r in ds.records
              if r.group and (r.split == "distinct" or r.split not in SPLITS)}
    have = {Path(os.path.normpath(r.path)) for r in ds.records}
    records = list(ds.records)
    notes = list(ds.notes)
    added: dict[str, list[Path]] = {}
    for e in extra:
        dup = [str(r.path) for r in e.records if Path(os.path.normpath(r.path)) in have]
        if dup:
            raise DatasetError(f"{e.source}: {len(dup)} image(s) already in {ds.source}: "
                               f"{_listed(dup)}; give each data set once")
        keep = [r for r in e.records if not (r.group and r.group in unseen)]
        left = len(e.records) - len(keep)
        records += [Record(path=r.path, label=r.label, split="train", group=r.group) for r in keep]
        added[e.source] = [r.path for r in keep]
        have |= {Path(os.path.normpath(r.path)) for r in keep}
        notes.append(f"{len(keep)} image(s) of {e.source} added to train (its splits ignored)"
                     + (f"; {left} left out: their group is in a split measured as unseen "
                        f"(distinct or evaluation-only)" if left else ""))
    out = Dataset(records=records, source=ds.source, layout=ds.layout, notes=notes)
    _validate(out, FACE_LABELS)
    return out, added
