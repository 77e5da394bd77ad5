"""Calling the model with a probe batch as training does, and what the monitor reads from it.

:func:`split_batch` turns a raw batch into a :class:`ProbeBatch`: how to call the module
(``args``, ``kwargs``), the labels, the ``attention_mask`` for pooling token sequences,
and the inputs that DSMI(Z;X) clusters. :func:`call_module` then runs the forward pass.

How a batch is read (without ``batch_fn``):

- a mapping (``dict``, Hugging Face ``BatchEncoding``) whose keys ``module.forward``
  accepts (by name, or through ``**kwargs``) is passed as keyword arguments, labels
  dropped (unless ``forward`` requires them): ``module(input_ids=..., attention_mask=...)``;
- any other mapping: its inputs (the first of :data:`~dse_monitor.capture.probe.INPUT_KEYS`)
  positionally, ``module(batch["image"])``;
- ``(x, y, ...)`` tuples and lists: ``module(x)``, labels ``y``; a mapping ``x`` is read
  as above;
- anything else: ``module(batch)``.

``batch_fn(batch)`` may return ``(inputs, labels)``, ``(inputs, labels, attention_mask)``
or a :class:`ProbeBatch`; ``inputs`` are then read as above. ``forward_fn(module, batch)``
replaces the call itself and receives the raw batch (on the device).

X for DSMI(Z;X): image and other float inputs as they are; token ids (an integer tensor
``[B, T]``, e.g. ``input_ids``) are vocabulary indices, not coordinates, so no X is
given for them (:attr:`ProbeBatch.why_no_x` says so) rather than a meaningless one.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from .compiled import unwrap
from .probe import INPUT_KEYS, LABEL_KEYS, to_device

#: The mask key of Hugging Face tokenizers and collators.
MASK_KEY = "attention_mask"
ForwardFn = Callable[[nn.Module, Any], Any]


@dataclass(frozen=True)
class ProbeBatch:
    """One probe batch, split into what the monitor needs.

    Attributes:
        args, kwargs: the call, ``module(*args, **kwargs)``.
        labels: one label per sample, or None.
        attention_mask: ``[B, T]`` 0/1 mask of real tokens for pooling, or None.
        inputs_for_x: the tensor that DSMI(Z;X) clusters, or None (see ``why_no_x``).
        raw: the batch as the loader gave it (what ``forward_fn`` receives).
        why_no_x: why ``inputs_for_x`` is None, for a one-time message.
        why_no_labels: why ``labels`` is None although the batch has some.
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    inputs_for_x: torch.Tensor | None = None
    raw: Any = None
    why_no_x: str | None = None
    why_no_labels: str | None = None

    def to(self, device: torch.device | str) -> "ProbeBatch":
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            args=to_device(self.args, device),
            kwargs=to_device(self.kwargs, device),
            labels=to_device(self.labels, device),
            attention_mask=to_device(self.attention_mask, device),
            inputs_for_x=to_device(self.inputs_for_x, device),
            raw=to_device(self.raw, device),
        )

    def convert_call(self, fn: Callable[[Any], Any]) -> "ProbeBatch":
        """A copy whose call (``args``, ``kwargs``, ``raw``) went through ``fn``, e.g. a precision
        plugin's ``convert_input``; labels, mask and X are left as they are."""
        return replace(self, args=fn(self.args), kwargs=fn(self.kwargs), raw=fn(self.raw))


