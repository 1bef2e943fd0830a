"""The on-disk feature store.

One folder per feature fingerprint (backbone, weights sha256, layer, pooling, preprocessing,
precision, package version), holding ``meta.json`` and shards ``shard-*.npz``. Each shard holds
``keys`` (sha256 of each image file's bytes, so a renamed image still hits and an edited one
misses) and ``features`` ((n, d) float32). Shards are written to a temporary file and moved into
place with ``os.replace``: an interrupted run (Ctrl-C, kill -9) leaves only whole shards, and the
next run computes only what they lack.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from .errors import AnimeFacesError

SHARD_GLOB = "shard-*.npz"


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
                       .encode("utf-8"))


def file_sha256(path: os.PathLike) -> str:
    """Content hash of one image file (hex sha256)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class FeatureCache:
    """Features of one fingerprint, keyed by image content hash.

    Args:
        root: the cache folder (``features/`` by default).
        fingerprint: hex digest identifying how features were made.
        meta: JSON-able description written to ``meta.json`` (backbone, weights, versions...).
        name: human-readable prefix of the folder name.
    """

    def __init__(self, root: os.PathLike | None, fingerprint: str, *, meta: dict,
                 name: str = "features"):
        # root=None: an in-memory store (for predictions that should leave nothing on disk).
        self.root = Path(root) if root is not None else None
        self.fingerprint = fingerprint
        self.dir = self.root / f"{name}-{fingerprint[:12]}" if self.root is not None else None
        self.meta = dict(meta, fingerprint=fingerprint)
        self._index: dict[str, tuple[int, int]] | None = None
        self._arrays: list[np.ndarray] = []
        self._pending_keys: list[str] = []
        self._pending_feats: list[np.ndarray] = []

    # -- reading ---------------------------------------------------------------------------
    def _load(self) -> None:
        if self._index is not None:
            return
        self._index, self._arrays = {}, []
        if self.dir is None:
            return
        meta_path = self.dir / "meta.json"
        if meta_path.is_file():
            try:
                on_disk = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                on_disk = {}
            if on_disk.get("fingerprint") not in (None, self.fingerprint):
                raise AnimeFacesError(
                    f"feature cache {self.dir} belongs to fingerprint {on_disk.get('fingerprint')}"
                    f", not {self.fingerprint}; delete the folder or choose another --cache")
        for shard in sorted(self.dir.glob(SHARD_GLOB)):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, feats = z["keys"], z["features"]
            except Exception:  # noqa: BLE001 - a damaged shard only costs its recomputation
                bad = shard.with_suffix(".corrupt")
                os.replace(shard, bad)
                continue
            a = len(self._arrays)
            self._arrays.append(feats)
            for i, k in enumerate(keys.tolist()):
                self._index[k.decode() if isinstance(k, bytes) else k] = (a, i)

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
        """Features for ``keys`` as (len(keys), d) float32; every key must be present."""
        self._load()
        keys = list(keys)
        lost = [k for k in keys if k not in self._index]
        if lost:
            raise KeyError(f"{len(lost)} feature(s) not in cache {self.dir}")
        if not keys:
            d = int(self.meta.get("feature_dim", 0))
            return np.zeros((0, d), np.float32)
        out = np.empty((len(keys), self._arrays[0].shape[1]), np.float32)
        for row, k in enumerate(keys):
            a, i = self._index[k]
            out[row] = self._arrays[a][i]
        return out

    # -- writing ---------------------------------------------------------------------------
    def add(self, keys, features: np.ndarray) -> None:
        """Queue features for ``keys``; call :meth:`flush` to make them durable."""
        features = np.asarray(features, np.float32)
        if len(keys) != len(features):
            raise ValueError("keys and features differ in length")
        self._pending_keys.extend(keys)
        self._pending_feats.append(features)

    @property
    def pending(self) -> int:
        return len(self._pending_keys)

    def flush(self) -> None:
        """Write queued features as one new shard, atomically."""
        if not self._pending_keys:
            return
        self._load()
        if self.dir is None:
            self._remember()
            return
        if not (self.dir / "meta.json").is_file():
            atomic_write_json(self.dir / "meta.json", dict(self.meta, created=time.time()))
        keys = np.array(self._pending_keys, dtype="S64")
        feats = np.concatenate(self._pending_feats).astype(np.float32, copy=False)
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        import io

        buf = io.BytesIO()
        np.savez(buf, keys=keys, features=feats)
        atomic_write_bytes(self.dir / name, buf.getvalue())
        self._remember()

    def _remember(self) -> None:
        feats = np.concatenate(self._pending_feats).astype(np.float32, copy=False)
        a = len(self._arrays)
        self._arrays.append(feats)
        for i, k in enumerate(self._pending_keys):
            self._index[k] = (a, i)
        self._pending_keys, self._pending_feats = [], []

    def compact(self, *, min_shards: int = 8) -> None:
        """Merge many small shards into one (faster loading); safe against interruption:
        the merged shard is written before the old ones are removed, and duplicates are
        harmless."""
        self._load()
        if self.dir is None:
            return
        shards = sorted(self.dir.glob(SHARD_GLOB))
        if len(shards) < min_shards:
            return
        keys = list(self._index)
        self._pending_keys, self._pending_feats = keys, [self.get(keys)]
        self.flush()
        newest = max(self.dir.glob(SHARD_GLOB))
        for s in shards:
            if s != newest:
                s.unlink(missing_ok=True)
        self._index = None
        self._load()
