"""Loading the DINOv2/DINOv3 backbones offline: torch.hub clones, DINOv3's backbones module, transformers folders.

Layer: model zoo support for :mod:`nahual.models.dino`; torch and transformers are imported inside the
functions, when a model loads. Nothing here downloads: a torch.hub repo is a folder (a clone, or the
torch hub cache's ``<owner>_<repo>_<ref>`` that ``torch.hub.load`` fills on a machine with internet), a
state dict is a file of the nahual weights cache or a path, and a Hugging Face model is a
``save_pretrained`` folder or a snapshot already in the Hugging Face cache (read with
``HF_HUB_OFFLINE=1``). Every failure a user can cause is one line naming what was looked for and where.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WeightsError
from ..weights import model_dir, parse_weight_name, weight_path

__all__ = ["Backbone", "hf_backbone", "hf_folder", "hub_backbone", "hub_folder", "is_path", "names_hf_folder"]

#: ``owner/name`` or ``owner/name:ref``, as ``torch.hub.load`` takes a GitHub repo.
UPSTREAM_REPO = re.compile(r"([\w.-]+)/([\w.-]+)(?::([\w./-]+))?")
#: Hugging Face ``model_type`` values of the DINO backbones, per family.
HF_TYPES = {"dinov2": ("dinov2", "dinov2_with_registers"), "dinov3": ("dinov3_vit",)}


@dataclass(frozen=True)
class Backbone:
    """A loaded ViT and how to read its normalised CLS and patch tokens.

    Attributes
    ----------
    module : torch.nn.Module
        The network, in eval mode on its device.
    source : str
        ``"hub"`` (``forward_features`` gives ``x_norm_clstoken`` and ``x_norm_patchtokens``, registers apart)
        or ``"hf"`` (``last_hidden_state`` after the final layernorm: CLS, registers, then patches).
    patch : int
        Patch side in pixels; the input's height and width must be multiples of it.
    dim : int
        Width of one token.
    registers : int
        Register (storage) tokens between CLS and the patches in ``last_hidden_state`` (hf only).
    """

    module: Any
    source: str
    patch: int
    dim: int
    registers: int = 0

    def tokens(self, pixels: Any) -> tuple[Any, Any]:
        """The normalised CLS ``(b, dim)`` and patch tokens ``(b, gh * gw, dim)`` of a ``(b, 3, H, W)`` batch."""
        if self.source == "hub":
            features = self.module.forward_features(pixels)
            return features["x_norm_clstoken"], features["x_norm_patchtokens"]
        hidden = self.module(pixel_values=pixels).last_hidden_state
        return hidden[:, 0], hidden[:, 1 + self.registers :]


def is_path(value: str) -> bool:
    """Whether a ``model``/``weights``/``repo`` value is written as a path rather than a name or an id."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1


def hub_folder(repo: str) -> Path:
    """The folder of torch.hub repo ``repo``: a local clone, or ``owner/name[:ref]`` in the torch hub cache.

    ``owner/name`` without a ref is looked for as ``<hub>/owner_name_main``, then ``..._master``, as
    ``torch.hub.load`` falls back when it cannot reach GitHub.

    Raises
    ------
    ConfigError
        One line naming the folder looked at and how to fill it.
    """
    folder = Path(repo).expanduser()
    if folder.is_dir():
        return folder.absolute()
    match = UPSTREAM_REPO.fullmatch(repo)
    if match is None or repo.startswith(("/", ".", "~")):
        raise ConfigError(f"torch.hub repo {repo!r} is neither an existing folder nor owner/name[:ref]")
    import torch

    owner, name, ref = match.groups()
    hub = Path(torch.hub.get_dir())
    refs = [ref] if ref else ["main", "master"]
    candidates = [hub / f"{owner}_{name}_{r.replace('/', '_')}" for r in refs]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"torch.hub repo {repo!r} is not in the torch hub cache (looked at {' and '.join(map(str, candidates))}); "
        f"clone it there (git clone https://github.com/{owner}/{name} {candidates[0]}), or run "
        f"torch.hub.load('{owner}/{name}:{refs[0]}', ...) once on a machine with internet, or pass a clone as repo"
    )


def hub_backbone(folder: Path, entry: str, module_name: str | None, weights: Path, device: Any) -> Backbone:
    """Build hub entry ``entry`` of ``folder`` untrained, load the state dict at ``weights`` (strict).

    Parameters
    ----------
    folder : Path
        The repo: it holds ``hubconf.py`` (DINOv2), or the package of ``module_name``.
    entry : str
        The entry point (``dinov2_vits14``, ``dinov3_vits16``).
    module_name : str or None
        None: ``torch.hub.load(folder, entry, source="local", pretrained=False)``. A module (DINOv3's
        ``dinov3.hub.backbones``, whose repo's ``hubconf.py`` imports torchvision): the entry is called
        from it, imported from ``folder``.
    weights : Path
        A ``torch.save``-d state dict, read with ``weights_only=True``.
    device : torch.device
        Where the model runs.

    Raises
    ------
    ConfigError
        When the folder lacks the hubconf or module, the entry is not there, or it does not build.
    WeightsError
        When the file is no state dict, or its keys or shapes do not fit the model.
    """
    import torch

    if module_name is None:
        if not (folder / "hubconf.py").is_file():
            raise ConfigError(f"torch.hub repo {folder} has no hubconf.py")

        def build(**kwargs: Any) -> Any:
            return torch.hub.load(str(folder), entry, source="local", **kwargs)
    else:
        build = getattr(_import_from(folder, module_name), entry, None)
        if not callable(build):
            raise ConfigError(f"{module_name} of {folder} has no entry point {entry!r}")
    try:
        module = build(pretrained=False)
    except Exception as exc:  # the repo's own code: one line naming the entry
        if "Cannot find callable" in str(exc):  # torch.hub's words for an entry its hubconf lacks
            raise ConfigError(f"torch.hub repo {folder} has no entry point {entry!r} in its hubconf.py") from exc
        raise ConfigError(f"torch.hub entry {entry!r} of {folder} does not build: {_first_line(exc)}") from exc
    _load_state_dict(module, weights, entry)
    module.eval().to(device)
    return Backbone(module, "hub", int(_as_pair(module.patch_size)), int(module.embed_dim))