def _parameters(module: nn.Module) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named parameters of ``module.forward`` and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(unwrap(module).forward).parameters  # a compiled wrapper takes (*args, **kwargs)
    except (TypeError, ValueError):
        return {}, False
    named = {
        n: p for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _required(p: inspect.Parameter) -> bool:
    return p.default is inspect.Parameter.empty


def _is_token_ids(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim <= 2 and not (x.is_floating_point() or x.is_complex())


def _x_of(inputs: Any, kind: str) -> tuple[torch.Tensor | None, str | None]:
    if isinstance(inputs, torch.Tensor):
        x = inputs
    elif isinstance(inputs, (tuple, list)):
        x = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    else:
        x = None
    if x is None:
        return None, f"the probe {kind} holds no tensor to cluster for DSMI(Z;X)"
    if _is_token_ids(x):
        return None, (
            f"the probe inputs are integer ids {list(x.shape)} (token ids): they index a vocabulary and have "
            "no distances, so DSMI(Z;X) is not measured for them"
        )
    return x, None


def _per_sample(labels: Any, inputs: Any) -> tuple[Any, str | None]:
    """Labels unless they are per token (the shape of the token ids, e.g. a causal LM's targets)."""
    if isinstance(labels, torch.Tensor) and _is_token_ids(inputs) and labels.ndim == 2 and labels.shape == inputs.shape:
        return None, (
            f"the batch's labels {list(labels.shape)} are per token, not one per sample; DSMI(Z;Y) needs "
            "one class per sample (pass batch_fn returning (inputs, labels) to give them)"
        )
    return labels, None


def _split_mapping(batch: Mapping, module: nn.Module, labels: Any = None, mask: Any = None) -> ProbeBatch:
    data = dict(batch)
    label_key = next((k for k in LABEL_KEYS if k in data), None)
    if labels is None and label_key is not None:
        labels = data[label_key]
    if mask is None:
        mask = data.get(MASK_KEY)
    inputs = next((data[k] for k in INPUT_KEYS if k in data), None)
    named, var_kw = _parameters(module)
    keep = {k: v for k, v in data.items() if k not in LABEL_KEYS or (k in named and _required(named[k]))}
    by_name = bool(keep) and all(k in named for k in keep)
    # forward(*args, **kwargs) alone says nothing: keyword arguments for token batches (HF style),
    # the inputs positionally otherwise, as before
    hf_style = MASK_KEY in data or "input_ids" in data or inputs is None
    through_kwargs = var_kw and (any(k in named for k in keep) or (not named and hf_style))
    if by_name or through_kwargs:
        if inputs is None:
            inputs = next((v for k, v in keep.items() if isinstance(v, torch.Tensor) and k != MASK_KEY), None)
        args, kwargs = (), keep
    elif inputs is None:
        raise ValueError(
            f"cannot call {type(module).__name__} with a batch with keys {sorted(data)}: forward() does not "
            f"accept them as keyword arguments and none of {INPUT_KEYS} holds the inputs. Pass "
            "batch_fn=<callable returning (inputs, labels)> or forward_fn=<callable(module, batch)>."
        )
    else:
        args, kwargs = (inputs,), {}
    x, why_no_x = _x_of(inputs, "batch")
    labels, why_no_labels = _per_sample(labels, inputs)
    return ProbeBatch(args, kwargs, labels, mask, x, batch, why_no_x, why_no_labels)


def split_batch(batch: Any, module: nn.Module, batch_fn: Callable[[Any], Any] | None = None) -> ProbeBatch:
    """Split a raw probe batch into a :class:`ProbeBatch` for ``module`` (see the module docstring).

    Example:
        >>> class Encoder(nn.Module):
        ...     def forward(self, input_ids, attention_mask=None, labels=None):
        ...         return input_ids.float()
        >>> batch = {"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 0]]),
        ...          "labels": torch.tensor([2])}
        >>> pb = split_batch(batch, Encoder())
        >>> sorted(pb.kwargs), pb.labels, pb.attention_mask.tolist(), pb.inputs_for_x
        (['attention_mask', 'input_ids'], tensor([2]), [[1, 1, 0]], None)
        >>> pb = split_batch((torch.zeros(2, 3), torch.tensor([0, 1])), nn.Linear(3, 1))
        >>> pb.args[0].shape, pb.kwargs, pb.labels
        (torch.Size([2, 3]), {}, tensor([0, 1]))
    """
    if batch_fn is not None:
        out = batch_fn(batch)
        if isinstance(out, ProbeBatch):
            return out if out.raw is not None else replace(out, raw=batch)
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise ValueError(
                f"batch_fn must return (inputs, labels), (inputs, labels, attention_mask) or a ProbeBatch; "
                f"got {type(out).__name__}{'' if not isinstance(out, (tuple, list)) else f' of length {len(out)}'}."
            )
        inputs, labels = out[0], out[1]
        mask = out[2] if len(out) == 3 else None
        if isinstance(inputs, Mapping):
            return replace(_split_mapping(inputs, module, labels, mask), raw=batch)
        x, why_no_x = _x_of(inputs, "inputs")
        labels, why_no_labels = _per_sample(labels, inputs)
        return ProbeBatch((inputs,), {}, labels, mask, x, batch, why_no_x, why_no_labels)
    if isinstance(batch, Mapping):
        return _split_mapping(batch, module)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("empty batch")
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        if isinstance(batch[0], Mapping):
            return replace(_split_mapping(batch[0], module, labels), raw=batch)
        x, why_no_x = _x_of(batch[0], "inputs")
        labels, why_no_labels = _per_sample(labels, batch[0])
        return ProbeBatch((batch[0],), {}, labels, None, x, batch, why_no_x, why_no_labels)
    x, why_no_x = _x_of(batch, "batch")
    return ProbeBatch((batch,), {}, None, None, x, batch, why_no_x, None)


def unpack_batch(batch: Any, batch_fn: Callable[[Any], Any] | None = None) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, labels or None)`` of a batch, read as :func:`split_batch` reads it for a module
    that takes the inputs positionally.

    >>> unpack_batch((torch.zeros(2, 3), torch.tensor([0, 1]), "meta"))[1]
    tensor([0, 1])
    >>> x, y = unpack_batch({"image": torch.zeros(2, 3)})
    >>> x.shape, y
    (torch.Size([2, 3]), None)
    """
    pb = split_batch(batch, nn.Identity(), batch_fn)
    return (pb.args[0] if pb.args else pb.kwargs), pb.labels


def call_module(module: nn.Module, batch: ProbeBatch, forward_fn: ForwardFn | None = None) -> Any:
    """Run the forward pass: ``forward_fn(module, batch.raw)`` if given, else ``module(*args, **kwargs)``.

    >>> net = nn.Linear(3, 1)
    >>> call_module(net, split_batch([torch.zeros(2, 3)], net)).shape
    torch.Size([2, 1])
    >>> call_module(net, split_batch([torch.zeros(2, 3)], net), lambda m, b: m(b[0] + 1)).shape
    torch.Size([2, 1])
    """
    if forward_fn is not None:
        return forward_fn(module, batch.raw)
    return module(*batch.args, **batch.kwargs)
