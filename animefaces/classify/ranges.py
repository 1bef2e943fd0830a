"""Face time ranges from per-frame P(face): hysteresis (a range starts at ``on``, goes on
while P >= ``off``, bridges dips shorter than ``min_gap``), for ``animefaces scan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError


class FaceRange(NamedTuple):
    """A stretch of video with a face: ``[start_s, end_s)`` in seconds, and the highest P(face)
    of its frames. A plain tuple ``(start_s, end_s, peak_p)`` too."""

    start_s: float
    end_s: float
    peak_p: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class FrameScore:
    """One sampled frame's result.

    Attributes:
        time_s: display time in seconds from the start of the video.
        frame_index: the frame's number in the video (see :class:`animefaces.data.video.Frame`).
        p_face: P(face) in [0, 1] from the classifier.
        label: the classifier's own label at its threshold (``face`` / ``no_face``, ``unsure``,
            ``out_of_domain``; see :func:`video_frame_label`); ranges use the ``on`` / ``off``
            thresholds instead.
        frame_type: ``sec`` (a 1/fps tick) or ``key`` (a key frame, ``keyframes=True``).
        reason: why a frame is ``no_face`` without the SVM (a blank / fade frame), or why it is
            ``out_of_domain``; empty otherwise.
    """

    time_s: float
    frame_index: int
    p_face: float
    label: str
    frame_type: str = "sec"
    reason: str = ""


# The out-of-domain guard's image-content tests (see animefaces.classify.ood). Given as a still
# image, a blank, gradient, noise or text-slide picture is not an anime frame; inside a video it is
# a fade, a blank or title card between shots, and has no face.
NO_PICTURE = ("flat", "ramp", "noise", "text slide")


def video_frame_label(pred) -> tuple[str, str]:
    """(label, reason) of a video frame from its :class:`~animefaces.api.Prediction`: a frame
    the guard flags only for having no picture (blank, fade, plain gradient, noise, text card)
    is ``no_face`` with that reason; other out-of-domain frames keep their label and reason."""
    why = getattr(pred, "ood_reason", None) or ""
    if getattr(pred, "out_of_domain", False) and why.split(":")[0] in NO_PICTURE:
        return "no_face", f"blank / fade / card frame ({why})"
    return str(pred.label), why


def check_thresholds(on, off) -> None:
    for name, v in (("on", on), ("off", off)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ConfigError(f"{name} must be a probability from 0 to 1 (got {v!r}); the "
                              f"defaults are on=0.6, off=0.4")
    if off > on:
        raise ConfigError(f"off ({off}) must not be above on ({on}): a range starts at P >= on "
                          f"and ends below off, e.g. on=0.6, off=0.4")


def check_seconds(name, v, *, allow_none=False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or \
            not math.isfinite(v):
        raise ConfigError(f"{name} must be a number of seconds >= 0 (got {v!r})")


def infer_step(t: np.ndarray, duration: float | None) -> float:
    # Key-frame-only sampling has no fixed step: the usual distance between frames stands in.
    d = np.diff(t)
    d = d[d > 0]
    if d.size:
        return float(np.median(d))
    if t.size and duration is not None and duration > t[0]:
        return float(duration - t[0])
    return 0.0


def face_ranges(times: Sequence[float], probs: Sequence[float], *, on: float = 0.6,
                off: float = 0.4, min_gap: float | None = None, min_duration: float = 0.0,
                step: float | None = None, duration: float | None = None) -> list[FaceRange]:
    """Merge per-frame P(face) into time ranges with a face, with hysteresis.

    A range starts at a frame with ``P >= on`` and goes on while ``P >= off``. A dip below
    ``off`` ends it only if the dip lasts more than ``min_gap`` seconds (first low frame to the
    frame that recovers; a dip that runs to the last frame always ends it). Ranges shorter than
    ``min_duration`` are dropped. Lengths are compared with a slack of ``step / 2``, because
    sampled frame times jitter by up to one video frame around the ticks.

    A frame at ``t`` stands for ``[t, t + step)``: a range ends at its last frame's time plus
    ``step``, or at the next sampled frame's time or ``duration`` if either comes sooner.

    Args:
        times: frame times in seconds, non-decreasing, shape (N,).
        probs: P(face) of each frame in [0, 1], shape (N,).
        on: P(face) at or above which a range starts.
        off: P(face) below which a range may end (``off <= on``).
        min_gap: the longest dip below ``off`` that is bridged, in seconds (default: ``step``,
            so one low frame does not split a range but two do; 0 bridges nothing).
        min_duration: drop ranges shorter than this, in seconds.
        step: seconds between sampling ticks (``1 / fps``); default: the median distance
            between the frames.
        duration: the video's length in seconds, if known (no range ends after it).

    Returns:
        :class:`FaceRange` ``(start_s, end_s, peak_p)`` tuples in time order.

    Raises:
        ConfigError: bad thresholds or lengths, mismatched or unordered inputs, NaN scores.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if t.shape != p.shape:
        raise ConfigError(f"times and probs must have one value per frame (got {t.size} times "
                          f"and {p.size} probabilities)")
    check_thresholds(on, off)
    check_seconds("min_gap", min_gap, allow_none=True)
    check_seconds("min_duration", min_duration)
    check_seconds("step", step, allow_none=True)
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
        raise ConfigError("times must be finite and in non-decreasing order (seconds)")
    if not np.all((p >= 0) & (p <= 1)):  # also catches NaN
        bad = int(np.flatnonzero(~((p >= 0) & (p <= 1)))[0])
        raise ConfigError(f"probs must be probabilities in [0, 1]; frame {bad} "
                          f"(at {t[bad]:.3f} s) has {float(p[bad])!r}")
    n = t.size
    step = infer_step(t, duration) if step is None else float(step)
    gap = step if min_gap is None else float(min_gap)
    slack = step / 2
    out: list[FaceRange] = []

    def close(first: int, last_in: int, peak: float) -> None:
        end = t[last_in] + step
        if last_in + 1 < n:
            end = min(end, t[last_in + 1])
        if duration is not None and duration > t[last_in]:
            end = min(end, duration)
        out.append(FaceRange(float(t[first]), float(end), float(peak)))

    first = last_in = dip = None  # current range's first frame, last frame >= off, dip start
    peak = 0.0
    for i in range(n):
        if first is not None:
            if p[i] >= off:
                if dip is None or t[i] - t[dip] <= gap + slack:
                    dip, last_in, peak = None, i, max(peak, p[i])
                    continue
                close(first, last_in, peak)
                first = None
            else:
                if dip is None:
                    dip = i
                continue
        if p[i] >= on:
            first = last_in = i
            dip, peak = None, p[i]
    if first is not None:
        close(first, last_in, peak)
    return [r for r in out if r.duration_s >= min_duration - 1e-9]
