"""Finding the layers to read: by module name, glob, ``"penultimate"`` or ``"blocks"``.

``"penultimate"`` is the representation that feeds the final classifier, read as the
*input* of that classifier, found in this order:

1. timm: the module returned by ``get_classifier()`` of the shallowest submodule that
   has one (``forward_head(pre_logits=True)`` returns exactly that input);
2. torchvision and Hugging Face: the shallowest child named ``fc``, ``classifier``,
   ``head``, ``heads`` (torchvision, HF ``*ForSequenceClassification`` /
   ``*ForImageClassification``), ``score`` (HF decoder classifiers) or ``lm_head``
   (HF causal LMs: the final hidden states, ``[B, T, C]``, pooled over real tokens);
3. otherwise the last :class:`torch.nn.Linear` that runs in ``forward``.

With an example forward pass (``run_forward``), rules 1 and 2 only count when that
module actually runs: a timm backbone used through ``forward_features`` under the
user's own head skips its ``get_classifier()`` module, and the next rule applies.

``"blocks"`` is the top-level stages or blocks of the model family (:func:`find_blocks`).
A name with ``*``, ``?`` or ``[`` is a glob over module names, matched part by part
(``"backbone.layer*"`` is ``backbone.layer1`` .. ``backbone.layer4``, not their
children; ``**`` spans any number of parts). Any other name is looked up in
``model.named_modules()``; an unknown name raises :class:`LayerNotFoundError` listing
the closest names (:mod:`difflib`). Names of compiled models are accepted with or
without ``torch.compile``'s ``_orig_mod`` level and always shown without it.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from .compiled import eager, is_compiled_wrapper, unwrap, user_name

PENULTIMATE = "penultimate"
BLOCKS = "blocks"
#: Child names torchvision, Hugging Face (and most hand-written models) give the final classifier.
CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads", "score", "lm_head")


class LayerNotFoundError(ValueError):
    """A configured layer name does not exist in the model (a configuration error)."""


@dataclass(frozen=True)
class Layer:
    """Where to read a representation.

    Attributes:
        name: the name the user gave (``"penultimate"`` or a module path); used in log keys.
        module_name: the module's path in ``named_modules()`` (``""`` for the root).
        module: the module itself.
        read: ``"output"`` (forward hook) or ``"input"`` (forward pre-hook, first positional input).
        channels_last: the module's 4-D output is ``[B, H, W, C]`` (timm and torchvision Swin
            stages found by ``"blocks"``); it is pooled as ``[B, C, H, W]``.
    """

    name: str
    module_name: str
    module: nn.Module
    read: str = "output"
    channels_last: bool = False


def _depth(path: str) -> int:
    return 0 if path == "" else path.count(".") + 1


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model.named_modules()`` in definition (pre-)order, with user-facing names: a
    ``torch.compile`` wrapper is replaced by its eager module under the same name.

    >>> [name for name, _ in named_modules(nn.Sequential(nn.Linear(1, 1)))]
    ['', '0']
    """
    seen: set[int] = set()
    out = []
    for path, m in model.named_modules(remove_duplicate=False):
        if is_compiled_wrapper(m) or id(m) in seen:
            continue
        seen.add(id(m))
        out.append((user_name(path), m))
    return out


