"""One probe pass: the model runs over the probe batches, hooks read the layers.

The pass runs as validation does (eval mode with every module's own mode restored,
``torch.no_grad()``, the trainer's precision when there is a trainer), with the random
streams forked so that training draws the same numbers with or without the monitor.
It makes no collective call, so a failure on one rank cannot leave the others waiting.
The callback runs it over each rank's share; :func:`~dse_monitor.monitor.standalone.measure`
runs it over the whole probe, without a Trainer (``trainer=None``).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..capture.compiled import eager
from ..capture.forward import ProbeBatch, call_module, split_batch
from ..capture.hooks import FeatureCapture, eval_mode
from ..capture.layer_sets import resolve_layers
from ..capture.layers import Layer, LayerNotFoundError
from ..capture.probe import resize_inputs
from .config import MonitorConfig

class MissingLabelsError(ValueError):
    """The chosen metrics need labels that the probe batches do not carry (a configuration error, not a model's)."""


#: Called after each forward pass of a probe pass with the model's output and the batch (e.g. for accuracy).
OnOutput = Callable[[Any, ProbeBatch], None]


@dataclass
class ProbeFeatures:
    """Pooled features ``{layer: [N, D] float32}`` and, when still needed, labels and resized inputs.

    ``why_no_inputs``: why the batches gave no X for DSMI(Z;X) (e.g. token ids), once;
    ``bad_inputs``: ``[N]`` 0/1, samples whose inputs hold NaN/Inf (a data problem, not divergence).
    """

    features: dict[str, torch.Tensor]
    labels: Optional[torch.Tensor] = None
    inputs: Optional[torch.Tensor] = None
    why_no_inputs: Optional[str] = None
    bad_inputs: Optional[torch.Tensor] = None


@contextmanager
def isolated_rng(device: Optional[torch.device] = None) -> Iterator[None]:
    """Fork torch (CPU and the given CUDA device), numpy and Python ``random`` streams; restore on exit.

    Lightning's ``isolate_rng`` would do the same but lives in ``lightning``; this one
    serves both distributions and forks only the CUDA device in use.

    >>> _ = torch.manual_seed(0); a = torch.rand(1)
    >>> _ = torch.manual_seed(0)
    >>> with isolated_rng():
    ...     _ = torch.rand(5), np.random.rand(), random.random()
    >>> bool(torch.rand(1) == a)
    True
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def module_device(module: Any) -> torch.device:
    """Where ``module`` runs: its ``device`` attribute (LightningModule), else its first parameter's, else the CPU."""
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    first = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return first.device if first is not None else torch.device("cpu")


def forward_as_validation(trainer: Any, module: Any, batch: ProbeBatch, config: MonitorConfig) -> Any:
    """The forward pass, with the trainer's precision when given (input conversion and autocast of validation)."""
    if trainer is None:
        return call_module(module, batch, config.forward_fn)
    precision = trainer.precision_plugin
    batch = batch.convert_call(precision.convert_input)  # e.g. float64 inputs under precision="64-true"
    with precision.val_step_context():
        return call_module(module, batch, config.forward_fn)


def preflight(trainer: Any, model: Any, raw_batch: Any, config: MonitorConfig) -> list[Layer]:
    """Check one peek batch and resolve the layers: configuration errors surface here, before any measurement.

    Labels missing for the metrics that need them, an unknown layer, a layer that
    ``forward`` never calls, an activation the pooling cannot handle.
    """
    with eager(model) as module:
        batch = split_batch(raw_batch, module, config.batch_fn)
        check_labels(config, batch.labels, batch.why_no_labels)
        batch = batch.to(module_device(model))

        def run_forward() -> Any:
            with eval_mode(module):
                return forward_as_validation(trainer, module, batch, config)

        layers = resolve_layers(module, config.layers, run_forward)
        # One pass over the peek batch: a layer that forward() never calls, or an activation the
        # pooling cannot handle, is a configuration error now rather than after the first epoch.
        with FeatureCapture(layers, config.pooling) as cap:
            cap.attention_mask = batch.attention_mask
            run_forward()
            try:
                cap.take()
            except RuntimeError as err:
                raise LayerNotFoundError(f"DSEMonitor: {err}") from err
    return layers


def check_labels(config: MonitorConfig, y: Any, why_none: Optional[str] = None) -> None:
    """Labels as a tensor when a chosen metric needs them, else a ``ValueError`` that says how to give them."""
    asked = config.metrics_needing("labels")
    if not asked:
        return
    if y is None:
        why = why_none or ("batch_fn returned no labels" if config.batch_fn is not None
                           else "no second item in the (x, y) tuples, no label key in the dicts")
        raise MissingLabelsError(
            f"DSEMonitor: metrics {asked} need labels, but the probe batches carry none ({why}). Use batches "
            "like (x, y) or {'x': ..., 'y': ...}, pass batch_fn, or drop those metrics."
        )
    try:
        torch.as_tensor(y)
    except Exception as err:
        raise MissingLabelsError(
            f"DSEMonitor: metrics {asked} need labels as a tensor (one per sample); the probe batches carry "
            f"a {type(y).__name__} ({err}). Pass batch_fn returning (inputs, label tensor)."
        ) from err


def collect_features(
    trainer: Any,
    pl_module: Any,
    loader: Iterable[Any],
    layers: Sequence[Layer],
    config: MonitorConfig,
    capture: FeatureCapture,
    *,
    want_labels: bool,
    want_inputs: bool,
    on_output: Optional[OnOutput] = None,
) -> ProbeFeatures:
    """Run the probe batches through the model and read the layers with ``capture``'s hooks.

    ``trainer``: the forward pass takes its precision (None: the model as it is). A
    compiled model runs its eager original (same weights), so that the hooks fire and
    dynamo never sees them (no recompilation of the training graph).
    """
    device = module_device(pl_module)
    feats: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    ys: list[torch.Tensor] = []
    xs: list[torch.Tensor] = []
    why_no_inputs = None
    bad: list[torch.Tensor] = []
    with eager(pl_module) as module, eval_mode(module), capture as cap:
        for batch in loader:
            pb = split_batch(batch, module, config.batch_fn).to(device)
            cap.attention_mask = pb.attention_mask  # token sequences pool over real tokens only
            bad.append(nonfinite_rows(pb))
            output = forward_as_validation(trainer, module, pb, config)
            for name, z in cap.take().items():
                feats[name].append(z)
            if on_output is not None:
                on_output(output, pb)
            del output  # not kept through the next batch's forward pass (e.g. a language model's logits)
            if want_labels and pb.labels is not None:
                ys.append(torch.as_tensor(pb.labels).to(device))
            if want_inputs:
                if pb.inputs_for_x is None:
                    why_no_inputs = pb.why_no_x or "the probe batches hold no inputs to cluster"
                    want_inputs = False
                else:
                    xs.append(resize_inputs(pb.inputs_for_x, config.x_size))
    return ProbeFeatures(
        {name: torch.cat(zs) for name, zs in feats.items()},
        torch.cat(ys) if ys else None,
        torch.cat(xs) if xs and why_no_inputs is None else None,
        why_no_inputs,
        torch.cat(bad) if bad and all(b is not None for b in bad) else None,
    )


def nonfinite_rows(batch: ProbeBatch) -> Optional[torch.Tensor]:
    """``[B]`` 0/1: samples whose floating inputs (the call's tensors with the batch's first dim) hold NaN/Inf."""
    tensors = [t for t in (*batch.args, *batch.kwargs.values())
               if isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 1]
    if not tensors:
        return None
    b = tensors[0].shape[0]
    rows = torch.zeros(b, dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        if t.shape[0] == b:
            rows |= ~torch.isfinite(t.reshape(b, -1)).all(dim=1)
    return rows.to(torch.uint8)  # all_gather of bool is not supported by every backend
