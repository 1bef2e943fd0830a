"""The on-disk feature store.

One folder per feature fingerprint (backbone, weights sha256, layer, pooling, preprocessing,
precision, package version), holding ``meta.json`` and shards ``shard-*.npz``. Each shard holds
``keys`` (sha256 of each image file's bytes, so a renamed image still hits and an edited one
misses) and ``features`` ((n, d) float32), as written by ``np.savez`` (uncompressed zip of two
``.npy`` members). Shards are written to a temporary file and moved into place with
``os.replace``: an interrupted run (Ctrl-C, kill -9) leaves only whole shards, and the next run
computes only what they lack.

Memory: a cache on disk keeps only its index (key -> shard, row) in memory. Opening it reads each
shard's keys and checks its features (header, size, CRC) 256 KiB at a time without keeping them;
:meth:`FeatureCache.get` fills a preallocated result, reading one shard at a time;
:meth:`FeatureCache.flush` streams the queued rows into the new shard and forgets them;
:meth:`FeatureCache.compact` copies shard by shard. So the peak is the result plus about one shard,
however many shards there are. An in-memory cache (``root=None``) keeps its rows in memory: there
is nowhere else for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import _atomic_write_with, _umask, atomic_write_json
from ..errors import AnimeFacesError

SHARD_GLOB = "shard-*.npz"
_FEATURE_DTYPE = np.dtype("<f4")
_KEY_DTYPE = np.dtype("S64")


# -- shard files ---------------------------------------------------------------------------------
def _write_shard(path: Path, keys: np.ndarray, d: int, chunks) -> int:
    """Write a shard atomically: ``keys`` (n,) S64 and the rows of ``chunks`` (an iterable of
    (m, d) float32 arrays, n rows in all) as ``features``, streamed into the zip one chunk at a
    time. The file is what ``np.savez(path, keys=keys, features=np.concatenate(chunks))`` writes,
    without ever holding that concatenation. Returns the byte offset of the rows in the file."""
    n = len(keys)
    offset = None

    def write(f):
        nonlocal offset
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("keys.npy", "w", force_zip64=True) as fid:
                np.lib.format.write_array(fid, keys, allow_pickle=False)
            with zf.open("features.npy", "w", force_zip64=True) as fid:
                np.lib.format.write_array_header_1_0(
                    fid, {"descr": np.lib.format.dtype_to_descr(_FEATURE_DTYPE),
                          "fortran_order": False, "shape": (n, d)})
                offset = f.tell()  # stored, not compressed: the rows go straight to f
                written = 0
                for c in chunks:
                    c = np.ascontiguousarray(c, dtype=_FEATURE_DTYPE)
                    if c.ndim != 2 or c.shape[1] != d:
                        raise ValueError(f"feature rows of shape {c.shape}, expected (m, {d})")
                    fid.write(memoryview(c).cast("B"))
                    written += len(c)
                if written != n:
                    raise ValueError(f"{written} feature rows for {n} keys")

    _atomic_write_with(path, write)
    return offset


def _read_npy_header(fp):
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy version {version}")


def _scan_shard(path: Path) -> tuple[list[str], int, int | None]:
    """A shard's keys, feature width and the byte offset of its feature rows in the file (None
    if the member is compressed), keeping no feature rows in memory. Raises on anything
    malformed: not a zip, a member missing or of the wrong size (truncated), a CRC mismatch, a
    shape or dtype that does not match, feature values that are NaN or infinite."""
    with zipfile.ZipFile(path) as zf:
        with zf.open("keys.npy") as fp:
            keys = np.lib.format.read_array(fp, allow_pickle=False)
        info = zf.getinfo("features.npy")
        with zf.open(info) as fp:
            shape, fortran, dtype = _read_npy_header(fp)
            header_len = fp.tell()
            if np.dtype(dtype) != _FEATURE_DTYPE:
                raise ValueError(f"features are {dtype}, not float32")
            # Read the rows, 256 KiB at a time, and drop them: zipfile checks the CRC at the end,
            # so a damaged shard is found here and recomputed, not when its rows are wanted; and
            # a NaN row would reach every SVM fitted on it (they are never written: see add).
            nonfinite, rest = 0, b""
            while chunk := fp.read(1 << 18):
                buf = rest + chunk
                whole = len(buf) - len(buf) % _FEATURE_DTYPE.itemsize
                vals = np.frombuffer(buf, _FEATURE_DTYPE, count=whole // _FEATURE_DTYPE.itemsize)
                nonfinite += int(vals.size - np.count_nonzero(np.isfinite(vals)))
                rest = buf[whole:]
    if keys.ndim != 1 or len(shape) != 2 or shape[0] != len(keys) or fortran:
        raise ValueError(f"keys {keys.shape} vs features {shape}")
    if nonfinite:
        raise ValueError(f"{nonfinite} feature value(s) are NaN or infinite")
    if info.file_size != header_len + shape[0] * shape[1] * _FEATURE_DTYPE.itemsize:
        raise ValueError("the features member has the wrong size (truncated)")
    offset = None
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        # np.savez stores members uncompressed: the rows lie as they are in the file, after the
        # member's local header (whose name and extra fields may differ from the central one's).
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(zipfile.sizeFileHeader)
        fields = struct.unpack(zipfile.structFileHeader, local)
        if fields[0] != zipfile.stringFileHeader:
            raise ValueError("bad zip local header")
        offset = (info.header_offset + zipfile.sizeFileHeader + fields[10] + fields[11]
                  + header_len)
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in keys.tolist()]
    return keys, int(shape[1]), offset


def _read_shard_features(path: Path, n: int, d: int, offset: int | None) -> np.ndarray:
    """All (n, d) feature rows of one shard: read straight into the array from ``offset``, or
    through zipfile for a compressed member."""
    if offset is not None:
        feats = np.fromfile(path, dtype=_FEATURE_DTYPE, count=n * d, offset=offset)
        if feats.size != n * d:
            raise ValueError(f"{feats.size} values where {n * d} were expected (truncated)")
        return feats.reshape(n, d)
    with zipfile.ZipFile(path) as zf, zf.open("features.npy") as fp:
        feats = np.lib.format.read_array(fp, allow_pickle=False)
    if feats.dtype != _FEATURE_DTYPE or feats.shape != (n, d):
        raise ValueError(f"features {feats.dtype} {feats.shape}, expected float32 {(n, d)}")
    return feats


def _width(value) -> int | None:
    """A feature width from metadata (None when missing or not a positive integer)."""
    try:
        d = int(value)
    except (TypeError, ValueError):
        return None
    return d if d > 0 else None


class _ShardGone(Exception):
    """A shard file vanished after the cache was opened (another process compacted it)."""


@dataclass
class _Shard:
    path: Path | None       # None: rows live in ``rows`` (an in-memory cache)
    n: int
    d: int
    offset: int | None = None  # where the rows start in the file (stored, not compressed)
    rows: np.ndarray | None = None


class FeatureCache:
    """Features of one fingerprint, keyed by image content hash.

    Args:
        root: the cache folder (``features/`` by default); ``None``: an in-memory store (for
            predictions that should leave nothing on disk).
        fingerprint: hex digest identifying how features were made.
        meta: JSON-able description written to ``meta.json`` (backbone, weights, versions...).
        name: human-readable prefix of the folder name.
    """

    def __init__(self, root: os.PathLike | None, fingerprint: str, *, meta: dict,
                 name: str = "features"):
        self.root = Path(root) if root is not None else None
        self.fingerprint = fingerprint
        self.dir = self.root / f"{name}-{fingerprint[:12]}" if self.root is not None else None
        self.meta = dict(meta, fingerprint=fingerprint)
        self._index: dict[str, tuple[int, int]] | None = None
        self._shards: list[_Shard] = []
        self._pending_keys: list[str] = []
        self._pending_feats: list[np.ndarray] = []

    # -- reading ---------------------------------------------------------------------------
    def reread(self) -> None:
        """Forget the folder's index: the next read lists its shards again (other processes
        wrote shards, or merged them with :meth:`compact`)."""
        self._index = None

    def _load(self) -> None:
        if self._index is not None:
            return
        self._index, self._shards = {}, []
        if self.dir is None:
            return
        meta_path = self.dir / "meta.json"
        on_disk = {}
        if meta_path.is_file():
            try:
                on_disk = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                on_disk = {}
            on_disk = on_disk if isinstance(on_disk, dict) else {}
            if on_disk.get("fingerprint") not in (None, self.fingerprint):
                raise AnimeFacesError(
                    f"feature cache {self.dir} belongs to fingerprint {on_disk.get('fingerprint')}"
                    f", not {self.fingerprint}; delete the folder or choose another --cache")
        scanned = []
        for shard in sorted(self.dir.glob(SHARD_GLOB)):
            try:
                scanned.append((shard, *_scan_shard(shard)))
            except FileNotFoundError:
                continue  # merged away by another process's compact() since the listing
            except Exception as exc:  # noqa: BLE001 - a damaged shard only costs its recomputation
                self._set_aside(shard, str(exc))
        # One feature width per fingerprint: a shard of another width is not this cache's (an
        # older bug, a foreign tool), so it is set aside like a damaged one, not trusted.
        want = _width(self.meta.get("feature_dim")) or _width(on_disk.get("feature_dim"))
        if not want and scanned:
            rows_of = {}
            for _, keys, d, _ in scanned:
                rows_of[d] = rows_of.get(d, 0) + len(keys)
            want = max(rows_of, key=rows_of.get)  # the width of most of the rows
        for shard, keys, d, offset in scanned:
            if want and d != want and keys:
                self._set_aside(shard, f"feature width {d}, where the cache's is {want}")
                continue
            self._add_shard(_Shard(shard, len(keys), d, offset), keys)

    def _add_shard(self, shard: _Shard, keys) -> None:
        a = len(self._shards)
        self._shards.append(shard)
        for i, k in enumerate(keys):
            self._index[k] = (a, i)

    @staticmethod
    def _set_aside(shard: Path, reason: str) -> None:
        from .._io import set_aside

        set_aside(shard, reason, what="feature cache shard")

    def _rows_of(self, a: int) -> np.ndarray:
        shard = self._shards[a]
        if shard.rows is not None:
            return shard.rows
        try:
            return _read_shard_features(shard.path, shard.n, shard.d, shard.offset)
        except FileNotFoundError:
            raise _ShardGone(shard.path) from None
        except Exception as exc:  # noqa: BLE001
            # Damaged since it was opened (opening checked it whole).
            self._set_aside(shard.path, str(exc))
            self._index = None
            raise AnimeFacesError(
                f"feature cache shard {shard.path} is damaged ({exc}); it was moved aside "
                f"(.damaged-<time>): run again to recompute its features") from exc

    def __len__(self) -> int:
        self._load()
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        self._load()
        return key in self._index

    def missing(self, keys) -> list[str]:
        """The keys (in order, without repeats) that are not cached yet."""
        self._load()
        seen, out = set(), []
        for k in keys:
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def get(self, keys) -> np.ndarray:
        """Features for ``keys`` as (len(keys), d) float32; every key must be present.

        The result is allocated once and filled one shard at a time: besides it, at most one
        shard's rows are in memory."""
        keys = list(keys)
        for _ in range(4):
            try:
                return self._get(keys)
            except _ShardGone:
                # Another process compacted the shards since we opened them: its merged shard
                # was written before the old ones were removed, so reading the folder again
                # finds them (again, if a second compaction raced with this reading).
                self._index = None
        return self._get(keys)

    def _get(self, keys: list) -> np.ndarray:
        self._load()
        lost = [k for k in keys if k not in self._index]
        if lost:
            raise KeyError(f"{len(lost)} feature(s) not in cache {self.dir}")
        if not keys:
            d = int(self.meta.get("feature_dim", 0))
            return np.zeros((0, d), np.float32)
        where = np.array([self._index[k] for k in keys], dtype=np.int64)  # (len(keys), 2)
        used = np.unique(where[:, 0])
        dims = {self._shards[a].d for a in used.tolist()}
        if len(dims) != 1:
            raise AnimeFacesError(f"feature cache {self.dir} mixes feature widths {sorted(dims)}; "
                                  "delete the folder to rebuild it")
        out = np.empty((len(keys), dims.pop()), np.float32)
        order = np.argsort(where[:, 0], kind="stable")
        bounds = np.searchsorted(where[order, 0], used, side="left").tolist() + [len(keys)]
        for j, a in enumerate(used.tolist()):
            dst = order[bounds[j]:bounds[j + 1]]
            rows = self._rows_of(a)
            out[dst] = rows[where[dst, 1]]
            del rows
        return out

    # -- writing ---------------------------------------------------------------------------
    def add(self, keys, features: np.ndarray) -> None:
        """Queue features for ``keys``; call :meth:`flush` to make them durable."""
        features = np.asarray(features, np.float32)
        if len(keys) != len(features):
            raise ValueError("keys and features differ in length")
        finite = np.isfinite(features)
        if not finite.all():
            bad = int(np.count_nonzero(~finite.all(axis=tuple(range(1, features.ndim)))))
            raise AnimeFacesError(
                f"{bad} of {len(features)} feature row(s) for the cache {self.dir or '(memory)'} "
                f"are NaN or infinite, so they are not cached (an SVM cannot use them); the "
                f"backbone produced them: run with --precision fp32, or check the weights file")
        want = _width(self.meta.get("feature_dim"))
        if want and features.ndim == 2 and len(features) and features.shape[1] != int(want):
            raise ValueError(f"feature rows of width {features.shape[1]} for a cache of width {want}")
        self._pending_keys.extend(keys)
        self._pending_feats.append(features)

    @property
    def pending(self) -> int:
        return len(self._pending_keys)

    def flush(self) -> None:
        """Write queued features as one new shard, atomically, and let go of them."""
        if not self._pending_keys:
            return
        self._load()
        keys, feats = self._pending_keys, self._pending_feats
        d = int(feats[0].shape[1]) if feats[0].ndim == 2 else 0
        if self.dir is None:
            rows = np.concatenate(feats).astype(np.float32, copy=False)
            self._add_shard(_Shard(None, len(keys), rows.shape[1], rows=rows), keys)
        else:
            path = self.dir / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
            try:
                if not (self.dir / "meta.json").is_file():
                    atomic_write_json(self.dir / "meta.json", dict(self.meta, created=time.time()))
                offset = _write_shard(path, np.array(keys, dtype=_KEY_DTYPE), d, feats)
            except OSError as exc:
                from .._io import write_failed

                # Let go of them: a second flush (a caller's finally) would only fail again.
                self._pending_keys, self._pending_feats = [], []
                raise write_failed(
                    exc, what=f"a feature cache shard ({len(keys)} images)", folder=self.dir,
                    flag="--cache-dir",
                    saved=f"the features of those images are not saved; the {len(self._index)} "
                          f"already cached there are, and a rerun computes only the rest") from exc
            self._add_shard(_Shard(path, len(keys), d, offset), keys)
        self._pending_keys, self._pending_feats = [], []

    def write_shard(self, keys, features) -> None:
        """Write ``features`` for ``keys`` as one new shard now (atomically), without reading
        the shards already in the folder: for many writers adding at once (Ray actors, on
        shared storage too), each writing shards of its own (unique names, one rename each).
        Readers see them when they next open the cache."""
        self.add(keys, features)
        writer_only = self._index is None
        if writer_only:
            self._index, self._shards = {}, []  # nothing read: this object only adds
        try:
            self.flush()
        finally:
            if writer_only:
                self._index, self._shards = None, []

    def compact(self, *, min_shards: int = 8) -> None:
        """Merge many small shards into one (faster loading), copying one shard at a time.

        Safe against interruption and against other processes using the folder: it merges the
        shards on disk now (read again under a lock file, not the index this object read when
        it opened), writes the merged shard before removing any, and removes only the shards it
        read and merged, so a shard another process flushed meanwhile stays. Duplicates (a key
        in the merged shard and a newer one) are harmless. While another process compacts the
        folder this returns at once."""
        if self.dir is None or len(list(self.dir.glob(SHARD_GLOB))) < min_shards:
            return
        with _compact_lock(self.dir) as locked:
            if not locked:
                return  # another process is compacting this folder: leave it to that one
            self._index = None
            self._load()  # what is on disk now, whole
            read = [sh.path for sh in self._shards if sh.path is not None]
            if len(read) < min_shards or not self._index:
                return
            try:
                merged = self._write_merged()
            except _ShardGone:
                self._index = None  # removed by someone who did not take the lock: nothing lost
                return
            except OSError as exc:
                import sys

                print(f"animefaces: could not compact the feature cache {self.dir} "
                      f"({exc.strerror or exc}); its {len(read)} shards are kept as they were",
                      file=sys.stderr)
                return
            for path in read:
                if path != merged:
                    path.unlink(missing_ok=True)
            self._index = None
            self._load()

    def _write_merged(self) -> Path:
        """Write the live rows of every indexed shard into one new shard; returns its path."""
        # The live rows of each shard (a key flushed twice lives in the later shard).
        live: dict[int, tuple[list[str], list[int]]] = {}
        for k, (a, i) in self._index.items():
            ks, rows = live.setdefault(a, ([], []))
            ks.append(k)
            rows.append(i)
        order = sorted(live)
        dims = {self._shards[a].d for a in order}
        if len(dims) != 1:  # _load sets shards of another width aside: cannot happen
            raise AnimeFacesError(f"feature cache {self.dir} mixes feature widths {sorted(dims)}")
        keys = np.array([k for a in order for k in live[a][0]], dtype=_KEY_DTYPE)

        def chunks():
            for a in order:
                rows = live[a][1]
                if rows == list(range(self._shards[a].n)):
                    yield self._rows_of(a)  # every row, in order: no copy
                else:
                    yield self._rows_of(a)[np.asarray(rows, dtype=np.int64)]

        merged = self.dir / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        _write_shard(merged, keys, dims.pop(), chunks())
        return merged


@contextlib.contextmanager
def _compact_lock(folder: Path):
    """An exclusive, non-blocking lock on ``folder/.compact.lock`` (flock: also between
    processes on NFS, where Linux maps it to a POSIX lock). Yields False when another process
    holds it; True (without a lock) where the platform has no fcntl or the file cannot be made."""
    try:
        import fcntl
    except ImportError:  # Windows: compaction is still lossless, only not exclusive
        yield True
        return
    try:
        fd = os.open(folder / ".compact.lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError:
        yield True  # a read-only folder: compaction will fail (and say so) on its own
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
