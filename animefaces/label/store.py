"""The manifest being labelled: read it, write every label at once, refuse a second writer.

Every change is the whole CSV written to a temporary file in the manifest's folder, fsynced and
renamed over the old one (``_io.atomic_write_bytes``), so a crash, ``kill -9`` or a full disk
leaves the old file or the new one, never a mix, and a label is on disk before the page hears
"saved". Two guards keep two writers from overwriting each other:

* a **session lock**: the labelling server (and ``label-import``) holds an exclusive ``flock`` on
  ``.<manifest>.label-lock`` beside the CSV for as long as it runs; a second one is refused with
  the first one's pid and address. The kernel drops the lock when the process dies, so a killed
  server never blocks the next start.
* a **version stamp**: the sha256 of the file's bytes as this process last read or wrote them.
  Before each write the file is read again; if its stamp differs (an editor, ``animefaces frames``
  or any other program wrote it), the write is refused and nothing changes. A page sends the
  stamp it last saw with each label, so two tabs on one server cannot overwrite each other either.

Label values are ``face``, ``no_face``, ``unsure`` (seen, not decidable: skipped by training and
export) or empty (not labelled yet). Two columns are added when missing: ``picked`` (why the frame
was shown: ``uncertain``, ``disagreement``, ``random``, ``browse``, ``import``...) and
``labelled_at`` (UTC, ISO 8601). Other columns are kept as they are.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from .._io import atomic_write_bytes, write_failed
from ..errors import AnimeFacesError

LABELS = ("face", "no_face", "unsure")
BASE_COLUMNS = ("path", "label", "split", "group")
EXTRA_COLUMNS = ("picked", "labelled_at")
_CLASS_FOLDERS = ("face", "no_face")
_SPLIT_FOLDERS = ("train", "val", "test", "distinct")


class ManifestChanged(AnimeFacesError):
    """The manifest on disk is not the one this writer last saw: the write was refused."""


class ManifestBusy(AnimeFacesError):
    """Another labelling process holds the manifest's session lock."""


def stamp_of(data: bytes) -> str:
    """The version stamp of a manifest's bytes (first 16 hex digits of their sha256)."""
    return hashlib.sha256(data).hexdigest()[:16]


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_manifest(data: os.PathLike | str, *, create: bool = True) -> Path:
    """The manifest CSV for ``data``: the CSV itself, ``DATA/manifest.csv`` when there is one
    (a folder written by ``animefaces frames``), or, for any other image folder, a new
    ``DATA/manifest.csv`` listing its images (labels and splits taken from ``face/``,
    ``no_face/``, ``train/``... folder names where the images lie in such folders; ``group``:
    the first other folder of the path, e.g. the episode).

    Raises:
        AnimeFacesError: no such path, or a folder without images.
    """
    from ..data.images import is_image_name

    p = Path(data).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise AnimeFacesError(f"{p}: no such file or folder; give a manifest CSV, a folder written "
                              f"by `animefaces frames`, or a folder of images")
    csv_path = p / "manifest.csv"
    if csv_path.is_file() or not create:
        return csv_path
    images = []
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images += [Path(dirpath) / f for f in sorted(filenames)
                   if not f.startswith(".") and is_image_name(Path(f))]
    if not images:
        raise AnimeFacesError(f"{p}: no manifest.csv and no image files (.jpg, .png, .webp, ...) "
                              f"in this folder or below it")
    rows = []
    for img in images:
        rel = img.relative_to(p)
        folders = rel.parts[:-1]
        label = next((f for f in folders if f in _CLASS_FOLDERS), "")
        split = next((f for f in folders if f in _SPLIT_FOLDERS), "")
        group = next((f for f in folders if f not in _CLASS_FOLDERS + _SPLIT_FOLDERS), "")
        rows.append({"path": rel.as_posix(), "label": label, "split": split, "group": group,
                     "picked": "folder" if label else "", "labelled_at": ""})
    try:
        atomic_write_bytes(csv_path, _to_csv(list(BASE_COLUMNS + EXTRA_COLUMNS), rows))
    except OSError as exc:
        raise write_failed(exc, what="a new manifest", folder=p,
                           saved="no file was changed") from exc
    return csv_path


