"""What a MODEL of ``dse-monitor score`` can be, and loading it offline.

A MODEL is one of:

- a checkpoint file (``.ckpt``, ``.pt``, ``.pth``) written by Lightning: rebuilt with
  ``load_from_checkpoint`` of its LightningModule class (``model_class``, default the
  main job's :class:`~dse_monitor.train.model.ImageClassifier`; a ``_class_path`` in
  the checkpoint's hyperparameters wins);
- ``timm:NAME`` or ``torchvision:NAME`` (a bare ``NAME`` is tried in timm, then in
  torchvision) with pretrained weights read only from the local cache, or
  ``timm:NAME=FILE`` / ``torchvision:NAME=FILE`` with the weights in ``FILE``.
  Nothing is ever downloaded: a missing weight raises :class:`WeightsNotFoundError`
  naming the path to put it at;
- any other existing file: a list of MODEL lines (blank lines and ``#`` comments skipped).
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

__all__ = ["ModelSpec", "WeightsNotFoundError", "expand_models", "load_model", "parse_model"]

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
DEFAULT_MODEL_CLASS = "dse_monitor.train.model.ImageClassifier"


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine (and ``score`` never downloads)."""


@dataclass(frozen=True)
class ModelSpec:
    """One MODEL: ``text`` as given, ``kind`` (checkpoint, timm, torchvision), ``name``, optional weights file."""

    text: str
    kind: str
    name: str
    weights: str | None = None


def expand_models(models: Sequence[str]) -> list[str]:
    """MODEL arguments with list files replaced by their lines (in order, duplicates dropped).

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "models.txt")
    ...     _ = open(path, "w").write("timm:resnet18\\n# a comment\\n\\ntorchvision:resnet18\\n")
    ...     expand_models([path, "timm:resnet18", "a.ckpt"])
    ['timm:resnet18', 'torchvision:resnet18', 'a.ckpt']
    """
    out: list[str] = []
    for text in models:
        path = Path(text)
        if path.is_file() and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
            items = [ln for ln in lines if ln]
        else:
            items = [text]
        out.extend(i for i in items if i not in out)
    return out


