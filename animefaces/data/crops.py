"""Face crops from frames, after the GochiUsa_Faces pipeline: detect anime faces with the
``lbpcascade_animeface`` cascade, write each face as a PNG, optionally confirm each crop with a
classifier and count the detections it rejects.

Inputs may be image files, folders, a frames manifest written by ``animefaces frames`` (or any
manifest CSV with a ``path`` column), or videos (sampled with :mod:`animefaces.data.video`, key frames
plus one frame a second by default, as GochiUsa_Faces did).

The cascade file is not shipped (it is nagadomi's, MIT licensed); users download it and pass its
path. OpenCV is imported only when a cascade is loaded.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_write_bytes, atomic_write_json, utc_now, versions
from ..errors import AnimeFacesError, ConfigError, DatasetError
from .images import is_image_name, open_image

CASCADE_NAME = "lbpcascade_animeface.xml"
CASCADE_URL = "https://github.com/nagadomi/lbpcascade_animeface"
CROP_COLUMNS = ("path", "label", "split", "group", "source", "frame_type", "frame_index",
                "time_s", "face_index", "x", "y", "w", "h", "score")
# lbpcascade_animeface's README: detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
# minSize=(24, 24)) on an equalised grayscale image.
DEFAULT_SCALE_FACTOR = 1.1
DEFAULT_MIN_NEIGHBORS = 5
DEFAULT_MIN_SIZE = (24, 24)
_FRAME_NAME = re.compile(r"^(?P<video>.+)-(?P<type>key|sec)-(?P<index>\d+)$")

ConfirmFn = Callable[[list[Image.Image]], Sequence[float]]


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise ConfigError('face detection needs OpenCV 4; install it with: pip install '
                          '"opencv-python-headless<5"') from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise ConfigError(f"this OpenCV ({getattr(cv2, '__version__', '?')}) has no "
                          f"CascadeClassifier (removed in OpenCV 5); install OpenCV 4 with: "
                          f'pip install "opencv-python-headless<5"')
    return cv2


def load_cascade(path: os.PathLike | str):
    """Load the anime-face cascade (``lbpcascade_animeface.xml``) as a ``cv2.CascadeClassifier``.

    Raises:
        ConfigError: the file is missing or not a cascade (the message says where to get it),
            or OpenCV 4 is not installed.
    """
    path = Path(path)
    where = (f"download {CASCADE_NAME} from nagadomi's lbpcascade_animeface repository "
             f"({CASCADE_URL}, MIT licence) and pass its path with --cascade PATH")
    if not path.is_file():
        raise ConfigError(f"cascade file {path} not found; {where}")
    cv2 = _import_cv2()
    try:
        cascade = cv2.CascadeClassifier(str(path))
    except (cv2.error, SystemError):  # OpenCV raises from the constructor on malformed XML
        cascade = None
    if cascade is None or cascade.empty():
        raise ConfigError(f"cascade file {path} is not an OpenCV cascade XML OpenCV can load; "
                          f"{where}")
    return cascade


def detect_faces(image: Image.Image | np.ndarray, cascade, *,
                 scale_factor: float = DEFAULT_SCALE_FACTOR,
                 min_neighbors: int = DEFAULT_MIN_NEIGHBORS,
                 min_size: tuple[int, int] = DEFAULT_MIN_SIZE) -> list[tuple[int, int, int, int]]:
    """Anime-face boxes in one image, as ``(x, y, w, h)`` pixels, top-to-bottom then
    left-to-right (a stable order for the face numbers in crop names).

    Args:
        image: RGB PIL image or (H, W, 3) uint8 RGB array.
        cascade: from :func:`load_cascade`.
        scale_factor, min_neighbors, min_size: ``detectMultiScale`` parameters; the defaults
            are the ones lbpcascade_animeface's README recommends.
    """
    cv2 = _import_cv2()
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image,
                     dtype=np.uint8)
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    boxes = cascade.detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                     minSize=tuple(min_size))
    return sorted((int(x), int(y), int(w), int(h)) for x, y, w, h in np.reshape(boxes, (-1, 4)))


# -- inputs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Source:
    """One input: an image, a manifest row, or a video; naming fields for its crops."""

    kind: str            # "image" | "video"
    path: Path
    group: str           # the {video} part of crop names
    frame_type: str = "img"
    frame_index: int = 0
    time_s: str = ""


@dataclass
class InputResult:
    """What happened to one input (a video, image, or manifest)."""

    source: str
    frames: int = 0
    detections: int = 0
    rejected: int = 0
    crops_written: int = 0
    error: str | None = None


def _image_source(path: Path) -> _Source:
    m = _FRAME_NAME.match(path.stem)
    if m:  # a frame written by `animefaces frames`: keep its video, type and frame number
        return _Source("image", path, m["video"], m["type"], int(m["index"]))
    return _Source("image", path, path.stem)


def _manifest_sources(csv_path: Path) -> list[_Source]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read manifest {csv_path}: {exc}") from None
    if "path" not in cols:
        raise DatasetError(f"{csv_path} has no 'path' column (columns: {', '.join(cols) or 'none'})"
                           f"; expected a manifest such as the one `animefaces frames` writes")
    if "face_index" in cols:
        raise DatasetError(f"{csv_path} is a manifest of face crops already; pass the frames "
                           f"manifest or the frames themselves")
    out = []
    for row in rows:
        rel = (row.get("path") or "").strip()
        if not rel:
            continue
        p = csv_path.parent / rel
        src = _image_source(p)
        if row.get("frame_type") and (row.get("frame_index") or "").isdigit():
            group = row.get("group") or (Path(row["video"]).stem if row.get("video") else src.group)
            src = _Source("image", p, group, row["frame_type"], int(row["frame_index"]),
                          row.get("time_s") or "")
        out.append(src)
    return out


def _expand(inputs: Iterable[os.PathLike | str]) -> list[tuple[str, list[_Source] | Exception]]:
    """Each input with its sources, or the error that makes it unusable (reported per input)."""
    from .video import is_video_name

    out: list[tuple[str, list[_Source] | Exception]] = []
    for raw in inputs:
        p = Path(raw)
        try:
            if p.is_dir():
                if (p / "manifest.csv").is_file():
                    out.append((str(p), _manifest_sources(p / "manifest.csv")))
                    continue
                files = sorted(f for f in p.iterdir() if f.is_file())
                srcs = [_image_source(f) if is_image_name(f) and f.suffix.lower() != ".gif"
                        else _Source("video", f, f.stem) for f in files
                        if is_image_name(f) or is_video_name(f)]
                if not srcs:
                    raise DatasetError(f"{p}: no images or videos in this folder")
                out.append((str(p), srcs))
            elif p.suffix.lower() == ".csv":
                if not p.is_file():
                    raise DatasetError(f"manifest {p} not found")
                out.append((str(p), _manifest_sources(p)))
            elif is_video_name(p):  # GIFs too: an animated GIF is a short video
                out.append((str(p), [_Source("video", p, p.stem)]))
            else:
                # Images and anything else: open_image names the problem (missing, not an image).
                out.append((str(p), [_image_source(p)]))
        except AnimeFacesError as exc:
            out.append((str(p), exc))
    return out


# -- the pipeline ---------------------------------------------------------------------------

@dataclass
class CropSummary:
    """Counts for a :func:`extract_crops` run; ``str()`` gives the CLI's summary."""

    out_dir: Path
    manifest: Path
    threshold: float | None
    results: list[InputResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    def _sum(self, name) -> int:
        return sum(getattr(r, name) for r in self.results)

    @property
    def frames(self) -> int:
        return self._sum("frames")

    @property
    def detections(self) -> int:
        return self._sum("detections")

    @property
    def rejected(self) -> int:
        return self._sum("rejected")

    @property
    def crops_written(self) -> int:
        return self._sum("crops_written")

    @property
    def failures(self) -> list[InputResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = [f"{self.crops_written} face crop(s) from {self.frames} frame(s) of "
                 f"{len(self.results)} input(s) written to {self.out_dir} "
                 f"(manifest: {self.manifest.name})",
                 f"{self.detections} cascade detection(s)"]
        if self.threshold is not None:
            lines[-1] += (f"; {self.rejected} rejected by the classifier "
                          f"(P(face) < {self.threshold:g})")
        if self.crops_written == 0 and self.frames:
            lines.append(self._nothing_found_hint())
        for r in self.failures:
            lines.append(f"error: {r.error}")
        if self.failures:
            lines.append(f"{len(self.failures)} input(s) failed")
        return "\n".join(lines)

    def _nothing_found_hint(self) -> str:
        """What to try when no crop was written: the cascade's limits and the knobs."""
        if self.detections and self.threshold is not None:
            return (f"no face crop kept: the cascade found {self.detections} face(s) but the "
                    f"classifier rejected all of them; lower --threshold (now {self.threshold:g}) "
                    f"or leave out --model to keep every cascade detection")
        return ("no face found: the anime-face cascade (lbpcascade_animeface) finds mostly "
                "frontal faces of at least --min-size pixels in typical anime style; try a "
                "smaller --min-size (e.g. 16) for small or distant faces, and expect misses on "
                "profiles, heavy shading, chibi or non-anime art (check a few frames by eye; "
                "`animefaces predict` tells whether whole frames show a face)")


def _crop(image: Image.Image, box, margin: float) -> Image.Image:
    x, y, w, h = box
    if margin:
        dx, dy = int(round(w * margin)), int(round(h * margin))
        x, y, w, h = x - dx, y - dy, w + 2 * dx, h + 2 * dy
    return image.crop((max(x, 0), max(y, 0), min(x + w, image.width), min(y + h, image.height)))


class _Writer:
    """Detects, batches crops for the classifier, writes the accepted ones, counts."""

    def __init__(self, out: Path, cascade, *, confirm, threshold, margin, batch_size,
                 detect_kw):
        self.out, self.cascade, self.confirm = out, cascade, confirm
        self.threshold, self.margin, self.batch_size = threshold, margin, batch_size
        self.detect_kw = detect_kw
        self.rows: list[dict] = []
        self.pending: list[tuple[InputResult, _Source, int, tuple, Image.Image]] = []
        self.owner: dict[tuple[str, str, int], str] = {}  # crop-name prefix -> its source

    def frame(self, res: InputResult, src: _Source, image: Image.Image) -> None:
        key = (src.group, src.frame_type, src.frame_index)
        if self.owner.setdefault(key, str(src.path)) != str(src.path):
            raise DatasetError(f"{src.path} would get the same crop names as "
                              f"{self.owner[key]} ({'-'.join(map(str, key))}-J.png); rename one "
                              f"of them or process them into different --out folders")
        res.frames += 1
        boxes = detect_faces(image, self.cascade, **self.detect_kw)
        res.detections += len(boxes)
        for j, box in enumerate(boxes):
            self.pending.append((res, src, j, box, _crop(image, box, self.margin)))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        scores: list[float | None] = [None] * len(batch)
        if self.confirm is not None:
            got = list(self.confirm([c for *_, c in batch]))
            if len(got) != len(batch):
                raise ConfigError(f"the confirm callable returned {len(got)} score(s) for "
                                      f"{len(batch)} crop(s); it must return one P(face) per crop")
            scores = [float(s) for s in got]
        for (res, src, j, box, crop), score in zip(batch, scores):
            # NaN (the classifier could not score it) fails the comparison: rejected.
            if score is not None and not score >= self.threshold:
                res.rejected += 1
                continue
            name = f"{src.group}-{src.frame_type}-{src.frame_index}-{j}.png"
            buf = _png(crop)
            atomic_write_bytes(self.out / name, buf)
            res.crops_written += 1
            x, y, w, h = box
            self.rows.append({
                "path": name, "label": "", "split": "", "group": src.group,
                "source": str(src.path), "frame_type": src.frame_type,
                "frame_index": src.frame_index, "time_s": src.time_s, "face_index": j,
                "x": x, "y": y, "w": w, "h": h,
                "score": "" if score is None else f"{score:.4f}"})


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _frames_of(src: _Source, *, fps, keyframes, seek) -> Iterator[tuple[_Source, Image.Image]]:
    if src.kind == "image":
        yield src, open_image(src.path)
        return
    from .video import sample_frames

    for fr in sample_frames(src.path, fps=fps, keyframes=keyframes, seek=seek):
        yield _Source("video", src.path, src.group, fr.frame_type, fr.index,
                      f"{fr.time_s:.3f}"), fr.image


def extract_crops(inputs: Iterable[os.PathLike | str], out_dir: os.PathLike | str, *,
                  cascade, confirm: ConfirmFn | None = None, threshold: float = 0.5,
                  fps: float | None = 1.0, keyframes: bool = True, seek: str = "auto",
                  margin: float = 0.0, scale_factor: float = DEFAULT_SCALE_FACTOR,
                  min_neighbors: int = DEFAULT_MIN_NEIGHBORS,
                  min_size: tuple[int, int] = DEFAULT_MIN_SIZE, batch_size: int = 32,
                  progress: bool = True) -> CropSummary:
    """Detect anime faces in frames and write each as ``{video}-{frame_type}-{i}-{j}.png``.

    ``{video}`` is the video stem (or the image's stem), ``{frame_type}`` ``key`` / ``sec``
    (``img`` for a plain image), ``i`` the frame number and ``j`` the face number in that frame.
    ``out_dir/manifest.csv`` lists every crop with the columns
    ``path,label,split,group,source,frame_type,frame_index,time_s,face_index,x,y,w,h,score``
    (the box is the cascade's, in the frame's pixels; ``score`` is P(face) when confirmed);
    ``label`` / ``split`` are left empty for labelling, and are kept when a run is repeated.
    ``manifest.json`` records the settings and counts.

    Args:
        inputs: image files, folders (a folder holding ``manifest.csv`` means that manifest),
            manifest CSVs with a ``path`` column (e.g. from ``animefaces frames``), or videos.
        out_dir: output folder (created).
        cascade: path of ``lbpcascade_animeface.xml``, or a loaded ``cv2.CascadeClassifier``.
        confirm: optional ``confirm(list of PIL crops) -> list of P(face)``; crops scoring below
            ``threshold`` are not written and are counted as rejected. See
            :func:`animefaces.api.classifier_confirm` for one backed by a trained model.
        threshold: P(face) a crop needs to be kept (only with ``confirm``).
        fps, keyframes, seek: frame sampling for video inputs (see
            :func:`animefaces.data.video.sample_frames`); the default is GochiUsa_Faces' key frames
            plus one frame a second.
        margin: grow each box by this fraction of its size on every side before cropping
            (clipped to the frame); the manifest keeps the cascade's box.
        scale_factor, min_neighbors, min_size: ``detectMultiScale`` parameters.
        batch_size: crops per ``confirm`` call.
        progress: progress bar (frames) on stderr.

    Returns:
        :class:`CropSummary`; inputs that failed (missing, unreadable, not a video...) carry an
        error and the others are still processed.

    Raises:
        ConfigError: bad options, a missing or invalid cascade, OpenCV missing, or an
            ``out_dir/manifest.csv`` that is not a crops manifest.
    """
    from .frames import write_manifest, write_manifest_check
    from .video import check_sampling_options

    check_sampling_options(fps, keyframes=keyframes, seek=seek)
    if confirm is not None and not callable(confirm):
        raise ConfigError(f"confirm must be a callable list_of_images -> list_of_P(face), "
                          f"got {type(confirm).__name__}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ConfigError(f"threshold must be a probability between 0 and 1 (got {threshold!r})")
    if not (isinstance(margin, (int, float)) and 0.0 <= margin <= 1.0):
        raise ConfigError(f"margin must be a fraction of the box size from 0 to 1 "
                          f"(got {margin!r})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
    cascade_path = None
    if isinstance(cascade, (str, os.PathLike)):
        cascade_path = str(cascade)
        cascade = load_cascade(cascade)
    inputs = list(inputs)
    if not inputs:
        raise ConfigError("no inputs given; pass images, folders, a frames manifest or videos")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "manifest.csv"
    write_manifest_check(csv_path, kind="crops")

    t0 = time.perf_counter()
    summary = CropSummary(out_dir=out, manifest=csv_path,
                          threshold=threshold if confirm is not None else None)
    writer = _Writer(out, cascade, confirm=confirm, threshold=threshold, margin=margin,
                     batch_size=batch_size,
                     detect_kw=dict(scale_factor=scale_factor, min_neighbors=min_neighbors,
                                    min_size=min_size))
    groups: set[str] = set()
    from tqdm.auto import tqdm

    with tqdm(desc="frames", unit="frame", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for name, sources in _expand(inputs):
            if isinstance(sources, Exception):
                summary.results.append(InputResult(source=name, error=str(sources)))
                continue
            # A manifest or folder is one input, but each file in it succeeds or fails alone.
            per_file = len(sources) > 1 or sources[0].path != Path(name)
            for src in sources:
                res = InputResult(source=str(src.path) if per_file else name)
                summary.results.append(res)
                try:
                    for fsrc, image in _frames_of(src, fps=fps, keyframes=keyframes, seek=seek):
                        groups.add(fsrc.group)
                        writer.frame(res, fsrc, image)
                        bar.update(1)
                except ConfigError:
                    raise  # a problem with the run itself, not with this input
                except AnimeFacesError as exc:  # BadImageError, BadVideoError, name clash
                    res.error = str(exc)  # crops of frames before the error are still written
        writer.flush()  # batches span inputs: one image often holds a single face
    write_manifest(csv_path, writer.rows, columns=CROP_COLUMNS, replace_groups=groups,
                   sort_key=_crop_sort_key)
    summary.elapsed_s = time.perf_counter() - t0

    atomic_write_json(out / "manifest.json", {
        "made_by": "animefaces.data.crops.extract_crops",
        "settings": {"cascade": cascade_path, "scale_factor": scale_factor,
                     "min_neighbors": min_neighbors, "min_size": list(min_size),
                     "equalize_hist": True, "margin": margin,
                     "confirm": getattr(confirm, "__name__", type(confirm).__name__)
                     if confirm is not None else None,
                     "threshold": threshold if confirm is not None else None,
                     "fps": fps, "keyframes": keyframes, "seek": seek},
        "versions": versions(svm=False, video=True) | {"opencv": _import_cv2().__version__},
        "created": utc_now(),
        "elapsed_s": round(summary.elapsed_s, 3),
        "totals": {"frames": summary.frames, "detections": summary.detections,
                   "rejected": summary.rejected, "crops_written": summary.crops_written,
                   "failed_inputs": len(summary.failures)},
        "inputs": [vars(r) for r in summary.results],
    })
    return summary


def _crop_sort_key(row: dict):
    def num(v):
        try:
            return int(v)
        except (TypeError, ValueError):
            return 0
    return (row.get("group") or "", num(row.get("frame_index")), row.get("frame_type") or "",
            num(row.get("face_index")), row.get("path") or "")
