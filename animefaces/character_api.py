"""Identify characters with a model saved by ``animefaces sweep --task character``.

    >>> import animefaces
    >>> clf = animefaces.CharacterClassifier.load("models/character-best")   # doctest: +SKIP
    >>> clf.predict("face.png").character                                    # doctest: +SKIP
    'sytwu:kiara'

The model knows only the characters it was trained on: every readable image gets one of them.
Feed it face crops (``animefaces crops``) or frames known to show one character, as in the
GochiUsa_Faces setup; ``ranking`` shows how close the runners-up were.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .api import TrainedClassifier, load_with_extractor

DEFAULT_CHARACTER_MODEL = "models/character-best"
TOP = 3


@dataclass
class CharacterPrediction:
    """The answer for one image.

    Attributes:
        source: the file path, or ``<image 3>`` for in-memory inputs.
        character: the predicted character (a class of the training data); None on error.
        ranking: up to three ``(character, score)`` pairs, best first, by the SVM's
            one-vs-rest decision value (for multi-class SVMs: votes plus a confidence below 1;
            for two characters: +-the binary decision value). Scores are not probabilities.
        error: why the image could not be read.
    """

    source: str
    character: str | None
    ranking: list = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranking"] = [[c, round(float(s), 4)] for c, s in self.ranking]
        return d


class CharacterClassifier(TrainedClassifier):
    """A trained character classifier with its feature extractor; build one with :meth:`load`.
    ``predict`` / ``predict_many`` (shared with :class:`~animefaces.api.FaceClassifier`) return
    :class:`CharacterPrediction`s."""

    def __init__(self, model, extractor, *, path: Path | None = None,
                 cache_dir: os.PathLike | str | None = None):
        super().__init__(model, extractor, path=path, cache_dir=cache_dir)
        self.classes: list[str] = list(model.meta["classes"])

    @classmethod
    def load(cls, path: os.PathLike | str | None = None, *, device: str = "auto", weights=None,
             batch_size: int | None = None, allow_pickle: bool = False,
             cache_dir: os.PathLike | str | None = None) -> "CharacterClassifier":
        """Load a model saved by ``animefaces sweep --task character`` (default:
        ``models/character-best``). Nothing is unpickled unless ``allow_pickle`` (only for a
        model that exists only as a pickle: an early animefaces saved character models so).

        Raises:
            AnimeFacesError: no model there, or a face / no-face model (use FaceClassifier).
            ModelMismatchError: the backbone's weights or preprocessing differ from training.
        """
        model, fx, model_file = load_with_extractor(path or DEFAULT_CHARACTER_MODEL,
                                                    task="character", device=device,
                                                    weights=weights, batch_size=batch_size,
                                                    allow_pickle=allow_pickle)
        return cls(model, fx, path=model_file, cache_dir=cache_dir)

    def _error(self, source: str, reason: str) -> CharacterPrediction:
        return CharacterPrediction(source=source, character=None, error=reason)

    def _answers(self, X, names, inputs, files: bool) -> list[CharacterPrediction]:
        # The answer is the top of the ranking (scikit-learn's predict counts one-vs-one
        # votes only, so on a tie it could name another class than the ranking's first).
        out = []
        for name, row in zip(names, self._scores(X)):
            order = np.argsort(-row, kind="stable")[:TOP]
            out.append(CharacterPrediction(
                source=name, character=self.classes[int(order[0])],
                ranking=[(self.classes[int(j)], float(row[j])) for j in order]))
        return out

    def _scores(self, X) -> np.ndarray:
        """(n, n_classes) one-vs-rest decision values."""
        d = np.asarray(self.model.pipeline.decision_function(X), dtype=np.float64)
        if d.ndim == 1:  # two characters: one binary decision value (> 0: the second class)
            d = np.stack([-d, d], axis=1)
        return d

    def __repr__(self) -> str:
        m = self.model.meta
        return (f"CharacterClassifier(backbone={m.get('backbone')!r}, kernel={m.get('kernel')!r}, "
                f"characters={len(self.classes)}, path={str(self.path)!r})")