def _by_depth(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # pre-order; a stable sort by depth gives breadth-first order.
    return sorted(named_modules(model), key=lambda item: _depth(item[0]))


def _top_level(model: nn.Module) -> str:
    return ", ".join(repr(n) for n, _ in named_modules(model) if n and "." not in n) or "(none)"


def _closest(model: nn.Module, name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    if not close:  # nothing similar: show the top-level names at least
        close = [n for n in names if "." not in n][:8]
    return ", ".join(repr(n) for n in close) or "(the model has no submodules)"


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``""`` is the model itself).

    Raises :class:`LayerNotFoundError` naming the closest module names.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> find_module(net, "2")
    Linear(in_features=3, out_features=2, bias=True)
    >>> try:
    ...     find_module(net, "3")
    ... except LayerNotFoundError as err:
    ...     print(str(err).split(";")[1])
     closest module names: '0', '1', '2'. Use a name from model.named_modules(), a glob, 'penultimate' or 'blocks'.
    """
    modules = dict(named_modules(model))
    if user_name(name) in modules:
        return modules[user_name(name)]
    shown = _closest(model, name, [n for n in modules if n])
    raise LayerNotFoundError(
        f"layer {name!r} is not a module of {type(model).__name__}; closest module names: {shown}. "
        f"Use a name from model.named_modules(), a glob, {PENULTIMATE!r} or {BLOCKS!r}."
    )


def _path_of(model: nn.Module, module: nn.Module) -> str | None:
    module = unwrap(module)
    for path, m in named_modules(model):
        if m is module:
            return path
    return None


def timm_classifier(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(path, module)`` of ``get_classifier()`` of the shallowest submodule defining it, else None."""
    for path, m in _by_depth(model):
        get = getattr(m, "get_classifier", None)
        if not callable(get):
            continue
        try:
            clf = get()
        except Exception:  # a user method of the same name with other needs
            continue
        if isinstance(clf, (tuple, list)) and clf:  # e.g. distilled ViTs: (head, head_dist)
            clf = clf[0]
        if isinstance(clf, nn.Module):
            found = _path_of(model, clf)
            if found is not None:
                return found, clf
    return None


def named_classifier(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(path, module)`` of the shallowest child named fc / classifier / head / heads, else None.

    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    ...         self.head = nn.Linear(8, 2)
    >>> named_classifier(Net())[0]
    'head'
    """
    for path, m in _by_depth(model):
        for attr in CLASSIFIER_NAMES:
            child = m._modules.get(attr)
            if isinstance(child, nn.Module):
                return (f"{path}.{attr}" if path else attr), unwrap(child)
    return None


def last_linear_in_forward(model: nn.Module, run_forward: Callable[[], Any]) -> tuple[str, nn.Module]:
    """``(path, module)`` of the last :class:`~torch.nn.Linear` called while ``run_forward()`` runs.

    Pre-hooks on every Linear record the call order; they are removed afterwards, also
    when the forward pass raises.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> import torch
    >>> last_linear_in_forward(net, lambda: net(torch.zeros(1, 4)))[0]
    '2'
    """
    calls: list[str] = []
    handles = []
    try:
        for path, m in named_modules(model):
            if isinstance(m, nn.Linear):
                handles.append(m.register_forward_pre_hook(lambda _m, _a, p=path: calls.append(p)))
        with eager(model):  # hooks do not fire inside a compiled graph
            run_forward()
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise LayerNotFoundError(
            f"could not find the penultimate layer of {type(model).__name__}: it has no get_classifier(), "
            f"no child named {', '.join(CLASSIFIER_NAMES)}, and no nn.Linear runs in forward. "
            f"Name the layer to read explicitly (layers='<module name>'); its top-level modules: {_top_level(model)}."
        )
    return calls[-1], find_module(model, calls[-1])


def resolve_layer(model: nn.Module, name: str, run_forward: Callable[[], Any] | None = None) -> Layer:
    """Resolve a configured layer name to a :class:`Layer`.

    Args:
        model: the module to search (e.g. the LightningModule).
        name: a module path from ``model.named_modules()`` or ``"penultimate"``.
        run_forward: a no-argument callable running one forward pass; only needed when
            "penultimate" falls back to the last Linear that runs in ``forward``.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> import torch
        >>> layer = resolve_layer(net, "penultimate", lambda: net(torch.zeros(1, 4)))
        >>> layer.module_name, layer.read
        ('3', 'input')
        >>> resolve_layer(net, "2").read
        'output'
    """
    if not isinstance(name, str) or not name:
        raise LayerNotFoundError(f"layer names must be non-empty strings, got {name!r}")
    if name == BLOCKS or is_glob(name):
        raise LayerNotFoundError(f"{name!r} names several layers; use resolve_layers() for it")
    if name != PENULTIMATE:
        return Layer(user_name(name), user_name(name), find_module(model, name), "output")
    candidates = [c for c in (timm_classifier(model), named_classifier(model)) if c is not None]
    if run_forward is None:
        if not candidates:
            raise LayerNotFoundError(
                f"{type(model).__name__} has no get_classifier() and no child named {', '.join(CLASSIFIER_NAMES)}; "
                f"finding the last nn.Linear needs an example forward pass. Its top-level modules: {_top_level(model)}."
            )
        return Layer(name, *candidates[0], "input")
    ran = _modules_called(model, [m for _, m in candidates], run_forward)
    found = next(((path, m) for path, m in candidates if m in ran), None)
    if found is None:
        found = last_linear_in_forward(model, run_forward)
    return Layer(name, found[0], found[1], "input")


def _modules_called(model: nn.Module, modules: list[nn.Module], run_forward: Callable[[], Any]) -> list[nn.Module]:
    """Which of ``modules`` run while ``run_forward()`` runs (pre-hooks, always removed)."""
    called: list[nn.Module] = []
    handles = []
    try:
        for m in {id(m): m for m in modules}.values():
            handles.append(m.register_forward_pre_hook(lambda mod, _args: called.append(mod)))
        with eager(model):
            run_forward()
    finally:
        for h in handles:
            h.remove()
    return called


def is_glob(name: str) -> bool:
    """True when ``name`` is a glob pattern (it has ``*``, ``?`` or ``[``)."""
    return any(c in name for c in "*?[")


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