def hf_folder(model: str, owner: str) -> Path:
    """The local folder of Hugging Face model ``model``: a folder, a weights-cache name, or a cached hub id.

    Raises
    ------
    WeightsError
        One line: a path that is no folder, a cache name not in the cache, or a hub id that is in
        neither the Hugging Face cache nor nahual's, with the commands that put it there.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder.absolute()
    if is_path(model):
        raise WeightsError(f"{owner}: Hugging Face model folder {folder} does not exist (param model={model!r})")
    if "/" not in model:
        return weight_path(owner, model)
    _offline()
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:  # huggingface_hub's LocalEntryNotFoundError and kin: not cached here
        raise WeightsError(
            f"{owner}: Hugging Face model {model!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and servers never download; run `hf download {model}` on a machine with internet (same HF_HOME), "
            f"or save_pretrained it to a folder and pass that folder (or `nahual weights add {owner} NAME FOLDER`)"
        ) from exc


def hf_backbone(folder: Path, family: str, device: Any) -> Backbone:
    """``AutoModel.from_pretrained(folder)`` offline, checked to be a DINO ViT of ``family``.

    Raises
    ------
    ConfigError
        When the folder does not load or holds another kind of model.
    """
    _offline()
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load in the server's log says nothing

    try:
        module = AutoModel.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:  # no config.json, unknown model_type, bad weights
        raise ConfigError(f"Hugging Face model folder {folder} does not load: {_first_line(exc)}") from exc
    config = module.config
    if config.model_type not in HF_TYPES[family]:
        expected = " or ".join(HF_TYPES[family])
        raise ConfigError(f"Hugging Face model {folder} is a {config.model_type!r} model, expected {expected}")
    module.eval().to(device)
    registers = int(getattr(config, "num_register_tokens", 0) or 0)
    return Backbone(module, "hf", int(_as_pair(config.patch_size)), int(config.hidden_size), registers)


def names_hf_folder(model: str, owner: str) -> bool:
    """Whether ``model`` is a hub id or names a folder with ``config.json`` (a path or a weights-cache name)."""
    if "/" in model and not is_path(model):
        return True
    candidates = [Path(model).expanduser()]
    with contextlib.suppress(WeightsError):  # raised for a path: not a cache name
        candidates.append(model_dir(owner) / parse_weight_name(model))
    return any((candidate / "config.json").is_file() for candidate in candidates)


def _offline() -> None:
    """Forbid huggingface_hub and transformers the network; both read these when first imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _import_from(folder: Path, module_name: str) -> Any:
    """Module ``module_name`` imported from the clone ``folder`` (put first on ``sys.path`` for the import).

    Raises
    ------
    ConfigError
        When the clone lacks the module, or this process already imported its package from elsewhere
        (Python keeps one copy of a package per process: use another server for another clone).
    """
    top = module_name.split(".")[0]
    if not (folder / Path(*module_name.split("."))).with_suffix(".py").is_file():
        raise ConfigError(f"{folder} is not a {top} clone: it lacks {'/'.join(module_name.split('.'))}.py")
    loaded = sys.modules.get(top)
    where = [Path(path).resolve() for path in getattr(loaded, "__path__", [])]
    if loaded is not None and (folder / top).resolve() not in where:
        raise ConfigError(f"this server already imported {top} from {where or loaded}; start another one for {folder}")
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{module_name} of {folder} does not import: {_first_line(exc)}") from exc
    finally:
        sys.path.remove(str(folder))


def _load_state_dict(module: Any, path: Path, entry: str) -> None:
    """``module.load_state_dict(torch.load(path, weights_only=True), strict=True)``, errors as one line."""
    import torch

    if not path.is_file():
        raise WeightsError(f"weights of {entry!r} at {path} are not a file (expected a torch state dict .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's refusals (UnpicklingError of weights_only, RuntimeError), OSError, EOFError
        raise WeightsError(f"{path} is not a torch state dict: {_first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, expected a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights {path} do not fit {entry!r}: {' '.join(str(exc).split())[:300]}") from exc


def _as_pair(value: Any) -> int:
    """The patch side of a model that stores it as an int or an ``(h, w)`` pair (square patches)."""
    return value[0] if isinstance(value, tuple | list) else value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
