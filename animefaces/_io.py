"""Files: one sha256, one UTC timestamp, one provenance (versions), atomic writes, and what every
cached file does when it is found damaged: set it aside, say so, rebuild it.

A cache file (feature shards, the hash index, the image-statistics table) is only ever a copy of
work that can be done again, so a damaged one must never stop a run; but deleting it would lose
the evidence of what went wrong (a full disk, a crash mid-write, a foreign tool). Each kind of
cache file therefore recovers the same way: it is renamed to ``<name>.damaged-<UTC time>`` next
to where it was, one line on stderr names it and the reason, and the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def sha256_file(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's bytes (image content keys, weight and model files)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes in memory (model files as written, fingerprints)."""
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    """The time now as UTC ISO 8601 to the second (``2026-12-03T07:12:00+00:00``): the one
    timestamp format of every manifest, model, report and scan file."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def utc_stamp() -> str:
    """The time now in UTC for file and folder names (``20261203-071200``)."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def set_aside(path: os.PathLike | str, reason: str, *, what: str = "cache file") -> Path | None:
    """Rename a damaged file to ``<name>.damaged-<UTC time>`` and print one line saying so.

    Args:
        path: the damaged file.
        reason: why it is considered damaged (shown to the user).
        what: what the file is, for the message (``"image-stats cache"``).

    Returns:
        The new path, or None when the file was already gone (another process set it aside) or
        could not be renamed (a read-only folder: the line then says it was left in place).
    """
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        print(f"animefaces: {what} {path} is damaged ({reason}) and could not be moved aside "
              f"({exc.strerror}); it is ignored and rebuilt where possible", file=sys.stderr)
        return None
    print(f"animefaces: {what} {path} is damaged ({reason}); moved aside to {target.name} and "
          f"rebuilt (delete it once you no longer need it)", file=sys.stderr)
    return target


def write_failed(exc: OSError, *, what: str, folder: os.PathLike | str, saved: str,
                 flag: str = "") -> "AnimeFacesError":
    """The one-line error for a write that the file system refused (disk full, quota, read-only).

    Args:
        exc: the OSError raised by the write.
        what: what was being written (``"a model"``, ``"a feature cache shard"``).
        folder: where it was being written.
        saved: what is on disk despite the failure (``"the models already there are unchanged"``).
        flag: the option that chooses another folder (``"--models-dir"``), for the fix.

    Returns:
        An :class:`~animefaces.errors.AnimeFacesError` to raise ``from exc``.
    """
    import errno

    from .errors import AnimeFacesError

    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else type(exc).__name__
    reason = exc.strerror or str(exc)
    other = f"choose another folder ({flag})" if flag else "choose another folder"
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space there, or {other}, and run again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make the folder writable, or {other}, and run again"
    else:
        fix = f"fix the folder, or {other}, and run again"
    return AnimeFacesError(f"cannot write {what} into {folder}: {reason} ({name}); {saved}; {fix}")


def torch_version() -> str | None:
    """torch's installed version from its package metadata, without importing it (the import
    costs seconds); the same string whether or not torch is imported."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        mod = sys.modules.get("torch")
        return getattr(mod, "__version__", None)


def versions(*, svm: bool = True, video: bool = False) -> dict:
    """Versions of what made an artefact, for its metadata JSON: animefaces, Python, numpy,
    torch (from package metadata, without importing it); with ``svm`` scikit-learn and joblib;
    with ``video`` PyAV and FFmpeg's libraries (``{library: "x.y.z"}``; left out without PyAV)."""
    import platform

    from . import __version__

    out = {"animefaces": __version__, "python": platform.python_version(),
           "numpy": np.__version__, "torch": torch_version()}
    if svm:
        import joblib
        import sklearn

        out |= {"scikit-learn": sklearn.__version__, "joblib": joblib.__version__}
    if video:
        try:
            import av
        except ImportError:
            pass
        else:
            out["av"] = av.__version__
            out["ffmpeg"] = {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}
    return out


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, for every
    thread); 0o022 where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _atomic_write_with(path: os.PathLike, write) -> None:
    """Call ``write(f)`` on a temp file in ``path``'s folder, fsync it, ``os.replace`` it. The
    file gets the permissions a plain ``open(path, "w")`` would (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    _atomic_write_with(path, lambda f: f.write(data))


def atomic_write_json(path: os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
                       .encode("utf-8"))