def parse_model(text: str) -> ModelSpec:
    """Which kind of MODEL ``text`` is (no file is read, nothing is loaded).

    >>> parse_model("timm:resnet18=/w/r18.safetensors")
    ModelSpec(text='timm:resnet18=/w/r18.safetensors', kind='timm', name='resnet18', weights='/w/r18.safetensors')
    >>> parse_model("runs/a/epoch=3-step=48.ckpt").kind
    'checkpoint'
    >>> parse_model("resnet50").kind
    'timm'
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a MODEL must be a non-empty string, got {text!r}")
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if not (sep and kind in ("timm", "torchvision")):
        if Path(text).suffix.lower() in CHECKPOINT_SUFFIXES or Path(text).exists():
            return ModelSpec(text, "checkpoint", text)
        kind, rest = _library_of(text.partition("=")[0]), text
    name, _, weights = rest.partition("=")
    return ModelSpec(text, kind, name.strip(), weights.strip() or None)


def _library_of(name: str) -> str:
    import timm

    if timm.is_model(name):
        return "timm"
    from torchvision import models as tvm

    if name in tvm.list_models():
        return "torchvision"
    known = list(timm.list_models()) + list(tvm.list_models())
    close = ", ".join(difflib.get_close_matches(name, known, n=5, cutoff=0.5)) or "none"
    raise ValueError(
        f"MODEL {name!r} is not a checkpoint file, a timm model or a torchvision model (closest names: {close}). "
        "Give a .ckpt path, timm:NAME or torchvision:NAME."
    )


def load_model(spec: ModelSpec | str, model_class: str | type | None = None) -> nn.Module:
    """The model of ``spec`` on the CPU in eval mode, weights from local files only.

    >>> load_model("timm:test_resnet=/nowhere/test_resnet.safetensors")
    Traceback (most recent call last):
    ...
    dse_monitor.train.score_models.WeightsNotFoundError: weights file /nowhere/test_resnet.safetensors of timm:test_resnet not found
    """
    spec = parse_model(spec) if isinstance(spec, str) else spec
    loader = {"checkpoint": _load_checkpoint, "timm": _load_timm, "torchvision": _load_torchvision}[spec.kind]
    model = loader(spec, model_class) if spec.kind == "checkpoint" else loader(spec)
    return model.cpu().eval()


def import_class(path: str | type) -> type:
    """``"pkg.module.Class"`` -> the class (a class passes through)."""
    if isinstance(path, type):
        return path
    module, _, name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import the model class {path!r} ({err}); give it as pkg.module.Class") from err
    if not isinstance(cls, type):
        raise ValueError(f"the model class {path!r} is not a class; give it as pkg.module.Class")
    return cls


def _load_checkpoint(spec: ModelSpec, model_class: str | type | None) -> nn.Module:
    import torch

    path = Path(spec.name)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); save it with Trainer or "
                         "ModelCheckpoint, or give timm:NAME=FILE for a bare state dict")
    hparams = ckpt.get("hyper_parameters") or {}
    cls = import_class(hparams.get("_class_path") or model_class or DEFAULT_MODEL_CLASS)
    loader = getattr(cls, "load_from_checkpoint", None)
    if loader is None:
        raise ValueError(f"{cls.__module__}.{cls.__qualname__} is not a LightningModule (no load_from_checkpoint); "
                         "pass --model-class of the LightningModule that wrote the checkpoint")
    try:
        return loader(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - rewrapped with the fix
        raise RuntimeError(
            f"could not rebuild {cls.__qualname__} from {path} ({type(err).__name__}: {err}). "
            "Pass --model-class pkg.module.Class of the LightningModule that wrote it."
        ) from err


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return os.path.expanduser("~/.cache/huggingface/hub")


def _cached_timm_file(cfg: Any) -> str | None:
    """The local file of a timm pretrained config: the Hugging Face cache, then the torch hub cache."""
    repo = getattr(cfg, "hf_hub_id", None)
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, _, revision = repo.partition("@")
            names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
            for filename in names + ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]:
                found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = getattr(cfg, "url", None)
    if url:
        local = _hub_checkpoint_path(url)
        if os.path.isfile(local):
            return local
    return None


def _hub_checkpoint_path(url: str) -> str:
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url.split("?")[0]))


def _load_timm(spec: ModelSpec) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(spec.name):
        raise ValueError(f"{spec.name!r} is not a timm model name (timm.list_models())")
    weights = spec.weights
    if weights is None:
        cfg = get_pretrained_cfg(spec.name)
        if cfg is None:
            raise WeightsNotFoundError(f"timm has no pretrained weights for {spec.name!r}; give timm:{spec.name}=FILE")
        weights = _cached_timm_file(cfg)
        if weights is None:
            where = []
            if cfg.hf_hub_id:
                where.append(f"the Hugging Face cache {_hf_cache_dir()} (repo {cfg.hf_hub_id.partition('@')[0]}, "
                             f"file model.safetensors; fetch it once where there is network with "
                             f"`hf download {cfg.hf_hub_id.partition('@')[0]}`)")
            if cfg.url:
                where.append(f"{_hub_checkpoint_path(cfg.url)}")
            raise WeightsNotFoundError(
                f"timm weights of {spec.name!r} are not on this machine and score never downloads. Put them at "
                f"{' or at '.join(where) or 'a local file'}, or anywhere and pass timm:{spec.name}=/path/to/weights "
                "(.safetensors, .pth or .bin)."
            )
    if not os.path.isfile(weights):
        raise WeightsNotFoundError(f"weights file {weights} of timm:{spec.name} not found")
    return timm.create_model(spec.name, pretrained=True, pretrained_cfg_overlay=dict(file=weights))


def _load_torchvision(spec: ModelSpec) -> nn.Module:
    import torch
    from torchvision import models as tvm

    if spec.name not in tvm.list_models():
        raise ValueError(f"{spec.name!r} is not a torchvision model name (torchvision.models.list_models())")
    try:
        weights = tvm.get_model_weights(spec.name).DEFAULT
    except (ValueError, AttributeError):
        weights = None
    if spec.weights is not None:
        if not os.path.isfile(spec.weights):
            raise WeightsNotFoundError(f"weights file {spec.weights} of torchvision:{spec.name} not found")
        kwargs = {"num_classes": len(weights.meta["categories"])} if weights is not None else {}
        model = tvm.get_model(spec.name, weights=None, **kwargs)
        model.load_state_dict(torch.load(spec.weights, map_location="cpu", weights_only=True))
        return model
    if weights is None:
        raise WeightsNotFoundError(
            f"torchvision has no pretrained weights for {spec.name!r}; give torchvision:{spec.name}=FILE")
    local = _hub_checkpoint_path(weights.url)
    if not os.path.isfile(local):
        raise WeightsNotFoundError(
            f"torchvision weights of {spec.name!r} ({weights}) are not on this machine and score never downloads. "
            f"Put {weights.url} at {local}, or anywhere and pass torchvision:{spec.name}=/path/to/weights.pth."
        )
    return tvm.get_model(spec.name, weights=weights)  # reads the file in the hub cache, no download
