"""Finding the layer to read: by module name or ``"penultimate"``.

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

``"blocks"`` (the top-level stages or blocks of the model family) and globs (names with
``*``, ``?`` or ``[``) name several layers: :mod:`dse_monitor.capture.layer_sets` resolves
them. Any other name is looked up in ``model.named_modules()``; an unknown name raises
:class:`LayerNotFoundError` listing the closest names (:mod:`difflib`). Names of compiled
models are accepted with or without ``torch.compile``'s ``_orig_mod`` level and always
shown without it.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

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
