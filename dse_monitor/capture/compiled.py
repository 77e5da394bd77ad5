"""Running a compiled model eagerly for the probe pass, with the same weights.

A compiled graph would not fire the forward hooks the probe reads, and hooks added to
its modules would make dynamo recompile the training graph. :func:`eager` therefore
swaps, for the duration of a ``with`` block, every compiled piece for its eager original
and restores them all afterwards:

- ``torch.compile(net)`` wrappers (``OptimizedModule``) held as submodules, by their
  ``_orig_mod`` (which shares the parameters);
- a LightningModule compiled as a whole before ``fit`` (Lightning then replaces its
  ``forward`` by the compiled one and keeps the original in ``_compiler_ctx``), by the
  original ``forward``;
- modules compiled in place with ``nn.Module.compile()``, by their plain ``__call__``.

Dynamo is never entered, so the compiled training graph and its guards are untouched.
Module names: ``torch.compile`` puts an ``_orig_mod`` level into ``named_modules()``;
:func:`user_name` removes it, so ``net.layer1`` and ``net._orig_mod.layer1`` are the same layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

#: The attribute under which ``torch.compile`` keeps the eager module.
ORIG = "_orig_mod"


def is_compiled_wrapper(module: nn.Module) -> bool:
    """True for a ``torch.compile(module)`` wrapper (it holds the eager module as ``_orig_mod``)."""
    return isinstance(module._modules.get(ORIG), nn.Module)


def unwrap(module: nn.Module) -> nn.Module:
    """The eager module inside (possibly nested) ``torch.compile`` wrappers.

    >>> net = nn.Linear(2, 2)
    >>> unwrap(net) is net
    True
    """
    while is_compiled_wrapper(module):
        module = module._modules[ORIG]
    return module


def user_name(path: str) -> str:
    """A module path without the ``_orig_mod`` levels that ``torch.compile`` adds.

    >>> user_name("net._orig_mod.layer1"), user_name("_orig_mod.blocks.0"), user_name("_orig_mod")
    ('net.layer1', 'blocks.0', '')
    """
    return ".".join(part for part in path.split(".") if part != ORIG)


def has_compiled(model: nn.Module) -> bool:
    """Whether any piece of ``model`` runs compiled (the three kinds :func:`eager` swaps out).

    >>> has_compiled(nn.Sequential(nn.Linear(2, 2)))
    False
    """
    for module in model.modules():
        ctx = module.__dict__.get("_compiler_ctx")
        if is_compiled_wrapper(module) or module.__dict__.get("_compiled_call_impl") is not None or (
            isinstance(ctx, dict) and "original_forward" in ctx
        ):
            return True
    return False


@contextmanager
def eager(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs without any compiled piece; yields the module to call.

    Everything is restored on exit, also when the block raises.

    Example:
        >>> import torch
        >>> class Wrapper(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.compile(nn.Linear(2, 2))   # compiled lazily, at the first call
        >>> model = Wrapper()
        >>> with eager(model) as m:
        ...     type(m.net).__name__
        'Linear'
        >>> type(model.net).__name__
        'OptimizedModule'
    """
    undo: list = []
    try:
        root = unwrap(model)
        # modules() of the eager root reaches nested wrappers too; swap each for its original
        # (the eager original's own children are then visited in turn)
        for module in root.modules():
            for key, child in list(module._modules.items()):
                if child is not None and is_compiled_wrapper(child):
                    undo.append((module._modules, key, child))
                    module._modules[key] = unwrap(child)
        for module in root.modules():
            ctx = module.__dict__.get("_compiler_ctx")
            if isinstance(ctx, dict) and "original_forward" in ctx and "forward" in module.__dict__:
                undo.append((module.__dict__, "forward", module.__dict__["forward"]))
                module.__dict__["forward"] = ctx["original_forward"]
            if module.__dict__.get("_compiled_call_impl") is not None:
                undo.append((module.__dict__, "_compiled_call_impl", module.__dict__["_compiled_call_impl"]))
                module.__dict__["_compiled_call_impl"] = None
        yield root
    finally:
        for container, key, value in reversed(undo):
            container[key] = value