def _to_csv(columns: list[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) or "" for c in columns})
    return buf.getvalue().encode("utf-8")


def _parse(data: bytes, where: Path) -> tuple[list[str], list[dict]]:
    try:
        text = data.decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = list(reader.fieldnames or [])
        rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
    except UnicodeDecodeError:
        raise AnimeFacesError(f"{where}: not a UTF-8 text CSV; expected a manifest with columns "
                              f"path,label[,split,group]") from None
    except csv.Error as exc:
        raise AnimeFacesError(f"{where}: malformed CSV ({exc})") from None
    if "path" not in columns:
        raise AnimeFacesError(f"{where}: no 'path' column (found {', '.join(columns) or 'no header'}); "
                              f"expected a manifest with columns path,label[,split,group]")
    return columns, rows


def _outside(rel: str) -> bool:
    if os.path.isabs(rel):
        return True
    norm = os.path.normpath(rel)
    return norm == ".." or norm.startswith(".." + os.sep)


class LabelStore:
    """One manifest CSV held in memory, written back whole on every change.

    Args:
        csv_path: the manifest.
        allow_outside: accept paths outside the manifest's folder (refused by default, as by
            :func:`~animefaces.data.datasets.load_dataset`).

    Raises:
        AnimeFacesError: unreadable or malformed CSV, bad labels, duplicate or outside paths.
    """

    def __init__(self, csv_path: os.PathLike | str, *, allow_outside: bool = False):
        self.path = Path(csv_path)
        self.root = self.path.parent
        self._lock_fd: int | None = None
        self._read(allow_outside=allow_outside)

    # -- reading -----------------------------------------------------------------------------
    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise AnimeFacesError(f"cannot read the manifest {self.path}: {exc.strerror}") from None

    def _read(self, *, allow_outside: bool = False) -> None:
        data = self._read_bytes()
        columns, rows = _parse(data, self.path)
        if not rows:
            raise AnimeFacesError(f"{self.path}: the manifest has a header but no rows")
        bad, outside, seen, dups = [], [], {}, []
        for n, r in enumerate(rows, start=2):
            r["label"] = r.get("label", "").strip()
            if r["label"] not in LABELS + ("",):
                bad.append(f"line {n}: {r['label']!r}")
            rel = r["path"].strip()
            if not rel:
                bad.append(f"line {n}: empty path")
            if _outside(rel):
                outside.append(f"line {n}: {rel}")
            key = os.path.normpath(rel)
            if key in seen:
                dups.append(f"line {n} repeats line {seen[key]}")
            seen.setdefault(key, n)
        if bad:
            raise AnimeFacesError(f"{self.path}: {len(bad)} bad row(s): {'; '.join(bad[:5])}; "
                                  f"labels are {', '.join(LABELS)} or empty (not labelled yet)")
        if dups:
            raise AnimeFacesError(f"{self.path}: duplicate path(s): {'; '.join(dups[:5])}")
        if outside and not allow_outside:
            raise AnimeFacesError(f"{self.path}: {len(outside)} path(s) outside the manifest's "
                                  f"folder: {'; '.join(outside[:5])}; pass --allow-outside-paths "
                                  f"if you trust this manifest")
        for c in ("label",) + tuple(c for c in BASE_COLUMNS + EXTRA_COLUMNS if c != "path"):
            if c not in columns:
                columns.append(c)
        for r in rows:
            for c in columns:
                r.setdefault(c, "")
        self.columns = columns
        self.rows = rows
        self.version = stamp_of(data)

    def image_path(self, i: int) -> Path:
        return self.root / self.rows[i]["path"]

    def labels(self) -> list[str]:
        return [r["label"] for r in self.rows]

    def changed_on_disk(self) -> bool:
        """True when the file no longer has the bytes this store last read or wrote."""
        return stamp_of(self._read_bytes()) != self.version

    # -- writing -----------------------------------------------------------------------------
    def update(self, changes: dict[int, dict], *, expect: str | None = None) -> dict[int, dict]:
        """Apply ``{row index: {column: value}}`` and write the manifest atomically.

        Args:
            changes: new values per row (``label``, ``picked``, ``labelled_at``...).
            expect: the version stamp the caller (a page) last saw; refused when it is not the
                current one.

        Returns:
            the old values of the changed columns, per row (to undo with).

        Raises:
            ManifestChanged: ``expect`` is stale, or the file on disk changed since it was read;
                nothing was written.
            AnimeFacesError: a bad label or row, or the file system refused the write.
        """
        if expect is not None and expect != self.version:
            raise ManifestChanged(
                f"{self.path} was changed by another page since this one loaded it (version "
                f"{expect}, now {self.version}); nothing was written: reload the page to go on "
                f"from what is on disk")
        if self.changed_on_disk():
            raise ManifestChanged(
                f"{self.path} was changed on disk by another program since it was opened "
                f"(an editor, `animefaces frames`, another labeller); nothing was written, to "
                f"keep its changes: restart `animefaces label` (or reload the page after it "
                f"restarts) to go on from what is on disk")
        for i, cols in changes.items():
            if not 0 <= i < len(self.rows):
                raise AnimeFacesError(f"no row {i} in {self.path} ({len(self.rows)} rows)")
            label = cols.get("label", self.rows[i]["label"])
            if label not in LABELS + ("",):
                raise AnimeFacesError(f"label {label!r}; choose one of: {', '.join(LABELS)} "
                                      f"(or empty to clear it)")
        old = {i: {c: self.rows[i].get(c, "") for c in cols} for i, cols in changes.items()}
        rows = [dict(r) for r in self.rows]
        for i, cols in changes.items():
            rows[i].update({c: "" if v is None else str(v) for c, v in cols.items()})
        data = _to_csv(self.columns, rows)
        try:
            atomic_write_bytes(self.path, data)
        except OSError as exc:
            raise write_failed(exc, what="the manifest", folder=self.root,
                               saved="the manifest on disk is unchanged (every earlier label "
                                     "is in it)") from exc
        self.rows = rows
        self.version = stamp_of(data)
        return old

    def set_label(self, i: int, label: str, *, picked: str = "", expect: str | None = None) -> dict:
        """Label row ``i`` (``face``, ``no_face``, ``unsure``, or ``""`` to clear it) and write
        it. Returns the row's old ``label``, ``picked`` and ``labelled_at``."""
        when = now_utc() if label else ""
        return self.update({i: {"label": label, "picked": picked if label else "",
                                "labelled_at": when}}, expect=expect)[i]

    # -- the session lock --------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / f".{self.path.name}.label-lock"

    def acquire(self, *, owner: str) -> None:
        """Take the session lock (non-blocking) and write ``owner`` (pid, address) into it.

        Raises:
            ManifestBusy: another process (or another store in this one) holds it.
            AnimeFacesError: the lock file cannot be created (a read-only folder).
        """
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_failed(exc, what="the label lock file", folder=self.root,
                               saved="no file was changed") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise ManifestBusy(f"{self.path} is already open for labelling ({holder}); use that "
                               f"page, or stop it (Ctrl-C) and run this again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {owner}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
            except OSError:
                pass
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # -- progress ----------------------------------------------------------------------------
    def progress(self) -> dict:
        """Labelled / total overall, per split and per group (``""`` shown as ``(none)``)."""
        def tally(key):
            out: dict[str, Counter] = {}
            for r in self.rows:
                c = out.setdefault(r.get(key) or "(none)", Counter())
                c["total"] += 1
                c[r["label"] or "unlabelled"] += 1
            return {k: _counts(c) for k, c in sorted(out.items())}

        total = Counter(r["label"] or "unlabelled" for r in self.rows)
        total["total"] = len(self.rows)
        return {"all": _counts(total), "split": tally("split"), "group": tally("group")}


def _counts(c: Counter) -> dict:
    face, no_face, unsure = c["face"], c["no_face"], c["unsure"]
    return {"total": c["total"], "labelled": face + no_face + unsure, "face": face,
            "no_face": no_face, "unsure": unsure}
