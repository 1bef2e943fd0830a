"""What the face and character trainings share: which backbones run, config overrides,
the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._io import utc_stamp
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


def new_run_dir(root: Path, stem: str) -> Path:
    stamp = utc_stamp()
    run_dir = root / f"{stamp}-{stem}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{stamp}-{stem}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir
