"""What every cached file does when it is found damaged: set it aside, say so, rebuild it.

A cache file (feature shards, the hash index, the image-statistics table) is only ever a copy of
work that can be done again, so a damaged one must never stop a run; but deleting it would lose
the evidence of what went wrong (a full disk, a crash mid-write, a foreign tool). Each kind of
cache file therefore recovers the same way: it is renamed to ``<name>.damaged-<UTC time>`` next
to where it was, one line on stderr names it and the reason, and the caller rebuilds it.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path


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
