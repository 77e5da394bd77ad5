"""Layer sets: several layers from one specification (globs, the ``"blocks"`` preset, lists).

:func:`resolve_layers` turns ``layers=...`` into a list of :class:`~.layers.Layer`: module
names, ``"penultimate"`` (see :mod:`dse_monitor.capture.layers`), globs matched part by part
over the dotted module names (``"backbone.layer*"`` is ``backbone.layer1`` ..
``backbone.layer4``, not their children; ``**`` spans any number of parts), and
``"blocks"``, the top-level stages or blocks of timm / torchvision / Hugging Face
families (:func:`find_blocks`).
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .compiled import unwrap, user_name
from .layers import (
    BLOCKS,
    Layer,
    LayerNotFoundError,
    _by_depth,
    _closest,
    _depth,
    _top_level,
    is_glob,
    named_modules,
    resolve_layer,
)


def _match_parts(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_parts(pattern[1:], parts[1:])


def match_modules(model: nn.Module, pattern: str) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` whose dotted name matches ``pattern`` part by part, in definition order.

    ``*`` stays within one part of the name; ``**`` matches any number of parts. Raises
    :class:`LayerNotFoundError` naming close names when nothing matches.

    >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
    >>> [name for name, _ in match_modules(net, "*")], [name for name, _ in match_modules(net, "0.*")]
    (['0', '1'], ['0.0', '0.1'])
    """
    pattern_parts = user_name(pattern).split(".")
    found = [(n, m) for n, m in named_modules(model) if n and _match_parts(pattern_parts, n.split("."))]
    if not found:
        names = [n for n, _ in named_modules(model) if n]
        raise LayerNotFoundError(
            f"layer pattern {pattern!r} matches no module of {type(model).__name__} (each '*' matches within one "
            f"part of a dotted name; '**' spans parts); closest module names: {_closest(model, pattern, names)}."
        )
    return found


#: Names that timm, torchvision and Hugging Face give the container of a model's stages or blocks.
BLOCK_CONTAINERS = ("blocks", "layers", "layer", "stages", "h", "block")
_RESNET_STAGE = re.compile(r"layer\d+")


def _composite(module: nn.Module) -> bool:
    return len(module._modules) > 0  # a block or stage has parts; a bare Linear or ReLU is no block


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(k, unwrap(c)) for k, c in module._modules.items() if c is not None]


