"""Remembered file hashes, so that a cached run does not read every image again.

The feature cache is keyed by each file's content (sha256), so that renamed or copied images
hit it and changed ones miss it. Hashing means reading every byte: for 10,000 720p frames
(~1.5 GB) that is seconds on every sweep, even with every feature cached. Like git's index, this
remembers each file's hash together with what ``stat`` says of it (real path, size,
modification time in ns, inode, change time in ns); a file whose stat entry is unchanged is
not read again. Anything that rewrites a file (editing, copying over it, replacing it with a
rename) changes its mtime, ctime or inode, so its hash is computed afresh; files changed in
the last two seconds are not remembered yet, since a second write within the same timestamp
tick would go unseen.

The index is one ``.npz`` file (plain string arrays, no pickle) beside the feature cache,
written atomically; a damaged or foreign file is set aside (``_io.set_aside``: renamed to
``<name>.damaged-<UTC time>``, one line on stderr) and rebuilt.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np

INDEX_NAME = "file-hashes-v1.npz"
PRUNE_SLACK = 10_000  # entries beyond twice this run's files before the gone ones are dropped


class RealPaths:
    """``os.path.realpath`` of many files, resolving each folder only once.

    Resolving every path separately (``Path.resolve``) took ~0.1 ms a file here: 1 s for
    10,000 images. Files are usually many per folder, so the folder's real path is resolved
    once and the name joined to it; a file that is itself a symlink is resolved in full.
    """

    def __init__(self):
        self._dirs: dict[str, str] = {}

    def __call__(self, path: os.PathLike | str) -> str:
        p = os.path.abspath(path)
        head, name = os.path.split(p)
        real_dir = self._dirs.get(head)
        if real_dir is None:
            real_dir = self._dirs[head] = os.path.realpath(head)
        if os.path.islink(p):
            return os.path.realpath(p)
        return os.path.join(real_dir, name)


def stat_key(real_path: str, st: os.stat_result) -> str:
    """What must be unchanged for a remembered hash to hold."""
    return f"{real_path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"


def _key_path(key: str) -> str:
    """The real path a :func:`stat_key` was made for."""
    return key.rsplit("|", 4)[0]


RACY_SECONDS = 2.0


def is_racy(st: os.stat_result) -> bool:
    """Changed in the last ``RACY_SECONDS``: it may be written again within the same timestamp
    tick, with the same size, after it was hashed (git's "racily clean" case), so its hash is
    not remembered yet."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1e9


class HashIndex:
    """sha256 of files by :func:`stat_key`; ``folder=None`` keeps nothing (every file is read).

    Not shared between threads while writing: look up with :meth:`get` from any thread, then
    :meth:`put` and :meth:`save` from one.
    """

    def __init__(self, folder: os.PathLike | str | None):
        self.file = Path(folder) / INDEX_NAME if folder is not None else None
        self._known: dict[str, str] = {}
        self._new = 0
        if self.file is not None and self.file.is_file():
            try:
                with np.load(self.file, allow_pickle=False) as z:
                    keys, digests = z["keys"].tolist(), z["digests"].tolist()
                if len(keys) != len(digests):
                    raise ValueError("keys and digests differ in length")
                self._known = dict(zip(map(os.fsdecode, keys), map(bytes.decode, digests)))
            except Exception as exc:  # noqa: BLE001 - damaged or foreign: rebuilt by this run
                from .._io import set_aside

                set_aside(self.file, f"{type(exc).__name__}: {exc}", what="file-hash index")
                self._known = {}

    def get(self, key: str) -> str | None:
        return self._known.get(key)

    def put(self, key: str, digest: str) -> None:
        if self.file is not None and self._known.get(key) != digest:
            self._known[key] = digest
            self._new += 1

    def save(self, keep: set[str] | None = None) -> None:
        """Write the index if anything was added (atomically). ``keep``: the keys of this run;
        entries of files whose stat changed since (same real path, other key) are dropped, so
        the index does not grow with every edit of a file."""
        if self.file is None or not self._new:
            return
        from .._io import atomic_write_bytes

        known = self._known
        if keep is not None:
            live_paths = {_key_path(k) for k in keep}
            known = {k: v for k, v in known.items()
                     if k in keep or _key_path(k) not in live_paths}
            if len(known) > 2 * len(keep) + PRUNE_SLACK:
                # Mostly other runs' files: drop the entries of files that are gone, so the
                # index does not grow for ever (a stat each, only when it has grown this much).
                known = {k: v for k, v in known.items()
                         if k in keep or os.path.lexists(_key_path(k))}
        self._known = known
        keys = sorted(known)
        buf = io.BytesIO()
        # bytes (UTF-8 / the file system's encoding), not numpy's 4-bytes-a-character str
        np.savez(buf, keys=np.array([os.fsencode(k) for k in keys], dtype=bytes),
                 digests=np.array([known[k].encode() for k in keys], dtype=bytes))
        self.file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.file, buf.getvalue())
        self._new = 0
