"""Sweep configuration: plain TOML, validated (unknown keys and bad values are errors).

The defaults live in ``configs/default.toml``; ``configs/paper.toml`` is the paper's grid.
"""

from __future__ import annotations

import itertools
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .classify.kernels import (GRID_KEYS, KERNELS, MAX_COMPONENTS, MAX_DEGREE, SOLVERS,
                               is_exact)
from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SCALINGS = ("l2", "standard", "none")

_SCHEMA = {
    "features": {"backbones", "cache_dir", "device", "precision", "pooling", "batch_size", "skip_bad"},
    "svm": {"scaling", "cache_size", "seed", "n_jobs", "select_on", "cv_folds", "grid", "stream"},
    "output": {"reports_dir", "models_dir"},
    "trust": {"calibration", "calibration_folds", "ece_bins", "abstain", "abstain_target", "abstain_risk",
              "ood", "ood_max_reference", "ood_k", "ood_quantile", "ood_min_side", "ood_flat",
              "ood_noise", "ood_text",
              "ood_weak_quantile", "ood_gray_quantile", "ood_subspace", "ood_subspace_quantile"},
}
CALIBRATIONS = ("auto", "platt", "isotonic")
# Model selection: "groups" (group cross-validation over train + val) or "val" (the paper's).
SELECT_ON = ("groups", "val")
# Kernels, their grid keys and limits: animefaces/classify/kernels.py (one list for the grid, the
# saved models and this validation).
_GRID_KEYS = {"kernel"}.union(*GRID_KEYS.values())


