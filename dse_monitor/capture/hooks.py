"""Forward hooks that are always removed, and an eval-mode guard that restores every module's mode."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .layers import Layer
from .pooling import Pooling, first_tensor, check_pooling, pool_features


class FeatureCapture:
    """Reads pooled features of some layers during forward passes.

    Use it as a context manager: the hooks exist only inside the ``with`` block and are
    removed on exit, also when the forward pass raises. After each forward pass,
    :meth:`take` returns ``{layer.name: [B, D] float32}`` from the *last* call of each
    layer's module (a module called several times per forward is read at its last call).

    Token sequences are pooled over real tokens only: set :attr:`attention_mask` to the
    current batch's ``[B, T]`` mask (or ``None``) before each forward pass; it stays in
    force until it is set again.

    Example:
        >>> from dse_monitor.capture.layers import resolve_layer
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with FeatureCapture([resolve_layer(net, "1")]) as cap:
        ...     _ = net(torch.ones(5, 4))
        ...     cap.take()["1"].shape
        torch.Size([5, 3])
        >>> len(net[1]._forward_hooks)
        0
        >>> seq = nn.Sequential(nn.Linear(2, 2))              # applied to every token
        >>> with FeatureCapture([resolve_layer(seq, "0")]) as cap:
        ...     cap.attention_mask = torch.tensor([[1, 0, 0]])  # one real token, two pads
        ...     out = seq(torch.randn(1, 3, 2))
        ...     torch.equal(cap.take()["0"], out[:, 0].detach())  # the mean of the real tokens
        True
    """

    def __init__(self, layers: Sequence[Layer], pooling: Pooling = "mean") -> None:
        self.layers = list(layers)
        self.pooling = check_pooling(pooling)
        #: ``[B, T]`` mask of real tokens of the batch going through the model, or None.
        self.attention_mask: torch.Tensor | None = None
        self._last: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _pool(self, name: str, activation) -> None:
        try:
            self._last[name] = pool_features(activation, self.pooling, self.attention_mask)
        except (ValueError, TypeError) as err:
            raise type(err)(f"layer {name!r}: {err}") from err

    def _output_hook(self, layer: Layer):
        def hook(_module: nn.Module, _args, output) -> None:
            if layer.channels_last:
                output = first_tensor(output)
                if output.ndim == 4:  # [B, H, W, C] -> [B, C, H, W]: pool over the spatial grid
                    output = output.permute(0, 3, 1, 2)
            self._pool(layer.name, output)

        return hook

    def _input_hook(self, name: str):
        def hook(_module: nn.Module, args, kwargs) -> None:
            self._pool(name, args[0] if args else next(iter(kwargs.values()), None))

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
                    h = layer.module.register_forward_hook(self._output_hook(layer))
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove every hook this object registered; safe to call twice."""
        while self._handles:
            self._handles.pop().remove()
        self._last.clear()
        self.attention_mask = None

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
