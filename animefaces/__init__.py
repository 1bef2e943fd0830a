"""animefaces: does an anime frame show a character's face?

Pretrained CNN features (max-pooled), cached on disk, and SVMs, after "Detecting Faces in Animes
Using Supervised Domain Adaptation". Importing this package is cheap: torch and the models load
only when used.

    >>> import animefaces
    >>> clf = animefaces.FaceClassifier.load("models/best")     # doctest: +SKIP
    >>> clf.predict("frame.png")                                 # doctest: +SKIP
    Prediction(label='face', score=0.98, ...)
"""

__version__ = "0.1.0"

_LAZY = {
    "FaceClassifier": "api",
    "Prediction": "api",
    "CNNFeatures": "sklearn_api",
    "FeatureExtractor": "features.extract",
    "FeatureCache": "features.cache",
    "get_backbone": "features.backbones",
    "list_backbones": "features.backbones",
    "load_dataset": "data.datasets",
    "run_sweep": "train.sweep",
    "extract_dataset": "features.dataset",
    "extract_frames": "data.frames",
    "sample_frames": "data.video",
    "extract_crops": "data.crops",
    "scan_video": "scan",
    "scan_videos": "scan",
    "face_ranges": "classify.ranges",
    "run_character_sweep": "train.character",
    "CharacterClassifier": "character_api",
    "CharacterPrediction": "character_api",
    "AnimeFacesError": "errors",
    "BadImageError": "errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'animefaces' has no attribute {name!r}")
