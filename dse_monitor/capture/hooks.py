"""Forward hooks that are always removed, and an eval-mode guard that restores every module's mode."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .layers import Layer
from .pooling import Pooling, check_pooling, pool_features


class FeatureCapture:
    """Reads pooled features of some layers during forward passes.

    Use it as a context manager: the hooks exist only inside the ``with`` block and are
    removed on exit, also when the forward pass raises. After each forward pass,
    :meth:`take` returns ``{layer.name: [B, D] float32}`` from the *last* call of each
    layer's module (a module called several times per forward is read at its last call).

    Example:
        >>> from dse_monitor.capture.layers import resolve_layer
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with FeatureCapture([resolve_layer(net, "1")]) as cap:
        ...     _ = net(torch.ones(5, 4))
        ...     cap.take()["1"].shape
        torch.Size([5, 3])
        >>> len(net[1]._forward_hooks)
        0
    """

    def __init__(self, layers: Sequence[Layer], pooling: Pooling = "mean") -> None:
        self.layers = list(layers)
        self.pooling = check_pooling(pooling)
        self._last: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _output_hook(self, name: str):
        def hook(_module: nn.Module, _args, output) -> None:
            self._last[name] = pool_features(output, self.pooling)

        return hook

    def _input_hook(self, name: str):
        def hook(_module: nn.Module, args, kwargs) -> None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            self._last[name] = pool_features(first, self.pooling)

        return hook

    def register(self) -> None:
        """Register one hook per layer (idempotent)."""
        if self._handles:
            return
        try:
            for layer in self.layers:
                if layer.read == "input":
                    h = layer.module.register_forward_pre_hook(self._input_hook(layer.name), with_kwargs=True)
                else:
                    h = layer.module.register_forward_hook(self._output_hook(layer.name))
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove every hook this object registered; safe to call twice."""
        while self._handles:
            self._handles.pop().remove()
        self._last.clear()

    def take(self) -> dict[str, torch.Tensor]:
        """Features captured since the last call; raises if a layer did not run."""
        missing = [layer.name for layer in self.layers if layer.name not in self._last]
        if missing:
            raise RuntimeError(
                f"layer(s) {missing} did not run in the forward pass; choose layers that forward() uses."
            )
        out, self._last = self._last, {}
        return out

    def __enter__(self) -> "FeatureCapture":
        self.register()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@contextmanager
def capture(layers: Sequence[Layer], pooling: Pooling = "mean") -> Iterator[FeatureCapture]:
    """``with capture(layers) as cap: model(x); feats = cap.take()`` (see :class:`FeatureCapture`)."""
    with FeatureCapture(layers, pooling) as cap:
        yield cap


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore *each* module's own mode afterwards.

    ``model.train()`` would not do: a frozen sub-module kept in eval mode must stay so.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    >>> _ = net[0].eval()
    >>> with eval_mode(net):
    ...     net.training, net[1].training
    (False, False)
    >>> net.training, net[0].training, net[1].training
    (True, False, True)
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
