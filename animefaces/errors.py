"""The project's exception types.

Every error raised on purpose by animefaces is an :class:`AnimeFacesError`, so the CLI can print its
message (which names the value, what was expected and how to fix it) without a traceback.
"""


class AnimeFacesError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(AnimeFacesError, ValueError):
    """A config file or option has an unknown key or a bad value."""


class DatasetError(AnimeFacesError):
    """A manifest or data folder is malformed (missing files, bad labels, empty splits...)."""


class BadImageError(AnimeFacesError):
    """An image file cannot be decoded (corrupt, truncated, not an image, too large)."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class BadVideoError(AnimeFacesError):
    """A video file cannot be read (missing, not a video, no video stream, truncated, corrupt)."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


class WeightsNotFoundError(AnimeFacesError):
    """Pretrained weights for a backbone are not available locally."""


class WeightsMismatchError(AnimeFacesError):
    """A weights file exists but its sha256 or contents do not match the backbone."""


class ModelMismatchError(AnimeFacesError):
    """A saved classifier does not fit the features or backbone it is used with."""