def _is_number(value) -> bool:
    """A finite int or float (TOML booleans are not numbers here)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass
class SweepConfig:
    """A parsed, validated config. ``source`` is the file it came from."""

    backbones: list[str] | str = "available"
    cache_dir: str = "features"
    device: str = "auto"
    precision: str = "auto"
    pooling: str = "auto"
    batch_size: int = 0
    skip_bad: bool = False
    scaling: str = "l2"
    cache_size: float = 2000
    seed: int = 0
    n_jobs: int = 0
    # "groups": group cross-validation over train + val (val when there are < 3 groups)
    select_on: str = "groups"
    cv_folds: int = 5
    grid: list[dict] = field(default_factory=list)
    # "auto": features stay in the feature cache, read a chunk at a time, when every grid row is
    # a scalable kernel; true: always (refused with exact kernels); false: loaded into memory
    stream: str | bool = "auto"
    reports_dir: str = "reports"
    models_dir: str = "models"
    # [trust]: calibration, abstention and the out-of-domain guard (see configs/default.toml)
    calibration: str = "auto"
    calibration_folds: int = 5
    ece_bins: int = 15
    abstain: str | list = "risk"
    abstain_target: float = 0.95
    abstain_risk: float = 0.02
    ood: bool = True
    # at most this many train + val images (a seeded sample) are the guard's reference
    ood_max_reference: int = 20000
    ood_k: int = 5
    ood_quantile: float = 0.999
    ood_min_side: int = 32
    ood_flat: float = 2.0
    ood_noise: float = 0.3
    ood_text: bool = True
    ood_weak_quantile: float = 0.1
    ood_gray_quantile: float = 0.85
    ood_subspace: int = 8
    ood_subspace_quantile: float = 0.998
    source: str = ""
    raw: dict = field(default_factory=dict)

    def kernel_rows(self) -> list[tuple[str, dict, list[dict]]]:
        """Table rows: ``(row_name, fixed_params, [param dicts to choose from on val])``.

        A row is one kernel (and degree, for polynomials); C / gamma / coef0 are tuned within it.
        """
        rows: dict[str, tuple[dict, list[dict]]] = {}
        for entry in self.grid:
            kernel = entry["kernel"]
            degrees = entry.get("degree", [3]) if kernel in ("poly", "poly_sketch") else [None]
            for degree in degrees:
                name = kernel if degree is None else f"{kernel}-{degree}"
                fixed = {"kernel": kernel} | ({} if degree is None else {"degree": degree})
                tunable = {k: v for k, v in entry.items() if k not in ("kernel", "degree")}
                keys = sorted(tunable)
                combos = [dict(zip(keys, vals)) | fixed
                          for vals in itertools.product(*(tunable[k] for k in keys))] or [fixed]
                rows.setdefault(name, (fixed, []))[1].extend(combos)
        return [(name, fixed, combos) for name, (fixed, combos) in rows.items()]


def _as_list(value, key):
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"svm.grid: {key} is an empty list")
        return value
    return [value]


def load_config(path: os.PathLike | str | None = None) -> SweepConfig:
    """Read and validate a TOML config (default: ``configs/default.toml``).

    ``path`` may also be a bare name such as ``paper`` (looked up in ``configs/``).

    Raises:
        ConfigError: missing file, TOML syntax, unknown key or bad value, named.
    """
    if path is None:
        path = CONFIG_DIR / "default.toml"
    path = Path(path)
    if not path.exists() and not path.suffix and (CONFIG_DIR / f"{path}.toml").is_file():
        path = CONFIG_DIR / f"{path}.toml"
    if not path.is_file():
        raise ConfigError(f"config {path}: no such file; built-in configs: "
                          f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.toml')))}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML ({exc})") from None
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict, *, source: str = "<dict>") -> SweepConfig:
    """Validate a config given as a dict (same layout as the TOML)."""
    from .features.backbones import check_batch_size, list_backbones
    from .features.extract import POOLINGS, PRECISIONS

    unknown_sections = set(raw) - set(_SCHEMA)
    if unknown_sections:
        raise ConfigError(f"config {source}: unknown section(s) {', '.join(sorted(unknown_sections))}; "
                          f"allowed: {', '.join(_SCHEMA)}")
    flat = {}
    for section, keys in _SCHEMA.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config {source}: [{section}] must be a table")
        bad = set(table) - keys
        if bad:
            raise ConfigError(f"config {source}: unknown key(s) {', '.join(f'{section}.{k}' for k in sorted(bad))}; "
                              f"allowed in [{section}]: {', '.join(sorted(keys))}")
        flat.update(table)
    cfg = SweepConfig(**{k: v for k, v in flat.items()}, source=source, raw=raw)

    def choice(name, value, allowed):
        if value not in allowed:
            raise ConfigError(f"config {source}: {name} = {value!r}; choose one of: {', '.join(map(str, allowed))}")

    known = list_backbones(include_test=True)
    if isinstance(cfg.backbones, str):
        cfg.backbones = "available" if cfg.backbones == "available" else [cfg.backbones]
    if isinstance(cfg.backbones, list):
        if not cfg.backbones:
            raise ConfigError(f"config {source}: features.backbones is empty")
        for b in cfg.backbones:
            choice("features.backbones entry", b, known)
    choice("features.precision", cfg.precision, PRECISIONS)
    choice("features.pooling", cfg.pooling, POOLINGS)
    choice("svm.scaling", cfg.scaling, SCALINGS)
    choice("svm.select_on", cfg.select_on, SELECT_ON)
    if isinstance(cfg.cv_folds, bool) or not isinstance(cfg.cv_folds, int) or not 2 <= cfg.cv_folds <= 20:
        raise ConfigError(f"config {source}: svm.cv_folds = {cfg.cv_folds!r}; use an integer from 2 to 20")
    check_batch_size(cfg.batch_size, name=f"config {source}: features.batch_size", allow_zero=True)
    if isinstance(cfg.n_jobs, bool) or not isinstance(cfg.n_jobs, int) or cfg.n_jobs < -1:
        raise ConfigError(f"config {source}: svm.n_jobs = {cfg.n_jobs!r}; use 0 (one per core), -1 or a positive integer")
    for key in ("features.cache_dir", "features.device", "output.reports_dir", "output.models_dir"):
        value = getattr(cfg, key.split(".")[1])
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"config {source}: {key}: must be a non-empty string (a quoted folder "
                              f"name or device), got {value!r}")
    if not isinstance(cfg.skip_bad, bool):
        raise ConfigError(f"config {source}: features.skip_bad: must be true or false (TOML booleans, "
                          f"unquoted), got {cfg.skip_bad!r}")
    if not _is_number(cfg.cache_size) or cfg.cache_size <= 0:
        raise ConfigError(f"config {source}: svm.cache_size: must be a finite number > 0 (libsvm's "
                          f"kernel cache in MB), got {cfg.cache_size!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"config {source}: svm.seed: must be an integer from 0 to 2**32 - 1, got "
                          f"{cfg.seed!r}")
    _check_trust(cfg, source, choice)
    if not cfg.grid:
        raise ConfigError(f"config {source}: svm.grid is empty; add at least one [[svm.grid]] table")
    if not isinstance(cfg.grid, list) or not all(isinstance(e, dict) for e in cfg.grid):
        raise ConfigError(f"config {source}: svm.grid must be a list of tables ([[svm.grid]] blocks "
                          f"with kernel = ..., C = [...]), got {cfg.grid!r}")
    grid = []
    for i, entry in enumerate(cfg.grid):
        bad = set(entry) - _GRID_KEYS
        if bad:
            raise ConfigError(f"config {source}: svm.grid[{i}]: unknown key(s) {', '.join(sorted(bad))}; "
                              f"allowed: {', '.join(sorted(_GRID_KEYS))}")
        if "kernel" not in entry:
            raise ConfigError(f"config {source}: svm.grid[{i}] has no kernel; choose one of: {', '.join(KERNELS)}")
        choice(f"svm.grid[{i}].kernel", entry["kernel"], KERNELS)
        where = f"config {source}: svm.grid[{i}]"
        allowed = GRID_KEYS[entry["kernel"]]
        extra = sorted(set(entry) - {"kernel", *allowed})
        if extra:
            raise ConfigError(f"{where}: kernel {entry['kernel']!r} takes no {', '.join(extra)}; "
                              f"its keys: {', '.join(allowed)}")
        e = {"kernel": entry["kernel"]}
        for k in allowed:
            if k in entry:
                e[k] = _as_list(entry[k], k)
        for c in e.get("C", []):
            if not _is_number(c) or c <= 0:
                raise ConfigError(f"{where}.C: must be a finite number > 0, got {c!r}")
        for d in e.get("degree", []):
            if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DEGREE:
                raise ConfigError(f"{where}.degree: must be an integer from 1 to {MAX_DEGREE} (higher "
                                  f"degrees overflow the kernel values), got {d!r}")
        for g in e.get("gamma", []):
            if not (g in ("scale", "auto") or (_is_number(g) and g > 0)):
                raise ConfigError(f"{where}.gamma: must be 'scale', 'auto' or a finite number > 0, "
                                  f"got {g!r}")
        for c0 in e.get("coef0", []):
            if not _is_number(c0):
                raise ConfigError(f"{where}.coef0: must be a finite number, got {c0!r}")
            if entry["kernel"] == "poly_sketch" and c0 < 0:
                raise ConfigError(f"{where}.coef0: poly_sketch appends sqrt(coef0) to each row, so "
                                  f"coef0 must be >= 0, got {c0!r}")
        for key, lo, hi in (("n_components", 8, MAX_COMPONENTS), ("epochs", 1, 1000)):
            for v in e.get(key, []):
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                    raise ConfigError(f"{where}.{key}: must be an integer from {lo} to {hi}, "
                                      f"got {v!r}")
        for v in e.get("solver", []):
            choice(f"svm.grid[{i}].solver", v, SOLVERS)
        if not is_exact(e["kernel"]) and "C" not in e:
            e["C"] = [1.0]  # explicit, so the table and the saved model name it
        grid.append(e)
    cfg.grid = grid
    if not (cfg.stream == "auto" or isinstance(cfg.stream, bool)):
        raise ConfigError(f"config {source}: svm.stream = {cfg.stream!r}; use \"auto\", true or "
                          f"false (TOML booleans, unquoted)")
    if cfg.stream is True:
        exact = sorted({e["kernel"] for e in grid if is_exact(e["kernel"])})
        if exact:
            raise ConfigError(
                f"config {source}: svm.stream = true reads the features a chunk at a time, which "
                f"only the scalable kernels can train on; the grid has exact kernel(s) "
                f"{', '.join(exact)} (they need the kernel matrix in memory): use linear_svc, sgd, "
                f"nystroem or poly_sketch rows, or stream = \"auto\" / false")
    return cfg


def streams(cfg: SweepConfig) -> bool:
    """Whether a sweep with ``cfg`` reads its features from the cache a chunk at a time
    (``svm.stream``: true, or "auto" with only scalable kernels in the grid)."""
    if cfg.stream == "auto":
        return bool(cfg.grid) and not any(is_exact(e["kernel"]) for e in cfg.grid)
    return bool(cfg.stream)


def _check_trust(cfg: SweepConfig, source: str, choice) -> None:
    """Validate the [trust] section."""
    def number(name, value, lo, hi, *, integer=False):
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"config {source}: trust.{name} = {value!r}; use {kind} in [{lo}, {hi}]")

    def boolean(name, value):
        if not isinstance(value, bool):
            raise ConfigError(f"config {source}: trust.{name} = {value!r}; use true or false")

    choice("trust.calibration", cfg.calibration, CALIBRATIONS)
    number("calibration_folds", cfg.calibration_folds, 2, 20, integer=True)
    number("ece_bins", cfg.ece_bins, 2, 100, integer=True)
    number("abstain_target", cfg.abstain_target, 0.5, 0.9999)
    number("abstain_risk", cfg.abstain_risk, 0.0001, 0.4999)
    a = cfg.abstain
    if isinstance(a, list):
        if (len(a) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a)
                or not 0.0 <= a[0] <= 0.5 <= a[1] <= 1.0):
            raise ConfigError(f"config {source}: trust.abstain = {a!r}; use \"auto\", \"off\" or "
                              f"[lo, hi] with 0 <= lo <= 0.5 <= hi <= 1")
        cfg.abstain = [float(a[0]), float(a[1])]
    else:
        choice("trust.abstain", a, ("risk", "auto", "off"))
    boolean("ood", cfg.ood)
    number("ood_max_reference", cfg.ood_max_reference, 10, 10**7, integer=True)
    boolean("ood_text", cfg.ood_text)
    number("ood_weak_quantile", cfg.ood_weak_quantile, 0.0, 0.5)
    number("ood_gray_quantile", cfg.ood_gray_quantile, 0.0, 1.0)
    number("ood_subspace", cfg.ood_subspace, 0, 256, integer=True)
    number("ood_subspace_quantile", cfg.ood_subspace_quantile, 0.5, 1.0)
    number("ood_k", cfg.ood_k, 1, 100, integer=True)
    number("ood_quantile", cfg.ood_quantile, 0.5, 1.0)
    number("ood_min_side", cfg.ood_min_side, 0, 10000, integer=True)
    number("ood_flat", cfg.ood_flat, 0.0, 255.0)
    number("ood_noise", cfg.ood_noise, -1.0, 1.0)
