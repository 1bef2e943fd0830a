"""What the face and character trainings share: which backbones run, config overrides,
the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import SweepConfig


@dataclass
class SweepResult:
    """What a training run (face or character task) returns.

    Attributes:
        run_dir: the run folder (reports, results.json).
        best_model: the chosen model's pointer file (``models/<run>-<backbone>-<kernel>.json``).
        results: the run's results.json document.
    """

    run_dir: Path
    best_model: Path | None
    results: dict = field(repr=False, default_factory=dict)


def backbones_to_run(cfg: SweepConfig, override) -> list[str]:
    from ..features.backbones import get_backbone, list_backbones

    if override:
        return list(override)
    if cfg.backbones == "available":
        return [n for n in list_backbones() if get_backbone(n).in_available]
    return list(cfg.backbones)


def with_features(cfg: SweepConfig, overrides: dict) -> SweepConfig:
    """``cfg`` with ``[features]`` keys replaced, validated as if they were in the TOML."""
    from ..config import config_from_dict

    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.raw.items()}
    raw.setdefault("features", {}).update(overrides)
    return config_from_dict(raw, source=cfg.source)


INCOMPLETE = ".incomplete"
_OWNER = "owner.json"


def staged_run_dir(root: Path, name: str) -> tuple[Path, Path]:
    """(staging folder, final folder) for a run: the reports are written into
    ``<name>.incomplete`` (made here, with the owner's pid) and renamed to ``<name>`` when all
    are there, so a failed or killed run leaves no half-written or empty run folder."""
    n = 1
    final = root / name
    while True:
        staging = final.with_name(final.name + INCOMPLETE)
        if not final.exists():
            try:
                staging.mkdir(parents=True)
                break
            except FileExistsError:
                pass
        n += 1
        final = root / f"{name}-{n}"
    (staging / _OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return staging, final


def finish_run_dir(staging: Path, final: Path) -> Path:
    (staging / _OWNER).unlink(missing_ok=True)
    os.replace(staging, final)
    return final


def clean_incomplete(root: Path, *, log=print) -> None:
    """Remove ``*.incomplete`` run folders left by runs that were killed (their process is
    gone); a folder of a run still running, or of another machine, is left alone."""
    if not root.is_dir():
        return
    for d in sorted(root.glob(f"*{INCOMPLETE}")):
        try:
            owner = json.loads((d / _OWNER).read_text())
            pid, host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            # no readable owner: written before the owner file, or damaged; old ones only
            if time.time() - d.stat().st_mtime < 24 * 3600:
                continue
        else:
            if host != socket.gethostname() or pid == os.getpid() or _alive(pid):
                continue
        shutil.rmtree(d, ignore_errors=True)
        log(f"[train] removed {d}: the reports of a run that did not finish")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
