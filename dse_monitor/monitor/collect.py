"""One probe pass: the model runs over this rank's share, hooks read the layers.

The pass runs as validation does (eval mode with every module's own mode restored,
``torch.no_grad()``, the trainer's precision), with the random streams forked so that
training draws the same numbers with or without the monitor. It makes no collective
call, so a failure on one rank cannot leave the others waiting.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..capture.compiled import eager
from ..capture.forward import ProbeBatch, call_module, split_batch
from ..capture.hooks import FeatureCapture, eval_mode
from ..capture.layers import Layer
from ..capture.probe import resize_inputs
from .config import MonitorConfig


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


def forward_as_validation(trainer: Any, module: Any, batch: ProbeBatch, config: MonitorConfig) -> Any:
    """The forward pass with the trainer's precision (input conversion and autocast of validation)."""
    precision = trainer.precision_plugin
    batch = batch.convert_call(precision.convert_input)  # e.g. float64 inputs under precision="64-true"
    with precision.val_step_context():
        return call_module(module, batch, config.forward_fn)


def collect_features(
    trainer: Any,
    pl_module: Any,
    loader: DataLoader,
    layers: Sequence[Layer],
    config: MonitorConfig,
    capture: FeatureCapture,
    *,
    want_labels: bool,
    want_inputs: bool,
) -> ProbeFeatures:
    """Run this rank's share through the model and read the layers with ``capture``'s hooks.

    A compiled model runs its eager original (same weights), so that the hooks fire and
    dynamo never sees them (no recompilation of the training graph).
    """
    feats: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    ys: list[torch.Tensor] = []
    xs: list[torch.Tensor] = []
    why_no_inputs = None
    bad: list[torch.Tensor] = []
    with eager(pl_module) as module, eval_mode(module), capture as cap:
        for batch in loader:
            pb = split_batch(batch, module, config.batch_fn).to(pl_module.device)
            cap.attention_mask = pb.attention_mask  # token sequences pool over real tokens only
            bad.append(nonfinite_rows(pb))
            forward_as_validation(trainer, module, pb, config)
            for name, z in cap.take().items():
                feats[name].append(z)
            if want_labels and pb.labels is not None:
                ys.append(torch.as_tensor(pb.labels).to(pl_module.device))
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