def _block_sets(path: str, module: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The stage/block sets that ``module`` holds directly (names relative to the model)."""
    def full(*parts: str) -> str:
        return ".".join(p for p in (path, *parts) if p)

    sets = []
    stages = [(full(k), c) for k, c in _children(module) if _RESNET_STAGE.fullmatch(k) and _composite(c)]
    if len(stages) >= 2:  # ResNet, timm and torchvision: layer1 .. layer4
        sets.append(stages)
    for attr in BLOCK_CONTAINERS:
        box = module._modules.get(attr)
        box = unwrap(box) if box is not None else None
        if isinstance(box, (nn.Sequential, nn.ModuleList)) and len(box) and all(_composite(c) for _, c in _children(box)):
            sets.append([(full(attr, k), c) for k, c in _children(box)])
    features = module._modules.get("features")
    if isinstance(features, nn.Sequential):  # torchvision ConvNeXt / Swin: stages between stem and downsamplers
        blocks = [
            (full("features", k), c)
            for k, c in _children(features)
            if isinstance(c, nn.Sequential) and len(c) and all(type(b).__name__.endswith("Block") for b in c)
        ]
        if blocks:
            sets.append(blocks)
    return sets


def _channels_last(owner: nn.Module) -> bool:
    """The family's stages output ``[B, H, W, C]``: timm models that say so, torchvision Swin."""
    if getattr(owner, "output_fmt", None) == "NHWC":
        return True
    return type(owner._modules.get("permute")).__name__ == "Permute"


def find_blocks(model: nn.Module) -> list[Layer]:
    """The top-level stages or blocks of the model family, read at their outputs.

    Searched breadth-first, so a LightningModule or any wrapper holding the model is fine;
    the shallowest module holding a set wins (all sets at that depth, e.g. an encoder's and
    a decoder's). Found sets: ``layer1``..``layerN`` (ResNet), ``blocks.N`` (timm ViT,
    XCiT), ``stages.N`` (timm ConvNeXt), ``layers.N`` (timm Swin, LLaMA-like, torchvision
    ViT ``encoder.layers``), ``encoder.layer.N`` (BERT; HF ViT before transformers 5), ``h.N`` (GPT-2-like),
    ``block.N`` (T5), and the block stages of torchvision's ``features`` (ConvNeXt, Swin).

    >>> import torchvision
    >>> [layer.name for layer in find_blocks(torchvision.models.resnet18())]
    ['layer1', 'layer2', 'layer3', 'layer4']
    """
    best_depth, found = None, []
    for path, module in _by_depth(model):
        if best_depth is not None and _depth(path) > best_depth:
            break
        for block_set in _block_sets(path, module):
            best_depth = _depth(path)
            nhwc = _channels_last(module)
            found.extend(Layer(name, name, m, "output", nhwc) for name, m in block_set)
    if not found:
        top = _top_level(model)
        raise LayerNotFoundError(
            f"layers={BLOCKS!r} found no stages or blocks in {type(model).__name__} (looked for children "
            f"layer1..layerN and containers named {', '.join(BLOCK_CONTAINERS)}); its top-level modules: {top}. "
            "Name the layers or give a glob, e.g. layers='backbone.blocks.*'."
        )
    return found


def resolve_layers(
    model: nn.Module, spec: str | Sequence[str], run_forward: Callable[[], Any] | None = None
) -> list[Layer]:
    """Resolve a layer specification to a list of :class:`Layer`, duplicates removed.

    Args:
        model: the module to search (e.g. the LightningModule).
        spec: a string or a list of strings, each a module name, a glob pattern,
            ``"penultimate"`` or ``"blocks"``.
        run_forward: see :func:`resolve_layer`.

    Layers come in the model's definition order (``named_modules()``, which follows the
    data flow in most models; a layer read at its input comes before one read at the
    output of the same module), whatever the order of ``spec``; a module read the same
    way twice is kept once.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> [layer.name for layer in resolve_layers(net, ["layer[34]", "blocks", "penultimate"])]
        ['layer1', 'layer2', 'layer3', 'layer4', 'penultimate']
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items or not all(isinstance(item, str) and item for item in items):
        raise LayerNotFoundError(f"layers must be a non-empty string or list of non-empty strings, got {spec!r}")
    layers: list[Layer] = []
    for item in items:
        if item == BLOCKS:
            layers.extend(find_blocks(model))
        elif is_glob(item):
            layers.extend(Layer(name, name, m, "output") for name, m in match_modules(model, item))
        else:
            layers.append(resolve_layer(model, item, run_forward))
    unique: dict[tuple[int, str], Layer] = {}
    for layer in layers:
        unique.setdefault((id(layer.module), layer.read), layer)
    order = {id(m): i for i, (_, m) in enumerate(named_modules(model))}
    return sorted(unique.values(), key=lambda layer: (order.get(id(layer.module), len(order)), layer.read != "input"))


def describe_layers(layers: Sequence[Layer]) -> str:
    """The one info line listing the resolved layers.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> describe_layers(resolve_layers(net, ["0", "penultimate"], lambda: net(__import__("torch").zeros(1, 4))))
    'DSEMonitor: layers resolved: 0, penultimate (input of 2)'
    """
    def one(layer: Layer) -> str:
        if layer.name == layer.module_name:
            return layer.name
        where = "input of" if layer.read == "input" else "output of"
        return f"{layer.name} ({where} {layer.module_name or type(layer.module).__name__})"

    return "DSEMonitor: layers resolved: " + ", ".join(one(layer) for layer in layers)


#: Pooled features equal within this fraction of their RMS norm are the same features: two
#: poolings of one tensor (a stage's output mean-pooled here, the classifier's input pooled by
#: the model's own ``AdaptiveAvgPool2d``) differ only by float rounding (~1e-7 of the magnitude).
IDENTICAL_TOLERANCE = 1e-5


def identical_layers(features: dict[str, Any]) -> dict[str, str]:
    """``{duplicate: original}`` for layers whose pooled features ``[N, D]`` equal an earlier layer's.

    Equal means the same shape and ``max |a - b| <= IDENTICAL_TOLERANCE * RMS(a)``, e.g.
    ``layers=["blocks", "penultimate"]`` on a ResNet: ``layer4`` mean-pooled is the input of
    ``fc``. Checked at every measurement (O(N D) per pair, nothing next to a DSE), so two
    layers that only coincide at one epoch are measured apart at the others. Non-finite
    features are never identical.

    >>> z = torch.randn(8, 4)
    >>> identical_layers({"layer4": z, "penultimate": z.clone() * (1 + 1e-7), "other": z + 1})
    {'penultimate': 'layer4'}
    """
    out: dict[str, str] = {}
    names = list(features)
    for j, later in enumerate(names):
        b = features[later]
        for earlier in names[:j]:
            a = features[earlier]
            if earlier in out or a.shape != b.shape or not bool(torch.isfinite(a).all()):
                continue
            scale = float(torch.linalg.vector_norm(a.double())) / max(1, a.numel()) ** 0.5
            if float((a.double() - b.double()).abs().max()) <= IDENTICAL_TOLERANCE * scale:
                out[later] = earlier
                break
    return out
